"""Glue every DAG's task bodies share: a step run per market of a batch, failing at once on errors
a retry cannot mend, and the wait for earlier runs. The weekly DAG's own task bodies are in
:mod:`include.pipeline.tasks`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from include.batch_outcomes import BatchOutcomes, forget_batch_outcomes, inputs_digest
from include.errors import BatchRetryError, PipelineError, TransientError
from include.notify import failure_message, send

__all__ = ["each_market", "fail_fast", "forget_batch_outcomes", "is_permanent", "unfinished_earlier_runs"]

logger = logging.getLogger(__name__)


def each_market(batch: dict[str, Any], step: Callable[[dict[str, Any]], Any], *upstream: dict[str, Any] | None,
                context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one step for every market of a ``market`` task-group instance, each on its own.

    A market left out of any ``upstream`` result (it failed or was skipped at an earlier step)
    is passed over. In a batch of one market the step's exceptions propagate, so the task fails,
    retries or skips as that market's step. In a larger batch the other markets go on after a
    market's failure, which is logged with its traceback. A failure a later try may mend (any
    error but a permanent :class:`~include.errors.PipelineError` or ``AirflowFailException``,
    as :func:`is_permanent` sorts them) makes the task fail once its markets are done, while it
    has tries left, so that Airflow retries it after the task's ``retry_delay``; the retry runs
    only the markets that did not finish, and reuses the others' outcomes, recorded in the
    market database for the same try sequence and the same inputs
    (:class:`~include.batch_outcomes.BatchOutcomes`): a cleared task, or a market whose inputs
    changed, runs again. A market's failure that stays (a permanent one, or on the last try) is
    alerted, naming the market (:func:`include.notify.failure_message`), and ``check_markets``
    turns the run red. A market skipped (too young) is logged and left out.

    Args:
        batch: ``{"label", "plans"}`` from :func:`include.universe.batch_markets`.
        step: called with a market's plan; returns its JSON-serialisable result.
        upstream: earlier steps' results of this instance (``{model: result}``).
        context: the task context, for the alerts, the retries and the try fence; ``None``
            sends no alert and does not retry.

    Returns:
        ``{model: result}`` for the markets whose step ran (in this try or an earlier one).

    Raises:
        BatchRetryError: a market of a larger batch failed in a way a retry may mend, and the task
            has tries left.
        SupersededTryError: a later try of this task instance has started (this one is a zombie).
        AirflowFailException: every market of a larger batch failed at this step (its errors named).
        AirflowSkipException: no market of a larger batch is left to run (all skipped).
        Exception: a batch of one market's own error.
    """
    from airflow.sdk.exceptions import AirflowSkipException

    plans = batch["plans"]
    if len(plans) == 1:
        plan = plans[0]
        if any(plan["model"] not in (up or {}) for up in upstream):
            logger.info("%s: not run (it failed or was skipped at an earlier step)", plan["model"])
            return {}
        return {plan["model"]: step(plan)}
    outcomes = BatchOutcomes(context)
    try:
        for i, plan in enumerate(plans, 1):
            model = plan["model"]
            if any(model not in (up or {}) for up in upstream):
                logger.info("market %d of %d, %s: not run (it failed or was skipped at an earlier step)", i,
                            len(plans), model)
                continue
            digest = inputs_digest(plan, [up[model] for up in upstream if up is not None])
            if outcomes.reuse(model, digest, f"market {i} of {len(plans)}"):
                continue
            outcomes.check_fence()
            logger.info("market %d of %d: %s", i, len(plans), model)
            try:
                outcome = {"result": step(plan)}
            except AirflowSkipException as exc:
                logger.warning("%s: skipped: %s", model, exc)
                outcome = {"skipped": str(exc)}
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if is_permanent(exc) or not outcomes.retries_left:
                    logger.exception("%s: failed; the batch's other markets go on", model)
                    outcome = {"failed": error}
                    _alert(context, model, exc)
                else:
                    logger.exception("%s: failed; tried again when the batch's other markets are done", model)
                    outcomes.retriable[model] = error
                    continue
            outcomes.record(model, digest, **outcome)
        return _finish(outcomes, batch["label"])
    finally:
        outcomes.close()


def _finish(outcomes: BatchOutcomes, label: str) -> dict[str, Any]:
    """The try's ``{model: result}``; see :func:`each_market` for what it raises."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    if outcomes.retriable:
        raise BatchRetryError(f"{len(outcomes.retriable)} market(s) of {label} failed and will be tried again: "
                              + "; ".join(f"{m}: {e}" for m, e in outcomes.retriable.items()))
    outcomes.forget()
    results = {m: o["result"] for m, o in outcomes.outcomes.items() if "result" in o}
    failed = {m: o["failed"] for m, o in outcomes.outcomes.items() if "failed" in o}
    if not results and failed:
        raise AirflowFailException(f"every market of {label} failed: "
                                   + "; ".join(f"{m}: {e}" for m, e in failed.items()))
    if not results:
        raise AirflowSkipException(f"no market of {label} is left to run")
    return results


def _alert(context: dict[str, Any] | None, model: str, exc: BaseException) -> None:
    """Send a market's final failure to the alert channels, naming the market."""
    if context is not None:
        send(failure_message({**context, "exception": exc}, market=model), context)


def is_permanent(exc: BaseException) -> bool:
    """Whether a retry cannot mend ``exc``: ``AirflowFailException``, or a
    :class:`~include.errors.PipelineError` that is not a :class:`~include.errors.TransientError`
    (the rule :func:`fail_fast` applies)."""
    from airflow.sdk.exceptions import AirflowFailException

    return isinstance(exc, AirflowFailException) or (
        isinstance(exc, PipelineError) and not isinstance(exc, TransientError))


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

    try:
        yield
    except PipelineError as exc:
        if not is_permanent(exc):
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
