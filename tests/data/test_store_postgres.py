"""The market store on a real PostgreSQL: migrations, COPY bulk upsert, concurrency, settings."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from include.config import connection_to_url, market_db_url
from include.data.store import SCHEMA_VERSION_TABLE, MarketStore, metadata, migrate
from include.errors import ConfigError, SourceError
from include.predictions import metadata as monitoring_meta
from include.registry import metadata as registry_meta

KEY = {"exchange": "binance", "market_type": "perp", "symbol": "BTCUSDT", "timeframe": "1h"}
START, END = datetime(2023, 6, 1, tzinfo=UTC), datetime(2023, 9, 1, tzinfo=UTC)


def _stored_keys(store: MarketStore) -> tuple[int, int]:
    with store.engine.connect() as conn:
        rows, distinct = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT (exchange, market_type, symbol, timeframe, ts)) FROM ohlcv")).one()
    return rows, distinct


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_schema_the_store_queries(backend, pg_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = pg_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.sqlite'}"
    store = MarketStore(url)
    assert store.schema_revision == "0013"
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": SCHEMA_VERSION_TABLE})
        # The migrated database holds the market series, the model registry, the monitoring, the
        # fit cache's, the hyperparameter sets' and the batch outcomes' tables: compare with all.
        from include.batch_outcomes import metadata as batch_meta
        from include.training.fit_cache import metadata as fit_cache_meta
        from include.training.sets import metadata as tuning_meta

        every_table = sa.MetaData()
        for table in (*metadata.tables.values(), *registry_meta.tables.values(), *monitoring_meta.tables.values(),
                      *fit_cache_meta.tables.values(), *tuning_meta.tables.values(), *batch_meta.tables.values()):
            table.to_metadata(every_table)
        diff = compare_metadata(ctx, every_table)
        tables = set(sa.inspect(conn).get_table_names())
    assert diff == []
    assert {"ohlcv", "funding_rate", "open_interest", "ohlcv_gap", "model_version", "model_alias",
            "model_alias_event", "prediction_log", "monitor_report", "fit_cache_entry", "hyperparameter_set",
            "batch_outcome", "task_try_fence", "smoke_test", SCHEMA_VERSION_TABLE} <= tables
    assert "alembic_version" not in tables  # Airflow's own version table name stays free
    assert migrate(store.engine) == "0013"  # re-opening is a no-op
    store.dispose()


def test_concurrent_first_opens_migrate_once(pg_url):
    engines = [sa.create_engine(pg_url) for _ in range(4)]
    results, errors = [], []

    def open_it(engine):
        try:
            results.append(migrate(engine))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == ["0013"] * 4
    for e in engines:
        e.dispose()


def test_copy_upsert_round_trip_counts_and_updates(pg_url, btc_slice):
    store = MarketStore(pg_url)
    ohlcv = btc_slice["ohlcv"].copy()
    ohlcv.loc[5, "close"] = np.nan  # a NaN travels as NULL, for validation to see
    first = store.upsert_ohlcv(ohlcv, **KEY)
    assert first.rows_written == len(ohlcv) and first.rows_new == len(ohlcv)
    back = store.load_ohlcv(**KEY, start=START, end=END)
    pd.testing.assert_frame_equal(back, ohlcv.reset_index(drop=True), check_dtype=False)
    assert np.isnan(back.loc[5, "close"])

    changed = ohlcv.iloc[100:300].copy()
    changed["volume"] = changed["volume"] * 2
    extra = ohlcv.iloc[-1:].copy()
    extra["timestamp"] = extra["timestamp"] + pd.Timedelta(hours=1)
    second = store.upsert_ohlcv(pd.concat([changed, extra]), **KEY)
    assert second.rows_new == 1 and second.rows_written == 201
    back = store.load_ohlcv(**KEY, start=START, end=END + pd.Timedelta(hours=2))
    assert len(back) == len(ohlcv) + 1
    np.testing.assert_allclose(back["volume"].iloc[100:300], changed["volume"].to_numpy())
    assert _stored_keys(store) == (len(ohlcv) + 1, len(ohlcv) + 1)

    funding = store.upsert_funding_rates(btc_slice["funding"], exchange="binance", symbol="BTCUSDT")
    oi = store.upsert_open_interest(btc_slice["open_interest"], exchange="binance", symbol="BTCUSDT")
    assert funding.rows_new == len(btc_slice["funding"]) and oi.rows_new == len(btc_slice["open_interest"])
    pd.testing.assert_frame_equal(
        store.load_funding_rates(exchange="binance", symbol="BTCUSDT", start=START, end=END),
        btc_slice["funding"].reset_index(drop=True), check_dtype=False)
    store.dispose()


def test_concurrent_loads_of_the_same_window_leave_one_row_per_key(pg_url, btc_slice):
    ohlcv = btc_slice["ohlcv"]
    MarketStore(pg_url).dispose()
    results, errors = [], []

    def load(shift: int):
        store = MarketStore(pg_url)
        try:
            # Overlapping windows, different start points, same keys.
            results.append(store.upsert_ohlcv(ohlcv.iloc[shift:], **KEY))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=load, args=(s,)) for s in (0, 0, 24, 500, 0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.rows_new for r in results) == len(ohlcv)
    store = MarketStore(pg_url)
    assert _stored_keys(store) == (len(ohlcv), len(ohlcv))
    store.dispose()


def test_a_failed_write_in_a_batch_rolls_back_the_whole_batch(pg_url, btc_slice):
    store = MarketStore(pg_url)
    clash = btc_slice["funding"].iloc[:3].copy()
    clash = pd.concat([clash, clash.iloc[:1].assign(funding_rate=0.5)])
    with pytest.raises(SourceError, match="more than once with different values"), store.begin() as conn:
        store.upsert_ohlcv(btc_slice["ohlcv"], **KEY, conn=conn)
        store.upsert_funding_rates(clash, exchange="binance", symbol="BTCUSDT", conn=conn)
    assert store.extent("ohlcv", **{k: KEY[k] for k in KEY}) is None
    store.dispose()


def test_market_db_url_precedence(monkeypatch):
    monkeypatch.setenv("MARKET_DB_URL", "sqlite:////tmp/explicit.sqlite")
    monkeypatch.setenv("AIRFLOW_CONN_MARKET_DB", "postgresql://u:p%40ss@db.example:5433/market?sslmode=require")
    assert market_db_url("sqlite:///default") == "sqlite:////tmp/explicit.sqlite"
    monkeypatch.delenv("MARKET_DB_URL")
    url = sa.engine.make_url(market_db_url("sqlite:///default"))
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg2", "u", "p@ss", "db.example", 5433, "market")
    assert url.query == {"sslmode": "require"}
    monkeypatch.setenv("MARKET_DB_CONN_ID", "no_such_connection")
    assert market_db_url("sqlite:///default") == "sqlite:///default"


def test_market_db_connection_of_another_type_is_refused():
    with pytest.raises(ConfigError, match="'mysql' is not supported"):
        connection_to_url("mysql", host="h", port=None, schema="s", login=None, password=None, extra={})
    with pytest.raises(ConfigError, match="psycopg2 driver"):
        MarketStore("postgresql+psycopg://postgres@127.0.0.1/x")


def test_a_full_reread_records_only_real_gaps_and_long_source_names(pg_url, tmp_path, data_dir):
    """The file source re-reads each run's window: older stored bars before it are not a gap, and
    a real gap is recorded on PostgreSQL even when the source's directory name is long."""
    import gzip
    import shutil
    from datetime import timedelta

    from include.data.ingest import ingest_window
    from include.data.sources import FileSource
    from include.identity import Market

    src = tmp_path / ("a-data-directory-whose-name-is-longer-than-sixty-four-characters-" * 2)
    src.mkdir()
    for name in ("btcusdt_funding_8h.csv.gz", "btcusdt_perp_open_interest_usd_1d.csv.gz"):
        shutil.copy(data_dir / name, src / name)
    candles = pd.read_csv(data_dir / "btcusdt_perp_1h.csv.gz")
    with gzip.open(src / "btcusdt_perp_1h.csv.gz", "wt") as fh:
        candles[candles["timestamp"] != "2023-12-20T05:00:00Z"].to_csv(fh, index=False)
    store = MarketStore(pg_url)
    key = Market("binance", "BTCUSDT", "perp", "1h")

    def week(end: datetime) -> dict:
        start = end - timedelta(days=7)
        return ingest_window(FileSource(src), store, key, start=start, end=end, funding_start=start,
                             open_interest_start=start)

    assert week(datetime(2023, 12, 10, tzinfo=UTC))["gaps"] == []
    assert week(datetime(2023, 12, 17, tzinfo=UTC))["gaps"] == []  # the week stored before it is no gap
    third = week(datetime(2023, 12, 24, tzinfo=UTC))
    assert third["gaps"] == [{"start": "2023-12-20T05:00:00+00:00", "end": "2023-12-20T06:00:00+00:00",
                              "missing_bars": 1}]
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("select start_ts, missing_bars, source from ohlcv_gap")).all()
    assert len(rows) == 1 and rows[0][1] == 1 and str(src) in rows[0][2]
    store.dispose()
