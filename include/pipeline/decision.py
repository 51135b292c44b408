"""Decision stages: trading simulation, the champion/challenger gate, promotion or keep."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.config import RunConfig, Settings
from include.errors import ConfigError, GateError, PipelineError, TrainingError
from include.features import FeatureSpec
from include.gate import GatePolicy, decide, instant
from include.pipeline.common import RunWindow, json_safe, open_store, timed_step, write_parquet
from include.pipeline.data import feature_frame, features_start
from include.registry import (
    PRODUCTION,
    ModelRegistry,
    atomic_write_json,
)

logger = logging.getLogger(__name__)

#: Per-bar net returns of the out-of-fold strategy and the momentum rule (the gate's trading tests).
TRADING_RETURNS = "trading_returns.parquet"

# -- 7. trading simulation -------------------------------------------------------------------
def trading_decision(cfg: RunConfig, margin: float = 0.0) -> Any:
    """The run's :class:`include.backtest.TradingDecision`: its costs, horizon and probability
    floor, with ``margin``."""
    from include.backtest import TradingDecision

    return TradingDecision.from_config(cfg.to_dict(), margin)


#: The out-of-fold columns the trading decision reads besides the forecast (written by
#: :func:`include.pipeline.training.assemble`).
DECISION_COLUMNS = ["move_down", "move_range", "move_up", "move_scale", "funding_rate"]


def forecast_positions(frame: pd.DataFrame, decision: Any, margins: np.ndarray | float | None = None) -> np.ndarray:
    """Positions of a forecast's rows under ``decision`` (:class:`include.backtest.TradingDecision`).

    Each row needs its forecast (``p_*``) and the decision's inputs (:data:`DECISION_COLUMNS`:
    its model's standardised class moves, the volatility scale and the last settled funding
    rate). A row without class moves (an out-of-fold record or a version registered without them)
    is traded by the decided-class rule: the prior-corrected class when its probability reaches
    ``decision.min_probability``
    (:func:`include.backtest.positions_from_proba`).

    Returns:
        ``(n,)`` positions in {-1, 0, +1}.
    """
    from include.backtest import positions_from_proba

    proba = frame[["p_down", "p_range", "p_up"]].to_numpy()
    legacy = positions_from_proba(proba, frame[["prior_down", "prior_range", "prior_up"]].to_numpy(),
                                  decision.min_probability)
    if not all(c in frame for c in DECISION_COLUMNS):
        return legacy
    moves = frame[DECISION_COLUMNS[:3]].to_numpy(dtype="float64")
    known = np.isfinite(moves).all(axis=1)
    decided = decision.positions(proba, np.nan_to_num(moves), frame["move_scale"].to_numpy(dtype="float64"),
                                 frame["funding_rate"].to_numpy(dtype="float64"), margin=margins)
    return np.where(known, decided, legacy)


def oof_signals(oof: pd.DataFrame, decision: Any, margins: np.ndarray | float | None = None) -> dict[str, np.ndarray]:
    """Target positions per out-of-fold bar of the gate's traded strategies: ``ensemble``
    (:func:`forecast_positions` with ``margins``) and ``momentum`` (the rule's class as a
    position)."""
    return {"ensemble": forecast_positions(oof, decision, margins),
            "momentum": oof["momentum"].to_numpy().astype(int) - 1}


def walk_forward_margins(oof: pd.DataFrame, decision: Any, net_return: Any) -> dict[str, Any]:
    """The decision's margin for each out-of-fold row, chosen on earlier folds only, and the
    deployed model's, chosen on every fold (:func:`include.backtest.choose_margin`).

    Args:
        oof: out-of-fold rows with ``fold`` and the decision's inputs.
        decision: the run's :class:`include.backtest.TradingDecision`.
        net_return: ``net_return(positions, rows)``: the after-cost return of trading
            ``positions`` on the rows selected by the boolean mask ``rows``.

    Returns:
        ``{"per_row": (n,) margins, "per_fold": {fold: margin}, "deployed": margin}``; the first
        fold has no earlier fold and trades at the smallest margin of the grid.
    """
    from include.backtest import MARGIN_GRID, choose_margin

    fold = oof["fold"].to_numpy()

    def score(margin: float, rows: np.ndarray) -> float:
        return net_return(forecast_positions(oof, decision, margin), rows)

    per_row, per_fold = np.zeros(len(oof)), {}
    for k in sorted(np.unique(fold)):
        earlier = fold < k
        chosen = choose_margin(lambda m, rows=earlier: score(m, rows)) if earlier.any() else MARGIN_GRID[0]
        per_fold[int(k)] = chosen
        per_row[fold == k] = chosen
    deployed = choose_margin(lambda m: score(m, np.ones(len(oof), dtype=bool)))
    return {"per_row": per_row, "per_fold": per_fold, "deployed": deployed}


def trade_out_of_fold(oof: pd.DataFrame, cfg: RunConfig, bars: pd.DataFrame, funding: pd.DataFrame | None
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], dict[str, Any] | None]:
    """Simulate the gate's strategies over a candidate's out-of-fold bars: what the trading step
    and the gate's replay both run.

    Strategies: ``ensemble`` (the cost-aware decision, each fold at the margin chosen on the
    folds before it, :func:`walk_forward_margins`), ``momentum``, ``flat`` and ``buy_and_hold``.

    Returns:
        ``(simulations, signals, decision)``: per strategy :func:`include.backtest.simulate`'s
        result over every out-of-fold bar (with ``net_returns``) and its ``(n,)`` positions, and
        the decision's record (``{"rule", "round_trip", "margin_per_fold", "deployed_margin"}``;
        ``None`` for a record without the decision's inputs).
    """
    from include.backtest import simulate

    decision = trading_decision(cfg)

    def net_return(positions: np.ndarray, rows: np.ndarray) -> float:
        traded = simulate(pd.Series(positions[rows], index=oof.index[rows]), bars, funding, decision.costs,
                          cfg.bar_seconds)
        return float(traded["net_returns"].sum())

    margins = walk_forward_margins(oof, decision, net_return) if all(c in oof for c in DECISION_COLUMNS) else None
    signals = {**oof_signals(oof, decision, None if margins is None else margins["per_row"]),
               "flat": np.zeros(len(oof), dtype=int), "buy_and_hold": np.ones(len(oof), dtype=int)}
    sims = {name: simulate(pd.Series(sig, index=oof.index), bars, funding, decision.costs, cfg.bar_seconds)
            for name, sig in signals.items()}
    record = None if margins is None else {
        "rule": "long or short where the expected move beats the round trip and funding by the margin",
        "round_trip": decision.round_trip, "margin_per_fold": margins["per_fold"],
        "deployed_margin": margins["deployed"]}
    return sims, signals, record


def market_frames(cfg: RunConfig, settings: Settings, start: datetime,
                  end: datetime) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The market's OHLCV bars and (perpetuals only, else ``None``) funding rates in
    ``[start, end)`` from the market store: what a trading simulation charges and earns."""
    store = open_store(settings)
    try:
        key = {"exchange": cfg.exchange, "symbol": cfg.symbol, "start": start, "end": end}
        bars = store.load_ohlcv(market_type=cfg.market_type, timeframe=cfg.timeframe, **key)
        funding = store.load_funding_rates(**key) if cfg.market_type == "perp" else None
    finally:
        store.dispose()
    return bars, funding


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
        the margins per fold and the deployed model's margin, which serving trades at.
    """
    from include.backtest import simulate

    oof = pd.read_parquet(out_dir / "ensemble_oof.parquet")
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
    write_parquet(returns, out_dir / TRADING_RETURNS)
    result = json_safe(result)
    path = out_dir / "trading.json"
    atomic_write_json(path, result)
    compact = {part: {name: {k: v for k, v in m.items() if k not in ("equity", "costs")}
                      for name, m in result[part].items()} for part in ("out_of_fold", "gate_window")}
    for name, m in compact["out_of_fold"].items():
        logger.info("trading %s (out-of-fold): return %.2f%%, Sharpe %.2f, max drawdown %.2f%%, %d trades, "
                    "%d bars skipped over candle gaps", name, 100 * m["total_return"], m["sharpe"],
                    100 * m["max_drawdown"], m["trades"], m["skipped_bars"])
    return {**compact, "decision": result["decision"], "path": str(path)}

# -- 8. gate ---------------------------------------------------------------------------------
def policy_from_config(cfg: RunConfig) -> GatePolicy:
    """The gate policy of a run's parameters."""
    return GatePolicy(alpha=cfg.gate_alpha, min_f1_margin=cfg.gate_min_f1_margin,
                      max_log_loss_ratio=cfg.gate_max_log_loss_ratio, min_sharpe_margin=cfg.gate_min_sharpe_margin,
                      max_drawdown=cfg.gate_max_drawdown, champion_alpha=cfg.gate_champion_alpha,
                      demote=cfg.gate_demote, required=tuple(cfg.gate_required_checks),
                      record_weeks=cfg.gate_record_weeks,
                      min_deflated_sharpe=cfg.gate_min_deflated_sharpe)


