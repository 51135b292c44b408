"""One monitoring run of one registered model's production version.

Steps, for the span from the version's training end to ``as_of``:

1. **Ingest** the newest bars into the market store (the run's source: files, or the exchange
   incrementally).
2. **Score** every closed bar of the span the version has no logged prediction for, and append
   them to the prediction log (:mod:`include.predictions`).
3. **Join realised labels** once their horizon has passed (the version's own label rule).
4. **Compare** with what the gate saw at promotion: realised macro F1, log loss (and the
   class-prior forecast's on the same rows), Brier, per UTC day and over the span, next to the
   version's out-of-fold numbers; the live strategy record after fees, slippage and funding
   (:func:`include.backtest.simulate`, as the gate) next to buy-and-hold; feature drift (PSI of
   the last ``drift_window_days`` against the reference bins stored at registration, and the
   share of missing values per feature); data freshness (age of the last closed bar).
5. **Decide** with :class:`MonitorPolicy`: ``ok``; ``alert`` (stale data, whatever else tripped:
   a retrain would not see newer data than the monitor did); ``retrain_requested`` (drift or
   degradation on fresh data); ``cooldown`` (it would have requested, but a request was made,
   and emitted as an asset event, within ``cooldown_hours`` of data time).
   Every number and the decision go to the ``monitor_report`` table.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from include.backtest import simulate, standardised_moves
from include.config import MonitorPolicy, RunConfig, Settings
from include.data.ingest import ingest_window, market_source
from include.data.store import open_store
from include.drift import drift_table, reference_bins
from include.ensemble import ranked_features
from include.errors import PipelineError, TrainingError
from include.evaluation import multiclass_log_loss
from include.feature_store import feature_frame
from include.features import FeatureSpec, complete_rows
from include.gate import instant
from include.labels import CLASS_NAMES, make_labels
from include.predictions import _ms, load_predictions, log_predictions, report_table
from include.registry import ModelRegistry
from include.run_folder import RunFolder, json_safe, version_run_dir
from include.trading import deployed_decision, forecast_positions
from include.training import metrics_with_prior, prior_corrected_predict
from include.windows import FUNDING_LOOKBACK, closed_bars_end, feature_read_start

if TYPE_CHECKING:
    from include.data.store import MarketStore

logger = logging.getLogger(__name__)

OK, ALERT, RETRAIN, COOLDOWN = "ok", "alert", "retrain_requested", "cooldown"


def _closed_bars(store: Any, cfg: RunConfig, start: datetime, end: datetime) -> pd.DataFrame:
    bars = store.load_ohlcv(exchange=cfg.exchange, symbol=cfg.symbol, market_type=cfg.market_type,
                            timeframe=cfg.timeframe, start=start, end=end)
    return bars[bars["timestamp"] + pd.Timedelta(seconds=cfg.bar_seconds) <= pd.Timestamp(end)]


def _ingest(cfg: RunConfig, settings: Settings, store: Any, start: datetime, end: datetime) -> dict[str, Any]:
    key = cfg.market
    return ingest_window(market_source(cfg, settings), store, key, start=start, end=end,
                         funding_start=start - FUNDING_LOOKBACK, open_interest_start=start - timedelta(days=2))


def _reference(settings: Settings, lineage: dict[str, Any], spec: Any, cfg: RunConfig, store: Any) -> dict[str, Any]:
    """The version's drift reference: ``{"bins", "top_features", "source"}``.

    Stored at registration for every version since monitoring exists. For an older version it
    is recomputed from the store: the features of its training rows (``first_bar`` to
    ``last_training_row``; for versions that do not name them, ``train_start`` to
    ``trained_until``), with the features ranked by the permutation importance in
    the version's run folder (feature-spec order when that folder is gone).

    Raises:
        PipelineError: nothing stored, and no bar of the training window in the store.
    """
    if "drift_reference" in lineage:
        return {"bins": lineage["drift_reference"], "top_features": list(lineage.get("top_features") or spec.names),
                "source": "stored at registration"}
    window = lineage["data_window"]
    # The deployed model's own training rows where the lineage names them (rolling scheme).
    start = pd.Timestamp(window.get("first_bar") or window["train_start"]).to_pydatetime()
    end = (pd.Timestamp(window["last_training_row"]) + pd.Timedelta(seconds=cfg.bar_seconds)
           if window.get("last_training_row") else pd.Timestamp(window["trained_until"])).to_pydatetime()
    feats = feature_frame(store, cfg, spec, start, end)
    feats = feats[complete_rows(feats, spec.names)]
    if feats.empty:
        raise PipelineError(f"{lineage.get('registered_model')}: no drift reference stored with the version, and the "
                            f"store holds no bar of its training window [{window['train_start']}, "
                            f"{window['trained_until']}) to recompute one from")
    top, ranked = _ranking_from_run_folder(settings, lineage, list(spec.names))
    logger.warning("no drift reference stored with this version (registered before references were); "
                   "recomputed from %d training-window bars in the store; features ranked %s", len(feats), ranked)
    return {"bins": reference_bins(feats), "top_features": top,
            "source": f"recomputed from {len(feats)} training-window bars in the store; features ranked {ranked}"}


def _ranking_from_run_folder(settings: Settings, lineage: dict[str, Any], names: list[str]) -> tuple[list[str], str]:
    """Features by the permutation importance in the version's run folder, or in spec order."""
    folder = RunFolder(version_run_dir(settings, lineage["registered_model"], lineage))
    try:
        members = {f: json.loads((folder.member(f) / "metadata.json").read_text()) for f in lineage["members"]}
    except (OSError, KeyError, ValueError):
        return names, "in feature-spec order (run folder gone: no importance to rank by)"
    return ranked_features(members, list(members), names), f"by the permutation importance in {folder.path}"


