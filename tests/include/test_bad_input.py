"""Bad input stops at the door with one message naming the bar, the column, the limit and the value."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from include.config import RunConfig, Settings
from include.errors import DataQualityError, NoDataError
from include.pipeline import ingest, validate
from include.run_folder import run_dir
from include.windows import resolve_window


def _run_to_validation(tmp_path, data_dir, edit, as_of="2023-06-04"):
    src = tmp_path / "data"
    src.mkdir(parents=True)
    bars = pd.read_csv(data_dir / "btcusdt_perp_1h.csv.gz")
    with gzip.open(src / "btcusdt_perp_1h.csv.gz", "wt") as fh:
        edit(bars).to_csv(fh, index=False)
    shutil.copy(data_dir / "btcusdt_funding_8h.csv.gz", src)
    settings = Settings.in_folder(tmp_path, src)
    cfg = RunConfig(as_of_date=as_of, train_window_days=120, cv_folds=3)
    window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    out = run_dir(settings, "weekly_retrain", cfg.model_name, window)
    window_dict = ingest(cfg, window, settings, out)["window"]
    from include.windows import RunWindow

    return validate(cfg, RunWindow(**window_dict), settings, out)


def test_a_nan_close_in_the_warm_up_bars_fails_validation_naming_the_bar(tmp_path, data_dir):
    def nan_close(bars):
        bars.loc[bars["timestamp"] == "2023-02-01T05:00:00Z", "close"] = float("nan")
        return bars

    # Week ending 2023-06-04, 120-day window: training from 2023-02-04, warm-up from 2023-01-28, whose
    # features read from 30 days before the start of its month: 2022-12-02.
    with pytest.raises(DataQualityError) as info:
        _run_to_validation(tmp_path, data_dir, nan_close)
    message = str(info.value)
    assert "[2022-12-02T00:00Z, 2023-06-04T00:00Z)" in message
    assert "ohlcv_refused: 2023-02-01T05:00Z: close is missing (from FileSource(" in message
    assert "kept out of the store, in ohlcv_quarantine" in message


def test_a_long_gap_is_reported_with_its_size_place_and_limit(tmp_path, data_dir):
    def gap(bars):
        ts = pd.to_datetime(bars["timestamp"])
        return bars[(ts < "2023-04-15T12:00Z") | (ts >= "2023-04-18T12:00Z")]

    with pytest.raises(DataQualityError, match=r"72 missing bars before 2023-04-18T12:00Z \(max_gap_bars=24\)") as info:
        _run_to_validation(tmp_path, data_dir, gap)
    # The failing task's message names the Great Expectations Data Docs of the validation, which
    # render the failed expectation with its observed value.
    docs = Path(re.search(r"Data Docs (\S+/data_docs/index\.html)", str(info.value)).group(1))
    assert docs.is_file()
    pages = [p.read_text() for p in docs.parent.rglob("*.html") if "validations" in p.parts]
    assert pages and any("missing_bars_before" in page for page in pages)


def test_a_window_past_the_data_says_where_the_data_ends(tmp_path, data_dir):
    with pytest.raises(NoDataError, match="no BTCUSDT perp 1h candles in \\[2024-01-31 00:00Z, 2024-08-04 00:00Z\\) .* "
                                          "the source covers 2019-09-10 00:00Z to 2023-12-31 23:00Z"):
        _run_to_validation(tmp_path, data_dir, lambda bars: bars, as_of="2024-08-04")
    # A window that holds the data's last month: validation names where the candles end.
    with pytest.raises(DataQualityError,
                       match="the candles end with the bar opening 2023-12-31T23:00Z, 3672 bar\\(s\\) "
                             "before the window's end"):
        _run_to_validation(tmp_path / "later", data_dir, lambda bars: bars, as_of="2024-06-02")


def test_labels_name_the_bars_they_drop(tmp_path, data_dir):
    import numpy as np

    from include.pipeline import labels
    from include.windows import RunWindow

    bars = pd.read_csv(data_dir / "btcusdt_perp_1h.csv.gz", index_col="timestamp", parse_dates=True)
    feats = bars.loc["2023-05-01":"2023-06-03"].copy()
    feats["rsi_14"] = 50.0
    feats.loc["2023-05-20 03:00":"2023-05-20 05:00", "rsi_14"] = np.nan
    feats.to_parquet(tmp_path / "features.parquet")
    window = RunWindow("2023-05-28T00:00:00+00:00", "2023-06-04T00:00:00+00:00", "2023-05-08T00:00:00+00:00",
                       "2023-05-01T00:00:00+00:00", "20230528T0000_20230604T0000", "as_of_date")
    out = labels(RunConfig(), window, tmp_path)
    assert out["dropped"] == {"rows": 3, "first": "2023-05-20T03:00:00+00:00", "last": "2023-05-20T05:00:00+00:00",
                              "columns": {"rsi_14": 3}}


def _store_rows(tmp_path, start, end):
    from include.data.store import MarketStore

    store = MarketStore(f"sqlite:///{tmp_path / 'market.sqlite'}")
    key = {"exchange": "binance", "symbol": "BTCUSDT", "market_type": "perp", "timeframe": "1h",
           "start": pd.Timestamp(start).to_pydatetime(), "end": pd.Timestamp(end).to_pydatetime()}
    stored, refused = store.load_ohlcv(**key), store.load_quarantine(**key)
    store.dispose()
    return stored, refused


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda b: b.assign(high=b["high"].where(b["timestamp"] != "2023-05-10T07:00:00Z", b["low"] - 10)),
     r"high=27497 is below open=27613.4"),
    (lambda b: b.assign(volume=b["volume"].where(b["timestamp"] != "2023-05-10T07:00:00Z", -5.0)),
     "volume=-5 is negative"),
])
def test_rows_that_fail_validation_are_kept_out_of_the_store_with_their_reason(tmp_path, data_dir, edit, reason):
    with pytest.raises(DataQualityError, match=f"2023-05-10T07:00Z: {reason} \\(from FileSource"):
        _run_to_validation(tmp_path, data_dir, edit)
    stored, refused = _store_rows(tmp_path, "2023-05-10T06:00Z", "2023-05-10T09:00Z")
    assert list(stored["timestamp"].dt.hour) == [6, 8]  # the refused bar is not in ohlcv ...
    assert list(refused["timestamp"].dt.hour) == [7]  # ... it is in the quarantine, with its values
    assert refused["volume"].notna().all()


def test_a_corrected_source_clears_the_quarantine(tmp_path, data_dir):
    def bad(bars):
        bars.loc[bars["timestamp"] == "2023-05-10T07:00:00Z", "close"] = -1.0
        return bars

    with pytest.raises(DataQualityError, match="close=-1 is not positive"):
        _run_to_validation(tmp_path, data_dir, bad)
    shutil.rmtree(tmp_path / "data")
    assert _run_to_validation(tmp_path, data_dir, lambda bars: bars)["success"]
    stored, refused = _store_rows(tmp_path, "2023-05-10T06:00Z", "2023-05-10T09:00Z")
    assert len(stored) == 3 and refused.empty


def test_dropped_duplicates_are_reported_by_ingestion(tmp_path, data_dir):
    from include.windows import RunWindow

    src = tmp_path / "data"
    src.mkdir(parents=True)
    bars = pd.read_csv(data_dir / "btcusdt_perp_1h.csv.gz")
    with gzip.open(src / "btcusdt_perp_1h.csv.gz", "wt") as fh:
        pd.concat([bars, bars[bars["timestamp"].str.startswith("2023-05-10")]]).to_csv(fh, index=False)
    shutil.copy(data_dir / "btcusdt_funding_8h.csv.gz", src)
    settings = Settings.in_folder(tmp_path, src)
    cfg = RunConfig(as_of_date="2023-06-04", train_window_days=120, cv_folds=3)
    window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    out = ingest(cfg, window, settings, run_dir(settings, "weekly_retrain", cfg.model_name, window))
    assert out["ohlcv"]["duplicates_dropped"] == 24 and out["ohlcv"]["quarantined"] == 0
    assert RunWindow(**out["window"]) == window