def candidate_evidence(policy: GatePolicy, oof: pd.DataFrame, returns: pd.DataFrame | None, *, horizon: int,
                       bar_seconds: int, random_state: int, earlier: pd.DataFrame | None = None) -> dict[str, Any]:
    """The skill tests of a candidate's out-of-fold record under ``policy``'s margins
    (:func:`include.significance.skill_evidence`); the gate and its replay call this alike.

    ``earlier`` (:func:`earlier_record`: the walk-forward forecasts earlier candidates of the same
    recipe recorded before ``oof``'s first row) joins the log-loss test: it runs on ``earlier``
    followed by ``oof``, and its result says how many rows came from each (``record_rows``,
    ``earlier_rows``, ``earlier_from``). The F1 and trading tests use ``oof`` alone.
    """
    from include.significance import N_RESAMPLES, log_loss_skill_test, skill_evidence

    evidence = skill_evidence(oof, returns, f1_margin=policy.min_f1_margin, log_loss_ratio=policy.max_log_loss_ratio,
                              sharpe_margin=policy.min_sharpe_margin, horizon=horizon,
                              bars_per_year=365.25 * 86_400 / bar_seconds, random_state=random_state,
                              n_resamples=resamples_for(policy.level),
                              # Recorded, not deciding: the default resolution is enough to show them.
                              f1_resamples=None if "beats_baselines_f1" in policy.required else N_RESAMPLES)
    rows = earlier if earlier is not None else oof.iloc[:0]
    if len(rows):
        record = pd.concat([rows[RECORD_COLUMNS], oof[RECORD_COLUMNS]])
        evidence["log_loss"] = log_loss_skill_test(
            record["label"].to_numpy().astype(int), record[RECORD_COLUMNS[1:4]].to_numpy(),
            record[RECORD_COLUMNS[4:]].to_numpy(), ratio=policy.max_log_loss_ratio, horizon=horizon,
            n_resamples=resamples_for(policy.level), random_state=random_state)
    evidence["log_loss"].update({"record_rows": int(len(oof) + len(rows)), "earlier_rows": int(len(rows)),
                                 "earlier_from": rows.index.min().isoformat() if len(rows) else None})
    return evidence