def _daily_log_loss(frame: pd.DataFrame, prior: np.ndarray) -> list[dict[str, Any]]:
    """Per complete UTC day: realised log loss of the model and of the class-prior forecast."""
    out = []
    for day, rows in frame.groupby(frame.index.floor("D")):
        y = rows["label"].astype(int).to_numpy()
        proba = rows[["p_down", "p_range", "p_up"]].to_numpy()
        out.append({"day": day.date().isoformat(), "rows": int(len(rows)),
                    "log_loss": multiclass_log_loss(y, proba),
                    "prior_log_loss": multiclass_log_loss(y, np.tile(prior, (len(y), 1)))})
    return out


def _plain(value: Any) -> Any:
    """JSON for the values a report holds besides plain ones: timestamps and numpy scalars."""
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _check(name: str, tripped: bool, value: Any, threshold: Any, detail: str, kind: str) -> dict[str, Any]:
    return {"name": name, "tripped": bool(tripped), "value": value, "threshold": threshold, "detail": detail,
            "kind": kind}


def evaluate(report: dict[str, Any], policy: MonitorPolicy) -> list[dict[str, Any]]:
    """The policy's checks on a report's numbers (each ``{"name", "tripped", "value",
    "threshold", "detail", "kind"}``; kind ``drift``, ``performance`` or ``freshness``)."""
    checks = []
    top = report["drift"]["top_features"][: policy.psi_top_k]
    table = {r["feature"]: r for r in report["drift"]["table"]}
    if report["drift"]["rows"] < policy.min_drift_rows:
        checks.append(_check("feature_drift", False, report["drift"]["rows"], policy.min_drift_rows,
                             f"{report['drift']['rows']} live rows in the drift window: drift checks wait for "
                             f"{policy.min_drift_rows}", "drift"))
    else:
        psis = [(table[f]["psi"], f) for f in top if f in table and table[f]["psi"] == table[f]["psi"]]
        worst = max(psis, default=(float("nan"), None))
        checks.append(_check("feature_drift", bool(psis) and worst[0] > policy.max_psi, worst[0], policy.max_psi,
                             f"largest PSI among the top {policy.psi_top_k} features: "
                             + (f"{worst[1]} {worst[0]:.3f}" if worst[1] else "no live rows")
                             + f" (limit {policy.max_psi})", "drift"))
        missing = [(r["missing_share"] - r["reference_missing_share"], r["feature"])
                   for r in report["drift"]["table"] if r["missing_share"] == r["missing_share"]]
        rise, feature = max(missing, default=(float("nan"), None))
        checks.append(_check("missing_values", bool(missing) and rise > policy.max_missing_increase, rise,
                             policy.max_missing_increase,
                             (f"largest rise in missing share: {feature} {rise:+.0%} over training"
                              if feature else "no live rows") + f" (limit +{policy.max_missing_increase:.0%})",
                             "drift"))
    live = report["live"]
    if live["labelled_rows"] >= policy.min_labelled_rows:
        days = [d for d in live["daily"] if d["rows"] >= 20][-policy.log_loss_days:]
        worse = len(days) == policy.log_loss_days and all(d["log_loss"] > d["prior_log_loss"] for d in days)
        checks.append(_check(
            "log_loss_vs_prior", worse, [d["log_loss"] for d in days], [d["prior_log_loss"] for d in days],
            f"realised vs class-prior log loss, last {policy.log_loss_days} days (trips when worse on each): "
            + ", ".join(f"{d['day']} {d['log_loss']:.3f} vs {d['prior_log_loss']:.3f}" for d in days), "performance"))
        dd = report["trading"]["strategy"]["max_drawdown"]
        checks.append(_check("live_drawdown", dd > policy.max_drawdown, dd, policy.max_drawdown,
                             f"live strategy drawdown {dd:.2%} (limit {policy.max_drawdown:.0%})", "performance"))
    else:
        checks.append(_check("performance", False, live["labelled_rows"], policy.min_labelled_rows,
                             f"{live['labelled_rows']} realised labels: performance checks wait for "
                             f"{policy.min_labelled_rows}", "performance"))
    age = report["freshness"]["age_hours"]
    checks.append(_check("data_freshness", not (age <= policy.max_data_age_hours), age, policy.max_data_age_hours,
                         f"last closed bar {report['freshness']['last_bar_close']}, "
                         f"{age:.1f} h before {report['as_of']} "
                         f"(limit {policy.max_data_age_hours} h)", "freshness"))
    return checks


