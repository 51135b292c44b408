"""The deployment's executor: Airflow's LocalExecutor with the pipeline's libraries preloaded.

On Linux the LocalExecutor forks its worker processes from the scheduler, and each worker forks
one process per task. A task process therefore starts with whatever the scheduler had imported,
and imports the rest itself: Great Expectations (about 2.4 s on this project's 2-core machine),
scikit-learn's ensembles (1.3 s), LightGBM (1.4 s), XGBoost (1.3 s), for every task that
validates, trains, assembles or gates, about 30 task processes a week for two markets.
Every task process also parses its DAG file (the file's imports, among them ``airflow.sdk``'s
lazily imported names: about 0.1 s) and loads the plugins for their listeners (the plugin
modules build the registry's web views: up to 1.8 s in a process that has not imported FastAPI).
:class:`PreloadingLocalExecutor` does all of this once in the scheduler before the workers are
forked (the same idea as gunicorn's ``--preload``), so task processes share the loaded modules
copy-on-write. Importing is all it does: no thread pool is started and no connection is opened
before the fork (the OpenMP runtimes start their threads on first use, inside the task, with
the task's thread budget).

Set with ``AIRFLOW__CORE__EXECUTOR=include.deployment.executor.PreloadingLocalExecutor`` (the
project root on ``PYTHONPATH``), as ``make airflow`` does.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time

from airflow.executors.local_executor import LocalExecutor

logger = logging.getLogger(__name__)

#: Modules the pipeline's tasks import, heaviest first. A module that fails to import is
#: skipped: the task that needs it imports it itself and reports the error there.
PRELOAD_MODULES: tuple[str, ...] = (
    "great_expectations",
    "sklearn.ensemble",
    "sklearn.metrics",
    "sklearn.inspection",
    "lightgbm",
    "xgboost",
    "talib",
    "pandas",
    "pyarrow.parquet",
    "joblib",
    "scipy.stats",
    # The gate's block bootstrap and block lengths (include/significance.py, include/evaluation.py):
    # 0.44 s a quality_gate task otherwise.
    "arch.bootstrap",
    "matplotlib.pyplot",
    "include.pipeline",
    "include.quality.suites",
    "include.training",
    # What the DAG files import, parsed again by every task process.
    "include.approval",
    "include.assets",
    "include.notify",
    "include.resources",
    "include.tasks",
)


def preload(modules: tuple[str, ...] = PRELOAD_MODULES) -> dict[str, float]:
    """Import ``modules``; returns the seconds each took (a failed import is logged and skipped)."""
    took: dict[str, float] = {}
    for name in modules:
        started = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as exc:  # the task importing it reports the real error
            logger.warning("preload: could not import %s (%s); tasks will import it themselves", name, exc)
            continue
        took[name] = round(time.perf_counter() - started, 2)
    return took


def preload_task_sdk() -> float:
    """Resolve every lazily imported name of ``airflow.sdk`` and build the Task SDK's listener
    manager, which loads the plugins (:func:`airflow.sdk.listener.get_listener_manager`, cached
    per process: a forked task process reuses it). Returns the seconds it took; a failure is
    logged and skipped (the task process then does it itself and reports any error there)."""
    import airflow.sdk

    started = time.perf_counter()
    for name in airflow.sdk.__all__:
        with contextlib.suppress(Exception):  # a name that does not resolve fails where a DAG uses it
            getattr(airflow.sdk, name)
    try:
        from airflow.sdk.listener import get_listener_manager

        get_listener_manager()
    except Exception as exc:
        logger.warning("preload: could not prepare the Task SDK (%s); tasks will do it themselves", exc)
    return round(time.perf_counter() - started, 2)


class PreloadingLocalExecutor(LocalExecutor):
    """:class:`~airflow.executors.local_executor.LocalExecutor` that imports
    :data:`PRELOAD_MODULES` and prepares the Task SDK (:func:`preload_task_sdk`) before forking
    its workers (see the module docstring)."""

    def start(self) -> None:
        """Preload, then start the workers."""
        if self.is_mp_using_fork:
            took = preload()
            sdk = preload_task_sdk()
            logger.info("preloaded %d modules and the Task SDK for task processes in %.1fs", len(took),
                        sum(took.values()) + sdk)
        super().start()
