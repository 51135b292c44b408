"""The gate's own track record, and a replay of the gate over a model's registered versions.

For one registered model, every registered version (ordered by the end of its training data
``T_k``) is scored **forward**, on the bars of the week it would serve: ``[T_k, T_{k+1})``, with
labels the market revealed afterwards. Three policies choose which version serves each week:

* ``production``: the version the registry's production alias named at ``T_k`` (the chain the
  gate actually built), next to what that version promised (its out-of-fold log loss);
* ``newest``: always deploy the newest candidate (version ``k`` serves week ``k``);
* ``never_retrain``: deploy the first version and keep it.

:func:`replay` re-runs the gate week by week over the same versions with another
:class:`~include.gate.GatePolicy`: each candidate's registered out-of-fold record is re-tested
(:func:`include.gate.evidence.candidate_evidence`, the same code as the gate) and compared
with the replayed chain's champion (:func:`include.gate.evidence.compare_with_champion`),
so a team sees what a policy would have done before turning it on. Replaying the policy a
backfill ran with reproduces its decisions.

Per policy the record gives the forward log loss and macro F1 over all weeks served (each row
scored by the version serving it), the after-cost Sharpe ratio of trading the served forecasts
(:mod:`include.backtest`), and the mean age of the model in production. Weeks before the chain's
first promotion have no production model: a consumer then has only base rates, so such a week is
scored as the class-prior forecast with no position, and every policy is scored on every week
whose labels are known.

Command line::

    python -m include.track_record record --model binance-btcusdt-perp-1h-h4
    python -m include.track_record replay --model binance-btcusdt-perp-1h-h4 --set alpha=0.1

Both write ``<registry>/track_record/<model>.json``, which the Models page shows.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from include.backtest import TradingDecision, simulate, standardised_moves
from include.config import RunConfig, Settings
from include.data.store import open_store
from include.errors import PipelineError
from include.feature_store import feature_frame
from include.features import FeatureSpec, complete_rows
from include.gate import GatePolicy, instant
from include.gate.evidence import compare_with_champion, judge, own_record, policy_from_config
from include.identity import bars_per_year
from include.labels import make_labels
from include.registry import ModelRegistry, atomic_write_json
from include.significance import sharpe_skill_test
from include.trading import deployed_decision, forecast_positions, trade_out_of_fold
from include.training import metrics_with_prior

logger = logging.getLogger(__name__)

POLICIES = ("production", "newest", "never_retrain")


@dataclass
class Version:
    """One registered version, as the track record needs it."""

    version: str
    trained_until: datetime
    lineage: dict[str, Any]
    model: Any = None


@dataclass
class MarketData:
    """Every input of forward scoring and replay for one model, loaded once.

    Attributes:
        features: feature frame per feature-spec digest, indexed by bar open time.
        labels: label per bar (NaN where the future is not known yet).
        bars, funding: candles and funding settlements (``timestamp`` column).
        move_scale: the label rule's volatility scale per bar (the trading decision's unit,
            :func:`include.backtest.standardised_moves`).
    """

    cfg: RunConfig
    features: dict[str, pd.DataFrame]
    labels: pd.Series
    bars: pd.DataFrame
    funding: pd.DataFrame | None
    move_scale: pd.Series


def recorded_config(config: dict[str, Any]) -> RunConfig:
    """The run parameters a version was trained and decided with, from its lineage's ``config``.

    A parameter the lineage does not record takes its default, except where the default has
    changed what a decision does: a lineage recorded before ``trade_may_stay_flat`` existed
    chose its margins without "flat", so its replay does too.

    Raises:
        ConfigError: a recorded value is no longer valid.
    """
    return RunConfig.from_params({"trade_may_stay_flat": False, **config})


def _versions(registry: Any, model: str) -> list[Version]:
    out = []
    for version in registry.versions(model):
        lineage = registry.metadata(version)
        out.append(Version(version, instant(lineage["data_window"]["trained_until"]).astimezone(UTC), lineage))
    return sorted(out, key=lambda v: v.trained_until)


def _load(registry: Any, v: Version) -> Any:
    if v.model is None:
        v.model, _ = registry.load(v.version)
    return v.model


def load_market(settings: Settings, versions: list[Version], end: datetime) -> MarketData:
    """Features (one frame per feature spec), labels, candles and funding from the first
    version's earliest out-of-fold row to ``end``.

    Raises:
        PipelineError: no versions.
    """
    if not versions:
        raise PipelineError("no registered versions to score")
    cfg = RunConfig.from_params(versions[0].lineage["config"])
    start = versions[0].trained_until - timedelta(days=7 * (cfg.cv_folds + 1))
    store = open_store(settings)
    try:
        features = {}
        for v in versions:
            spec_dict = {k: val for k, val in v.lineage["feature_spec"].items() if k != "sha256"}
            spec = FeatureSpec.from_dict(spec_dict)
            if spec.sha256 not in features:
                features[spec.sha256] = feature_frame(store, cfg, spec, start, end)
        key = {"exchange": cfg.exchange, "symbol": cfg.symbol}
        bars = store.load_ohlcv(market_type=cfg.market_type, timeframe=cfg.timeframe, start=start,
                                end=end + timedelta(days=2), **key)
        funding = (store.load_funding_rates(start=start, end=end + timedelta(days=2), **key)
                   if cfg.market_type == "perp" else None)
    finally:
        store.dispose()
    closes = bars.set_index("timestamp")["close"].astype("float64")
    labels = make_labels(closes, horizon=cfg.label_horizon_bars, mode=cfg.label_threshold_mode,
                         threshold=cfg.label_threshold, vol_window=cfg.label_vol_window_bars)
    scale, _ = standardised_moves(closes, horizon=cfg.label_horizon_bars, vol_window=cfg.label_vol_window_bars)
    return MarketData(cfg, features, labels, bars, funding, scale)


def _features_of(data: MarketData, v: Version) -> pd.DataFrame:
    spec = FeatureSpec.from_dict({k: val for k, val in v.lineage["feature_spec"].items() if k != "sha256"})
    return data.features[spec.sha256]


def _slice(frame: pd.DataFrame | None, start: Any, end: Any) -> pd.DataFrame | None:
    if frame is None:
        return None
    ts = frame["timestamp"]
    return frame[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))]


# -- replay ----------------------------------------------------------------------------------
class _LedgerBefore:
    """A model's ledger cut where the live gate read it for each version it decided.

    Args:
        entries: the model's ledger, oldest first (:meth:`~include.registry.ModelRegistry.ledger`).
        versions: the model's versions in replay order.
    """

    def __init__(self, entries: list[dict[str, Any]], versions: list[Version]) -> None:
        self.entries = entries
        self.order = {v.version: k for k, v in enumerate(versions)}

    def _decided(self, entry: dict[str, Any]) -> str | None:
        return (entry.get("decision") or {}).get("candidate")

    def before(self, v: Version) -> _Ledger:
        """The entries the live gate had when it decided ``v``: those before ``v``'s first decision;
        for a version the gate never decided, those before the first decision of a later version."""
        cut = next((i for i, e in enumerate(self.entries) if self._decided(e) == v.version), None)
        if cut is None:
            rank = self.order[v.version]
            cut = next((i for i, e in enumerate(self.entries) if self.order.get(self._decided(e) or "", -1) > rank),
                       len(self.entries))
        return _Ledger(self.entries[:cut])


class _Ledger:
    """A registry as :func:`include.gate.evidence.deflated_sharpe_record` reads it, whose ledger
    is a given list of entries."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries

    def ledger(self, model: str | None = None) -> list[dict[str, Any]]:
        """The entries, oldest first."""
        return list(self.entries)