def _last_request(engine: sa.Engine, model: str, before_ms: int, run_id: str) -> int | None:
    t = report_table
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(t.c.as_of)).where(
            t.c.model == model, t.c.action == RETRAIN, t.c.requested_at.is_not(None), t.c.as_of <= before_ms,
            t.c.run_id != run_id)).scalar()


def mark_requested(engine: sa.Engine, run_id: str, models: list[str]) -> int:
    """Record that run ``run_id``'s retrain requests of ``models`` became an asset event.

    The cooldown (:func:`decide`) counts only requests marked here, so one that never reached
    Airflow does not delay the next.

    Returns:
        Reports marked.
    """
    t = report_table
    with engine.begin() as conn:
        return conn.execute(t.update().where(t.c.run_id == run_id, t.c.model.in_(models), t.c.action == RETRAIN)
                            .values(requested_at=int(time.time() * 1000))).rowcount


def decide(engine: sa.Engine, model: str, checks: list[dict[str, Any]], as_of_ms: int, run_id: str,
           policy: MonitorPolicy) -> tuple[str, str]:
    """``(action, reason)`` of the tripped checks; see the module docstring."""
    tripped = [c for c in checks if c["tripped"]]
    retrain = [c for c in tripped if c["kind"] in ("drift", "performance")]
    if any(c["kind"] == "freshness" for c in tripped):
        # A retrain would not see newer data than the monitor did: fix ingestion first.
        return ALERT, "; ".join(c["detail"] for c in tripped) + (
            "; no retrain requested on stale data" if retrain else "")
    if retrain:
        last = _last_request(engine, model, as_of_ms, run_id)
        if last is not None and as_of_ms - last < policy.cooldown_hours * 3_600_000:
            since = datetime.fromtimestamp(last / 1000, UTC).isoformat()
            return COOLDOWN, f"retrain already requested at {since}, within the {policy.cooldown_hours:g} h cooldown"
        return RETRAIN, "; ".join(c["detail"] for c in retrain)
    if tripped:
        return ALERT, "; ".join(c["detail"] for c in tripped)
    return OK, "every check within its threshold"


@dataclass(frozen=True)
class _ScoredSpan:
    """What the market store holds for one monitoring run once the span is ingested and scored.

    Attributes:
        ingested: what ingestion wrote (:func:`include.data.ingest.ingest_window`'s summary).
        bars: the candles that closed by ``as_of``, from the features' read start.
        funding: funding settlements (perpetuals; ``None`` for other markets).
        feats: training's own features of each bar after the version's training end.
        reference: the version's drift reference (:func:`_reference`).
        new_rows: bars this run scored and logged.
        predictions: the version's prediction log over the span, indexed by bar.
    """

    ingested: dict[str, Any]
    bars: pd.DataFrame
    funding: pd.DataFrame | None
    feats: pd.DataFrame
    reference: dict[str, Any]
    new_rows: int
    predictions: pd.DataFrame


