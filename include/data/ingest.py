"""Ingestion: copy a window of OHLCV, funding rates and open interest from a source into the store.

Two modes, chosen by the source's ``incremental`` attribute:

* full (the file source): the whole window is read and upserted. Files can be corrected, and an
  upsert of unchanged rows writes nothing, so re-reading is the safe choice.
* incremental (the exchange source): only what the store is missing is fetched: the part of
  the window after the last stored timestamp (up to the window's end, normally the run's
  ``data_interval_end``) and the part before the first stored one. Closed bars do not change on
  the exchange, so nothing stored is fetched again.

Everything is fetched before anything is written, and all writes of one call commit in one
transaction: a source error (bad symbol, malformed response, retries exhausted) leaves the
store as it was. Gaps inside the fetched candles, and between them and the stored neighbours,
are recorded in the store's ``ohlcv_gap`` table, never filled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from include.config import RunConfig, Settings
from include.data.exchange import ExchangeSource
from include.data.sources import FileSource, MarketDataSource
from include.data.store import Gap, MarketStore, UpsertResult
from include.identity import Market
from include.paths import checked_input_path

logger = logging.getLogger(__name__)


def find_gaps(timestamps: pd.Series, bar: timedelta) -> list[Gap]:
    """Runs of missing bars between consecutive timestamps.

    Args:
        timestamps: bar open times, UTC, sorted ascending.
        bar: expected spacing.

    Returns:
        One :class:`Gap` per place where two neighbours are more than one bar apart.
    """
    ts = pd.Series(timestamps).reset_index(drop=True)
    if len(ts) < 2:
        return []
    step = pd.Timedelta(bar)
    diff = ts.diff()
    gaps = []
    for i in diff.index[diff > step]:
        gaps.append(Gap(start=ts[i - 1] + step, end=ts[i], missing_bars=int(diff[i] / step) - 1))
    return gaps


def missing_ranges(extent: tuple[pd.Timestamp, pd.Timestamp] | None, start: datetime, end: datetime,
                   step: timedelta) -> list[tuple[str, datetime, datetime]]:
    """Parts of ``[start, end)`` outside the stored span ``[first, last]``.

    Returns:
        ``("before", start, first)`` and/or ``("after", last + step, end)``; the whole window as
        ``("all", start, end)`` when nothing is stored.
    """
    if extent is None:
        return [("all", start, end)]
    first, last = extent[0].to_pydatetime(), extent[1].to_pydatetime()
    ranges = []
    if start < first:
        ranges.append(("before", start, min(first, end)))
    if last + step < end:
        ranges.append(("after", max(last + step, start), end))
    return ranges


PRICE_COLUMNS = ("open", "high", "low", "close")


def screen_candles(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split candles into rows fit for the store and rows to quarantine, with the reason of each.

    A row is refused when a value is missing, a price is not positive, volume is negative, high
    is below open, close or low, or low is above open or close: the checks validation would fail.

    Args:
        frame: candles, shape ``(n, 6)``: timestamp + OHLCV.

    Returns:
        ``(good, refused)``: ``refused`` has the same columns plus ``reason`` (one line naming
        each broken column, its value and the limit).
    """
    cols = ["open", "high", "low", "close", "volume"]
    values = frame[cols].apply(pd.to_numeric, errors="coerce")
    prices = values[list(PRICE_COLUMNS)]
    refused = (values.isna().any(axis=1) | (prices <= 0).any(axis=1) | (values["volume"] < 0)
               | (values["high"] < values[["open", "close", "low"]].max(axis=1))
               | (values["low"] > values[["open", "close"]].min(axis=1)))
    reasons = []
    for _, row in values[refused].iterrows():
        why = [f"{c} is missing" for c in cols if pd.isna(row[c])]
        why += [f"{c}={row[c]:g} is not positive" for c in PRICE_COLUMNS if row[c] <= 0]
        if row["volume"] < 0:
            why.append(f"volume={row['volume']:g} is negative")
        others, body = row[["open", "close", "low"]].dropna(), row[["open", "close"]].dropna()
        if len(others) and row["high"] < others.max():
            why.append(f"high={row['high']:g} is below {others.idxmax()}={others.max():g}")
        if len(body) and row["low"] > body.min():
            why.append(f"low={row['low']:g} is above {body.idxmin()}={body.min():g}")
        reasons.append("; ".join(why))
    bad = frame[refused].copy()
    bad["reason"] = reasons
    return frame[~refused], bad


