"""Thread budget: how many model-training tasks run at once, and how many threads each uses.

A worker runs several tasks at once (LocalExecutor parallelism, Celery worker concurrency). A
training task that starts one thread per core next to two others doing the same runs three
times as many threads as there are cores, and all of them slow down (on 2 cores, three trainings
at once took 3-5x longer each than one at a time). The budget:

* training tasks run in the Airflow pool :data:`TRAINING_POOL` (``training``), whose slots are
  how many trainings run at once: :func:`training_slots`;
* each training gives the model libraries :func:`model_threads` threads: the cores this process
  may use divided by the slots, so that slots x threads never exceeds the cores.

Cores come from ``os.sched_getaffinity`` (what the OS lets this process use, e.g. a container's
CPU set), not ``os.cpu_count``. ``TASK_CPUS``, ``TRAINING_SLOTS`` and ``TRAINING_THREADS``
override the three numbers. The deployment entry points (``make airflow``, the compose
``airflow-init``, the Helm values' migration job, :class:`tests.cluster.LocalAirflow`) create the
pools (:func:`pool_commands`); on a cluster of several workers, give the training pool the sum of
the workers' slots.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from include.config import env_int

logger = logging.getLogger(__name__)

#: Airflow pool of the model-training tasks.
TRAINING_POOL = "training"
#: Threads one model fit gets. On this project's data (tens of thousands of rows, some forty
#: features) a second thread buys little: on 2 cores, one training task with 1 vs 2 threads took
#: 9.3 vs 8.1 s (LightGBM), 16.3 vs 14.9 s (XGBoost) and 39.2 vs 24.5 s (random forest). Two
#: single-threaded fits side by side therefore finish a market's three families sooner (39 s,
#: the forest alone) than one two-threaded fit after another (47.5 s); more cores go into more
#: slots. ``TRAINING_THREADS`` raises it for larger data.
THREADS_PER_TRAINING = 1


def available_cpus() -> int:
    """Cores this process may run on: ``TASK_CPUS``, else the CPU affinity set, else ``os.cpu_count()``.

    Raises:
        ConfigError: ``TASK_CPUS`` is not a positive integer.
    """
    override = env_int("TASK_CPUS", None)
    if override is not None:
        return override
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def training_slots(cpus: int | None = None) -> int:
    """Training tasks to run at once on a worker of ``cpus`` cores (``TRAINING_SLOTS`` overrides).

    ``max(1, cpus // threads)`` with ``TRAINING_THREADS`` or :data:`THREADS_PER_TRAINING` threads
    per fit: one per core by default (2 on 2 cores, 32 on 32).

    Raises:
        ConfigError: an override is not a positive integer.
    """
    override = env_int("TRAINING_SLOTS", None)
    if override is not None:
        return override
    threads = env_int("TRAINING_THREADS", None) or THREADS_PER_TRAINING
    return max(1, (cpus or available_cpus()) // threads)


def model_threads() -> int:
    """Threads one training task gives the model libraries (``TRAINING_THREADS`` overrides).

    The cores this process may use divided by :func:`training_slots`, at least 1: a 2-core worker
    runs two trainings at a time with 1 thread each; a 32-core one 32.

    Raises:
        ConfigError: an override is not a positive integer.
    """
    cpus = available_cpus()
    override = env_int("TRAINING_THREADS", None)
    if override is not None:
        return min(override, cpus)  # never more threads than the cores this process may use
    return max(1, cpus // training_slots(cpus))


_native_lock = threading.Lock()
_native_users = 0
_native_limiter = None


@contextmanager
def native_thread_limit(threads: int | None = None) -> Iterator[None]:
    """Hold the native thread pools of this process (OpenBLAS, MKL, OpenMP; threadpoolctl's
    ``threadpool_limits``) to ``threads`` (default :func:`model_threads`) inside the block.

    The model libraries take their thread count as ``n_jobs``, but NumPy's and SciPy's BLAS start
    one thread per core whatever a fit asks: a linear model's gradients (scikit-learn's
    ``LinearModelLoss``) or a standardisation next to a forest in another training slot then
    runs more threads than the worker has cores. On 2 cores (``bench/market_week.py``, BTCUSDT),
    the logistic family's step took 10.8 s on an empty store and 1.2 s in a steady week beside
    the tree families with BLAS on both cores, against 3.5 s and 0.5 s with one.

    The limits are process-wide and apply to every thread, so the families of one market training
    side by side in threads share one: the first block in sets it, nested blocks only count, and
    the last one out restores what was there before. OpenBLAS (0.3.31, as NumPy's and SciPy's
    wheels bundle it) ignores a raise of its thread count asked from another thread than the one
    that lowered it, so the thread that starts parallel work enters the block first and leaves it
    last (:func:`include.pipeline.routine.train_families`).

    Raises:
        ConfigError: from :func:`model_threads`, an override that is not a positive integer.
    """
    global _native_users, _native_limiter
    from threadpoolctl import threadpool_limits

    limit = threads or model_threads()
    with _native_lock:
        if _native_users == 0:
            _native_limiter = threadpool_limits(limits=limit)
        _native_users += 1
    try:
        yield
    finally:
        with _native_lock:
            _native_users -= 1
            if _native_users == 0:
                _native_limiter.restore_original_limits()
                _native_limiter = None


#: Airflow pool of the market-data ingestion tasks: how many markets read from the exchange at once.
MARKET_DATA_POOL = "market_data"
#: Default slots of :data:`MARKET_DATA_POOL`. ccxt's Binance client spaces requests by their
#: weight at 50 ms per unit (``rateLimit``), so one client stays under 1,200 weight per minute;
#: Binance allows an IP 2,400 per minute on USDT-M futures and 6,000 on spot (Binance API docs,
#: "LIMITS"). Two ingestions at once keep every host of a deployment that shares one egress IP
#: within the futures limit, whatever the number of workers.
MARKET_DATA_SLOTS = 2


def market_data_slots() -> int:
    """Slots of the ``market_data`` pool (``MARKET_DATA_SLOTS`` overrides :data:`MARKET_DATA_SLOTS`).

    Raises:
        ConfigError: the override is not a positive integer.
    """
    return env_int("MARKET_DATA_SLOTS", None) or MARKET_DATA_SLOTS


def pool_commands() -> list[list[str]]:
    """The ``airflow pools set`` commands a deployment runs after ``db migrate``: the training pool
    sized for this machine, and the market-data pool."""
    return [["pools", "set", TRAINING_POOL, str(training_slots()), "model training (include/resources.py)"],
            ["pools", "set", MARKET_DATA_POOL, str(market_data_slots()),
             "market-data ingestion: exchange rate limits across tasks (include/resources.py)"]]


def main() -> None:
    """Print the number of training slots for this machine (used to size the ``training`` pool)."""
    print(training_slots())


if __name__ == "__main__":
    main()
