"""Glue between Airflow task bodies and :mod:`include.pipeline`: rebuild typed objects from XCom,
and fail at once on errors a retry cannot mend."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from include.config import RunConfig, Settings
from include.pipeline import RunWindow

logger = logging.getLogger(__name__)


@contextmanager
def market_run(plan: dict[str, Any], window: dict[str, Any] | None,
               dag_id: str) -> Iterator[tuple[RunConfig, RunWindow, Settings, Path]]:
    """``(config, window, settings, run folder)`` of one market's run, for one task's step.

    The run folder is local: the run's own when ``RUN_ARTIFACTS_DIR`` is a local path; when it is
    an object store, this worker's mirror of it, whose changes are uploaded when the step ends
    (:func:`include.pipeline.common.staged_run_dir`).

    Args:
        plan: one market's plan from a ``plan_run`` batch (``{"model", "config", "window"}``).
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


def each_market(batch: dict[str, Any], step: Callable[[dict[str, Any]], Any], *upstream: dict[str, Any] | None,
                context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one step for every market of a ``market`` task-group instance, each on its own.

    A market left out of any ``upstream`` result (it failed or was skipped at an earlier step)
    is passed over. In a batch of one market the step's exceptions propagate, so the task fails,
    retries or skips as that market's step. In a larger batch a market's failure is logged with
    its traceback and alerted, naming the market (:func:`include.notify.failure_message`), and
    the other markets go on; it is not retried, and ``check_markets`` turns the run red. A
    market skipped (too young) is logged and left out.

    Args:
        batch: ``{"label", "plans"}`` from :func:`include.universe.batch_markets`.
        step: called with a market's plan; returns its JSON-serialisable result.
        upstream: earlier steps' results of this instance (``{model: result}``).
        context: the task context, for the alerts; ``None`` sends none.

    Returns:
        ``{model: result}`` for the markets whose step ran.

    Raises:
        AirflowFailException: every market of a larger batch failed at this step (its errors named).
        AirflowSkipException: no market of a larger batch is left to run (all skipped).
        Exception: a batch of one market's own error.
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from include.notify import failure_message, send

    plans = batch["plans"]
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for i, plan in enumerate(plans, 1):
        model = plan["model"]
        if any(model not in (up or {}) for up in upstream):
            logger.info("market %d of %d, %s: not run (it failed or was skipped at an earlier step)", i,
                        len(plans), model)
            continue
        if len(plans) > 1:
            logger.info("market %d of %d: %s", i, len(plans), model)
        try:
            results[model] = step(plan)
        except AirflowSkipException as exc:
            if len(plans) == 1:
                raise
            logger.warning("%s: skipped: %s", model, exc)
        except Exception as exc:
            if len(plans) == 1:
                raise
            failed[model] = f"{type(exc).__name__}: {exc}"
            logger.exception("%s: failed; the batch's other markets go on", model)
            if context is not None:
                send(failure_message({**context, "exception": exc}, market=model), context)
    if not results and failed:
        raise AirflowFailException(f"every market of {batch['label']} failed: "
                                   + "; ".join(f"{m}: {e}" for m, e in failed.items()))
    if not results and len(plans) > 1:
        raise AirflowSkipException(f"no market of {batch['label']} is left to run")
    return results


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
