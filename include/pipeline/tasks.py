"""The weekly DAG's task bodies: each task of ``weekly_retrain`` is one call into this module.

A market task runs one step of the routine (:mod:`include.pipeline.routine`) for every market of
its batch (:func:`include.tasks.each_market`), on the run folder of that market
(:func:`market_run`). What only Airflow gives stays here, around the routine: skipping a market
that is not ready, failing at once on errors a retry cannot mend, the gate's wait for earlier
runs and registry locks, a person's approval, and the production assets' events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.assets import PRODUCTION_ALIAS, production_asset, production_event
from include.config import RunConfig, Settings
from include.errors import MarketNotReadyError
from include.pipeline.publication import plan_universe, publish_universe, retrain_scope
from include.pipeline.routine import (
    MarketRun,
    act_step,
    build_step,
    candidate_step,
    gate_step,
    ingest_step,
    report_step,
    train_step,
    validate_step,
)
from include.registry import ModelRegistry
from include.run_folder import staged_run_dir
from include.tasks import each_market, fail_fast, forget_batch_outcomes, unfinished_earlier_runs
from include.universe import batch_markets
from include.windows import RunWindow

logger = logging.getLogger(__name__)

#: The ``plan_run`` params that choose the markets rather than configure them.
MARKET_PARAMS = ("markets", "universe_file", "market_batch_size")


@contextmanager
def market_run(plan: dict[str, Any], window: dict[str, Any] | None, context: dict[str, Any], *,
               staged: bool = True) -> Iterator[MarketRun]:
    """One market's :class:`~include.pipeline.routine.MarketRun` for one task's step.

    The run folder is local: the run's own when ``RUN_ARTIFACTS_DIR`` is a local path; when it is
    an object store, this worker's mirror of it, whose changes are uploaded when the step ends
    (:func:`include.run_folder.staged_run_dir`).

    Args:
        plan: one market's plan from a ``plan_run`` batch (``{"model", "config", "window"}``).
        window: the window ``ingest_market_data`` settled on (shorter for a young market);
            ``None`` for the plan's own window.
        context: the task context (the DAG's id, the run's id and logical date).
        staged: open the run folder; ``False`` for a step that uses none (the move, step 7), so
            that an object store's folder is not copied for nothing.
    """
    cfg = RunConfig.from_params(plan["config"])
    win = RunWindow(**(window or plan["window"]))
    settings = Settings.from_env()
    dag_id = context["dag"].dag_id
    logical_date = context.get("logical_date")
    stamp = logical_date.isoformat() if logical_date else None
    if not staged:
        yield MarketRun(cfg, win, settings, None, dag_id, context["run_id"], stamp)
        return
    with staged_run_dir(settings, dag_id, cfg.model_name, win) as out:
        yield MarketRun(cfg, win, settings, out, dag_id, context["run_id"], stamp)


def _each(batch: dict[str, Any], ingested: dict[str, Any] | None, step: Callable[[MarketRun, dict[str, Any]], Any],
          *upstream: dict[str, Any] | None, context: dict[str, Any], staged: bool = True) -> dict[str, Any]:
    """``step(run, plan)`` for every market of the batch (:func:`include.tasks.each_market`), on
    the window ingestion settled on (the plan's own before ingestion); a permanent
    :class:`~include.errors.PipelineError` fails the task at once (:func:`include.tasks.fail_fast`)."""
    def one(plan: dict[str, Any]) -> Any:
        window = ingested[plan["model"]]["window"] if ingested is not None else None
        with fail_fast(), market_run(plan, window, context, staged=staged) as run:
            return step(run, plan)

    return each_market(batch, one, *upstream, context=context)


def plan_run(params: dict[str, Any], context: dict[str, Any]) -> list[dict[str, Any]]:
    """``plan_run``: the market group's instances, batches of market plans (registered model, its
    run configuration and window), one market each while they fit (:mod:`include.universe`).

    A run triggered by ``monitor_production``'s ``retrain_request`` retrains the models it names,
    for the week ending at the request's ``as_of`` day; the gate records the request.

    Raises:
        AirflowFailException: a bad parameter or universe file (no retry).
    """
    dag_run = context["dag_run"]
    run_params = {k: v for k, v in params.items() if k not in MARKET_PARAMS}
    selected = params.get("markets")
    interval = {"data_interval_start": context.get("data_interval_start"),
                "data_interval_end": context.get("data_interval_end")}
    scope = (retrain_scope(context.get("triggering_asset_events")) if dag_run.run_type == "asset_triggered"
             else None)
    if scope is not None:
        logger.warning("retrain requested by monitoring for %s as of %s: %s", ", ".join(scope["markets"]),
                       scope["as_of_date"], scope["reasons"])
        selected, run_params["as_of_date"] = scope["markets"], scope["as_of_date"]
        interval = {"data_interval_start": None, "data_interval_end": None}
    with fail_fast():
        plans = plan_universe(run_params, selected=selected, universe_file=params.get("universe_file"),
                              run_after=getattr(dag_run, "run_after", None), **interval)
    if scope is not None:  # the gate records what monitoring found, next to its own checks
        for plan in plans:
            plan["request"] = {"by": "monitor_production", "as_of_date": scope["as_of_date"],
                               "reason": scope["reasons"].get(plan["model"])}
    with fail_fast():
        return batch_markets(plans, params.get("market_batch_size"))


def ingest_market_data(batch: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """``ingest_market_data``: step 1 per market; a market with too little history is skipped,
    saying when it qualifies."""
    def step(run: MarketRun, plan: dict[str, Any]) -> dict[str, Any]:
        try:
            return ingest_step(run)
        except MarketNotReadyError as exc:
            raise AirflowSkipException(str(exc)) from exc

    return _each(batch, None, step, context=context)


def validate_market_data(batch: dict[str, Any], ingested: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """``validate_market_data``: step 2 per market. Bad data does not improve on a retry: the task
    fails at once, the full report in the message."""
    return _each(batch, ingested, lambda run, plan: validate_step(run), ingested, context=context)


def build_features(batch: dict[str, Any], ingested: dict[str, Any], validation: dict[str, Any],
                   context: dict[str, Any]) -> dict[str, Any]:
    """``build_features``: step 3 per market (features, then labels: one task, one step fewer to schedule)."""
    return _each(batch, ingested, lambda run, plan: build_step(run), ingested, validation, context=context)


def train_model(batch: dict[str, Any], ingested: dict[str, Any], built: dict[str, Any], family: str,
                context: dict[str, Any]) -> dict[str, Any]:
    """``train_<family>``: step 4 per market for one family; ``None`` for a market whose
    ``models`` leaves the family out (its run folder is not staged for nothing)."""
    def one(plan: dict[str, Any]) -> dict[str, Any] | None:
        with fail_fast():
            models = RunConfig.from_params(plan["config"]).models
        if family not in models:
            logger.info("%s: %s is not in its models %s: nothing to train", plan["model"], family, list(models))
            return None
        with fail_fast(), market_run(plan, ingested[plan["model"]]["window"], context) as run:
            return train_step(run, family)

    return each_market(batch, one, ingested, built, context=context)


def assemble_ensemble(batch: dict[str, Any], ingested: dict[str, Any], trained: list[dict[str, Any]],
                      context: dict[str, Any]) -> dict[str, Any]:
    """``assemble_ensemble``: step 5 per market, the candidate registered and its trading simulated."""
    def step(run: MarketRun, plan: dict[str, Any]) -> dict[str, Any]:
        return candidate_step(run, [family[plan["model"]] for family in trained])

    return _each(batch, ingested, step, ingested, *trained, context=context)


def quality_gate(batch: dict[str, Any], ingested: dict[str, Any], candidates: dict[str, Any],
                 context: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """``quality_gate`` (a sensor): step 6 per market, once no earlier run of the DAG is queued
    or running (runs decide in logical-date order) and no market's registry lock is held.

    Returns:
        ``(done, decisions)``: ``(False, None)`` while it must wait.
    """
    waiting = unfinished_earlier_runs(context["ti"], context["dag_run"])
    if waiting:
        logger.info("waiting for %d earlier run(s) to decide first", waiting)
        return False, None
    with fail_fast():
        registry = ModelRegistry.from_settings(Settings.from_env())
        try:
            if any(registry.is_locked(model) for model in candidates):
                return False, None
        finally:
            registry.dispose()

    def step(run: MarketRun, plan: dict[str, Any]) -> dict[str, Any]:
        return gate_step(run, candidates[plan["model"]], request=plan.get("request"))

    return True, _each(batch, ingested, step, candidates, context=context)


def promote_or_keep(batch: dict[str, Any], ingested: dict[str, Any], decisions: dict[str, Any],
                    approvals: dict[str, Any], context: dict[str, Any], outlet_events: Any) -> dict[str, Any]:
    """``promote_or_keep``: step 7 per market (a passing decision with its approval, when one was
    asked). A move updates the model's production asset (``model://<model>/production``); the
    events go out with the task's success, so a move an earlier try made is announced too.

    A refused or rolled-back promotion is not retried: a retry would promote again.
    """
    def step(run: MarketRun, plan: dict[str, Any]) -> dict[str, Any]:
        decision = decisions[plan["model"]]
        return act_step(run, decision, approval=approvals[plan["model"]] if decision["passed"] else None)

    done = _each(batch, ingested, step, decisions, approvals, context=context, staged=False)
    for model, result in done.items():
        if result["action"] in ("promote", "demote"):
            outlet_events[PRODUCTION_ALIAS].add(production_asset(model), extra=production_event(
                model, result["production"], result["previous"], result["action"], decisions[model].get("summary")))
    return done


def publish_market_summary(batch: dict[str, Any], ingested: dict[str, Any], validation: dict[str, Any],
                           built: dict[str, Any], candidates: dict[str, Any], decisions: dict[str, Any],
                           actions: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """``publish_market_summary``: step 8 per market, after the decision."""
    def step(run: MarketRun, plan: dict[str, Any]) -> dict[str, Any]:
        model = plan["model"]
        return report_step(run, {"ingested": ingested[model], "validation": validation[model],
                                 "features": built[model]["features"], "labels": built[model]["labels"],
                                 "ensemble": candidates[model]["ensemble"], "trading": candidates[model]["trading"],
                                 "gate": decisions[model], "action": actions[model]})

    return _each(batch, ingested, step, ingested, validation, built, candidates, decisions, actions, context=context)


def publish_summary(context: dict[str, Any]) -> dict[str, Any]:
    """``publish_summary``: every market's outcome (decision, skip or failure), to the run's log,
    the alert channels and the run's note.

    Raises:
        AirflowSkipException: ``plan_run`` planned no market (it failed, and alerted).
    """
    batches = context["ti"].xcom_pull(task_ids="plan_run")
    if batches is None:  # plan_run failed (and alerted): there are no markets to report on
        raise AirflowSkipException("plan_run did not plan any market; nothing to publish")
    dag_run = context["dag_run"]
    requested = (retrain_scope(context.get("triggering_asset_events")) if dag_run.run_type == "asset_triggered"
                 else None)
    return publish_universe(Settings.from_env(), context["dag"].dag_id, [p for b in batches for p in b["plans"]],
                            context=context, requested=requested)


def check_markets(context: dict[str, Any]) -> dict[str, Any]:
    """``check_markets``: fail the run when a market failed, so it shows red; the others' results stand.

    Raises:
        AirflowFailException: a market failed, or ``plan_run`` planned none.
    """
    published = context["ti"].xcom_pull(task_ids="publish_summary")
    if published is None:  # a leaf that fails keeps the run red when planning failed
        raise AirflowFailException("no market ran: plan_run failed (see its log and alert)")
    failed = sorted(m for m, status in published["markets"].items() if status == "failed")
    if failed:
        raise AirflowFailException(f"{len(failed)} of {len(published['markets'])} market(s) failed: "
                                   f"{', '.join(failed)}; the other markets' decisions stand")
    return published["markets"]


def apply_retention(context: dict[str, Any]) -> dict[str, Any]:
    """``apply_retention``: per registered model, the last ``MODEL_REGISTRY_KEEP_LAST`` versions
    and every version that ever held production are kept; the run's batch outcomes are forgotten."""
    forget_batch_outcomes(context["dag"].dag_id, context["run_id"])
    settings = Settings.from_env()
    registry = ModelRegistry.from_settings(settings)
    removed = registry.cleanup(settings.registry_keep_last)
    registry.dispose()
    return {"removed": removed, "keep_last": settings.registry_keep_last}