#: The stored span of one series: its first and last timestamp, ``None`` when it holds no rows.
_Extent = tuple[pd.Timestamp, pd.Timestamp] | None


def _series_windows(store: MarketStore, key: Market, *, start: datetime, funding_start: datetime,
                    open_interest_start: datetime) -> dict[str, tuple[datetime, timedelta, _Extent]]:
    """Per series the window's first timestamp, the series' step and the store's extent of it; no
    funding for a spot market."""
    ident = {"exchange": key.exchange, "symbol": key.symbol}
    candle_ident = {**ident, "market_type": key.market_type, "timeframe": key.timeframe}
    windows = {
        "ohlcv": (start, key.bar, store.extent("ohlcv", **candle_ident)),
        "funding_rate": (funding_start, timedelta(milliseconds=1), store.extent("funding_rate", **ident)),
        "open_interest": (open_interest_start, timedelta(days=1), store.extent("open_interest", **ident)),
    }
    if key.market_type == "spot":
        del windows["funding_rate"]  # funding is paid on perpetuals; a spot market has none
    return windows


def _series_fetchers(source: MarketDataSource,
                     key: Market) -> dict[str, Callable[[datetime, datetime], pd.DataFrame]]:
    """Per series the source call that fetches its rows in ``[a, b)``."""
    return {
        "ohlcv": lambda a, b: source.fetch_ohlcv(key.symbol, key.market_type, key.timeframe, a, b),
        "funding_rate": lambda a, b: source.fetch_funding_rates(key.symbol, a, b),
        "open_interest": lambda a, b: source.fetch_open_interest(key.symbol, a, b),
    }


def _fetch_ranges(fetch: Callable[[datetime, datetime], pd.DataFrame], ranges: list[tuple[str, datetime, datetime]],
                  extent: _Extent, bar: timedelta | None) -> tuple[pd.DataFrame | None, list[Gap]]:
    """``(rows of every range, None when there is no range; gaps found)``; gaps are looked for (in
    candles) only when ``bar`` is given."""
    parts = []
    gaps: list[Gap] = []
    for side, a, b in ranges:
        part = fetch(a, b)
        parts.append(part)
        if bar is not None:
            # Stored neighbours make the edges of an incremental range checkable for gaps; a
            # full re-read ("all") is checked on its own, whatever older bars the store holds.
            neighbours = ([] if extent is None or side == "all"
                          else [extent[1]] if side == "after" else [extent[0]])
            ts = pd.concat([part["timestamp"], pd.Series(neighbours, dtype=part["timestamp"].dtype)])
            gaps += find_gaps(ts.sort_values(ignore_index=True), bar)
    frame = pd.concat(parts, ignore_index=True) if parts else None
    return frame, gaps


def _quarantine_candles(frame: pd.DataFrame, ranges: list[tuple[str, datetime, datetime]],
                        key: Market) -> tuple[pd.DataFrame, list[tuple[datetime, datetime, pd.DataFrame]], int]:
    """``(candles fit for the store, refused candles of each fetched range, rows refused)``; logs a
    warning naming the first refused candle."""
    # Rows that would fail validation stay out of the store, kept with their reason.
    frame, bad = screen_candles(frame)
    refused: list[tuple[datetime, datetime, pd.DataFrame]] = []
    for _, a, b in ranges:
        in_range = (bad["timestamp"] >= pd.Timestamp(a)) & (bad["timestamp"] < pd.Timestamp(b))
        refused.append((a, b, bad[in_range]))
    if len(bad):
        first = bad.iloc[0]
        logger.warning("%s %s: %d candle(s) refused and quarantined, e.g. %s: %s", key.symbol,
                       key.market_type, len(bad), first["timestamp"].isoformat(), first["reason"])
    return frame, refused, int(len(bad))


