"""Data stages: ingest (with the young-market window), validation, features, labels."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.config import RunConfig, Settings
from include.data.ingest import ingest_window, market_source
from include.data.store import Gap, open_store
from include.errors import DataQualityError, MarketNotReadyError, NoDataError, TrainingError
from include.feature_store import feature_frame
from include.features import OPTIONAL_FEATURES, FeatureSpec, complete_rows
from include.labels import class_balance, make_labels
from include.quality.ledger import day_digests, validated_rows
from include.quality.suites import SuiteLimits, format_failures, run_suites, suite_versions
from include.registry import (
    atomic_write_json,
)
from include.run_folder import SKIPPED_FILE, SUMMARY_FILE, RunFolder, timed_step, write_parquet
from include.windows import (
    FUNDING_LOOKBACK,
    RunWindow,
    schedule_end_on_or_after,
    warmup,
)

logger = logging.getLogger(__name__)

#: Least share of a window's days with an open-interest close for the open-interest features to be
#: used (else the spec leaves them out).
OPEN_INTEREST_MIN_COVERAGE = 0.5


def history_window(cfg: RunConfig, window: RunWindow, first_bar: datetime | None,
                   stored: tuple[datetime, datetime] | None, source: str = "the source",
                   source_extent: tuple[datetime, datetime] | None = None) -> RunWindow:
    """The run's window given the market's first bar in it: shortened for a young market.

    A market listed after the window's ``ingest_start`` trains from its first bar plus the
    feature warm-up, provided that leaves at least ``min_history_days`` before
    ``interval_end``; ``requested_train_start`` keeps what the window asked for.

    Args:
        first_bar: open time of the first stored candle in ``[ingest_start, interval_end)``.
        stored: first and last stored candle of the series at all (``MarketStore.extent``).
        source: the source's description, for messages.
        source_extent: first and last candle the source holds, when it can tell (files can).

    Raises:
        MarketNotReadyError: the market is younger than ``min_history_days`` at this window, or
            not listed yet: the source's first candle (``source_extent``; the first stored one
            only for a source that cannot tell) is after the window. The message says from
            which week it qualifies.
        NoDataError: the window holds no candles and nothing says the market is young: no data
            at all, or data that ends before the window (stale files, an outage).
    """
    start, end = window.ts("ingest_start"), window.ts("interval_end")
    what = f"{cfg.symbol} {cfg.market_type} {cfg.timeframe} candles"
    if first_bar is None:
        # Whether the market was listed yet is the source's to say, not what earlier runs stored.
        listed, by = ((source_extent[0], "the source's first candle") if source_extent is not None
                      else (stored[0], "the first stored candle") if stored is not None else (None, ""))
        if listed is not None and listed >= end:
            qualifies = schedule_end_on_or_after(listed + warmup(cfg) + timedelta(days=cfg.min_history_days))
            raise MarketNotReadyError(
                f"{cfg.model_name}: not listed yet in this window: {by} is "
                f"{listed:%Y-%m-%d %H:%M}Z, after {end:%Y-%m-%d}Z. It qualifies for the week ending "
                f"{qualifies:%Y-%m-%d} or later; skipped this run.", qualifies_on=qualifies.date().isoformat())
        held = (f"the market store holds {what} from {stored[0]:%Y-%m-%d %H:%M}Z to {stored[1]:%Y-%m-%d %H:%M}Z"
                if stored is not None else f"the market store holds no {what} at all")
        if source_extent is not None:
            held += (f"; the source covers {source_extent[0]:%Y-%m-%d %H:%M}Z to "
                     f"{source_extent[1]:%Y-%m-%d %H:%M}Z")
        raise NoDataError(
            f"{cfg.model_name}: {source} has no {what} in [{start:%Y-%m-%d %H:%M}Z, {end:%Y-%m-%d %H:%M}Z) "
            f"and {held}. For newer data, run with source='exchange' or point source_dir / MARKET_DATA_DIR "
            "at newer files; for the bundled data, set as_of_date (it ends on 2023-12-31).")
    if first_bar <= start:
        return window
    if first_bar <= window.ts("train_start") - warmup(cfg):
        # Listed within the features' read margin: the full training window, read from its first bar.
        return dataclasses.replace(window, ingest_start=first_bar.isoformat())
    train_start = first_bar + warmup(cfg)
    available = (end - train_start).total_seconds() / 86_400
    if available < cfg.min_history_days:
        qualifies = schedule_end_on_or_after(train_start + timedelta(days=cfg.min_history_days))
        # A market listed less than a warm-up before the window's end has no training day at all:
        # say so rather than count negative days.
        leaves = (f"which leaves {available:.0f} days of training data before {end:%Y-%m-%d}Z after the "
                  f"{warmup(cfg) / timedelta(days=1):.0f}-day warm-up" if available >= 1 else
                  f"less than the {warmup(cfg) / timedelta(days=1):.0f}-day warm-up before {end:%Y-%m-%d}Z, so "
                  "no training data yet")
        raise MarketNotReadyError(
            f"{cfg.model_name}: history starts {first_bar:%Y-%m-%d %H:%M}Z, {leaves}; "
            f"min_history_days={cfg.min_history_days}. It qualifies for the week ending {qualifies:%Y-%m-%d} "
            f"or later; skipped this run.", qualifies_on=qualifies.date().isoformat())
    logger.warning("%s: young market: %.0f days of history instead of train_window_days=%d; training from %s",
                   cfg.model_name, available, cfg.train_window_days, train_start)
    return RunWindow(window.interval_start, window.interval_end, train_start.isoformat(), first_bar.isoformat(),
                     window.run_key, window.source, requested_train_start=window.train_start)


@timed_step("ingest")
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
        MarketNotReadyError: the market's history is below ``min_history_days``, or it is not
            listed yet at this window.
        NoDataError: the window holds no candles of a market that is not young (see
            :func:`history_window`).
    """
    if out_dir is not None:
        for name in (SUMMARY_FILE, SKIPPED_FILE):
            (out_dir / name).unlink(missing_ok=True)
    source = market_source(cfg, settings)
    start, end = window.ts("ingest_start"), window.ts("interval_end")
    key = cfg.market
    store = open_store(settings)
    try:
        out = ingest_window(source, store, key, start=start, end=end,
                            funding_start=start - FUNDING_LOOKBACK,
                            open_interest_start=start - timedelta(days=2))
        series = {"exchange": cfg.exchange, "symbol": cfg.symbol, "market_type": cfg.market_type,
                  "timeframe": cfg.timeframe}
        in_window = store.extent("ohlcv", **series, start=start, end=end)
        extent = store.extent("ohlcv", **series)
    finally:
        store.dispose()
    out["source"] = repr(source)
    first_bar = in_window[0].to_pydatetime() if in_window else None
    try:
        stored = None if extent is None else (extent[0].to_pydatetime(), extent[1].to_pydatetime())
        coverage = None
        if first_bar is None and hasattr(source, "ohlcv_extent"):
            coverage = source.ohlcv_extent(cfg.symbol, cfg.market_type, cfg.timeframe)
        effective = history_window(cfg, window, first_bar, stored, source=out["source"], source_extent=coverage)
    except MarketNotReadyError as exc:
        if out_dir is not None:
            atomic_write_json(out_dir / SKIPPED_FILE, {"model": cfg.model_name, "reason": str(exc),
                                                       "qualifies_on": exc.qualifies_on, "window": asdict(window)})
        raise
    out["window"] = asdict(effective)
    return out