#: The columns of a walk-forward record row: the label, the forecast, the fold's class prior.
RECORD_COLUMNS = ["label", "p_down", "p_range", "p_up", "prior_down", "prior_range", "prior_up"]


def recipe(lineage: dict[str, Any]) -> str:
    """What makes two versions of a registered model the same recipe, as a sha256: the run
    parameters that shape the model (every field of its configuration but the gate's, the
    trading simulation's, approval and the run's own date and source) and the feature spec."""
    import hashlib

    from include.pipeline.training import NOT_MODEL_INPUTS

    raw = lineage.get("config") or {}
    # Every field, with its default where the lineage lacks it: a field added to RunConfig is no
    # new recipe. A configuration this code refuses is compared as stored.
    with contextlib.suppress(ConfigError, TypeError):
        raw = RunConfig.from_params(raw).to_dict()
    config = {k: v for k, v in raw.items() if not k.startswith(NOT_MODEL_INPUTS)}
    made_of = {"config": config, "feature_spec": (lineage.get("feature_spec") or {}).get("sha256")}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()


def earlier_record(registry: ModelRegistry, model: str, lineage: dict[str, Any], oof: pd.DataFrame, *,
                   weeks: int) -> pd.DataFrame:
    """The walk-forward forecasts that earlier candidates of the same recipe recorded in the
    ``weeks`` weeks before ``oof``'s first row: the candidate's shadow record.

    A candidate that is not promoted keeps counting: each weekly run registers its candidate with
    its out-of-fold record, each row forecast by a fold model fitted only on rows before it. Read
    backwards from the newest earlier version, each version contributes its rows before the
    earliest row taken so far (its oldest fold, the week before the next version's record
    begins), so the record is a contiguous walk-forward history with no bar twice. With the
    rolling scheme and the fit cache a fold's fit is the one the same rows gave every version
    (with ``fitted`` or ``stacking`` weighting an oldest fold is combined with the configured
    weights). Every row was forecast out of sample, by a model of the same recipe
    (:func:`recipe`); under "no skill" each row's expected log loss is no lower than the
    prior's, so the test on the longer record keeps its level, and where there is an edge its
    power grows week by week, up to ``weeks`` weeks of extra rows.

    Args:
        model: the registered model.
        lineage: the candidate's lineage (its configuration, feature spec and
            ``data_window.trained_until``).
        oof: the candidate's out-of-fold rows.
        weeks: how far back the record reaches before ``oof``'s first row (0: nothing).

    Returns:
        :data:`RECORD_COLUMNS` rows, oldest first, all before ``oof.index.min()``; empty when no
        earlier version of the recipe has rows there. Versions whose artifacts retention removed
        are skipped.
    """
    from include.errors import RegistryError

    if weeks <= 0 or not len(oof):
        return pd.DataFrame(columns=RECORD_COLUMNS)
    first = oof.index.min()
    since = first - pd.Timedelta(weeks=weeks)
    trained_until = instant(lineage["data_window"]["trained_until"])
    mine = recipe(lineage)
    parts: list[pd.DataFrame] = []
    earliest = first
    for version in reversed(registry.versions(model)):
        if earliest <= since:
            break
        try:
            meta = registry.metadata(version)
            if (instant(meta["data_window"]["trained_until"]) >= trained_until or recipe(meta) != mine):
                continue
            rows = registry.out_of_fold(version)
        except (RegistryError, KeyError) as exc:
            logger.warning("shadow record of %s: version %s left out: %s", model, version, exc)
            continue
        if rows is None or not len(rows) or not set(RECORD_COLUMNS) <= set(rows.columns):
            logger.info("shadow record of %s: version %s has no out-of-fold record to add", model, version)
            continue
        rows = rows[(rows.index < earliest) & (rows.index >= since)]
        if len(rows):
            parts.append(rows[RECORD_COLUMNS])
            earliest = rows.index.min()
    if not parts:
        return pd.DataFrame(columns=RECORD_COLUMNS)
    return pd.concat(parts[::-1]).sort_index()


