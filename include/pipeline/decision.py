"""Decision stages: trading simulation, the champion/challenger gate, promotion or keep."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.backtest import margin_words, simulate
from include.config import RunConfig, Settings
from include.data.store import open_store
from include.errors import GateError, PipelineError
from include.feature_store import feature_frame
from include.features import FeatureSpec
from include.gate.evidence import (
    compare_with_champion,
    judge,
    own_record,
    policy_from_config,
)
from include.pipeline.data import features_start
from include.registry import (
    PRODUCTION,
    ModelRegistry,
    atomic_write_json,
)
from include.run_folder import RunFolder, json_safe, timed_step, write_parquet
from include.serving import ProductionModel
from include.trading import market_frames, trade_out_of_fold, trading_decision
from include.windows import RunWindow

logger = logging.getLogger(__name__)


@timed_step("trading")
def simulate_trading(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Trade the ensemble's out-of-fold forecasts and the baselines; write ``trading.json``.

    Strategies on the same bars (:func:`trade_out_of_fold`): ``ensemble`` (the cost-aware
    decision of :mod:`include.backtest`, each fold at a margin chosen on earlier folds), the
    gate's trading baselines ``flat`` (never in the market) and ``momentum`` (the momentum rule's
    class as a position), and ``buy_and_hold`` (always long), shown for reference only. Each over
    all out-of-fold bars and over the gate window (the last fold, its positions as decided in the
    whole record). Funding is charged for perpetuals.

    Returns:
        ``{"out_of_fold": {strategy: metrics}, "gate_window": {...}, "decision": {...} or None,
        "path"}`` without the equity curves (those are in ``trading.json``); ``decision`` holds
        the margins per fold and the deployed model's margin ("flat" included), and the
        meta-label models where ``trade_meta_label`` is on, which serving trades with
        (:func:`include.trading.deployed_decision`).
    """
    oof = pd.read_parquet(RunFolder(out_dir).ensemble_oof)
    bars, funding = market_frames(cfg, settings, oof.index.min().to_pydatetime(), window.ts("interval_end"))
    costs = trading_decision(cfg).costs
    sims, signals, decided = trade_out_of_fold(oof, cfg, bars, funding)
    last = (oof["fold"] == oof["fold"].max()).to_numpy()
    result: dict[str, Any] = {"costs": asdict(costs), "min_probability": cfg.trade_min_probability,
                              "decision": decided}
    result["out_of_fold"] = sims
    result["gate_window"] = {name: simulate(pd.Series(sig[last], index=oof.index[last]), bars, funding, costs,
                                            cfg.bar_seconds) for name, sig in signals.items()}
    returns = pd.DataFrame({name: result["out_of_fold"][name].pop("net_returns") for name in ("ensemble", "momentum")})
    for part in ("out_of_fold", "gate_window"):
        for metrics in result[part].values():
            metrics.pop("net_returns", None)
    write_parquet(returns, RunFolder(out_dir).trading_returns)
    result = json_safe(result)
    path = RunFolder(out_dir).trading
    atomic_write_json(path, result)
    compact = {part: {name: {k: v for k, v in m.items() if k not in ("equity", "costs")}
                      for name, m in result[part].items()} for part in ("out_of_fold", "gate_window")}
    for name, m in compact["out_of_fold"].items():
        logger.info("trading %s (out-of-fold): return %.2f%%, Sharpe %.2f, max drawdown %.2f%%, %d trades, "
                    "%d bars skipped over candle gaps", name, 100 * m["total_return"], m["sharpe"],
                    100 * m["max_drawdown"], m["trades"], m["skipped_bars"])
    if decided:
        logger.info("trading decision: margin in round trips per fold %s, the deployed model's %s",
                    ", ".join(margin_words(m) for m in decided["margin_per_fold"].values()),
                    margin_words(decided["deployed_margin"]))
    return {**compact, "decision": result["decision"], "path": str(path)}


