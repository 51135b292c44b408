from __future__ import annotations

import gzip
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from include.data.sources import FileSource
from include.data.store import MarketStore
from include.errors import ConfigError, SourceError

KEY = {"exchange": "binance", "market_type": "perp", "symbol": "BTCUSDT", "timeframe": "1h"}


@pytest.fixture
def store(tmp_path):
    s = MarketStore(f"sqlite:///{tmp_path / 'm.sqlite'}")
    yield s
    s.dispose()


def test_file_source_reads_real_window_half_open(data_dir):
    src = FileSource(data_dir)
    start, end = datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 1, 2, tzinfo=UTC)
    bars = src.fetch_ohlcv("BTCUSDT", "perp", "1h", start, end)
    assert len(bars) == 24
    assert bars["timestamp"].iloc[0] == pd.Timestamp(start)
    assert bars["timestamp"].iloc[-1] == pd.Timestamp("2023-01-01T23:00Z")
    funding = src.fetch_funding_rates("BTCUSDT", start, end)
    assert list(funding["timestamp"].dt.hour) == [0, 8, 16]
    assert src.fetch_open_interest("ETHUSDT", start, end).empty


def test_file_source_errors_name_the_problem(tmp_path, data_dir):
    start, end = datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 1, 2, tzinfo=UTC)
    with pytest.raises(SourceError, match="no OHLCV file"):
        FileSource(tmp_path).fetch_ohlcv("BTCUSDT", "perp", "1h", start, end)
    with gzip.open(tmp_path / "btcusdt_perp_1h.csv.gz", "wt") as fh:
        fh.write("timestamp,open,high,low,close\n2023-01-01T00:00:00Z,1,2,0.5,1.5\n")
    with pytest.raises(SourceError, match="lacks column"):
        FileSource(tmp_path).fetch_ohlcv("BTCUSDT", "perp", "1h", start, end)


def test_upsert_is_idempotent_and_updates_values(store, btc_slice):
    bars = btc_slice["ohlcv"]
    first = store.upsert_ohlcv(bars, **KEY)
    again = store.upsert_ohlcv(bars, **KEY)
    assert (first.rows_new, again.rows_new) == (len(bars), 0)
    changed = bars.iloc[:5].copy()
    changed["close"] = changed["close"] * 2
    store.upsert_ohlcv(changed, **KEY)
    back = store.load_ohlcv(**KEY, start=btc_slice["start"], end=btc_slice["end"])
    assert len(back) == len(bars)
    np.testing.assert_allclose(back["close"].iloc[:5], bars["close"].iloc[:5] * 2)
    np.testing.assert_allclose(back["close"].iloc[5:], bars["close"].iloc[5:])


def test_nan_survives_the_store_as_nan(store, btc_slice):
    bars = btc_slice["ohlcv"].iloc[:10].copy()
    bars.loc[3, "close"] = np.nan
    store.upsert_ohlcv(bars, **KEY)
    back = store.load_ohlcv(**KEY, start=btc_slice["start"], end=btc_slice["end"])
    assert back["close"].isna().sum() == 1 and np.isnan(back.loc[3, "close"])


def test_funding_and_open_interest_round_trip(store, btc_slice):
    store.upsert_funding_rates(btc_slice["funding"], exchange="binance", symbol="BTCUSDT")
    store.upsert_open_interest(btc_slice["open_interest"], exchange="binance", symbol="BTCUSDT")
    f = store.load_funding_rates(exchange="binance", symbol="BTCUSDT", start=btc_slice["start"], end=btc_slice["end"])
    oi = store.load_open_interest(exchange="binance", symbol="BTCUSDT", start=btc_slice["start"], end=btc_slice["end"])
    pd.testing.assert_frame_equal(f, btc_slice["funding"].astype({"timestamp": f["timestamp"].dtype}))
    assert len(oi) == len(btc_slice["open_interest"]) == 92


def test_unsupported_backend_is_refused():
    with pytest.raises(ConfigError, match="mysql"):
        MarketStore("mysql://localhost/db")