def compare_with_champion(oof: pd.DataFrame, champion: Any, meta: dict[str, Any], version: str,
                          features: pd.DataFrame, *, horizon: int, random_state: int,
                          window_start: str, own_oof: pd.DataFrame | None = None,
                          level: float | None = None, record_rows: int | None = None) -> dict[str, Any]:
    """Score the champion on the challenger's out-of-fold rows where both are out of sample.

    The rows are every out-of-fold row (all walk-forward folds, not only the gate window) at or
    after the end of the champion's training data (``data_window.trained_until``): the
    challenger's fold models never saw them by construction, the champion was fitted before
    them. With a champion several weeks old they span several weeks.

    Args:
        oof: the challenger's out-of-fold rows.
        champion, meta, version: the champion model, its lineage and id.
        features: feature rows covering ``oof``'s index, with the champion's feature columns.
        window_start: the run's data interval start (ISO), for the record.
        own_oof: the champion's registered out-of-fold record, for :func:`champion_record_test`.
        level: the gate's weekly level; ``None`` leaves the record test out (``record`` ``None``).
        record_rows: the challenger's row budget for the record test (the rows of its log-loss
            test, :func:`candidate_evidence`); ``None``: ``len(oof)``.

    Returns:
        The ``champion`` input of :func:`include.gate.decide`: ``{"version", "trained_until",
        "window_start", "compared_from", "rows_out_of_sample", "comparison", "live",
        "metrics", "challenger_metrics", "last_training_row", "record"}``.
    """
    from include.significance import champion_evidence

    trained_until = meta["data_window"]["trained_until"]
    compared_from = instant(trained_until).astimezone(UTC)
    rows = oof[oof.index >= pd.Timestamp(compared_from)]
    result: dict[str, Any] = {"version": version, "trained_until": trained_until, "window_start": window_start,
                              "compared_from": compared_from.isoformat(), "rows_out_of_sample": int(len(rows)),
                              "comparison": None, "live": None, "metrics": None, "record": None,
                              "last_training_row": (meta["data_window"].get("last_training_row")
                                                    or meta["data_window"].get("last_labelled_bar"))}
    proba = (champion.predict_proba(features.loc[rows.index, list(meta["feature_spec"]["names"])]) if len(rows)
             else np.empty((0, 3)))
    if level is not None:
        result["record"] = champion_record_test(own_oof, rows, proba, np.asarray(champion.class_prior_),
                                                n=record_rows or len(oof),
                                                horizon=horizon, level=level, random_state=random_state)
    if len(rows):
        result.update(champion_evidence(rows, proba, np.asarray(champion.class_prior_), horizon=horizon,
                                        random_state=random_state))
    return result


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
    oof = pd.read_parquet(out_dir / "ensemble_oof.parquet") if oof is None else oof
    spec = FeatureSpec.from_dict({k: v for k, v in meta["feature_spec"].items() if k != "sha256"})
    run_spec = json.loads((out_dir / "feature_spec.json").read_text())
    if spec.sha256 == run_spec["sha256"]:
        # Same spec over the same window: this run's feature file already holds the champion's inputs.
        feats = pd.read_parquet(out_dir / "features.parquet")
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