def _champion_evaluation(registry: ModelRegistry, cfg: RunConfig, window: RunWindow, settings: Settings,
                         out_dir: Path, oof: pd.DataFrame | None = None,
                         record_rows: int | None = None) -> dict[str, Any] | None:
    pointer = registry.production(cfg.model_name)
    if pointer is None:
        return None
    model, meta = registry.load(pointer.version)
    champion_model = registry.model_of(pointer.version)
    if champion_model != cfg.model_name:
        raise GateError(f"production of {cfg.model_name} points at {pointer.version} of {champion_model}: "
                        "refusing to compare models of different markets or targets")
    oof = pd.read_parquet(RunFolder(out_dir).ensemble_oof) if oof is None else oof
    spec = FeatureSpec.from_dict({k: v for k, v in meta["feature_spec"].items() if k != "sha256"})
    run_spec = json.loads(RunFolder(out_dir).feature_spec.read_text())
    if spec.sha256 == run_spec["sha256"]:
        # Same spec over the same window: this run's feature file already holds the champion's inputs.
        feats = pd.read_parquet(RunFolder(out_dir).features)
    else:
        store = open_store(settings)
        try:
            feats = feature_frame(store, cfg, spec, features_start(cfg, window), window.ts("interval_end"))
        finally:
            store.dispose()
    horizon = max(cfg.label_horizon_bars, 1)
    result = compare_with_champion(oof, model, meta, pointer.version, feats, horizon=horizon,
                                   random_state=cfg.random_state, window_start=window.interval_start,
                                   own_oof=own_record(registry, cfg.model_name, pointer.version, meta,
                                                      weeks=policy_from_config(cfg).record_weeks),
                                   level=policy_from_config(cfg).level, record_rows=record_rows)
    return {**result, "model": champion_model}


