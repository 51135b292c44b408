"""Glue between Airflow task bodies and :mod:`include.pipeline`: rebuild typed objects from XCom,
and fail at once on errors a retry cannot mend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from include.config import RunConfig, Settings
from include.pipeline import RunWindow


@contextmanager
def market_run(plan: dict[str, Any], window: dict[str, Any] | None,
               dag_id: str) -> Iterator[tuple[RunConfig, RunWindow, Settings, Path]]:
    """``(config, window, settings, run folder)`` of one market's run, for one task's step.

    The run folder is local: the run's own when ``RUN_ARTIFACTS_DIR`` is a local path; when it is
    an object store, this worker's mirror of it, whose changes are uploaded when the step ends
    (:func:`include.pipeline.common.staged_run_dir`).

    Args:
        plan: the market's plan from ``plan_run`` (``{"model", "config", "window"}``).
        window: the window ``ingest_market_data`` settled on (shorter for a young market);
            ``None`` for the plan's own window.
        dag_id: the DAG's id (names the run folder's parent).
    """
    from include.pipeline.common import staged_run_dir

    cfg = RunConfig.from_params(plan["config"])
    win = RunWindow(**(window or plan["window"]))
    settings = Settings.from_env()
    with staged_run_dir(settings, dag_id, cfg.model_name, win) as out:
        yield cfg, win, settings, out


@contextmanager
def fail_fast() -> Iterator[None]:
    """Turn a permanent, explained failure into ``AirflowFailException``: no retry, no retry delay.

    A :class:`~include.errors.PipelineError` is bad input, bad configuration or a refused
    registry move; running the task again two minutes later gives the same error. It is raised
    as :class:`~airflow.sdk.exceptions.AirflowFailException` with the same message (the original
    is chained), so the task fails on its first try and the alert goes out at once.
    :class:`~include.errors.TransientError` (the exchange still failing after its own retries)
    and every other exception (a bug, the machine) keep the task's retries.

    Raises:
        AirflowFailException: from a permanent ``PipelineError``.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from include.errors import PipelineError, TransientError

    try:
        yield
    except PipelineError as exc:
        if isinstance(exc, TransientError):
            raise
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


#: How far back the gate looks for unfinished earlier runs, in schedule intervals (two years).
EARLIER_RUNS_HORIZON = 104


def unfinished_earlier_runs(ti: Any, dag_run: Any, interval: timedelta = timedelta(weeks=1)) -> int:
    """Queued or running runs of this DAG whose logical date is 1..104 intervals before this one's.

    The quality gate waits for them, so that runs decide in logical-date order and each gate
    compares with the production model its predecessor left. This holds for every kind of run:
    backfill runs are limited by the backfill's own ``max_active_runs`` (default 10), not the
    DAG's, and run beside scheduled runs. A failed earlier run does not block later ones.

    Args:
        ti: the running task instance (``RuntimeTaskInstance``; provides ``get_dr_count``).
        dag_run: the running DAG run; runs without a logical date wait for nothing (the DAG's
            ``max_active_runs=1`` already keeps them apart from other non-backfill runs).
        interval: the schedule's spacing of logical dates.

    Returns:
        The number of such runs.
    """
    logical_date = getattr(dag_run, "logical_date", None)
    if logical_date is None:
        return 0
    earlier = [logical_date - interval * i for i in range(1, EARLIER_RUNS_HORIZON + 1)]
    return int(ti.get_dr_count(dag_id=dag_run.dag_id, logical_dates=earlier, states=["queued", "running"]))