def own_record(registry: ModelRegistry, model: str, version: str, lineage: dict[str, Any], *,
               weeks: int) -> pd.DataFrame | None:
    """A registered version's own walk-forward record: its shadow record (:func:`earlier_record`)
    followed by its out-of-fold rows; what :func:`champion_record_test` judges a champion on, so
    that it has as many rows as the challenger it meets. ``None`` for a version registered without
    an out-of-fold record."""
    oof = registry.out_of_fold(version)
    if oof is None or not len(oof):
        return oof
    earlier = earlier_record(registry, model, lineage, oof, weeks=weeks)
    return pd.concat([earlier, oof[RECORD_COLUMNS]]) if len(earlier) else oof


def champion_record_test(own_oof: pd.DataFrame | None, live: pd.DataFrame, live_proba: np.ndarray,
                         prior: np.ndarray, *, n: int, horizon: int, level: float,
                         random_state: int) -> dict[str, Any] | None:
    """Test H1 "the champion's mean log loss is above the class prior's" on its record, with the
    challenger's row budget (check 8 of :mod:`include.gate`).

    The champion's record is its own walk-forward record (its shadow record and out-of-fold rows
    from the run that registered it, rows before its live ones, :func:`own_record`) followed by
    its live rows (forecasts on rows after its training data); the test uses the most recent
    ``n`` of them, ``n`` being the rows of the challenger's log-loss test, so that the champion is
    judged on as many rows, by the same block bootstrap, at the
    same level as a challenger is, and not, as a test on its few live rows would, declared
    without skill for want of rows.

    Args:
        own_oof: the champion's own walk-forward record (:func:`own_record`: ``label``, ``p_*``,
            ``prior_*`` columns), or ``None`` when it was registered without one.
        live: the challenger's out-of-fold rows after the champion's training data (``label``).
        live_proba: ``(len(live), 3)`` the champion's forecasts on them.
        prior: ``(3,)`` the champion's training class frequencies, its reference on live rows.
        n: the row budget (the rows of the challenger's log-loss test, its shadow record included).
        horizon: label horizon in bars (shortest bootstrap block).
        level: the gate's weekly level (sets the number of resamples, :func:`resamples_for`).

    Returns:
        :func:`include.significance.mean_below_zero_test` of prior-minus-champion per-row log
        loss, with ``log_loss``, ``reference_log_loss``, ``n`` and ``live_rows``; ``None`` when
        the record is too short to test.
    """
    from include.evaluation import log_loss_rows
    from include.significance import block_length, mean_below_zero_test

    cols, priors = ["p_down", "p_range", "p_up"], ["prior_down", "prior_range", "prior_up"]
    y_parts, own_parts, ref_parts = [], [], []
    if own_oof is not None and len(own_oof):
        older = own_oof[own_oof.index < live.index.min()] if len(live) else own_oof
        y = older["label"].to_numpy().astype(int)
        y_parts.append(y)
        own_parts.append(log_loss_rows(y, older[cols].to_numpy()))
        ref_parts.append(log_loss_rows(y, older[priors].to_numpy()))
    if len(live):
        y = live["label"].to_numpy().astype(int)
        y_parts.append(y)
        own_parts.append(log_loss_rows(y, live_proba))
        ref_parts.append(log_loss_rows(y, np.tile(prior, (len(live), 1))))
    if not y_parts:
        return None
    own, ref = np.concatenate(own_parts)[-n:], np.concatenate(ref_parts)[-n:]
    diff = ref - own  # below zero when the champion loses more than the prior
    try:
        test = mean_below_zero_test(diff, block=block_length(diff, horizon), n_resamples=resamples_for(level),
                                    random_state=random_state)
    except TrainingError:
        return None
    return {**test, "log_loss": float(own.mean()), "reference_log_loss": float(ref.mean()),
            "live_rows": int(min(len(live), len(own)))}


