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
override the three numbers. The pool is created by the deployment entry points
(``make airflow``, the compose ``airflow-init``, :class:`tests.cluster.LocalAirflow`):
``airflow pools set training <training_slots()> "..."``; on a cluster of several workers, give
the pool the sum of the workers' slots.
"""

from __future__ import annotations

import logging
import os

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


def main() -> None:
    """Print the number of training slots for this machine (used to size the ``training`` pool)."""
    print(training_slots())


if __name__ == "__main__":
    main()