def _bad_copy(data_dir, tmp_path, edit):
    """The bundled BTCUSDT perpetual candles with one line replaced by ``edit(line)``; funding copied."""
    import shutil

    with gzip.open(data_dir / "btcusdt_perp_1h.csv.gz", "rt") as fh:
        lines = fh.read().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("2023-12-20T05:00:00Z"))
    lines[number] = edit(lines[number])
    with gzip.open(tmp_path / "btcusdt_perp_1h.csv.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    shutil.copy(data_dir / "btcusdt_funding_8h.csv.gz", tmp_path)
    return number + 1  # 1-based file line


@pytest.mark.parametrize(("edit", "message"), [
    (lambda line: ",".join(line.split(",")[:3]),
     r"line {n}: 3 fields, expected 6 \(timestamp,open,high,low,close,volume\): '2023-12-20T05:00:00Z,"),
    (lambda line: ",".join([*line.split(",")[:4], "abc", line.split(",")[5]]),
     r"line {n}, column close: 'abc' is not a number \(timestamp 2023-12-20T05:00:00Z\)"),
    (lambda line: "20-12-2023 05h," + line.split(",", 1)[1],
     r"line {n}: timestamp '20-12-2023 05h' is not an ISO-8601 time"),
])
def test_files_are_read_strictly_naming_file_line_column_and_text(data_dir, tmp_path, edit, message):
    from include.data.sources import FileSource

    n = _bad_copy(data_dir, tmp_path, edit)
    with pytest.raises(SourceError, match="btcusdt_perp_1h.csv.gz " + message.format(n=n)):
        FileSource(tmp_path).fetch_ohlcv("BTCUSDT", "perp", "1h", datetime(2023, 12, 1, tzinfo=UTC),
                                         datetime(2023, 12, 31, tzinfo=UTC))


def test_an_empty_cell_is_a_missing_value_and_a_naive_timestamp_is_logged_as_utc(data_dir, tmp_path, caplog):
    from include.data.sources import FileSource

    _bad_copy(data_dir, tmp_path,
              lambda line: line.replace("Z,", ",", 1).rsplit(",", 2)[0] + ",," + line.rsplit(",", 1)[1])
    bars = FileSource(tmp_path).fetch_ohlcv("BTCUSDT", "perp", "1h", datetime(2023, 12, 20, tzinfo=UTC),
                                            datetime(2023, 12, 21, tzinfo=UTC))
    row = bars[bars["timestamp"] == pd.Timestamp("2023-12-20T05:00Z")].iloc[0]
    assert np.isnan(row["close"]) and row["volume"] > 0 and len(bars) == 24
    assert "1 timestamp(s) have no time zone (e.g. '2023-12-20T05:00:00'): taken as UTC" in caplog.text


def test_a_missing_directory_or_file_is_named_plainly(tmp_path):
    from include.data.sources import FileSource

    with pytest.raises(SourceError, match=f"data directory {tmp_path / 'nope'} does not exist"):
        FileSource(tmp_path / "nope").fetch_ohlcv("BTCUSDT", "perp", "1h", datetime(2023, 1, 1, tzinfo=UTC),
                                                  datetime(2023, 2, 1, tzinfo=UTC))
    with pytest.raises(SourceError,
                       match=f"no OHLCV file btcusdt_perp_1h.csv or btcusdt_perp_1h.csv.gz in {tmp_path}$"):
        FileSource(tmp_path).fetch_ohlcv("BTCUSDT", "perp", "1h", datetime(2023, 1, 1, tzinfo=UTC),
                                         datetime(2023, 2, 1, tzinfo=UTC))


def test_a_timestamp_twice_with_different_values_names_both_lines(data_dir, tmp_path):
    from include.data.sources import FileSource

    n = _bad_copy(data_dir, tmp_path, lambda line: line + "\n" + line.rsplit(",", 1)[0] + ",1.0")
    with pytest.raises(SourceError, match=f"btcusdt_perp_1h.csv.gz lines {n} and {n + 1}: timestamp "
                                          "2023-12-20T05:00:00Z appears twice with different values"):
        FileSource(tmp_path).fetch_ohlcv("BTCUSDT", "perp", "1h", datetime(2023, 12, 1, tzinfo=UTC),
                                         datetime(2023, 12, 31, tzinfo=UTC))
