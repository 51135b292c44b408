"""The ccxt exchange source against a local replay of Binance's REST API built from real data."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from include.data.exchange import PAGE_LIMITS, ExchangeSource
from include.data.ingest import find_gaps, ingest_window
from include.data.replay import BinanceReplayServer
from include.data.sources import FileSource
from include.data.store import MarketStore
from include.errors import SourceError
from include.identity import Market
from tests.conftest import DATA_DIR

NOW = datetime(2023, 12, 20, 5, 30, tzinfo=UTC)
FILES = FileSource(DATA_DIR)


@pytest.fixture(scope="module")
def replay():
    with BinanceReplayServer(DATA_DIR, symbols=("BTCUSDT", "ETHUSDT"), now=NOW) as server:
        yield server


@pytest.fixture
def source(replay):
    replay.requests.clear()
    replay.set_now(NOW)
    waits: list[float] = []
    src = ExchangeSource(api_url=replay.url, backoff_s=0.05, max_backoff_s=2.0, max_retries=3,
                         clock=lambda: NOW, sleep=waits.append)
    src.waits = waits
    return src


def test_paginates_and_returns_exactly_the_exchange_history(source, replay):
    start, end = datetime(2023, 8, 1, tzinfo=UTC), datetime(2023, 11, 1, tzinfo=UTC)
    got = source.fetch_ohlcv("BTCUSDT", "perp", "1h", start, end)
    pd.testing.assert_frame_equal(got, FILES.fetch_ohlcv("BTCUSDT", "perp", "1h", start, end))
    pages = replay.requests_to("/fapi/v1/klines")
    assert len(pages) == math.ceil(len(got) / PAGE_LIMITS["perp_ohlcv"])
    assert all(int(p["limit"]) == PAGE_LIMITS["perp_ohlcv"] for p in pages)
    starts = [int(p["startTime"]) for p in pages]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    spot = source.fetch_ohlcv("ETHUSDT", "spot", "1h", start, end)
    pd.testing.assert_frame_equal(spot, FILES.fetch_ohlcv("ETHUSDT", "spot", "1h", start, end))
    assert len(replay.requests_to("/api/v3/klines")) == math.ceil(len(spot) / PAGE_LIMITS["spot_ohlcv"])


def test_funding_and_open_interest_match_the_bundled_conventions(source):
    start, end = datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 12, 1, tzinfo=UTC)
    pd.testing.assert_frame_equal(source.fetch_funding_rates("BTCUSDT", start, end),
                                  FILES.fetch_funding_rates("BTCUSDT", start, end))
    pd.testing.assert_frame_equal(source.fetch_open_interest("BTCUSDT", start, end),
                                  FILES.fetch_open_interest("BTCUSDT", start, end))


def test_never_returns_an_unfinished_bar(source, replay):
    got = source.fetch_ohlcv("BTCUSDT", "perp", "1h", NOW - timedelta(days=1), NOW + timedelta(days=1))
    assert got["timestamp"].max() == pd.Timestamp("2023-12-20 04:00", tz="UTC")  # 05:00 bar is open at 05:30
    # The exchange does send the bar in progress; the source drops it.
    raw = source.client.fetch_ohlcv("BTC/USDT:USDT", "1h",
                                    int(pd.Timestamp("2023-12-20 04:00", tz="UTC").value // 10**6), 5)
    assert [r[0] for r in raw][-1] == int(pd.Timestamp("2023-12-20 05:00", tz="UTC").value // 10**6)


def test_transient_5xx_then_success(source, replay):
    replay.fail_next("/fapi/v1/klines", 503, times=2)
    start, end = datetime(2023, 10, 1, tzinfo=UTC), datetime(2023, 10, 8, tzinfo=UTC)
    got = source.fetch_ohlcv("BTCUSDT", "perp", "1h", start, end)
    assert len(got) == 168 and source.retries == 2
    assert source.waits == [0.05, 0.1]  # exponential backoff


def test_rate_limit_response_is_retried_after_the_servers_delay(source, replay):
    replay.fail_next("/fapi/v1/fundingRate", 429)
    start, end = datetime(2023, 10, 1, tzinfo=UTC), datetime(2023, 10, 8, tzinfo=UTC)
    assert len(source.fetch_funding_rates("BTCUSDT", start, end)) == 21
    assert source.retries == 1 and source.waits == [1.0]  # Retry-After: 1


def test_retries_run_out_with_a_clear_error(source, replay):
    replay.fail_next("/fapi/v1/klines", 502, times=10)
    with pytest.raises(SourceError, match="still failing after 3 retries"):
        source.fetch_ohlcv("BTCUSDT", "perp", "1h", datetime(2023, 10, 1, tzinfo=UTC),
                           datetime(2023, 10, 2, tzinfo=UTC))
    replay.clear_faults()


def test_bad_symbol_and_timeframe_are_named(source):
    start, end = datetime(2023, 10, 1, tzinfo=UTC), datetime(2023, 10, 2, tzinfo=UTC)
    with pytest.raises(SourceError, match="no perp market 'DOGEUSDT'"):
        source.fetch_ohlcv("DOGEUSDT", "perp", "1h", start, end)
    with pytest.raises(SourceError, match="no timeframe '7h'"):
        source.fetch_ohlcv("BTCUSDT", "perp", "7h", start, end)


def test_malformed_response_fails_and_writes_nothing(source, replay, tmp_path):
    store = MarketStore(f"sqlite:///{tmp_path / 'm.sqlite'}")
    key = Market("binance", "BTCUSDT", "perp", "1h")
    start, end = datetime(2023, 10, 1, tzinfo=UTC), datetime(2023, 10, 8, tzinfo=UTC)
    # Candles and funding arrive fine; open interest is malformed: nothing may be stored.
    replay.fail_next("/futures/data/openInterestHist", "malformed")
    with pytest.raises(SourceError, match="malformed response"):
        ingest_window(source, store, key, start=start, end=end, funding_start=start,
                      open_interest_start=start)
    assert store.extent("ohlcv", exchange="binance", symbol="BTCUSDT", market_type="perp", timeframe="1h") is None
    assert store.extent("funding_rate", exchange="binance", symbol="BTCUSDT") is None


def test_incremental_ingestion_fetches_only_what_is_missing(source, replay, tmp_path):
    store = MarketStore(f"sqlite:///{tmp_path / 'm.sqlite'}")
    key = Market("binance", "BTCUSDT", "perp", "1h")
    week1, week2 = datetime(2023, 11, 5, tzinfo=UTC), datetime(2023, 11, 12, tzinfo=UTC)
    start = week1 - timedelta(days=30)
    first = ingest_window(source, store, key, start=start, end=week1, funding_start=start,
                          open_interest_start=start)
    assert first["ohlcv"]["rows_new"] == 30 * 24 and first["ohlcv"]["mode"] == "incremental"
    replay.requests.clear()
    second = ingest_window(source, store, key, start=start, end=week2, funding_start=start,
                           open_interest_start=start)
    assert second["ohlcv"]["ranges"] == [["after", "2023-11-05T00:00:00+00:00", "2023-11-12T00:00:00+00:00"]]
    assert second["ohlcv"]["rows_fetched"] == second["ohlcv"]["rows_new"] == 168
    assert second["funding_rate"]["rows_new"] == 21 and second["open_interest"]["rows_new"] == 7
    (kline_request,) = replay.requests_to("/fapi/v1/klines")
    assert int(kline_request["startTime"]) == int(pd.Timestamp(week1).value // 1_000_000)
    replay.requests.clear()
    third = ingest_window(source, store, key, start=start, end=week2, funding_start=start,
                          open_interest_start=start)
    assert third["ohlcv"]["ranges"] == [] and replay.requests_to("/fapi/v1/klines") == []
    stored = store.load_ohlcv(exchange="binance", market_type="perp", symbol="BTCUSDT", timeframe="1h",
                              start=start, end=week2)
    pd.testing.assert_frame_equal(stored, FILES.fetch_ohlcv("BTCUSDT", "perp", "1h", start, week2),
                                  check_dtype=False)


def test_exchange_gaps_are_recorded_not_filled(source, tmp_path):
    # Binance spot had a 33-hour outage on 2018-02-08/09: the bundled spot file keeps it.
    store = MarketStore(f"sqlite:///{tmp_path / 'm.sqlite'}")
    key = Market("binance", "BTCUSDT", "spot", "1h")
    start, end = datetime(2018, 2, 5, tzinfo=UTC), datetime(2018, 2, 15, tzinfo=UTC)
    report = ingest_window(source, store, key, start=start, end=end, funding_start=end,
                           open_interest_start=end)
    expected = find_gaps(FILES.fetch_ohlcv("BTCUSDT", "spot", "1h", start, end)["timestamp"], timedelta(hours=1))
    assert any(g.missing_bars >= 24 for g in expected)
    assert store.load_gaps(exchange="binance", market_type="spot", symbol="BTCUSDT", timeframe="1h") == expected
    assert len(report["gaps"]) == len(expected)
    stored = store.load_ohlcv(exchange="binance", market_type="spot", symbol="BTCUSDT", timeframe="1h",
                              start=start, end=end)
    assert len(stored) == 10 * 24 - sum(g.missing_bars for g in expected)


def test_credentials_in_the_api_url_never_reach_the_log_the_store_or_an_error(replay, tmp_path, caplog):
    """EXCHANGE_API_URL with a password (a proxy's basic auth) or an API key in its query: the
    secret is in no log line (ccxt's DEBUG request log included), no stored record (the market
    store's file, the ingestion summary) and no error message or chained exception."""
    import json
    import logging
    import traceback

    from include.config import RunConfig, Settings
    from include.pipeline import ingest
    from include.run_folder import run_dir
    from include.windows import resolve_window

    replay.clear_faults()
    caplog.set_level(logging.DEBUG)
    with_password = replay.url.replace("http://", "http://ops:pw-s3cret@")
    settings = Settings(data_dir=DATA_DIR, market_db_url=f"sqlite:///{tmp_path / 'market.sqlite'}",
                        registry_dir=tmp_path / "models", runs_dir=tmp_path / "runs", exchange_api_url=with_password)
    # Spot BTC around Binance's outage of 2018-02-08/09: the ingestion records a gap, naming its source.
    cfg = RunConfig(source="exchange", market_type="spot", as_of_date="2018-02-18", train_window_days=14,
                    min_history_days=14, cv_folds=2, cv_rolling_train_days=14)
    window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    out = run_dir(settings, "weekly_retrain", cfg.model_name, window)
    summary = ingest(cfg, window, settings, out)
    assert summary["ohlcv"]["rows_new"] > 0 and summary["gaps"]
    assert summary["source"] == f"ExchangeSource('binance', '{replay.url.replace('http://', 'http://ops:***@')}')"
    stored = MarketStore(settings.market_db_url)
    with stored.engine.connect() as conn:
        (gap_source,) = {row[0] for row in conn.exec_driver_sql("SELECT source FROM ohlcv_gap")}
    stored.dispose()
    assert gap_source == summary["source"]

    errors = []
    for fault in (502, 401):  # retries run out; a permanent refusal
        source = ExchangeSource(api_url=with_password, backoff_s=0.0, max_retries=1, clock=lambda: NOW,
                                sleep=lambda s: None)
        replay.fail_next("/api/v3/klines", fault, times=2)
        with pytest.raises(SourceError) as info:
            source.fetch_ohlcv("BTCUSDT", "spot", "1h", datetime(2023, 10, 1, tzinfo=UTC),
                               datetime(2023, 10, 2, tzinfo=UTC))
        errors.append("".join(traceback.format_exception(info.value)))  # the chained ccxt and HTTP errors too
    assert "still failing after 1 retries" in errors[0] and "401 Unauthorized" in errors[1]
    assert all("GET http://ops:***@127.0.0.1" in e for e in errors)
    # A query cannot work (the endpoints' paths would land inside it): refused before any request.
    with pytest.raises(SourceError, match=r"'http://127.0.0.1:\d+/\?apiKey=\*\*\*': expected no query") as info:
        ExchangeSource(api_url=replay.url + "/?apiKey=k-s3cret")
    errors.append(str(info.value))
    assert caplog.text.count("GET http://ops:***@127.0.0.1") > 3  # ccxt's request log, masked
    files = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    for secret in ("pw-s3cret", "k-s3cret"):
        assert not any(secret in text for text in (caplog.text, json.dumps(summary), *errors)), secret
        assert not any(secret.encode() in f for f in files), secret