def _trading_evidence(v: Version, oof: pd.DataFrame, cfg: RunConfig, data: MarketData,
                      cache: dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Version ``v``'s out-of-fold trading simulation, as its run's own read it: ``(summaries per
    strategy, per-bar net returns per strategy)``. It does not depend on the gate policy, so one
    ``cache`` serves every replay of :func:`track_record`."""
    if cache is not None and v.version in cache:
        sims, returns = cache[v.version]
        return {name: dict(sim) for name, sim in sims.items()}, returns
    # The trading simulation over exactly the candles the run's own simulation read.
    bars = _slice(data.bars, oof.index.min(), v.trained_until)
    funding = _slice(data.funding, oof.index.min(), v.trained_until)
    sims, _, _ = trade_out_of_fold(oof, cfg, bars, funding)
    returns = pd.DataFrame({name: sim.pop("net_returns") for name, sim in sims.items()})
    if cache is not None:
        cache[v.version] = (sims, returns)
    return {name: dict(sim) for name, sim in sims.items()}, returns


def replay(registry: Any, data: MarketData, versions: list[Version],
           policy: GatePolicy | None, trading_cache: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Re-run the gate over ``versions`` in order with ``policy``.

    Each candidate is re-tested on its registered out-of-fold record and compared with the
    replayed chain's production version, as :func:`include.pipeline.decision.gate` does. Its
    deflated Sharpe ratio is the live gate's: :func:`include.gate.evidence.deflated_sharpe_record`
    over the model's ledger as it stood when the live gate decided the version (every candidate
    decided before it) and the trials of the hyperparameter sets its members use. The trials a
    selection drew from do not depend on the policy replayed, so neither does this count.

    Args:
        policy: the policy to replay; ``None`` replays each version with the policy its own run
            used (from its lineage's configuration), which reproduces the decisions taken.
        trading_cache: versions' trading simulations from an earlier replay over the same data
            (:func:`_trading_evidence`), filled as they are computed.

    Returns:
        One ``{"version", "trained_until", "passed", "action", "champion", "summary", "deciding",
        "deflated_sharpe"}`` per version; ``action`` is ``promote``, ``keep``, ``demote`` (the
        replayed chain then serves no model until a later promotion) or ``skipped`` (a version
        without a registered out-of-fold record).
    """
    production: Version | None = None
    decisions = []
    ledgers: dict[str, _LedgerBefore] = {}
    for v in versions:
        oof = registry.out_of_fold(v.version)
        if oof is None:
            decisions.append({"version": v.version, "trained_until": v.trained_until.isoformat(), "passed": None,
                              "action": "skipped", "champion": production.version if production else None,
                              "summary": "no out-of-fold record registered with this version"})
            continue
        cfg = recorded_config(v.lineage["config"])
        used = policy if policy is not None else policy_from_config(cfg)
        if policy is None and "gate_record_weeks" not in v.lineage["config"]:
            used = replace(used, record_weeks=0)  # its run's configuration has no shadow record
        sims, returns = _trading_evidence(v, oof, cfg, data, trading_cache)
        if cfg.model_name not in ledgers:
            ledgers[cfg.model_name] = _LedgerBefore(registry.ledger(cfg.model_name), versions)

        def champion(rows: int, v: Version = v, used: GatePolicy = used, cfg: RunConfig = cfg,
                     oof: pd.DataFrame = oof, production: Version | None = production) -> dict[str, Any] | None:
            return _replayed_champion(registry, data, production, v, cfg, used, oof, rows)

        judged = judge(used, cfg, registry=registry, ledger=ledgers[cfg.model_name].before(v), version=v.version,
                       lineage=v.lineage, oof=oof, returns=returns, trading={"ensemble": sims["ensemble"]},
                       champion=champion)
        decision, deflated = judged.decision, judged.deflated
        decisions.append({"version": v.version, "trained_until": v.trained_until.isoformat(),
                          "passed": decision.passed, "action": decision.action,
                          "champion": production.version if production else None, "summary": decision.summary(),
                          "deciding": decision.deciding, "deflated_sharpe": deflated})
        if decision.action == "promote":
            production = v
        elif decision.action == "demote":
            production = None
    return decisions


def _replayed_champion(registry: Any, data: MarketData, production: Version | None, v: Version, cfg: RunConfig,
                       policy: GatePolicy, oof: pd.DataFrame, record_rows: int) -> dict[str, Any] | None:
    """The replayed chain's production version compared with candidate ``v`` on ``record_rows``
    rows (:func:`include.gate.evidence.compare_with_champion`); ``None`` while it has none."""
    if production is None:
        return None
    return compare_with_champion(oof, _load(registry, production), production.lineage, production.version,
                                 _features_of(data, production), horizon=max(cfg.label_horizon_bars, 1),
                                 random_state=cfg.random_state, window_start=v.lineage["data_window"]["interval_start"],
                                 own_oof=own_record(registry, cfg.model_name, production.version, production.lineage,
                                                    weeks=policy.record_weeks),
                                 level=policy.level, record_rows=record_rows)


# -- forward record --------------------------------------------------------------------------
def _forward(registry: Any, data: MarketData, v: Version, start: datetime, end: datetime) -> pd.DataFrame:
    """Version ``v``'s forecasts on the labelled bars of ``[start, end)``: ``p_*``, ``label``,
    the class prior, the trading decision's inputs and the ``position`` it gives (``v``'s own
    costs, probability floor and deployed margin)."""
    feats = _features_of(data, v)
    names = list(v.lineage["feature_spec"]["names"])
    rows = feats[(feats.index >= pd.Timestamp(start)) & (feats.index < pd.Timestamp(end))]
    rows = rows[complete_rows(rows, names)]
    labels = data.labels.reindex(rows.index)
    known = labels.notna().to_numpy()
    rows = rows[known]
    model = _load(registry, v)
    proba = model.predict_proba(rows[names]) if len(rows) else np.zeros((0, 3))
    out = pd.DataFrame(proba, columns=["p_down", "p_range", "p_up"], index=rows.index)
    out["label"] = labels[known].astype(int).to_numpy()
    out[["prior_down", "prior_range", "prior_up"]] = np.asarray(model.class_prior_, dtype="float64")
    # The trading decision's inputs: the version's class moves, the bar's volatility scale and
    # funding rate, and the margin the version's gate decision chose for it.
    moves = (v.lineage.get("trading") or {}).get("class_moves")
    out[["move_down", "move_range", "move_up"]] = np.asarray(moves if moves else [np.nan] * 3, dtype="float64")
    out["move_scale"] = data.move_scale.reindex(out.index).to_numpy()
    out["funding_rate"] = rows["funding_rate"].to_numpy() if "funding_rate" in rows else np.nan
    decided = registry.decision_of(v.lineage.get("registered_model") or registry.model_of(v.version), v.version)
    # The position serving gave: this version's own decision (costs, floor, margin, meta-label model).
    out["position"] = forecast_positions(out, deployed_decision(v.lineage["config"], decided,
                                                                v.lineage.get("trading")))
    out["served"] = True
    return out


def _unserved(newest: pd.DataFrame) -> pd.DataFrame:
    """A week without a production model: the newest version's class prior as the forecast (what
    a consumer knows without a model), and no position."""
    out = newest.copy()
    out[["p_down", "p_range", "p_up"]] = out[["prior_down", "prior_range", "prior_up"]].to_numpy()
    out["served"] = False
    return out


def _score(frames: list[pd.DataFrame], data: MarketData) -> dict[str, Any]:
    """Forward log loss, macro F1 and after-cost trading of concatenated served forecasts.

    Returns:
        ``{"rows", "log_loss", "macro_f1", "sharpe", "total_return", "max_drawdown",
        "psr_vs_flat", "net_returns"}`` (``{"rows": 0}`` for no rows); ``net_returns`` is the
        simulation's per-bar net return indexed by the forecast's bar (a Series, fraction of
        equity, not JSON): the series ``sharpe`` and ``total_return`` summarise.
        ``psr_vs_flat`` is the probabilistic Sharpe ratio of those returns against flat (a
        Sharpe ratio of 0; Bailey & López de Prado 2012, :func:`include.significance.sharpe_skill_test`):
        the probability that the record's true Sharpe ratio is above zero, ``None`` for a
        record that never traded.
    """
    frame = pd.concat(frames).sort_index()
    if frame.empty:
        return {"rows": 0}
    y, proba = frame["label"].to_numpy(), frame[["p_down", "p_range", "p_up"]].to_numpy()
    prior = frame[["prior_down", "prior_range", "prior_up"]].to_numpy()
    metrics = metrics_with_prior(y, proba, prior)
    cfg = data.cfg
    # Each served row's position is its version's decision (:func:`_forward`); weeks without a
    # production model: the class-prior forecast, and no position.
    positions = np.where(frame["served"].to_numpy(), frame["position"].to_numpy(), 0)
    sim = simulate(pd.Series(positions, index=frame.index), data.bars, data.funding,
                   TradingDecision.from_config(cfg.to_dict()).costs, cfg.bar_seconds)
    psr = sharpe_skill_test(sim["net_returns"].to_numpy(), bars_per_year=bars_per_year(cfg.bar_seconds))
    return {"rows": int(len(frame)), "log_loss": metrics["log_loss"], "macro_f1": metrics["macro_f1"],
            "sharpe": sim["sharpe"], "total_return": sim["total_return"], "max_drawdown": sim["max_drawdown"],
            "psr_vs_flat": psr["probabilistic_sharpe"], "net_returns": sim["net_returns"]}


def production_after(registry: Any, model: str) -> dict[str, str | None]:
    """For each version the gate decided on, the production version right after that decision.

    Read from the ledger in order (promotions, keeps, rollbacks), not from the events' wall-clock
    times: a backfill decides a year of weeks within hours.
    """
    current: str | None = None
    after: dict[str, str | None] = {}
    for event in registry.ledger(model):
        if event["event"] != "keep":
            current = event["to"]
        decided = event["candidate"] or event["to"]
        if decided:
            after[decided] = current
    return after


def _base_chains(registry: Any, model: str, versions: list[Version]) -> dict[str, list[Version | None]]:
    """The version each of :data:`POLICIES` serves in each version's week (``None``: no model).

    ``production`` follows the registry's ledger (:func:`production_after`); ``newest`` serves
    each week's own version; ``never_retrain`` the first version throughout.
    """
    chains: dict[str, list[Version | None]] = {name: [] for name in POLICIES}
    by_id = {v.version: v for v in versions}
    after = production_after(registry, model)
    current: str | None = None
    for v in versions:
        current = after.get(v.version, current)
        chains["production"].append(by_id.get(current) if current else None)
        chains["newest"].append(v)
        chains["never_retrain"].append(versions[0])
    return chains


def _replayed_chain(versions: list[Version], decisions: list[dict[str, Any]]) -> list[Version | None]:
    """The version a replayed gate's ``decisions`` (:func:`replay`) serve in each version's week
    (``None`` before its first promotion and after a demotion)."""
    serving, chain = None, []
    for v, d in zip(versions, decisions, strict=True):
        if d["action"] == "promote":
            serving = v
        elif d["action"] == "demote":
            serving = None
        chain.append(serving)
    return chain


def _score_weeks(registry: Any, data: MarketData, versions: list[Version], chains: dict[str, list[Version | None]],
                 stop: datetime) -> tuple[list[dict[str, Any]], dict[str, list[pd.DataFrame]], dict[str, list[float]]]:
    """Score every policy's serving version forward on each version's week.

    Returns:
        ``(weeks, served, ages)``: ``weeks`` as :func:`track_record` returns them, without
        ``net_return`` (:func:`_totals` adds it); per policy, the frames it served in the weeks
        whose labels are known (the class-prior forecast where it had no model), and the ages
        (days) of its serving versions in those weeks.
    """
    weeks: list[dict[str, Any]] = []
    served: dict[str, list[pd.DataFrame]] = {name: [] for name in chains}
    ages: dict[str, list[float]] = {name: [] for name in chains}
    for k, v in enumerate(versions):
        start = v.trained_until
        stop_k = versions[k + 1].trained_until if k + 1 < len(versions) else stop
        newest = _forward(registry, data, v, start, stop_k)
        unserved = _unserved(newest)
        prior = _score([unserved], data) if len(unserved) else {"rows": 0}
        row: dict[str, Any] = {"start": start.isoformat(), "end": stop_k.isoformat(), "rows": int(len(newest)),
                               "prior_log_loss": prior.get("log_loss"), "policies": {}}
        for name, chain in chains.items():
            serving = chain[k]
            if serving is None:
                frame, score = unserved, prior
            else:
                frame = newest if serving is v else _forward(registry, data, serving, start, stop_k)
                score = _score([frame], data) if len(frame) else {"rows": 0}
            age = (start - serving.trained_until).total_seconds() / 86400 if serving is not None else None
            row["policies"][name] = {"version": serving.version if serving is not None else None,
                                     "log_loss": score.get("log_loss"), "age_days": age}
            if len(newest):  # a week whose labels are known: every policy is scored on it
                served[name].append(frame)
                if age is not None:
                    ages[name].append(age)
        weeks.append(row)
    return weeks, served, ages


def _add_week_returns(weeks: list[dict[str, Any]], name: str, net: pd.Series | None) -> None:
    """Set policy ``name``'s ``net_return`` in each of ``weeks``: the sum of ``net`` (per-bar net
    returns, fraction of equity) over the week's bars; ``None`` in a week without labels or when
    ``net`` is ``None``."""
    for w in weeks:
        w["policies"][name]["net_return"] = (
            float(net[(net.index >= pd.Timestamp(w["start"])) & (net.index < pd.Timestamp(w["end"]))].sum())
            + 0.0 if net is not None and w["rows"] else None)  # + 0.0: no "-0.0" in the JSON


def _totals(data: MarketData, versions: list[Version], weeks: list[dict[str, Any]],
            served: dict[str, list[pd.DataFrame]], ages: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Each policy's totals over the weeks it served (as :func:`track_record` returns them), adding
    each week's ``net_return`` to ``weeks`` on the way."""
    by_id = {v.version: v for v in versions}
    totals: dict[str, dict[str, Any]] = {}
    for name in served:
        score = _score(served[name], data) if served[name] else {"rows": 0}
        # Each week's share of the one simulation of the policy's whole record (the series its
        # Sharpe ratio summarises), so a position held across a week's end is not closed there.
        net = score.pop("net_returns", None)
        _add_week_returns(weeks, name, net)
        totals[name] = {**score, "weeks": len(served[name]),
                        "weeks_without_model": sum(1 for w in weeks if w["rows"] and
                                                   w["policies"][name]["version"] is None),
                        "mean_age_days": float(np.mean(ages[name])) if ages[name] else None}
    promised = [by_id[p["version"]].lineage["metrics"]["ensemble"]["log_loss"]
                for w in weeks if w["rows"] and (p := w["policies"]["production"])["version"]]
    totals["production"]["promised_log_loss"] = float(np.mean(promised)) if promised else None
    return totals


def track_record(settings: Settings, model: str, *, policies: dict[str, GatePolicy | None] | None = None,
                 end: datetime | None = None) -> dict[str, Any]:
    """The forward record of ``model``'s production chain next to the counterfactual policies.

    Args:
        settings: the deployment (registry, market store).
        model: registered model name.
        policies: extra replayed gate policies by label, scored like the others (``None``:
            each version's own, see :func:`replay`).
        end: last bar to score (default: one week after the newest version's training end).

    Returns:
        ``{"model", "weeks", "totals", "replays", "policies", "compared_weeks", "made_at"}``:

        ``weeks``: one row per version, oldest first, ``{"start", "end", "rows",
        "prior_log_loss", "policies": {policy: {"version", "log_loss", "age_days",
        "net_return"}}}``. ``start``/``end`` (ISO times) bound the week ``[T_k, T_{k+1})``;
        ``rows`` counts its labelled bars (0 while its labels are pending). ``prior_log_loss``
        is the forward log loss (nats per row) of the class-prior forecast, what a week
        without a model serves; ``log_loss`` the serving version's (nats per row);
        ``version`` is ``None`` where the policy has no model; ``age_days`` the days since
        the serving version's training end. ``net_return`` is the week's sum of the after-cost
        per-bar net returns (fraction of equity) of trading the policy's served forecasts, taken
        from the one simulation of its whole record (:mod:`include.backtest`): 0.0 in a week
        without a model (no position), ``None`` in a week without labels.

        ``totals``: ``{policy: {"rows", "log_loss", "macro_f1", "sharpe", "total_return",
        "max_drawdown", "weeks", "weeks_without_model", "mean_age_days"}}``, and
        ``promised_log_loss`` for ``production``. Totals cover every week whose labels are
        known; a week in which a policy has no production model is scored as the class-prior
        forecast with no position (``weeks_without_model`` counts them).

        ``replays``: ``{label: decisions}`` (:func:`replay`); ``policies``: each replayed
        policy's fields.

    Raises:
        PipelineError: the model has no registered version.
    """
    registry = ModelRegistry.from_settings(settings)
    try:
        versions = _versions(registry, model)
        if not versions:
            raise PipelineError(f"{model} has no registered version")
        stop = end or versions[-1].trained_until + timedelta(days=7)
        data = load_market(settings, versions, stop)
        chains = _base_chains(registry, model, versions)
        replays: dict[str, list[dict[str, Any]]] = {}
        trading: dict[str, Any] = {}
        for label, policy in (policies or {}).items():
            decisions = replay(registry, data, versions, policy, trading)
            replays[label] = decisions
            chains[label] = _replayed_chain(versions, decisions)
        weeks, served, ages = _score_weeks(registry, data, versions, chains, stop)
        totals = _totals(data, versions, weeks, served, ages)
    finally:
        registry.dispose()
    return {"model": model, "weeks": weeks, "totals": totals, "replays": replays,
            "policies": {label: asdict(p) if p is not None else "each run's own"
                         for label, p in (policies or {}).items()},
            "compared_weeks": len(served["newest"]), "made_at": datetime.now(UTC).isoformat(timespec="seconds")}


def parse_policy(settings: list[str]) -> GatePolicy:
    """A :class:`GatePolicy` from ``name=value`` pairs (``none`` for an unset optional level;
    ``required`` as a comma-separated list of skill checks).

    Raises:
        ValueError: an unknown field or a value of the wrong type.
    """
    known = {f.name: f for f in fields(GatePolicy)}
    values: dict[str, Any] = {}
    for item in settings:
        name, _, raw = item.partition("=")
        if name not in known:
            raise ValueError(f"unknown gate policy field {name!r}; known: {', '.join(known)}")
        text = raw.strip().lower()
        if name == "required":
            values[name] = tuple(c.strip() for c in raw.split(",") if c.strip())
        elif text in ("none", "null", ""):
            values[name] = None
        elif text in ("true", "false"):
            values[name] = text == "true"
        else:
            values[name] = int(raw) if name == "min_window_rows" else float(raw)
    return GatePolicy(**values)


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.4f}" if isinstance(value, float) else str(value))


def table(record: dict[str, Any]) -> str:
    """The totals as a plain-text table, one line per policy."""
    lines = [f"{record['model']}: forward record over {record['compared_weeks']} weeks",
             f"{'policy':<24}{'log loss':>10}{'macro F1':>10}{'Sharpe':>9}{'PSR>0':>8}{'mean age d':>12}"
             f"{'no model':>10}"]
    for name, t in record["totals"].items():
        lines.append(f"{name:<24}{_fmt(t.get('log_loss')):>10}{_fmt(t.get('macro_f1')):>10}"
                     f"{_fmt(t.get('sharpe')):>9}{_fmt(t.get('psr_vs_flat')):>8}{_fmt(t.get('mean_age_days')):>12}"
                     f"{t.get('weeks_without_model', 0):>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``record`` or ``replay`` for one registered model (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m include.track_record", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["record", "replay"])
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a gate policy field for the replay (repeatable), e.g. alpha=0.1")
    parser.add_argument("--json", action="store_true", help="print the whole record as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env()
    policies = {"replay": parse_policy(args.set)} if args.command == "replay" else {"gate_default": GatePolicy()}
    record = track_record(settings, args.model, policies=policies)
    # Both commands store what they computed: the Models page shows the latest.
    path = settings.registry_dir / "track_record" / f"{args.model}.json"
    atomic_write_json(path, json.loads(json.dumps(record, default=str)))
    print(json.dumps(record, default=str, indent=1) if args.json else table(record))
    if args.command == "replay":
        actual = [w["policies"]["production"]["version"] if w["policies"]["production"] else None
                  for w in record["weeks"]]
        changed = sum(1 for w, a in zip(record["weeks"], actual, strict=True)
                      if (w["policies"]["replay"] or {}).get("version") != a)
        print(f"the replayed policy serves another version than production did in {changed} of "
              f"{len(actual)} weeks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