# -- 2. validate -----------------------------------------------------------------------------
def quarantine_suite(refused: pd.DataFrame) -> dict[str, Any]:
    """The validation report's entry for candles refused at ingestion: one failure per bar (first 20)."""
    failures = [{
        "message": f"{row.timestamp:%Y-%m-%dT%H:%MZ}: {row.reason} (from {row.source}; kept out of the store, "
                   "in ohlcv_quarantine)",
        "expectation": "candle_screen_at_ingestion", "kwargs": {}, "observed_value": None, "unexpected_count": 1,
        "unexpected_examples": [],
        "example_rows": [{"timestamp": row.timestamp.isoformat(),
                          **{c: (None if pd.isna(getattr(row, c)) else float(getattr(row, c)))
                             for c in ("open", "high", "low", "close", "volume")}}],
        "exception": None} for row in refused.head(20).itertuples()]
    return {"suite": "ohlcv_refused", "success": False, "rows": int(len(refused)), "evaluated": 1,
            "failed": failures}


def suite_limits(cfg: RunConfig, start: datetime, end: datetime, ohlcv: pd.DataFrame,
                 gaps: list[Gap]) -> SuiteLimits:
    """The suites' thresholds for the window ``[start, end)`` of ``cfg``'s market
    (:class:`~include.quality.suites.SuiteLimits`): the run's limits, the bars the window should
    hold, and the bars at its end that the exchange itself does not have (recorded ``gaps``
    after the last candle of ``ohlcv``), which the data is not expected to hold."""
    bar = timedelta(seconds=cfg.bar_seconds)
    last_close = (ohlcv["timestamp"].iloc[-1] + bar) if len(ohlcv) else pd.Timestamp(start)
    tail_gap = sum(max(0, int((min(g.end, pd.Timestamp(end)) - max(g.start, last_close)) // bar)) for g in gaps)
    return SuiteLimits(
        bar_seconds=cfg.bar_seconds,
        expected_bars=int((end - start).total_seconds() // cfg.bar_seconds),
        min_row_share=cfg.min_row_share, max_gap_share=cfg.max_gap_share, max_gap_bars=cfg.max_gap_bars,
        max_abs_funding_rate=cfg.max_abs_funding_rate, funding_interval_hours=cfg.funding_interval_hours,
        window_start=pd.Timestamp(start), window_end=pd.Timestamp(end), exchange_gap_bars_at_end=tail_gap,
    )


def _suite_report(ohlcv: pd.DataFrame, funding: pd.DataFrame | None, oi: pd.DataFrame, refused: pd.DataFrame,
                  limits: SuiteLimits, docs: Path, validated: dict[str, np.ndarray]) -> dict[str, Any]:
    """The suites' report on one window (:func:`include.quality.suites.run_suites`), with Data Docs in ``docs``.

    The suites run on the rows not in ``validated`` first; when that finds bad data (a failure or
    a bar refused at ingestion), the whole window is validated from scratch. Refused bars add a
    failed ``ohlcv_refused`` suite at the front (:func:`quarantine_suite`).

    Args:
        ohlcv: candles of the window, columns timestamp (UTC) + OHLCV.
        funding: funding settlements of the window, or ``None`` (spot) to skip the funding suite.
        oi: daily open interest of the window.
        refused: candles of the window refused at ingestion (``ohlcv_quarantine``).
        limits: the suites' thresholds (:func:`suite_limits`).
        docs: folder of the Data Docs site.
        validated: per suite, a boolean mask over its frame's rows that passed the same row checks
            before (:func:`include.quality.ledger.validated_rows`).

    Returns:
        The report of :func:`~include.quality.suites.run_suites`.
    """
    report = run_suites(ohlcv, funding, oi, limits, docs_dir=docs, validated=validated)
    if (not report["success"] or len(refused)) and report["incremental"]:
        # Bad data: validated from scratch, so the report names every failure as a first run would.
        shutil.rmtree(docs, ignore_errors=True)
        report = run_suites(ohlcv, funding, oi, limits, docs_dir=docs)
    if len(refused):
        report["suites"].insert(0, quarantine_suite(refused))
        report["success"] = False
    return report


def _validate_stored_window(cfg: RunConfig, window: RunWindow, settings: Settings, start: datetime, end: datetime,
                            out_dir: Path) -> tuple[dict[str, Any], tuple[pd.Timestamp, pd.Timestamp] | None]:
    """Validate the stored window ``[start, end)`` of ``cfg``'s market and record its days after a pass.

    Returns:
        The suites' report (:func:`_suite_report`) and the first and last stored candle of the
        market (``None`` when the store holds none).
    """
    store = open_store(settings)
    try:
        extent = store.extent("ohlcv", exchange=cfg.exchange, symbol=cfg.symbol, market_type=cfg.market_type,
                              timeframe=cfg.timeframe)
        key = {"exchange": cfg.exchange, "symbol": cfg.symbol, "start": start, "end": end}
        ohlcv = store.load_ohlcv(market_type=cfg.market_type, timeframe=cfg.timeframe, **key)
        funding = store.load_funding_rates(**key) if cfg.market_type == "perp" else None
        oi = store.load_open_interest(**key)
        refused = store.load_quarantine(market_type=cfg.market_type, timeframe=cfg.timeframe, **key)
        gaps = store.load_gaps(exchange=cfg.exchange, market_type=cfg.market_type, symbol=cfg.symbol,
                               timeframe=cfg.timeframe)
        limits = suite_limits(cfg, start, end, ohlcv, gaps)
        # Each bar is validated once per suite version: days recorded as passed with the same rows
        # are not checked row by row again (include.quality.ledger).
        versions = suite_versions(limits)
        frames = {name: frame for name, frame in (("ohlcv", ohlcv), ("funding_rate", funding), ("open_interest", oi))
                  if frame is not None and not frame.empty}
        where = {name: {"series": name, "exchange": cfg.exchange, "symbol": cfg.symbol, "suite_sha": versions[name],
                        **({"market_type": cfg.market_type, "timeframe": cfg.timeframe} if name == "ohlcv" else {})}
                 for name in frames}
        recorded = {name: store.load_validated_days(**where[name], start=start, end=end) for name in frames}
        digests = {name: day_digests(frame) for name, frame in frames.items()}
        # Great Expectations' Data Docs of this validation, in the run folder (replaced on a re-run).
        docs = out_dir / "data_docs"
        shutil.rmtree(docs, ignore_errors=True)
        report = _suite_report(ohlcv, funding, oi, refused, limits, docs,
                               validated={name: validated_rows(frame, digests[name], recorded[name])
                                          for name, frame in frames.items()})
        if report["success"]:
            for name in frames:
                store.record_validated_days([d for d in digests[name] if d[:2] not in recorded[name]],
                                            **where[name], run_key=window.run_key)
    finally:
        store.dispose()
    return report, extent


def _validation_error(cfg: RunConfig, start: datetime, end: datetime,
                      extent: tuple[pd.Timestamp, pd.Timestamp] | None, report: dict[str, Any],
                      path: Path) -> DataQualityError:
    """The error of a failed validation: the market, the window, the store's extent, the report and each failure.

    Returns:
        The :class:`~include.errors.DataQualityError` to raise, carrying the report and its path.
    """
    failed = sum(len(s["failed"]) for s in report["suites"])
    held = (f"the market store holds {cfg.symbol} {cfg.market_type} {cfg.timeframe} candles from "
            f"{extent[0]:%Y-%m-%dT%H:%MZ} to {extent[1]:%Y-%m-%dT%H:%MZ}" if extent
            else "the store holds no candles")
    return DataQualityError(
        f"market data for {cfg.model_name} [{start:%Y-%m-%dT%H:%MZ}, {end:%Y-%m-%dT%H:%MZ}) failed {failed} "
        f"expectation(s) ({held}); report {path}; Data Docs {report['data_docs']}:\n{format_failures(report)}",
        report, str(path))


@timed_step("validate")
def validate(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Run the expectation suites over every bar the features read; write ``validation.json``.

    The window is ``[ingest_start, interval_end)``: the training window and the indicator warm-up
    before it, so a bad bar in the warm-up is caught here, not as degenerate labels later. The
    candles must cover it: bars missing at its start count as a gap, and the last bar must close
    at ``interval_end`` unless the store records an exchange gap there, so a version's
    ``trained_until`` is true. Great Expectations renders the suites and their results as Data
    Docs in ``data_docs/`` of the run folder, which the run's report and a failure's message name.

    Each bar is validated once per suite version: the row checks run only on days of the window
    that the store's ``bar_validation`` records do not show as passed with the same rows
    (:mod:`include.quality.ledger`); the window's checks (row count, gaps, the end of the data,
    quarantined bars) run on the whole window every time. When anything fails, the whole window
    is validated from scratch, so the report lists every failure as a first run would. After a
    pass, the window's days are recorded.

    Returns:
        ``{"success": True, "rows": {...}, "validated_rows": {...}, "report": path, "data_docs":
        index page}``; ``rows`` per suite is the window's, ``validated_rows`` what the row checks
        ran on.

    Raises:
        DataQualityError: any expectation failed; the message lists each failure with examples.
    """
    start, end = window.ts("ingest_start"), window.ts("interval_end")
    report, extent = _validate_stored_window(cfg, window, settings, start, end, out_dir)
    report["window"] = {"start": start.isoformat(), "end": end.isoformat()}
    path = RunFolder(out_dir).validation
    atomic_write_json(path, report)
    rows = {s["suite"]: s["rows"] for s in report["suites"]}
    if not report["success"]:
        raise _validation_error(cfg, start, end, extent, report, path)
    checked = {s["suite"]: s.get("validated_rows", s["rows"]) for s in report["suites"]}
    logger.info("validation passed: %s rows in the window; row checks ran on %s (the other days passed before); "
                "Data Docs %s", rows, checked, report["data_docs"])
    return {"success": True, "rows": rows, "validated_rows": checked, "report": str(path),
            "data_docs": report["data_docs"]}


def features_start(cfg: RunConfig, window: RunWindow) -> datetime:
    """First bar of a run's feature file: ``train_start`` less the warm-up features and labels
    need (the first bar, for a young market). Its features read from ``ingest_start``."""
    return window.ts("train_start") - warmup(cfg)


@timed_step("features")
def features(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Compute features for the ingest window; write ``features.parquet`` and ``feature_spec.json``.

    Funding features are part of the spec for perpetuals only; open-interest features when the
    store holds open interest for at least half of the training window's days. Besides the
    spec's features the file holds each bar's ``close`` (USD), the labels' input: the default
    spec names no price level, so the close rides along without being a model input.
    """
    end = window.ts("interval_end")
    store = open_store(settings)
    try:
        oi = store.load_open_interest(exchange=cfg.exchange, symbol=cfg.symbol,
                                      start=window.ts("train_start"), end=end)
        days = (end - window.ts("train_start")).days
        use_oi = len(oi) >= OPEN_INTEREST_MIN_COVERAGE * days
        # Funding features for perpetuals only: a spot market pays no funding.
        spec = FeatureSpec.default(funding=cfg.market_type == "perp", open_interest=use_oi,
                                   extra=cfg.extra_features)
        frame = feature_frame(store, cfg, spec, features_start(cfg, window), end, reuse=True)
        if "close" not in frame.columns:
            bars = store.load_ohlcv(exchange=cfg.exchange, symbol=cfg.symbol, market_type=cfg.market_type,
                                    timeframe=cfg.timeframe, start=features_start(cfg, window), end=end)
            closes = bars.set_index("timestamp")["close"].astype("float64")
            frame["close"] = closes.reindex(frame.index).to_numpy()
    finally:
        store.dispose()
    path = RunFolder(out_dir).features
    write_parquet(frame, path)
    atomic_write_json(RunFolder(out_dir).feature_spec, {**spec.to_dict(), "sha256": spec.sha256})
    out = {"path": str(path), "rows": int(len(frame)), "columns": list(frame.columns),
           "spec_sha256": spec.sha256, "open_interest": use_oi}
    logger.info("features: %d rows x %d columns (open interest: %s)", len(frame), frame.shape[1], use_oi)
    return out


# -- 4. labels -------------------------------------------------------------------------------
@timed_step("labels")
def labels(cfg: RunConfig, window: RunWindow, out_dir: Path) -> dict[str, Any]:
    """Label the training window and write the modelling table ``dataset.parquet``.

    Rows: bars in ``[train_start, interval_end)`` whose candle features are all defined
    (open-interest features may be NaN); the last ``horizon`` rows have no label (NaN).

    Raises:
        TrainingError: no labelled rows remain, or a class is absent.
    """
    feats = pd.read_parquet(RunFolder(out_dir).features)
    y = make_labels(feats["close"], horizon=cfg.label_horizon_bars, mode=cfg.label_threshold_mode,
                    threshold=cfg.label_threshold, vol_window=cfg.label_vol_window_bars)
    table = feats.assign(label=y)
    table = table[table.index >= pd.Timestamp(window.train_start)]
    defined = complete_rows(table, feats.columns)
    dropped = table.index[~defined]
    dropped_info = None
    if len(dropped):
        missing = table.loc[~defined, [c for c in feats.columns if c not in OPTIONAL_FEATURES]].isna().sum()
        dropped_info = {"rows": int(len(dropped)), "first": dropped[0].isoformat(), "last": dropped[-1].isoformat(),
                        "columns": {c: int(n) for c, n in missing[missing > 0].items()}}
        logger.warning("%s: labels: dropped %d bar(s) with undefined features, %s to %s; NaN per column %s",
                       cfg.model_name, len(dropped), dropped_info["first"], dropped_info["last"],
                       dropped_info["columns"])
    table = table[defined]
    balance = class_balance(table["label"])
    labelled = int(table["label"].notna().sum())
    if labelled == 0 or min(balance.values()) == 0:
        why = (f"; {dropped_info['rows']} bar(s) dropped for undefined features from {dropped_info['first']} "
               f"(NaN per column {dropped_info['columns']})" if dropped_info else "")
        raise TrainingError(f"labels for {cfg.model_name} {window.run_key} are degenerate: {labelled} labelled "
                            f"rows, class balance {balance}{why}")
    path = RunFolder(out_dir).dataset
    write_parquet(table, path)
    logger.info("labels: %d labelled rows, class balance %s", labelled, balance)
    return {"path": str(path), "rows": int(len(table)), "labelled_rows": labelled, "class_balance": balance,
            "dropped": dropped_info}
