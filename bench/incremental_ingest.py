"""Benchmark: one incremental weekly ingestion from the exchange source.

A local replay of Binance's REST API (real bundled data) serves the exchange; the PostgreSQL
store already holds 730 days + warm-up of BTCUSDT perpetual candles, funding and open interest up
to 2023-12-24. One ingestion brings it to 2023-12-31 (168 candles, 21 funding settlements, 7 open
interest days), as the weekly run does. Reports wall time and requests, median of five weeks.
Prints one JSON line.

Usage: ``PYTHONPATH=. .venv/bin/python bench/incremental_ingest.py``.
"""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime, timedelta

from include.data.exchange import ExchangeSource
from include.data.ingest import ingest_window
from include.data.replay import BinanceReplayServer
from include.data.store import MarketStore
from include.identity import Market
from tests.conftest import DATA_DIR, create_pg_database, drop_pg_database


def main() -> None:
    key = Market("binance", "BTCUSDT", "perp", "1h")
    final = datetime(2023, 12, 31, tzinfo=UTC)
    weeks = [final - timedelta(weeks=k) for k in range(5, -1, -1)]
    start = weeks[0] - timedelta(days=740)
    url = create_pg_database("bench_ingest")
    seconds, requests = [], []
    try:
        store = MarketStore(url)
        with BinanceReplayServer(DATA_DIR, symbols=("BTCUSDT",)) as replay:
            source = ExchangeSource(api_url=replay.url)
            bulk = ingest_window(source, store, key, start=start, end=weeks[0], funding_start=start,
                                 open_interest_start=start)
            for end in weeks[1:]:
                replay.requests.clear()
                report = ingest_window(source, store, key, start=start, end=end, funding_start=start,
                                       open_interest_start=start)
                assert report["ohlcv"]["rows_new"] == 168, report
                seconds.append(report["seconds"])
                requests.append(len(replay.requests))
        store.dispose()
    finally:
        drop_pg_database(url)
    print(json.dumps({
        "benchmark": "incremental_weekly_ingest", "store": "postgresql", "source": "exchange (local replay)",
        "initial_history_s": bulk["seconds"], "initial_candles": bulk["ohlcv"]["rows_new"],
        "weekly_s": seconds, "weekly_s_median": statistics.median(seconds),
        "requests_per_week": requests,
    }))


if __name__ == "__main__":
    main()
