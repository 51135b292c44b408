"""Benchmark: bulk load of every bundled candle into PostgreSQL, in rows per second.

Loads the four bundled hourly candle files (BTC/ETH, spot/perp: 178,580 rows) into a fresh
PostgreSQL database through :class:`~include.data.store.MarketStore` (COPY into staging, then
upsert), in one transaction, three times, each into a new database; then re-loads the same rows
into a filled store (the update path). Target on the 2-core CI machine: at least 200,000 rows/s
for the first load. Prints one JSON line.

Usage: ``PYTHONPATH=. .venv/bin/python bench/store_bulk_load.py`` (PostgreSQL on 127.0.0.1:5432,
user postgres; override with ``TEST_POSTGRES_URL``).
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime

from include.data.sources import FileSource
from include.data.store import MarketStore
from tests.conftest import DATA_DIR, create_pg_database, drop_pg_database


def main(repeats: int = 3) -> None:
    source = FileSource(DATA_DIR)
    lo, hi = datetime(2017, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
    frames = [(s, m, source.fetch_ohlcv(s, m, "1h", lo, hi)) for s in ("BTCUSDT", "ETHUSDT") for m in ("spot", "perp")]
    rows = sum(len(f) for *_, f in frames)
    first, reload = [], []
    for _ in range(repeats):
        url = create_pg_database("bench_store")
        try:
            store = MarketStore(url)
            for timings in (first, reload):
                t0 = time.perf_counter()
                with store.begin() as conn:
                    new = sum(store.upsert_ohlcv(f, exchange="binance", market_type=m, symbol=s,
                                                 timeframe="1h", conn=conn).rows_new for s, m, f in frames)
                timings.append(time.perf_counter() - t0)
                assert new == (rows if timings is first else 0)
            store.dispose()
        finally:
            drop_pg_database(url)
    print(json.dumps({
        "benchmark": "postgres_bulk_load_candles", "rows": rows, "repeats": repeats,
        "first_load_s": [round(t, 3) for t in first],
        "first_load_rows_per_s_median": round(rows / statistics.median(first)),
        "reload_s": [round(t, 3) for t in reload],
        "reload_rows_per_s_median": round(rows / statistics.median(reload)),
        "target_rows_per_s": 200_000,
    }))


if __name__ == "__main__":
    main()