def _production_version(settings: Settings, model: str) -> tuple[str, Any, dict[str, Any], dict[str, Any] | None]:
    """``(version, estimator, lineage, gate decision)`` of ``model``'s production version.

    Raises:
        PipelineError: the model has no production version.
    """
    registry = ModelRegistry.from_settings(settings)
    try:
        pointer = registry.production(model)
        if pointer is None:
            raise PipelineError(f"{model} has no production version to monitor")
        estimator, lineage = registry.load(pointer.version)
        decided_by_gate = registry.decision_of(model, pointer.version)
    finally:
        registry.dispose()
    return pointer.version, estimator, lineage, decided_by_gate


def _score_new_bars(store: MarketStore, model: str, version: str, estimator: Any, spec: FeatureSpec,
                    feats: pd.DataFrame, trained_until: datetime, as_of: datetime) -> int:
    """Score the span's complete feature rows the version has no logged prediction for; returns how many."""
    ready = feats[complete_rows(feats, spec.names)]
    logged = load_predictions(store.engine, model, version, start=trained_until, end=as_of)
    todo = ready[~ready.index.isin(logged.index)]
    if len(todo):
        proba = estimator.predict_proba(todo[list(spec.names)])
        decided = prior_corrected_predict(proba, estimator.class_prior_)
        log_predictions(store.engine, model, version,
                        [{"bar": t, "p_down": p[0], "p_range": p[1], "p_up": p[2], "decision": CLASS_NAMES[d]}
                         for t, p, d in zip(todo.index, proba, decided, strict=True)], source="monitor")
    return int(len(todo))


def _score_span(settings: Settings, model: str, version: str, estimator: Any, lineage: dict[str, Any],
                cfg: RunConfig, spec: FeatureSpec, trained_until: datetime, as_of: datetime) -> _ScoredSpan:
    """Ingest the newest bars, score the unscored ones after ``trained_until``; returns what the store then holds.

    Raises:
        PipelineError: no drift reference stored with the version, and no bar of its training
            window in the store to recompute one from.
    """
    bar = timedelta(seconds=cfg.bar_seconds)
    read_from = feature_read_start(trained_until, cfg)
    store = open_store(settings)
    try:
        ingested = _ingest(cfg, settings, store, read_from, as_of)
        bars = _closed_bars(store, cfg, read_from, as_of)
        funding = store.load_funding_rates(start=read_from - timedelta(days=10), end=as_of, exchange=cfg.exchange,
                                           symbol=cfg.symbol) if cfg.market_type == "perp" else None
        # Bars that closed by as_of, with training's own features for each (feature_frame). An
        # empty open-interest frame (the series stopped) gives missing values, which the drift
        # checks report; it is not an error.
        feats = feature_frame(store, cfg, spec, trained_until, closed_bars_end(as_of, bar))
        reference = _reference(settings, lineage, spec, cfg, store)
        new_rows = _score_new_bars(store, model, version, estimator, spec, feats, trained_until, as_of)
        predictions = load_predictions(store.engine, model, version, start=trained_until, end=as_of)
    finally:
        store.dispose()
    return _ScoredSpan(ingested=ingested, bars=bars, funding=funding, feats=feats, reference=reference,
                       new_rows=new_rows, predictions=predictions)


def _with_realised_labels(predictions: pd.DataFrame, bars: pd.DataFrame,
                          cfg: RunConfig) -> tuple[pd.Series, pd.DataFrame]:
    """``(closes, frame)``: the bars' closes, and the predictions with a ``label`` column (NaN until realised)."""
    closes = bars.set_index("timestamp")["close"].astype("float64")
    labels = make_labels(closes, horizon=cfg.label_horizon_bars, mode=cfg.label_threshold_mode,
                         threshold=cfg.label_threshold, vol_window=cfg.label_vol_window_bars)
    return closes, predictions.join(labels.rename("label"), how="left")