@timed_step("gate")
def gate(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path,
         assembled: dict[str, Any], trading: dict[str, Any] | None = None,
         request: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decide whether the candidate may replace production; write ``gate_decision.json``.

    The champion is the production version of the candidate's own registered model, scored on
    the candidate's out-of-fold rows that it never saw: those at or after the end of its
    training data (:func:`compare_with_champion`). ``request`` (a retrain monitoring asked for: ``{"as_of",
    "reason"}``) goes into the record.

    Raises:
        GateError: the production alias of this model names a version of another model.
    """
    registry = ModelRegistry.from_settings(settings)
    policy = policy_from_config(cfg)
    oof = pd.read_parquet(RunFolder(out_dir).ensemble_oof)
    lineage = registry.metadata(assembled["version"])
    returns = pd.read_parquet(RunFolder(out_dir).trading_returns) if trading else None
    judged = judge(policy, cfg, registry=registry, ledger=registry, version=assembled["version"], lineage=lineage,
                   oof=oof, returns=returns, trading=trading["out_of_fold"] if trading else None,
                   champion=lambda rows: _champion_evaluation(registry, cfg, window, settings, out_dir, oof,
                                                              record_rows=rows))
    decision, evidence, champion, deflated = judged.decision, judged.evidence, judged.champion, judged.deflated
    record = {**decision.to_dict(), "model": cfg.model_name, "policy": asdict(policy), "evidence": evidence,
              "champion_evaluation": champion, "candidate_gate_window": assembled["gate_window"],
              "candidate_out_of_fold": assembled["ensemble"], "baselines": assembled["baselines"],
              "trading": trading, "deflated_sharpe": deflated, "request": request,
              "require_approval": bool(cfg.require_approval), "approval_timeout_hours": cfg.approval_timeout_hours,
              "decided_at": datetime.now(UTC).isoformat(timespec="seconds")}
    record = json_safe(record)
    atomic_write_json(RunFolder(out_dir).gate_decision, record)
    # A rejection is the news of a green run: it is logged as a warning, above library chatter.
    level = logging.INFO if decision.passed else logging.WARNING
    logger.log(level, "gate %s: %s (candidate %s, champion %s)", cfg.model_name, decision.summary(),
               decision.candidate, decision.champion or "none")
    logger.log(level, "gate %s: %s", cfg.model_name, decision.deciding)
    for check in decision.checks:
        deciding = check.outcome == "failed"
        mark = {"passed": "ok  ", "failed": "FAIL", "not required": "no (not required)"}[check.outcome]
        logger.log(logging.WARNING if deciding else logging.INFO, "  %s %s: %s", mark, check.name, check.detail)
    return record


# -- 9. promote / keep -----------------------------------------------------------------------
def smoke_test(settings: Settings, model: str, as_of: datetime) -> dict[str, Any]:
    """Load ``model``'s production version through the serving loader and predict from the latest bars.

    Returns:
        The prediction as a dict.

    Raises:
        PipelineError: the prediction is not three finite probabilities summing to 1, or the
            model could not be loaded or could not predict (the cause is chained).
    """
    serving = ProductionModel(ModelRegistry.from_settings(settings), settings.market_db_url, model,
                              max_age_hours=None)
    try:
        prediction = serving.predict(as_of, log_as="smoke_test")
    except Exception as exc:
        raise PipelineError(f"smoke test failed: {type(exc).__name__}: {exc}") from exc
    finally:
        serving.registry.dispose()
    proba = np.array(list(prediction.probabilities.values()))
    if proba.shape != (3,) or not np.isfinite(proba).all() or abs(proba.sum() - 1) > 1e-6:
        raise PipelineError(f"smoke test failed: probabilities {prediction.probabilities}")
    return prediction.to_dict()


def promote(settings: Settings, decision: dict[str, Any], *, run_id: str, dag_id: str | None = None,
            as_of: datetime | None = None) -> dict[str, Any]:
    """Move the candidate's registered model's production to it after a passing decision; smoke-test it.

    The move is a compare-and-set: production must still be the champion the gate compared
    with. After the move, :func:`smoke_test` loads the new production model and predicts from
    the latest bars up to ``as_of``. If that fails, production goes back to
    :meth:`~include.registry.ModelRegistry.rollback_target` (ledger event ``auto_rollback``), or,
    on the model's first promotion, the alias is removed so that no broken model serves; then
    the error is raised.

    A candidate that is production already, moved by an earlier try of the same step, is not
    moved a second time; it is returned as promoted only when this run's passed smoke test of it
    is recorded (:meth:`~include.registry.ModelRegistry.record_smoke_test`). Otherwise the earlier
    try died before its smoke test ended (the worker was killed, then Airflow retried or a person
    cleared the task), so the smoke test runs now, with the same rollback on failure.

    Raises:
        PipelineError: the decision did not pass, or the smoke test failed (after the rollback).
        RegistryError: the candidate fails verification, or production moved since the gate
            decided; production is unchanged.
    """
    if not decision.get("passed"):
        raise PipelineError(f"refusing to promote {decision.get('candidate')}: gate did not pass")
    registry = ModelRegistry.from_settings(settings)
    try:
        current = registry.production(decision["model"])
        if (current is not None and current.version == decision["candidate"]
                and current.version != decision.get("champion")):
            # An earlier try of this step moved it (a batch's task retried after a crash): not twice.
            pointer = current
            smoke = registry.smoke_test_passed(current.model, current.version, run_id)
            logger.info("%s: %s is production already (an earlier try promoted it); its smoke test %s",
                        current.model, current.version, "passed then" if smoke else "did not finish: run it now")
        else:
            pointer = registry.promote(decision["candidate"], run_id=run_id, reason=decision["summary"],
                                       decision=decision, dag_id=dag_id, expected=decision.get("champion"))
            smoke = None
        model = pointer.model
        try:
            if smoke is None:
                smoke = smoke_test(settings, model, as_of or datetime.now(UTC))
                registry.record_smoke_test(model, pointer.version, run_id, smoke)
        except PipelineError as exc:
            target = registry.rollback_target(model)
            if target is not None:
                registry.rollback(model, target, run_id=run_id, dag_id=dag_id, event="auto_rollback",
                                  reason=f"post-promotion {exc}")
                raise PipelineError(f"{model}: {exc}; production rolled back to {target}") from exc
            registry.remove_alias(model, PRODUCTION, event="auto_rollback", run_id=run_id, dag_id=dag_id,
                                  reason=f"post-promotion {exc}; no earlier version to restore",
                                  expected=pointer.version)
            raise PipelineError(f"{model}: {exc}; production alias removed (no earlier version to restore): "
                                "the model has no production version") from exc
    finally:
        registry.dispose()
    previous = pointer.previous if pointer.previous is not None else decision.get("champion")
    logger.info("%s: promoted %s (previous %s); smoke test: %s", model, pointer.version, previous, smoke)
    return {"action": "promote", "model": model, "production": pointer.version, "previous": previous,
            "smoke_test": smoke}


def act(settings: Settings, decision: dict[str, Any], *, run_id: str, dag_id: str | None = None,
        as_of: datetime | None = None, approval: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply the gate's decision to production: :func:`promote`, :func:`demote` or :func:`keep`.

    The one place a decision becomes a move: the routine's step 7
    (:func:`~include.pipeline.routine.act_step`, which the DAG's ``promote_or_keep`` and ``run_once`` run).

    Args:
        decision: the gate's record (:func:`gate`).
        as_of: the latest bar time the promotion's smoke test predicts from.
        approval: the answer of a person asked to approve a passing decision (``chosen_options``,
            ``responded_by_user``, ``timed_out``, ``timeout_hours``), ``None`` when nobody was
            asked; anything but ``["Approve"]`` keeps production, with the answer as the reason.

    Returns:
        The move's record (``action``: ``promote``, ``demote`` or ``keep``).
    """
    if decision.get("passed"):
        if approval is None or approval.get("chosen_options") == ["Approve"]:
            return promote(settings, decision, run_id=run_id, dag_id=dag_id, as_of=as_of)
        who = approval.get("responded_by_user")
        who = (who.get("name") or who.get("id")) if isinstance(who, dict) else who
        why = (f"approval: no answer within {approval.get('timeout_hours'):g} h, rejected by default"
               if approval.get("timed_out") else f"approval: {approval.get('chosen_options')} by {who or 'a reviewer'}")
        return keep(settings, {**decision, "reasons": [why]}, run_id=run_id, dag_id=dag_id)
    if decision.get("action") == "demote":
        return demote(settings, decision, run_id=run_id, dag_id=dag_id)
    return keep(settings, decision, run_id=run_id, dag_id=dag_id)


def demote(settings: Settings, decision: dict[str, Any], *, run_id: str, dag_id: str | None = None) -> dict[str, Any]:
    """Take production away after a decision whose action is ``demote``: the champion's record is
    significantly worse than the class prior's and the challenger was not promoted. Production
    then serves no model (the class-prior forecast, no position) until a candidate passes.

    The move is a compare-and-set on the champion the gate judged; a retry after it was recorded
    records nothing again.

    Raises:
        PipelineError: the decision's action is not ``demote``.
        RegistryError: production moved since the gate decided (production unchanged).
    """
    if decision.get("action") != "demote":
        raise PipelineError(f"refusing to demote {decision.get('champion')}: the gate decided {decision.get('action')}")
    registry = ModelRegistry.from_settings(settings)
    model = decision["model"]
    try:
        registry.demote(model, run_id=run_id, dag_id=dag_id, decision=decision, expected=decision.get("champion"),
                        reason="; ".join(decision.get("reasons", [])) or decision.get("summary", ""))
    finally:
        registry.dispose()
    logger.warning("%s: DEMOTE production %s to no model (class-prior forecast, no position); candidate %s not "
                   "promoted because:\n  %s", model, decision.get("champion"), decision.get("candidate"),
                   "\n  ".join(decision.get("reasons") or [decision.get("summary", "")]))
    return {"action": "demote", "model": model, "production": None, "previous": decision.get("champion"),
            "rejected": decision.get("candidate")}


def keep(settings: Settings, decision: dict[str, Any], *, run_id: str, dag_id: str | None = None) -> dict[str, Any]:
    """Record that the model's production stays as it is after a failing (or unapproved) decision."""
    registry = ModelRegistry.from_settings(settings)
    model = decision["model"]
    registry.record_keep(model, decision.get("candidate"), run_id=run_id, dag_id=dag_id,
                         reason="; ".join(decision.get("reasons", [])) or decision.get("summary", ""),
                         decision=decision)
    pointer = registry.production(model)
    registry.dispose()
    logger.warning("%s: KEEP production %s; candidate %s not promoted because:\n  %s", model,
                   pointer.version if pointer else "none (the model has no production version)",
                   decision.get("candidate"),
                   "\n  ".join(decision.get("reasons") or [decision.get("summary", "")]))
    return {"action": "keep", "model": model, "production": pointer.version if pointer else None,
            "rejected": decision.get("candidate")}
