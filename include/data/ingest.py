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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from include.data.sources import MarketDataSource
from include.data.store import Gap, MarketStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesKey:
    """Identity of the market series one ingestion writes.

    Attributes:
        exchange: exchange id, e.g. ``binance``.
        symbol: exchange notation, e.g. ``BTCUSDT``.
        market_type: ``perp`` or ``spot`` (candles only; funding and open interest are perp).
        timeframe: candle timeframe, e.g. ``1h``.
        bar: the timeframe's length.
    """

    exchange: str
    symbol: str
    market_type: str
    timeframe: str
    bar: timedelta


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


def ingest_window(source: MarketDataSource, store: MarketStore, key: SeriesKey, *,
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
    ident = {"exchange": key.exchange, "symbol": key.symbol}
    candle_ident = {**ident, "market_type": key.market_type, "timeframe": key.timeframe}
    windows = {
        "ohlcv": (start, key.bar, store.extent("ohlcv", **candle_ident)),
        "funding_rate": (funding_start, timedelta(milliseconds=1), store.extent("funding_rate", **ident)),
        "open_interest": (open_interest_start, timedelta(days=1), store.extent("open_interest", **ident)),
    }
    if key.market_type == "spot":
        del windows["funding_rate"]  # funding is paid on perpetuals; a spot market has none
    fetchers = {
        "ohlcv": lambda a, b: source.fetch_ohlcv(key.symbol, key.market_type, key.timeframe, a, b),
        "funding_rate": lambda a, b: source.fetch_funding_rates(key.symbol, a, b),
        "open_interest": lambda a, b: source.fetch_open_interest(key.symbol, a, b),
    }
    frames: dict[str, pd.DataFrame] = {}
    report: dict[str, Any] = {}
    gaps: list[Gap] = []
    for series, (first, step, extent) in windows.items():
        ranges = missing_ranges(extent, first, end, step) if incremental else [("all", first, end)]
        parts = []
        for side, a, b in ranges:
            part = fetchers[series](a, b)
            parts.append(part)
            if series == "ohlcv":
                # Stored neighbours make the edges of the fetched range checkable for gaps.
                neighbours = [] if extent is None else ([extent[1]] if side == "after" else [extent[0]])
                ts = pd.concat([part["timestamp"], pd.Series(neighbours, dtype=part["timestamp"].dtype)])
                gaps += find_gaps(ts.sort_values(ignore_index=True), key.bar)
        frame = pd.concat(parts, ignore_index=True) if parts else None
        frames[series] = frame
        report[series] = {"mode": "incremental" if incremental else "full",
                          "ranges": [[side, a.isoformat(), b.isoformat()] for side, a, b in ranges],
                          "rows_fetched": 0 if frame is None else int(len(frame)), "rows_new": 0}
    with store.begin() as conn:
        results = {}
        if frames["ohlcv"] is not None:
            results["ohlcv"] = store.upsert_ohlcv(frames["ohlcv"], **candle_ident, conn=conn)
        if frames.get("funding_rate") is not None:
            results["funding_rate"] = store.upsert_funding_rates(frames["funding_rate"], **ident, conn=conn)
        if frames["open_interest"] is not None:
            results["open_interest"] = store.upsert_open_interest(frames["open_interest"], **ident, conn=conn)
        store.record_gaps(gaps, **candle_ident, source=repr(source), conn=conn)
    for series, result in results.items():
        report[series]["rows_new"] = result.rows_new
    report["gaps"] = [{"start": g.start.isoformat(), "end": g.end.isoformat(), "missing_bars": g.missing_bars}
                      for g in gaps]
    report["seconds"] = round(time.perf_counter() - t0, 3)
    logger.info("ingested %s %s %s up to %s from %s: %s", key.exchange, key.symbol, key.market_type,
                end, source, report)
    return report
