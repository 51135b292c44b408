"""The deployment's executor: Airflow's LocalExecutor with the pipeline's libraries preloaded.

On Linux the LocalExecutor forks its worker processes from the scheduler, and each worker forks
one process per task. A task process therefore starts with whatever the scheduler had imported,
and imports the rest itself: Great Expectations (about 2.4 s on this project's 2-core machine),
scikit-learn's ensembles (1.3 s), LightGBM (1.4 s), XGBoost (1.3 s), for every task that
validates, trains, assembles or gates, about 30 task processes a week for two markets.
:class:`PreloadingLocalExecutor` imports them once in the scheduler before the workers are
forked (the same idea as gunicorn's ``--preload``), so task processes share the loaded modules
copy-on-write. Importing is all it does: no thread pool is started and no connection is opened
before the fork (the OpenMP runtimes start their threads on first use, inside the task, with
the task's thread budget).

Set with ``AIRFLOW__CORE__EXECUTOR=include.deployment.executor.PreloadingLocalExecutor`` (the
project root on ``PYTHONPATH``), as ``make airflow`` does.
"""

from __future__ import annotations

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
    "matplotlib.pyplot",
    "include.pipeline",
    "include.quality.suites",
    "include.training",
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


class PreloadingLocalExecutor(LocalExecutor):
    """:class:`~airflow.executors.local_executor.LocalExecutor` that imports
    :data:`PRELOAD_MODULES` before forking its workers (see the module docstring)."""

    def start(self) -> None:
        """Preload, then start the workers."""
        if self.is_mp_using_fork:
            took = preload()
            logger.info("preloaded %d modules for task processes in %.1fs", len(took), sum(took.values()))
        super().start()
