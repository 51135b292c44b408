"""The weekly retraining pipeline, one function per DAG task.

Each function takes plain arguments (a :class:`~include.config.RunConfig` as a dict, the run's
:class:`RunWindow` as a dict, ids and paths) and returns a small JSON-serialisable dict for XCom.
DataFrames and models travel through files under the run's own folder
``<RUN_ARTIFACTS_DIR>/<dag_id>/<registered model>/<interval start>_<interval end>/``, derived
from the registered model and the data interval, so two markets never share a folder and
re-running a run overwrites exactly its own outputs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.config import RunConfig, Settings
from include.data.sources import FileSource, MarketDataSource
from include.data.store import MarketStore
from include.errors import DataQualityError, GateError, MarketNotReadyError, PipelineError, TrainingError
from include.features import FeatureSpec, build_features
from include.gate import GatePolicy, decide
from include.labels import class_balance, make_labels
from include.registry import (
    CHALLENGER,
    PRODUCTION,
    ModelRegistry,
    atomic_write_json,
    code_version,
    load_verified,
    sha256_file,
)

logger = logging.getLogger(__name__)

FUNDING_LOOKBACK = timedelta(days=10)
OPEN_INTEREST_MIN_COVERAGE = 0.5


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``: strict JSON for XCom."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# -- the run's window ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunWindow:
    """Time bounds of one run (ISO-8601 UTC strings, half-open intervals).

    Attributes:
        interval_start / interval_end: the data interval (one week); the gate window.
        train_start: first bar of the training window (``interval_end - train_window_days``).
        ingest_start: first bar ingested, ``train_start`` minus indicator warm-up.
        run_key: ``<interval_start>_<interval_end>`` as ``YYYYmmddTHHMM``; names the run folder.
        source: how the interval was chosen: ``data_interval``, ``as_of_date`` or ``last_complete_week``.
        requested_train_start: for a market with less history than ``train_window_days``, the
            training start the window asked for (``train_start`` is then later); else ``None``.
    """

    interval_start: str
    interval_end: str
    train_start: str
    ingest_start: str
    run_key: str
    source: str
    requested_train_start: str | None = None

    def ts(self, name: str) -> datetime:
        """One bound as an aware datetime."""
        return datetime.fromisoformat(getattr(self, name))


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def resolve_window(cfg: RunConfig, *, data_interval_start: Any, data_interval_end: Any,
                   run_after: Any) -> RunWindow:
    """Choose the run's data interval and training window.

    Precedence: the ``as_of_date`` param (the week ending at that date's 00:00 UTC), then the
    run's data interval, then, for a run triggered without a logical date (no data interval),
    the last complete Sunday-to-Sunday week before ``run_after``.

    Raises:
        ConfigError: ``as_of_date`` does not parse.
    """
    from include.errors import ConfigError

    start, end = _utc(data_interval_start), _utc(data_interval_end)
    if cfg.as_of_date:
        try:
            end = _utc(pd.Timestamp(cfg.as_of_date).normalize())
        except ValueError as exc:
            raise ConfigError(f"invalid run parameter as_of_date={cfg.as_of_date!r}: {exc}") from exc
        assert end is not None
        start, source = end - timedelta(days=7), "as_of_date"
    elif start is not None and end is not None and end > start:
        source = "data_interval"
    else:
        now = _utc(run_after) or datetime.now(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = midnight - timedelta(days=(midnight.weekday() + 1) % 7)  # last Sunday 00:00
        start, source = end - timedelta(days=7), "last_complete_week"
    assert start is not None and end is not None
    train_start = end - timedelta(days=cfg.train_window_days)
    ingest_start = train_start - warmup(cfg)
    key = f"{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"
    window = RunWindow(start.isoformat(), end.isoformat(), train_start.isoformat(),
                       ingest_start.isoformat(), key, source)
    logger.info("run window (%s): interval [%s, %s), training from %s", source, start, end, train_start)
    return window


def warmup(cfg: RunConfig) -> timedelta:
    """Bars before the training window that features and labels need: indicator warm-up or the
    label's volatility window, whichever is longer."""
    return max(FeatureSpec.default().warmup_bars, cfg.label_vol_window_bars) * timedelta(seconds=cfg.bar_seconds)


def run_dir(settings: Settings, dag_id: str, model: str, window: RunWindow) -> Path:
    """The artifact folder of one registered model's run over one data interval (created)."""
    path = settings.runs_dir / dag_id / model / window.run_key
    path.mkdir(parents=True, exist_ok=True)
    return path


def _store(settings: Settings) -> MarketStore:
    return MarketStore(settings.market_db_url)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        frame.to_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- 1. ingest -------------------------------------------------------------------------------
def market_source(cfg: RunConfig, settings: Settings) -> MarketDataSource:
    """The run's market-data source: the file source (default) or the exchange source.

    Raises:
        SourceError: the exchange is not supported by the exchange source.
    """
    if cfg.source == "exchange":
        from include.data.exchange import ExchangeSource

        return ExchangeSource(cfg.exchange, api_url=settings.exchange_api_url)
    return FileSource(cfg.source_dir or settings.data_dir)


#: Files a market's run leaves for the universe summary; removed when the run starts again.
SUMMARY_FILE, SKIPPED_FILE = "summary.json", "skipped.json"


def history_window(cfg: RunConfig, window: RunWindow, first_bar: datetime | None) -> RunWindow:
    """The run's window given the market's first stored bar: shortened for a young market.

    A market listed after the window's ``ingest_start`` trains from its first bar plus the
    feature warm-up, provided that leaves at least ``min_history_days`` before
    ``interval_end``; ``requested_train_start`` keeps what the window asked for.

    Raises:
        MarketNotReadyError: no bars, or less history than ``min_history_days``; the message
            says from which date the market qualifies.
    """
    start, end = window.ts("ingest_start"), window.ts("interval_end")
    if first_bar is None:
        raise MarketNotReadyError(f"{cfg.model_name}: no {cfg.symbol} {cfg.market_type} {cfg.timeframe} candles "
                                  f"before {end:%Y-%m-%d %H:%M}Z in the market store")
    if first_bar <= start:
        return window
    train_start = first_bar + warmup(cfg)
    available = (end - train_start).total_seconds() / 86_400
    if available < cfg.min_history_days:
        qualifies = train_start + timedelta(days=cfg.min_history_days)
        raise MarketNotReadyError(
            f"{cfg.model_name}: history starts {first_bar:%Y-%m-%d %H:%M}Z, which leaves {available:.0f} days of "
            f"training data before {end:%Y-%m-%d}Z after the {warmup(cfg) / timedelta(days=1):.0f}-day warm-up; "
            f"min_history_days={cfg.min_history_days}. It qualifies for the week ending {qualifies:%Y-%m-%d} "
            f"or later; skipped this run.", qualifies_on=qualifies.date().isoformat())
    logger.warning("%s: young market: %.0f days of history instead of train_window_days=%d; training from %s",
                   cfg.model_name, available, cfg.train_window_days, train_start)
    return RunWindow(window.interval_start, window.interval_end, train_start.isoformat(), first_bar.isoformat(),
                     window.run_key, window.source, requested_train_start=window.train_start)


def ingest(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path | None = None) -> dict[str, Any]:
    """Bring the store's OHLCV, funding and open interest up to the run's ``interval_end``.

    The file source re-reads the whole ingest window; the exchange source fetches only what
    the store is missing (see :mod:`include.data.ingest`). Then the market's history is
    checked (:func:`history_window`): a young market trains on a shorter window, or is skipped
    with ``skipped.json`` in ``out_dir`` saying why and from when it qualifies.

    Returns:
        Per series: mode, fetched ranges, rows fetched, rows new; recorded gaps; source; and
        ``window``, the run's window for every later step (shortened for a young market).

    Raises:
        SourceError: the source failed (missing file, unknown symbol, malformed response,
            retries exhausted); nothing is written.
        MarketNotReadyError: the market's history is below ``min_history_days``.
    """
    from include.data.ingest import SeriesKey, ingest_window

    if out_dir is not None:
        for name in (SUMMARY_FILE, SKIPPED_FILE):
            (out_dir / name).unlink(missing_ok=True)
    source = market_source(cfg, settings)
    start, end = window.ts("ingest_start"), window.ts("interval_end")
    key = SeriesKey(cfg.exchange, cfg.symbol, cfg.market_type, cfg.timeframe,
                    timedelta(seconds=cfg.bar_seconds))
    store = _store(settings)
    try:
        out = ingest_window(source, store, key, start=start, end=end,
                            funding_start=start - FUNDING_LOOKBACK,
                            open_interest_start=start - timedelta(days=2))
        first = store.load_ohlcv(exchange=cfg.exchange, symbol=cfg.symbol, market_type=cfg.market_type,
                                 timeframe=cfg.timeframe, start=start, end=end).head(1)
    finally:
        store.dispose()
    out["source"] = repr(source)
    first_bar = first["timestamp"].iloc[0].to_pydatetime() if len(first) else None
    try:
        effective = history_window(cfg, window, first_bar)
    except MarketNotReadyError as exc:
        if out_dir is not None:
            atomic_write_json(out_dir / SKIPPED_FILE, {"model": cfg.model_name, "reason": str(exc),
                                                       "qualifies_on": exc.qualifies_on, "window": asdict(window)})
        raise
    out["window"] = asdict(effective)
    return out


# -- 2. validate -----------------------------------------------------------------------------
def validate(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Run the expectation suites over the training window; write ``validation.json``.

    Returns:
        ``{"success": True, "rows": {...}, "report": path}``.

    Raises:
        DataQualityError: any expectation failed; the message lists each failure with examples.
    """
    from include.quality.suites import SuiteLimits, format_failures, run_suites

    start, end = window.ts("train_start"), window.ts("interval_end")
    store = _store(settings)
    try:
        key = {"exchange": cfg.exchange, "symbol": cfg.symbol, "start": start, "end": end}
        ohlcv = store.load_ohlcv(market_type=cfg.market_type, timeframe=cfg.timeframe, **key)
        funding = store.load_funding_rates(**key)
        oi = store.load_open_interest(**key)
    finally:
        store.dispose()
    limits = SuiteLimits(
        bar_seconds=cfg.bar_seconds,
        expected_bars=int((end - start).total_seconds() // cfg.bar_seconds),
        min_row_share=cfg.min_row_share, max_gap_share=cfg.max_gap_share, max_gap_bars=cfg.max_gap_bars,
        max_abs_funding_rate=cfg.max_abs_funding_rate, funding_interval_hours=cfg.funding_interval_hours,
    )
    report = run_suites(ohlcv, funding, oi, limits)
    report["window"] = {"start": start.isoformat(), "end": end.isoformat()}
    path = out_dir / "validation.json"
    atomic_write_json(path, report)
    rows = {s["suite"]: s["rows"] for s in report["suites"]}
    if not report["success"]:
        failed = sum(len(s["failed"]) for s in report["suites"])
        raise DataQualityError(
            f"market data for {cfg.symbol} [{start:%Y-%m-%d}, {end:%Y-%m-%d}) failed {failed} "
            f"expectation(s); report {path}:\n{format_failures(report)}", report, str(path))
    logger.info("validation passed: %s", rows)
    return {"success": True, "rows": rows, "report": str(path)}


# -- 3. features -----------------------------------------------------------------------------
def feature_frame(store: MarketStore, cfg: RunConfig, spec: FeatureSpec, start: datetime,
                  end: datetime) -> pd.DataFrame:
    """Features for bars with open time in ``[start, end)`` from the store, per ``spec``."""
    key = {"exchange": cfg.exchange, "symbol": cfg.symbol}
    ohlcv = store.load_ohlcv(market_type=cfg.market_type, timeframe=cfg.timeframe, start=start, end=end, **key)
    funding = store.load_funding_rates(start=start - FUNDING_LOOKBACK, end=end, **key)
    oi = store.load_open_interest(start=start - timedelta(days=2), end=end, **key)
    return build_features(ohlcv, spec, funding, oi)


def features(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Compute features for the ingest window; write ``features.parquet`` and ``feature_spec.json``.

    Open-interest features are part of the spec when the store holds open interest for at least
    half of the training window's days.
    """
    start, end = window.ts("ingest_start"), window.ts("interval_end")
    store = _store(settings)
    try:
        oi = store.load_open_interest(exchange=cfg.exchange, symbol=cfg.symbol,
                                      start=window.ts("train_start"), end=end)
        days = (end - window.ts("train_start")).days
        use_oi = len(oi) >= OPEN_INTEREST_MIN_COVERAGE * days
        spec = FeatureSpec.default(open_interest=use_oi)
        frame = feature_frame(store, cfg, spec, start, end)
    finally:
        store.dispose()
    path = out_dir / "features.parquet"
    _write_parquet(frame, path)
    atomic_write_json(out_dir / "feature_spec.json", {**spec.to_dict(), "sha256": spec.sha256})
    out = {"path": str(path), "rows": int(len(frame)), "columns": list(frame.columns),
           "spec_sha256": spec.sha256, "open_interest": use_oi}
    logger.info("features: %d rows x %d columns (open interest: %s)", len(frame), frame.shape[1], use_oi)
    return out


# -- 4. labels -------------------------------------------------------------------------------
def labels(cfg: RunConfig, window: RunWindow, out_dir: Path) -> dict[str, Any]:
    """Label the training window and write the modelling table ``dataset.parquet``.

    Rows: bars in ``[train_start, interval_end)`` whose candle features are all defined
    (open-interest features may be NaN); the last ``horizon`` rows have no label (NaN).

    Raises:
        TrainingError: no labelled rows remain, or a class is absent.
    """
    feats = pd.read_parquet(out_dir / "features.parquet")
    y = make_labels(feats["close"], horizon=cfg.label_horizon_bars, mode=cfg.label_threshold_mode,
                    threshold=cfg.label_threshold, vol_window=cfg.label_vol_window_bars)
    table = feats.assign(label=y)
    table = table[table.index >= pd.Timestamp(window.train_start)]
    required = [c for c in feats.columns if c != "oi_change_1d"]
    table = table[table[required].notna().all(axis=1)]
    balance = class_balance(table["label"])
    labelled = int(table["label"].notna().sum())
    if labelled == 0 or min(balance.values()) == 0:
        raise TrainingError(f"labels for {window.run_key} are degenerate: {labelled} rows, balance {balance}")
    path = out_dir / "dataset.parquet"
    _write_parquet(table, path)
    logger.info("labels: %d labelled rows, class balance %s", labelled, balance)
    return {"path": str(path), "rows": int(len(table)), "labelled_rows": labelled, "class_balance": balance}


# -- 5. train --------------------------------------------------------------------------------
def _training_table(out_dir: Path, window: RunWindow) -> tuple[pd.DataFrame, np.ndarray, int, list[str]]:
    spec = json.loads((out_dir / "feature_spec.json").read_text())
    table = pd.read_parquet(out_dir / "dataset.parquet")
    table = table[table["label"].notna()]
    names = list(spec["names"])
    test_size = int((table.index >= pd.Timestamp(window.interval_start)).sum())
    return table[names], table["label"].astype(int).to_numpy(), test_size, names


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's behaviour."""
    import lightgbm
    import sklearn
    import talib
    import xgboost

    return {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__, "lightgbm": lightgbm.__version__,
            "xgboost": xgboost.__version__, "ta-lib": talib.__version__}


def _replace_dir(tmp: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)


def train(cfg: RunConfig, window: RunWindow, out_dir: Path, family: str) -> dict[str, Any]:
    """Cross-validate one family with purged walk-forward folds, then fit it on the whole window.

    Writes ``candidates/<family>/`` with ``model.joblib`` (final fit), ``oof.parquet``
    (out-of-fold probabilities with fold and training prior per row) and ``metadata.json``.

    Returns:
        ``{"family", "path", "sha256", "overall", "summary", "seconds"}`` with out-of-fold
        metrics; ``sha256`` is the final model file's, which :func:`assemble` checks before
        unpickling it.
    """
    import joblib

    from include.training import class_prior, cross_validate, family_params, fit_family

    t0 = time.perf_counter()
    X, y, test_size, names = _training_table(out_dir, window)
    splits = cfg.walk_forward(test_size)
    cv = cross_validate(family, X, y, splits=splits, random_state=cfg.random_state,
                        early_stopping_rounds=cfg.early_stopping_rounds)
    final, final_rounds = fit_family(family, X, y, np.arange(len(X)), splits, random_state=cfg.random_state,
                                     early_stopping_rounds=cfg.early_stopping_rounds)
    cand_root = out_dir / "candidates"
    cand_root.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{family}.", dir=cand_root))
    oof = pd.DataFrame(cv.oof_proba, columns=["p_down", "p_range", "p_up"],
                       index=X.index[cv.oof_positions])
    oof["fold"] = cv.oof_fold
    oof[["prior_down", "prior_range", "prior_up"]] = cv.oof_prior
    oof["label"] = y[cv.oof_positions]
    oof.to_parquet(tmp / "oof.parquet")
    joblib.dump(final, tmp / "model.joblib")
    seconds = round(time.perf_counter() - t0, 2)
    meta = {
        "family": family, "params": family_params(family), "random_state": cfg.random_state,
        "feature_names": names, "train_rows": int(len(X)), "class_prior": class_prior(y).tolist(),
        "final_n_estimators": final_rounds,
        "cv": {"folds": cv.folds, "summary": cv.summary, "overall": cv.overall, "importance": cv.importance,
               "test_size": test_size, "purge_bars": splits.purge, "embargo_bars": splits.embargo,
               "scheme": splits.scheme, "max_train_size": splits.max_train_size},
        "window": asdict(window), "libraries": library_versions(), "seconds": seconds,
        "files": {p.name: sha256_file(p) for p in tmp.iterdir()},
    }
    atomic_write_json(tmp / "metadata.json", meta)
    target = cand_root / family
    _replace_dir(tmp, target)
    logger.info("%s: out-of-fold %s in %.1fs", family, cv.overall, seconds)
    return {"family": family, "path": str(target), "sha256": meta["files"]["model.joblib"],
            "overall": cv.overall, "summary": cv.summary,
            "importance_stability": {k: cv.importance[k]["rank_stability"] for k in ("gain", "permutation")},
            "seconds": seconds}


def _validation_summary(out_dir: Path) -> dict[str, Any] | None:
    """The expectation-suite result of the run, for the version's lineage."""
    path = out_dir / "validation.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {"success": report.get("success"), "window": report.get("window"),
            "suites": [{"suite": r.get("suite"), "rows": r.get("rows"), "expectations": r.get("evaluated"),
                        "failed": len(r.get("failed", []))} for r in report.get("suites", [])]}


# -- 6. ensemble -----------------------------------------------------------------------------
def assemble(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path,
             trained: list[dict[str, Any]], *, dag_id: str, run_id: str,
             logical_date: str | None = None) -> dict[str, Any]:
    """Soft-vote the trained families, score the ensemble out-of-fold, register the candidate.

    Returns:
        ``{"version", "weights", "ensemble", "members", "baselines", "gate_window"}``: metrics
        are out-of-fold over all folds; ``gate_window`` holds the ensemble's metrics on the last
        fold (this run's data interval).

    Raises:
        TrainingError: families disagree on out-of-fold rows.
        IntegrityError: a member's model file does not hash to what its training task reported.
    """
    import joblib

    from include.ensemble import WeightedSoftVotingEnsemble, combine, fit_weights
    from include.evaluation import baseline_oof, reliability, summarise_folds
    from include.labels import momentum_forecast
    from include.training import class_prior, metrics_with_prior

    trained = [t for t in trained if t]
    families = [t["family"] for t in sorted(trained, key=lambda t: cfg.models.index(t["family"]))]
    hashes = {t["family"]: t["sha256"] for t in trained}
    members, oofs, member_meta = [], {}, {}
    for fam in families:
        cdir = out_dir / "candidates" / fam
        # The hash comes from the training task's XCom, not from a file beside the model.
        members.append((fam, load_verified(cdir / "model.joblib", hashes[fam], f"{cfg.model_name} member {fam}")))
        oofs[fam] = pd.read_parquet(cdir / "oof.parquet")
        member_meta[fam] = json.loads((cdir / "metadata.json").read_text())
    ref = oofs[families[0]]
    for fam in families[1:]:
        if not oofs[fam].index.equals(ref.index):
            raise TrainingError(f"out-of-fold rows of {fam} differ from {families[0]}")
    y_oof = ref["label"].to_numpy()
    prior_rows = ref[["prior_down", "prior_range", "prior_up"]].to_numpy()
    probas = {f: oofs[f][["p_down", "p_range", "p_up"]].to_numpy() for f in families}
    raw = {f: cfg.ensemble_weights.get(f, 0.0) for f in families}
    weights = {f: w / sum(raw.values()) for f, w in raw.items()}
    fold_of = ref["fold"].to_numpy()
    if cfg.ensemble_weighting == "fitted":
        # Walk-forward weights: fold k is scored with weights fitted on the out-of-fold rows of
        # folds < k only (fold 0 with the configured weights), so no row is scored by weights
        # that saw it. The registered model gets weights fitted on every out-of-fold row.
        ens_oof = np.zeros_like(probas[families[0]])
        for k in np.unique(fold_of):
            rows, seen = fold_of == k, fold_of < k
            w_k = fit_weights({f: p[seen] for f, p in probas.items()}, y_oof[seen]) if seen.any() else weights
            ens_oof[rows] = combine({f: p[rows] for f, p in probas.items()}, w_k)
        weights = fit_weights(probas, y_oof)
    else:
        ens_oof = combine(probas, weights)
    last = ref["fold"].to_numpy() == ref["fold"].max()
    ensemble_metrics = metrics_with_prior(y_oof, ens_oof, prior_rows)
    gate_window = metrics_with_prior(y_oof[last], ens_oof[last], prior_rows[last])
    gate_window.update({"start": ref.index[last][0].isoformat(), "end": ref.index[last][-1].isoformat()})

    X, y, test_size, names = _training_table(out_dir, window)
    folds = [(tr, te) for _, tr, te in cfg.walk_forward(test_size).split(len(X))]
    table = pd.read_parquet(out_dir / "dataset.parquet")
    momentum = momentum_forecast(table["close"], horizon=cfg.label_horizon_bars, mode=cfg.label_threshold_mode,
                                 threshold=cfg.label_threshold, vol_window=cfg.label_vol_window_bars)
    momentum = momentum.reindex(X.index).fillna(1.0).to_numpy()  # warm-up rows: no view (range)
    baselines = baseline_oof(y, folds, cfg.random_state, momentum=momentum)
    oof_frame = pd.DataFrame(ens_oof, columns=["p_down", "p_range", "p_up"], index=ref.index)
    oof_frame[["prior_down", "prior_range", "prior_up"]] = prior_rows
    oof_frame["label"], oof_frame["fold"] = y_oof, fold_of
    oof_frame["momentum"] = pd.Series(momentum, index=X.index).reindex(ref.index).to_numpy()
    _write_parquet(oof_frame, out_dir / "ensemble_oof.parquet")
    model = WeightedSoftVotingEnsemble.from_fitted(members, [weights[f] for f in families],
                                                   class_prior(y), feature_names=names)
    spec = json.loads((out_dir / "feature_spec.json").read_text())
    per_fold = [
        {"fold": int(k), **metrics_with_prior(y_oof[ref["fold"] == k], ens_oof[ref["fold"] == k],
                                              prior_rows[ref["fold"] == k])}
        for k in sorted(ref["fold"].unique())
    ]
    cand = out_dir / "candidates" / "ensemble"
    tmp = Path(tempfile.mkdtemp(prefix=".ensemble.", dir=out_dir / "candidates"))
    joblib.dump(model, tmp / "model.joblib")
    metadata = {
        "kind": "weighted_soft_voting_ensemble", "members": families, "weights": weights,
        "registered_model": cfg.model_name,
        "symbol": cfg.symbol, "exchange": cfg.exchange, "market_type": cfg.market_type,
        "timeframe": cfg.timeframe, "config": cfg.to_dict(), "feature_spec": spec,
        "data_window": {"train_start": window.train_start, "interval_start": window.interval_start,
                        "requested_train_start": window.requested_train_start or window.train_start,
                        "short_history": window.requested_train_start is not None,
                        "interval_end": window.interval_end, "trained_until": window.interval_end,
                        "first_bar": X.index.min().isoformat(), "last_labelled_bar": X.index.max().isoformat(),
                        # End of the last bar any label read: the proof of no data past interval_end.
                        "last_bar_read_end": (X.index.max() + (cfg.label_horizon_bars + 1)
                                              * pd.Timedelta(seconds=cfg.bar_seconds)).isoformat()},
        "rows": {"train": int(len(X)), "out_of_fold": int(len(y_oof)), "gate_window": int(last.sum())},
        "class_prior": class_prior(y).tolist(),
        "metrics": {"ensemble": ensemble_metrics, "ensemble_per_fold": per_fold,
                    "ensemble_per_fold_summary": summarise_folds(per_fold), "gate_window": gate_window,
                    "reliability": reliability(y_oof, ens_oof),
                    "members": {f: member_meta[f]["cv"]["overall"] for f in families},
                    "members_summary": {f: member_meta[f]["cv"]["summary"] for f in families},
                    "baselines": baselines},
        "member_params": {f: member_meta[f]["params"] for f in families},
        "libraries": library_versions(), "code_version": code_version(),
        "dag_id": dag_id, "run_id": run_id, "logical_date": logical_date,
        "validation": _validation_summary(out_dir),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    metadata["files"] = {"model.joblib": sha256_file(tmp / "model.joblib")}
    atomic_write_json(tmp / "metadata.json", metadata)
    _replace_dir(tmp, cand)
    registry = ModelRegistry.from_settings(settings)
    version = registry.register(cand, window.ts("interval_end"))
    if registry.model_of(version) != cfg.model_name:
        raise TrainingError(f"candidate {version} registered under {registry.model_of(version)}, not {cfg.model_name}")
    registry.move_alias(CHALLENGER, version, event="candidate", run_id=run_id, dag_id=dag_id,
                        reason=f"candidate of {window.run_key}")
    registry.dispose()
    logger.info("ensemble %s weights %s: out-of-fold %s; baselines %s", version, weights,
                ensemble_metrics, baselines)
    return {"version": version, "model": cfg.model_name, "weights": weights, "ensemble": ensemble_metrics,
            "members": metadata["metrics"]["members"], "baselines": baselines,
            "gate_window": gate_window}


# -- 7. trading simulation -------------------------------------------------------------------
def simulate_trading(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Trade the ensemble's out-of-fold forecasts and the baselines; write ``trading.json``.

    Strategies on the same bars: ``ensemble`` (positions from its probabilities, see
    :mod:`include.backtest`), ``momentum`` (the momentum rule's class as a position),
    ``buy_and_hold`` (always long); flat is the zero line. Each over all out-of-fold bars and
    over the gate window (the last fold). Funding is charged for perpetuals.

    Returns:
        ``{"out_of_fold": {strategy: metrics}, "gate_window": {...}, "path"}`` without the
        equity curves (those are in ``trading.json``).
    """
    from include.backtest import TradingCosts, positions_from_proba, simulate

    oof = pd.read_parquet(out_dir / "ensemble_oof.parquet")
    start, end = oof.index.min().to_pydatetime(), window.ts("interval_end")
    store = _store(settings)
    try:
        key = {"exchange": cfg.exchange, "symbol": cfg.symbol, "start": start, "end": end}
        bars = store.load_ohlcv(market_type=cfg.market_type, timeframe=cfg.timeframe, **key)
        funding = store.load_funding_rates(**key) if cfg.market_type == "perp" else None
    finally:
        store.dispose()
    costs = TradingCosts(fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps)
    signals = {
        "ensemble": positions_from_proba(oof[["p_down", "p_range", "p_up"]].to_numpy(),
                                         oof[["prior_down", "prior_range", "prior_up"]].to_numpy(),
                                         cfg.trade_min_probability),
        "momentum": oof["momentum"].to_numpy().astype(int) - 1,
        "buy_and_hold": np.ones(len(oof), dtype=int),
    }
    last = (oof["fold"] == oof["fold"].max()).to_numpy()
    result: dict[str, Any] = {"costs": asdict(costs), "min_probability": cfg.trade_min_probability}
    for part, rows in (("out_of_fold", np.ones(len(oof), dtype=bool)), ("gate_window", last)):
        result[part] = {name: simulate(pd.Series(sig[rows], index=oof.index[rows]), bars, funding, costs,
                                       cfg.bar_seconds) for name, sig in signals.items()}
    result = json_safe(result)
    path = out_dir / "trading.json"
    atomic_write_json(path, result)
    compact = {part: {name: {k: v for k, v in m.items() if k not in ("equity", "costs")}
                      for name, m in result[part].items()} for part in ("out_of_fold", "gate_window")}
    for name, m in compact["out_of_fold"].items():
        logger.info("trading %s (out-of-fold): return %.2f%%, Sharpe %.2f, max drawdown %.2f%%, %d trades",
                    name, 100 * m["total_return"], m["sharpe"], 100 * m["max_drawdown"], m["trades"])
    return {**compact, "path": str(path)}


# -- 8. gate ---------------------------------------------------------------------------------
def policy_from_config(cfg: RunConfig) -> GatePolicy:
    """The gate policy of a run's parameters."""
    return GatePolicy(min_f1_margin=cfg.gate_min_f1_margin, max_log_loss_ratio=cfg.gate_max_log_loss_ratio,
                      champion_tolerance=cfg.gate_champion_tolerance, min_sharpe_margin=cfg.gate_min_sharpe_margin,
                      max_drawdown=cfg.gate_max_drawdown,
                      min_probabilistic_sharpe=cfg.gate_min_probabilistic_sharpe)


def _champion_evaluation(registry: ModelRegistry, cfg: RunConfig, window: RunWindow, settings: Settings,
                         out_dir: Path, gate_window: dict[str, Any]) -> dict[str, Any] | None:
    from include.training import metrics_with_prior

    pointer = registry.production(cfg.model_name)
    if pointer is None:
        return None
    model, meta = registry.load(pointer.version)
    champion_model = registry.model_of(pointer.version)
    if champion_model != cfg.model_name:
        raise GateError(f"production of {cfg.model_name} points at {pointer.version} of {champion_model}: "
                        "refusing to compare models of different markets or targets")
    trained_until = meta["data_window"]["trained_until"]
    result: dict[str, Any] = {"version": pointer.version, "model": champion_model, "trained_until": trained_until,
                              "window_start": window.interval_start, "metrics": None}
    if pd.Timestamp(trained_until) > pd.Timestamp(window.interval_start):
        return result
    spec = FeatureSpec.from_dict({k: v for k, v in meta["feature_spec"].items() if k != "sha256"})
    run_spec = json.loads((out_dir / "feature_spec.json").read_text())
    if spec.sha256 == run_spec["sha256"]:
        # Same spec over the same window: this run's feature file already holds the champion's inputs.
        feats = pd.read_parquet(out_dir / "features.parquet")
    else:
        store = _store(settings)
        try:
            feats = feature_frame(store, cfg, spec, window.ts("ingest_start"), window.ts("interval_end"))
        finally:
            store.dispose()
    table = pd.read_parquet(out_dir / "dataset.parquet")
    rows = table.index[(table.index >= pd.Timestamp(gate_window["start"]))
                       & (table.index <= pd.Timestamp(gate_window["end"])) & table["label"].notna()]
    proba = model.predict_proba(feats.loc[rows, list(spec.names)])
    result["metrics"] = metrics_with_prior(table.loc[rows, "label"].astype(int).to_numpy(), proba,
                                           model.class_prior_)
    return result


def gate(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path,
         assembled: dict[str, Any], trading: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decide whether the candidate may replace production; write ``gate_decision.json``.

    The champion is the production version of the candidate's own registered model, scored on
    exactly the rows of the candidate's last fold (this run's data interval), which the champion
    never saw if it was trained before the interval started.

    Raises:
        GateError: the production alias of this model names a version of another model.
    """
    registry = ModelRegistry.from_settings(settings)
    champion = _champion_evaluation(registry, cfg, window, settings, out_dir, assembled["gate_window"])
    decision = decide(policy_from_config(cfg), candidate_version=assembled["version"],
                      candidate_oof=assembled["ensemble"], baselines=assembled["baselines"],
                      candidate_window=assembled["gate_window"], champion=champion,
                      trading=trading["out_of_fold"] if trading else None)
    record = {**decision.to_dict(), "model": cfg.model_name, "policy": asdict(policy_from_config(cfg)),
              "champion_evaluation": champion, "candidate_gate_window": assembled["gate_window"],
              "candidate_out_of_fold": assembled["ensemble"], "baselines": assembled["baselines"],
              "trading": trading,
              "decided_at": datetime.now(UTC).isoformat(timespec="seconds")}
    record = json_safe(record)
    atomic_write_json(out_dir / "gate_decision.json", record)
    logger.info("gate %s: %s", cfg.model_name, decision.summary())
    for check in decision.checks:
        logger.info("  %s %s: %s", "ok  " if check.passed else "FAIL", check.name, check.detail)
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
        prediction = serving.predict(as_of)
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

    Raises:
        PipelineError: the decision did not pass, or the smoke test failed (after the rollback).
        RegistryError: the candidate fails verification, or production moved since the gate
            decided; production is unchanged.
    """
    if not decision.get("passed"):
        raise PipelineError(f"refusing to promote {decision.get('candidate')}: gate did not pass")
    registry = ModelRegistry.from_settings(settings)
    try:
        pointer = registry.promote(decision["candidate"], run_id=run_id, reason=decision["summary"],
                                   decision=decision, dag_id=dag_id, expected=decision.get("champion"))
        model = pointer.model
        try:
            smoke = smoke_test(settings, model, as_of or datetime.now(UTC))
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
    logger.info("%s: promoted %s (previous %s); smoke test: %s", model, pointer.version, pointer.previous, smoke)
    return {"action": "promote", "model": model, "production": pointer.version, "previous": pointer.previous,
            "smoke_test": smoke}


def keep(settings: Settings, decision: dict[str, Any], *, run_id: str, dag_id: str | None = None) -> dict[str, Any]:
    """Record that the model's production stays as it is after a failing (or unapproved) decision."""
    registry = ModelRegistry.from_settings(settings)
    model = decision["model"]
    registry.record_keep(model, decision.get("candidate"), run_id=run_id, dag_id=dag_id,
                         reason="; ".join(decision.get("reasons", [])) or decision.get("summary", ""),
                         decision=decision)
    pointer = registry.production(model)
    registry.dispose()
    return {"action": "keep", "model": model, "production": pointer.version if pointer else None,
            "rejected": decision.get("candidate")}


def summarise(settings: Settings, cfg: RunConfig, out_dir: Path, window: RunWindow,
              parts: dict[str, Any]) -> dict[str, Any]:
    """Write one market's ``summary.json`` and HTML report.

    Returns:
        ``{"model", "path", "report", "production", "action"}``.
    """
    from include.report import build_report

    registry = ModelRegistry.from_settings(settings)
    pointer = registry.production(cfg.model_name)
    registry.dispose()
    summary = json_safe({"model": cfg.model_name, "window": asdict(window), **parts,
                         "production": pointer.version if pointer else None})
    report = build_report(out_dir, summary)
    summary["report"] = str(report)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    logger.info("%s: run report written to %s", cfg.model_name, report)
    return {"model": cfg.model_name, "path": str(out_dir / SUMMARY_FILE), "report": str(report),
            "production": summary["production"], "action": (parts.get("action") or {}).get("action")}


def universe_outcomes(settings: Settings, dag_id: str, plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each market of a universe run did, from the files its run folder holds.

    Args:
        plans: the run's market plans (``{"model", "config", "window"}`` each).

    Returns:
        Per market, in plan order: ``{"model", "status"}`` with status ``done`` (and the
        market's ``summary``), ``skipped`` (and ``reason``, ``qualifies_on``) or ``failed``
        (no summary: a task of that market failed, and its alert named the market).
    """
    out = []
    for plan in plans:
        folder = settings.runs_dir / dag_id / plan["model"] / plan["window"]["run_key"]
        if (folder / SUMMARY_FILE).is_file():
            out.append({"model": plan["model"], "status": "done",
                        "summary": json.loads((folder / SUMMARY_FILE).read_text())})
        elif (folder / SKIPPED_FILE).is_file():
            skipped = json.loads((folder / SKIPPED_FILE).read_text())
            out.append({"model": plan["model"], "status": "skipped", "reason": skipped["reason"],
                        "qualifies_on": skipped.get("qualifies_on")})
        else:
            out.append({"model": plan["model"], "status": "failed",
                        "reason": f"no summary in {folder}: a task of this market failed (see its alert and log)"})
    return out


def publish_universe(settings: Settings, dag_id: str, plans: list[dict[str, Any]],
                     context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the universe summary of one weekly run and send it to the alert channels.

    The summary lists every market of the run: its decision and key numbers, or why it was
    skipped, or that it failed. It goes to ``<runs>/<dag_id>/_universe/<run key>.json``.

    Args:
        context: the Airflow task context, for the notifiers; ``None`` sends nothing.

    Returns:
        ``{"path", "markets": {model: status}, "notified"}``.
    """
    from include.notify import send, universe_message

    outcomes = universe_outcomes(settings, dag_id, plans)
    run_key = plans[0]["window"]["run_key"] if plans else "empty"
    path = settings.runs_dir / dag_id / "_universe" / f"{run_key}.json"
    atomic_write_json(path, json_safe({"run_key": run_key, "markets": outcomes}))
    for o in outcomes:
        action = (o.get("summary") or {}).get("action") or {}
        logger.info("%s: %s %s", o["model"], o["status"].upper(),
                    action.get("action") or o.get("reason", ""))
    notified = send(universe_message(outcomes), context) if context is not None else []
    return {"path": str(path), "markets": {o["model"]: o["status"] for o in outcomes}, "notified": notified}


def plan_universe(run_params: dict[str, Any], *, selected: list[str] | None, universe_file: str | None,
                  data_interval_start: Any, data_interval_end: Any, run_after: Any) -> list[dict[str, Any]]:
    """One plan per market of the universe: ``{"model", "config", "window"}``, JSON for XCom.

    Raises:
        ConfigError: see :func:`include.universe.plan_markets` and :func:`resolve_window`.
    """
    from include.universe import plan_markets

    plans = []
    for cfg in plan_markets(run_params, selected=selected, path=universe_file):
        window = resolve_window(cfg, data_interval_start=data_interval_start, data_interval_end=data_interval_end,
                                run_after=run_after)
        plans.append({"model": cfg.model_name, "config": cfg.to_dict(), "window": asdict(window)})
    return plans


def run_once(cfg: RunConfig, settings: Settings, *, dag_id: str, run_id: str,
             data_interval_start: Any = None, data_interval_end: Any = None) -> dict[str, Any]:
    """Every step of one market's weekly run in order, in this process, without a scheduler.

    The same functions the DAG's tasks call, with the same inputs; for benchmarks, the gate's
    multi-week record and tests that need a real registry. (The DAG adds what only Airflow
    gives: retries, alerts, the approval step, the wait for earlier runs, markets in parallel.)

    Returns:
        ``{"window", "assembled", "trading", "decision", "action", "summary"}``.

    Raises:
        PipelineError: from any step, as in the DAG.
    """
    window = resolve_window(cfg, data_interval_start=data_interval_start, data_interval_end=data_interval_end,
                            run_after=None)
    out = run_dir(settings, dag_id, cfg.model_name, window)
    ingested = ingest(cfg, window, settings, out)
    window = RunWindow(**ingested["window"])
    validation = validate(cfg, window, settings, out)
    feature_info = features(cfg, window, settings, out)
    dataset = labels(cfg, window, out)
    trained = [train(cfg, window, out, family) for family in cfg.models]
    assembled = assemble(cfg, window, settings, out, trained, dag_id=dag_id, run_id=run_id)
    trading = simulate_trading(cfg, window, settings, out)
    decision = gate(cfg, window, settings, out, assembled, trading)
    if decision["passed"]:
        action = promote(settings, decision, run_id=run_id, dag_id=dag_id, as_of=window.ts("interval_end"))
    else:
        action = keep(settings, decision, run_id=run_id, dag_id=dag_id)
    summary = summarise(settings, cfg, out, window, {
        "ingested": ingested, "validation": validation, "features": feature_info, "labels": dataset,
        "ensemble": assembled, "trading": trading, "gate": decision, "action": action})
    return {"window": window, "assembled": assembled, "trading": trading, "decision": decision,
            "action": action, "summary": summary}