def _write_fetched(store: MarketStore, key: Market, source: MarketDataSource, frames: dict[str, pd.DataFrame | None],
                   gaps: list[Gap], refused: list[tuple[datetime, datetime, pd.DataFrame]]) -> dict[str, UpsertResult]:
    """Per series written its upsert's outcome: all fetched rows, gaps and quarantined candles are
    written in one transaction."""
    ident = {"exchange": key.exchange, "symbol": key.symbol}
    candle_ident = {**ident, "market_type": key.market_type, "timeframe": key.timeframe}
    with store.begin() as conn:
        results: dict[str, UpsertResult] = {}
        if frames["ohlcv"] is not None:
            results["ohlcv"] = store.upsert_ohlcv(frames["ohlcv"], **candle_ident, conn=conn)
        if frames.get("funding_rate") is not None:
            results["funding_rate"] = store.upsert_funding_rates(frames["funding_rate"], **ident, conn=conn)
        if frames["open_interest"] is not None:
            results["open_interest"] = store.upsert_open_interest(frames["open_interest"], **ident, conn=conn)
        store.record_gaps(gaps, **candle_ident, source=repr(source), conn=conn)
        for a, b, bad in refused:
            store.quarantine_ohlcv(bad, **candle_ident, start=a, end=b, source=repr(source), conn=conn)
    return results


def ingest_window(source: MarketDataSource, store: MarketStore, key: Market, *,
                  start: datetime, end: datetime, funding_start: datetime,
                  open_interest_start: datetime) -> dict[str, Any]:
    """Bring the store's candles, funding rates and open interest for ``key`` up to ``end``.

    Args:
        source: where the data comes from; incremental when ``source.incremental`` is true.
        store: the market store.
        key: the series.
        start / end: candle window ``[start, end)``.
        funding_start / open_interest_start: first timestamps of the funding and open-interest
            windows (they end at ``end`` too).

    Returns:
        Per series: mode, fetched ranges, rows fetched and new; ``gaps``: recorded candle gaps.

    Raises:
        SourceError: from the source; nothing is written.
    """
    t0 = time.perf_counter()
    incremental = bool(getattr(source, "incremental", False))
    windows = _series_windows(store, key, start=start, funding_start=funding_start,
                              open_interest_start=open_interest_start)
    fetchers = _series_fetchers(source, key)
    frames: dict[str, pd.DataFrame | None] = {}
    report: dict[str, Any] = {}
    gaps: list[Gap] = []
    refused: list[tuple[datetime, datetime, pd.DataFrame]] = []
    for series, (first, step, extent) in windows.items():
        ranges = missing_ranges(extent, first, end, step) if incremental else [("all", first, end)]
        frame, found = _fetch_ranges(fetchers[series], ranges, extent, key.bar if series == "ohlcv" else None)
        gaps += found
        report[series] = {"mode": "incremental" if incremental else "full",
                          "ranges": [[side, a.isoformat(), b.isoformat()] for side, a, b in ranges],
                          "rows_fetched": 0 if frame is None else int(len(frame)), "rows_new": 0}
        if series == "ohlcv" and frame is not None:
            frame, bad_rows, quarantined = _quarantine_candles(frame, ranges, key)
            refused += bad_rows
            report[series]["quarantined"] = quarantined
        frames[series] = frame
    results = _write_fetched(store, key, source, frames, gaps, refused)
    for series, result in results.items():
        report[series]["rows_new"] = result.rows_new
        report[series]["duplicates_dropped"] = result.duplicates_dropped
    report["gaps"] = [{"start": g.start.isoformat(), "end": g.end.isoformat(), "missing_bars": g.missing_bars}
                      for g in gaps]
    report["seconds"] = round(time.perf_counter() - t0, 3)
    logger.info("ingested %s %s %s up to %s from %s: %s", key.exchange, key.symbol, key.market_type,
                end, source, report)
    return report


# -- 1. ingest -------------------------------------------------------------------------------
def market_source(cfg: RunConfig, settings: Settings) -> MarketDataSource:
    """The run's market-data source: the file source (default) or the exchange source.

    Raises:
        SourceError: the exchange is not supported by the exchange source.
        ConfigError: ``source_dir`` lies outside the input roots
            (:func:`include.paths.checked_input_path`).
    """
    if cfg.source == "exchange":
        return ExchangeSource(cfg.exchange, api_url=settings.exchange_api_url)
    if cfg.source_dir:
        return FileSource(checked_input_path(cfg.source_dir, "source_dir"))
    return FileSource(settings.data_dir)