def resamples_for(level: float) -> int:
    """Bootstrap resamples enough to resolve p-values at ``level``: at least 20 / level (so that a
    p-value at the level rests on about 20 resamples beyond it), and never fewer than the
    default (:data:`include.significance.N_RESAMPLES`)."""
    from include.significance import N_RESAMPLES

    return max(N_RESAMPLES, math.ceil(20 / level))

def deflated_sharpe_record(registry: ModelRegistry, model: str, candidate: str,
                           strategy: dict[str, Any], bar_seconds: int,
                           tuning_sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """The candidate's deflated Sharpe ratio, counting every candidate evaluated for ``model``.

    The trials are the distinct candidates of the model's earlier gate decisions (the ledger's
    promote and keep entries, with their out-of-fold trading record), this one, and every trial
    of the hyperparameter studies whose sets the candidate's members use (their completed
    trials' per-bar Sharpe ratios join the variance): N of them, ``V`` the variance of their
    per-bar Sharpe ratios (Bailey & López de Prado 2014; see
    :func:`include.backtest.deflated_sharpe_ratio`).

    Args:
        strategy: the candidate's out-of-fold ``ensemble`` trading metrics (``sharpe_per_bar``,
            ``bars``, ``skew``, ``kurtosis``).
        tuning_sets: the candidate's ``hyperparameter_sets`` lineage (family -> set record with
            ``n_trials`` and ``trial_sharpes``, or ``None`` for defaults).

    Returns:
        ``{"value", "n_trials", "trials_variance", "expected_max_sharpe", "sharpe_per_bar"}``
        (per-bar units); ``value`` is NaN when the strategy's returns have no variance.
    """
    import math

    per_year = 365.25 * 86_400 / bar_seconds
    trials: dict[str, float] = {}
    for event in registry.ledger(model):
        decided = event.get("decision") or {}
        version = decided.get("candidate")
        ens = ((decided.get("trading") or {}).get("out_of_fold") or {}).get("ensemble") or {}
        if version and version != candidate and ens.get("sharpe") is not None:
            trials[version] = ens.get("sharpe_per_bar", ens["sharpe"] / math.sqrt(per_year))
    earlier, unscored = list(trials.values()), 0
    for used in (tuning_sets or {}).values():
        if used:
            sharpes = [float(v) for v in used.get("trial_sharpes") or []]
            earlier += sharpes
            unscored += max(int(used.get("n_trials") or 0) - len(sharpes), 0)
    return deflated_sharpe_of(strategy, earlier, bar_seconds, unscored_trials=unscored)


def deflated_sharpe_of(strategy: dict[str, Any], earlier: list[float], bar_seconds: int,
                       unscored_trials: int = 0) -> dict[str, Any]:
    """The deflated Sharpe ratio of ``strategy`` among ``earlier`` trials' per-bar Sharpe ratios
    and its own (Bailey & López de Prado 2014; :func:`include.backtest.deflated_sharpe_ratio`).
    ``unscored_trials`` (pruned or failed tuning trials, with no Sharpe ratio) add to N only.

    Returns:
        ``{"value", "n_trials", "trials_variance", "expected_max_sharpe", "sharpe_per_bar"}``
        (per-bar units); ``value`` is NaN when the strategy's returns have no variance.
    """
    import math

    from include.backtest import deflated_sharpe_ratio, expected_max_sharpe

    per_year = 365.25 * 86_400 / bar_seconds
    sharpe = float(strategy.get("sharpe_per_bar", strategy.get("sharpe", 0.0) / math.sqrt(per_year)))
    values = [*earlier, sharpe]
    variance = float(np.var(values, ddof=1)) if len(values) > 1 else 0.0
    skew, kurt = strategy.get("skew"), strategy.get("kurtosis")
    n_trials = len(values) + unscored_trials
    value = (deflated_sharpe_ratio(sharpe, int(strategy.get("bars", 0)), skew, kurt, n_trials, variance)
             if skew is not None and kurt is not None and skew == skew and kurt == kurt else float("nan"))
    return {"value": value, "n_trials": n_trials, "trials_variance": variance,
            "expected_max_sharpe": expected_max_sharpe(n_trials, variance), "sharpe_per_bar": sharpe}


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
    oof = pd.read_parquet(out_dir / "ensemble_oof.parquet")
    lineage = registry.metadata(assembled["version"])
    earlier = earlier_record(registry, cfg.model_name, lineage, oof, weeks=policy.record_weeks)
    returns = pd.read_parquet(out_dir / TRADING_RETURNS) if trading else None
    evidence = candidate_evidence(policy, oof, returns,
                                  horizon=max(cfg.label_horizon_bars, 1), bar_seconds=cfg.bar_seconds,
                                  random_state=cfg.random_state, earlier=earlier)
    champion = _champion_evaluation(registry, cfg, window, settings, out_dir, oof,
                                    record_rows=evidence["log_loss"]["record_rows"])
    deflated = (deflated_sharpe_record(registry, cfg.model_name, assembled["version"],
                                       trading["out_of_fold"]["ensemble"], cfg.bar_seconds,
                                       lineage.get("hyperparameter_sets"))
                if trading else None)
    decision = decide(policy, candidate_version=assembled["version"], evidence=evidence, champion=champion,
                      trading=trading["out_of_fold"] if trading else None, deflated=deflated)
    record = {**decision.to_dict(), "model": cfg.model_name, "policy": asdict(policy), "evidence": evidence,
              "champion_evaluation": champion, "candidate_gate_window": assembled["gate_window"],
              "candidate_out_of_fold": assembled["ensemble"], "baselines": assembled["baselines"],
              "trading": trading, "deflated_sharpe": deflated, "request": request,
              "require_approval": bool(cfg.require_approval), "approval_timeout_hours": cfg.approval_timeout_hours,
              "decided_at": datetime.now(UTC).isoformat(timespec="seconds")}
    record = json_safe(record)
    atomic_write_json(out_dir / "gate_decision.json", record)
    # A rejection is the news of a green run: it is logged as a warning, above library chatter.
    level = logging.INFO if decision.passed else logging.WARNING
    logger.log(level, "gate %s: %s (candidate %s, champion %s)", cfg.model_name, decision.summary(),
               decision.candidate, decision.champion or "none")
    logger.log(level, "gate %s: %s", cfg.model_name, decision.deciding)
    for check in decision.checks:
        deciding = not check.passed and check.required
        mark = "ok  " if check.passed else "FAIL" if check.required else "no (not required)"
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
    from include.serving import ProductionModel

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

    The one place a decision becomes a move: the DAG's ``promote_or_keep`` and
    :func:`~include.pipeline.publication.run_once` both call it.

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