def _live_metrics(frame: pd.DataFrame, lineage: dict[str, Any], prior: np.ndarray) -> dict[str, Any]:
    """The report's ``live`` section: realised metrics and daily log loss next to the promised ones."""
    labelled = frame[frame["label"].notna()]
    live: dict[str, Any] = {"scored_rows": int(len(frame)), "labelled_rows": int(len(labelled)),
                            "first_bar": frame.index.min(), "last_bar": frame.index.max(),
                            "promised": {k: lineage["metrics"]["ensemble"].get(k)
                                         for k in ("macro_f1", "log_loss", "brier")},
                            "promised_prior_log_loss": lineage["metrics"]["baselines"].get("prior", {}).get("log_loss")}
    if len(labelled):
        y, p = labelled["label"].astype(int).to_numpy(), labelled[["p_down", "p_range", "p_up"]].to_numpy()
        live["realised"] = {k: v for k, v in metrics_with_prior(y, p, prior).items() if k != "confusion"}
        live["realised"]["prior_log_loss"] = multiclass_log_loss(y, np.tile(prior, (len(y), 1)))
        live["daily"] = _daily_log_loss(labelled, prior)
    else:
        live["realised"], live["daily"] = None, []
    return live


def _live_trading(frame: pd.DataFrame, closes: pd.Series, span: _ScoredSpan, cfg: RunConfig,
                  lineage: dict[str, Any], prior: np.ndarray,
                  decided_by_gate: dict[str, Any] | None) -> dict[str, Any]:
    """The report's ``trading`` section: costs, margin, and the simulated strategy and buy-and-hold records."""
    feats = span.feats
    # The position serving gave each bar: the cost-aware decision at the margin the gate chose.
    decision = deployed_decision(cfg.to_dict(), decided_by_gate, lineage.get("trading"))
    costs = decision.costs
    scale, _ = standardised_moves(closes, horizon=decision.horizon_bars, vol_window=cfg.label_vol_window_bars)
    moves = (lineage.get("trading") or {}).get("class_moves")
    inputs = frame.assign(prior_down=prior[0], prior_range=prior[1], prior_up=prior[2],
                          move_down=(moves or [np.nan])[0], move_range=(moves or [np.nan] * 2)[1],
                          move_up=(moves or [np.nan] * 3)[2], move_scale=scale.reindex(frame.index).to_numpy(),
                          funding_rate=(feats["funding_rate"].reindex(frame.index).to_numpy()
                                        if "funding_rate" in feats else np.nan))
    positions = forecast_positions(inputs, decision)
    trading = {"costs": asdict(costs), "margin": decision.margin, "meta_label": decision.meta is not None}
    for name, signal in (("strategy", positions), ("buy_and_hold", np.ones(len(frame), dtype=int))):
        try:
            result = simulate(pd.Series(signal, index=frame.index), span.bars, span.funding, costs, cfg.bar_seconds)
        except TrainingError as exc:  # no bar after the first signal yet: nothing traded
            result = {"bars": 0, "total_return": 0.0, "sharpe": 0.0, "max_drawdown": 0.0, "hit_rate": float("nan"),
                      "trades": 0, "note": str(exc)}
        trading[name] = {k: v for k, v in result.items() if k not in ("costs", "net_returns")}
    return trading


def _drift_summary(feats: pd.DataFrame, reference: dict[str, Any], as_of: datetime,
                   policy: MonitorPolicy) -> dict[str, Any]:
    """The report's ``drift`` section: the last ``drift_window_days`` of features against the reference."""
    recent = feats[feats.index >= pd.Timestamp(as_of) - timedelta(days=policy.drift_window_days)]
    return {"window_start": pd.Timestamp(as_of) - timedelta(days=policy.drift_window_days), "rows": int(len(recent)),
            "top_features": reference["top_features"], "reference": reference["source"],
            "table": drift_table(reference["bins"], recent)}


def _freshness(bars: pd.DataFrame, bar: timedelta, as_of: datetime) -> dict[str, Any]:
    """The report's ``freshness`` section: the last bar's close and its age in hours at ``as_of`` (inf: none)."""
    last_close = bars["timestamp"].max() + bar if len(bars) else None
    return {"last_bar_close": last_close.isoformat() if last_close is not None else None,
            "age_hours": (pd.Timestamp(as_of) - last_close).total_seconds() / 3600 if last_close is not None
            else math.inf}


