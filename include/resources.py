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
#: Threads past which one tree-model fit on this project's data (tens of thousands of rows)
#: stops getting faster; more cores go into more slots instead.
MAX_THREADS_PER_TRAINING = 4


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

    ``max(1, cpus // MAX_THREADS_PER_TRAINING)``: 1 on 2 to 7 cores, 8 on 32.

    Raises:
        ConfigError: an override is not a positive integer.
    """
    override = env_int("TRAINING_SLOTS", None)
    if override is not None:
        return override
    return max(1, (cpus or available_cpus()) // MAX_THREADS_PER_TRAINING)


def model_threads() -> int:
    """Threads one training task gives the model libraries (``TRAINING_THREADS`` overrides).

    The cores this process may use divided by :func:`training_slots`, at least 1: a 2-core worker
    runs one training at a time with 2 threads; a 32-core one runs 8 with 4 threads each.

    Raises:
        ConfigError: an override is not a positive integer.
    """
    override = env_int("TRAINING_THREADS", None)
    if override is not None:
        return override
    cpus = available_cpus()
    return max(1, cpus // training_slots(cpus))


def main() -> None:
    """Print the number of training slots for this machine (used to size the ``training`` pool)."""
    print(training_slots())


if __name__ == "__main__":
    main()