def _decide_and_record(settings: Settings, report: dict[str, Any], as_of: datetime, policy: MonitorPolicy,
                       started: float) -> dict[str, Any]:
    """Decide the report's action, record it (replacing the run's own record) and log it; returns it as JSON."""
    model, version, run_id = report["model"], report["version"], report["run_id"]
    store = open_store(settings)
    try:
        action, reason = decide(store.engine, model, report["checks"], _ms(as_of), run_id, policy)
        report.update(action=action, reason=reason)
        report["scoring"]["seconds"] = round(time.perf_counter() - started, 3)
        report = json_safe(json.loads(json.dumps(report, default=_plain)))
        with store.engine.begin() as conn:
            t = report_table
            conn.execute(sa.delete(t).where(t.c.model == model, t.c.run_id == run_id))
            conn.execute(sa.insert(t).values(model=model, version=version, as_of=_ms(as_of),
                                             made_at=int(time.time() * 1000), action=action, run_id=run_id,
                                             report=report))
    finally:
        store.dispose()
    level = logging.INFO if action == OK else logging.WARNING
    logger.log(level, "%s %s at %s: %s (%s)", model, version, as_of.isoformat(), action.upper(), reason)
    return report


def monitor(settings: Settings, model: str, as_of: datetime, *, policy: MonitorPolicy | None = None,
            run_id: str = "manual", source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Monitor ``model``'s production version up to ``as_of``; record and return the report.

    Args:
        settings: the deployment (market database, registry).
        model: registered model name.
        as_of: end of the monitored span (UTC); bars that closed by then are used.
        policy: thresholds (default :class:`MonitorPolicy`).
        run_id: the monitoring run, for the record (a re-run replaces its own record).
        source: ``{"source": "files"|"exchange", "source_dir"}`` overrides for ingestion.

    Returns:
        The report: ``model``, ``version``, ``as_of``, ``scoring``, ``live`` (metrics, daily
        log loss, the promised out-of-fold metrics), ``trading``, ``drift``, ``freshness``,
        ``checks``, ``action``, ``reason``.

    Raises:
        PipelineError: the model has no production version, or it has no stored drift reference
            and the store holds no bar of its training window to recompute one from.
    """
    policy = policy or MonitorPolicy()
    started = time.perf_counter()
    as_of = instant(as_of).astimezone(UTC)
    version, estimator, lineage, decided_by_gate = _production_version(settings, model)
    cfg = RunConfig.from_params({**lineage["config"], **(source or {})})
    spec = FeatureSpec.from_dict({k: v for k, v in lineage["feature_spec"].items() if k != "sha256"})
    bar = timedelta(seconds=cfg.bar_seconds)
    trained_until = pd.Timestamp(lineage["data_window"]["trained_until"]).to_pydatetime()
    if as_of <= trained_until:
        raise PipelineError(f"{model} {version} was trained until {trained_until.isoformat()}: "
                            f"nothing after it to monitor at {as_of.isoformat()}")
    span = _score_span(settings, model, version, estimator, lineage, cfg, spec, trained_until, as_of)

    closes, frame = _with_realised_labels(span.predictions, span.bars, cfg)
    prior = np.asarray(estimator.class_prior_, dtype="float64")
    report = {"model": model, "version": version, "as_of": as_of.isoformat(), "run_id": run_id,
              "trained_until": trained_until.isoformat(),
              "scoring": {"new_rows": span.new_rows, "seconds": None, "ingested": span.ingested},
              "live": _live_metrics(frame, lineage, prior),
              "trading": _live_trading(frame, closes, span, cfg, lineage, prior, decided_by_gate),
              "drift": _drift_summary(span.feats, span.reference, as_of, policy),
              "freshness": _freshness(span.bars, bar, as_of),
              "policy": asdict(policy)}
    report["checks"] = evaluate(report, policy)
    return _decide_and_record(settings, report, as_of, policy, started)


def reports(engine: sa.Engine, model: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Recorded monitoring reports, newest ``as_of`` first (one model, or all)."""
    t = report_table
    query = sa.select(t.c.report).order_by(t.c.as_of.desc(), t.c.id.desc()).limit(limit)
    if model is not None:
        query = query.where(t.c.model == model)
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(query)]
