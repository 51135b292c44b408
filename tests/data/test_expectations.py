"""The expectation suites pass on real data and fail, naming the expectation, on bad data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.quality.suites import SuiteLimits, format_failures, run_suites


def _limits(ohlcv: pd.DataFrame) -> SuiteLimits:
    return SuiteLimits(bar_seconds=3600, expected_bars=len(ohlcv), min_row_share=0.95, max_gap_share=0.01,
                       max_gap_bars=24, max_abs_funding_rate=0.03, funding_interval_hours=8)


def _failed(report) -> set[tuple[str, str]]:
    return {(f["expectation"], str(f["kwargs"].get("column", f["kwargs"].get("column_A", ""))))
            for s in report["suites"] for f in s["failed"]}


def test_bundled_data_passes(btc_slice):
    report = run_suites(btc_slice["ohlcv"], btc_slice["funding"], btc_slice["open_interest"],
                        _limits(btc_slice["ohlcv"]))
    assert report["success"], format_failures(report)
    assert [s["suite"] for s in report["suites"]] == ["ohlcv", "funding_rate", "open_interest"]


def _nan_price(df):
    df.loc[100, "close"] = np.nan
    return df


def _duplicate(df):
    return pd.concat([df, df.iloc[[200]]]).sort_values("timestamp", kind="stable").reset_index(drop=True)


def _high_below_low(df):
    df.loc[300, "high"] = df.loc[300, "low"] - 10.0
    return df


def _negative_volume(df):
    df.loc[400, "volume"] = -1.0
    return df


def _large_gap(df):
    return df.drop(index=range(500, 548)).reset_index(drop=True)


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_nan_price, ("expect_column_values_to_not_be_null", "close")),
        (_duplicate, ("expect_column_values_to_be_unique", "timestamp")),
        (_high_below_low, ("expect_column_pair_values_a_to_be_greater_than_b", "high")),
        (_negative_volume, ("expect_column_values_to_be_between", "volume")),
        (_large_gap, ("expect_column_max_to_be_between", "missing_bars_before")),
    ],
)
def test_each_kind_of_bad_data_is_named(btc_slice, corrupt, expected):
    ohlcv = btc_slice["ohlcv"]
    bad = corrupt(ohlcv.copy())
    report = run_suites(bad, btc_slice["funding"], None, _limits(ohlcv))
    assert not report["success"]
    assert expected in _failed(report), format_failures(report)
    failure = next(f for s in report["suites"] for f in s["failed"] if f["expectation"] == expected[0])
    if expected[1] != "missing_bars_before":
        assert failure["example_rows"], "row-level failures carry example rows"
    else:
        assert failure["observed_value"] == 48.0


def test_empty_window_fails_on_row_count(btc_slice):
    ohlcv = btc_slice["ohlcv"]
    report = run_suites(ohlcv.iloc[:0], btc_slice["funding"].iloc[:0], None, _limits(ohlcv))
    failed = _failed(report)
    assert ("expect_table_row_count_to_be_between", "") in failed
    assert "expect_table_row_count_to_be_between" in format_failures(report)


def test_funding_off_cadence_and_out_of_bounds(btc_slice):
    funding = btc_slice["funding"].copy()
    funding.loc[5, "funding_rate"] = 0.5
    funding = funding.drop(index=[10]).reset_index(drop=True)
    report = run_suites(btc_slice["ohlcv"], funding, None, _limits(btc_slice["ohlcv"]))
    failed = _failed(report)
    assert ("expect_column_values_to_be_between", "funding_rate") in failed
    assert ("expect_column_values_to_be_in_set", "step_hours") in failed


def test_spot_gaps_of_the_real_data_are_measured(data_dir):
    """Binance spot 2018-02-08 outage (33 missing hours) breaks the 24-bar gap limit."""
    from datetime import UTC, datetime

    from include.data.sources import FileSource

    src = FileSource(data_dir)
    start, end = datetime(2018, 2, 1, tzinfo=UTC), datetime(2018, 3, 1, tzinfo=UTC)
    bars = src.fetch_ohlcv("BTCUSDT", "spot", "1h", start, end)
    limits = SuiteLimits(3600, 28 * 24, 0.9, 0.1, 24, 0.03, 8)
    report = run_suites(bars, None, None, limits)
    gap = next(f for s in report["suites"] for f in s["failed"]
               if f["expectation"] == "expect_column_max_to_be_between")
    assert gap["observed_value"] == 33.0


def test_validation_keeps_great_expectations_registration_noise_out_of_the_log():
    """A task's log gets the suites' outcome, not GX's ~200 import-time "Skipping registering" lines."""
    import subprocess
    import sys

    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "import pandas as pd\n"
        "from include.quality.suites import SuiteLimits, run_suites\n"
        "ts = pd.date_range('2023-01-01', periods=48, freq='h', tz='UTC')\n"
        "o = pd.DataFrame({'timestamp': ts, 'open': 1.0, 'high': 2.0, 'low': 0.5, 'close': 1.5, 'volume': 3.0})\n"
        "r = run_suites(o, None, None, SuiteLimits(3600, 48, 0.95, 0.01, 24, 0.03, 8))\n"
        "print('success', r['success'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "success True" in done.stdout
    assert "Skipping registering" not in done.stderr
    assert "_docs_decorators" not in done.stderr


def test_candles_that_stop_before_the_window_end_fail_naming_where_they_end():
    from include.quality.suites import SuiteLimits, run_suites

    index = pd.date_range("2023-11-01", "2023-12-31", freq="h", tz="UTC", inclusive="left")
    full = pd.DataFrame({"timestamp": index, "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5,
                         "volume": 5.0})
    start, end = index[0], index[-1] + pd.Timedelta(hours=1)

    def limits(**extra):
        return SuiteLimits(3600, len(index), 0.5, 0.4, 24, 0.03, 8, window_start=start, window_end=end, **extra)

    assert run_suites(full, None, None, limits())["success"]
    for hours in (72, 30 * 24):  # both pass the row-count floor and the gap checks between rows
        short = full[full["timestamp"] < end - pd.Timedelta(hours=hours)]
        report = run_suites(short, None, None, limits())
        messages = [f["message"] for s in report["suites"] for f in s["failed"]]
        assert not report["success"] and len(messages) == 1, messages
        last = short["timestamp"].iloc[-1].strftime("%Y-%m-%dT%H:%MZ")
        assert f"the candles end with the bar opening {last}, {hours} bar(s) before the window's end" in messages[0]
    # An exchange outage the store records at the end is not the data's fault.
    short = full[full["timestamp"] < end - pd.Timedelta(hours=6)]
    assert run_suites(short, None, None, limits(exchange_gap_bars_at_end=6))["success"]
    # Candles that start late leave a gap at the window's start like any other.
    late = full[full["timestamp"] >= start + pd.Timedelta(hours=30)]
    report = run_suites(late, None, None, limits())
    assert not report["success"] and (
        "30 missing bars before 2023-11-02T06:00Z" in report["suites"][0]["failed"][0]["message"])


def test_too_few_rows_because_the_source_stopped_says_where_the_data_ends_and_how_far_from_the_window_end():
    index = pd.date_range("2023-10-01", "2023-12-31", freq="h", tz="UTC", inclusive="left")
    full = pd.DataFrame({"timestamp": index, "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5,
                         "volume": 5.0})
    start, end = index[0], index[-1] + pd.Timedelta(hours=1)
    stale = full[full["timestamp"] < pd.Timestamp("2023-12-01", tz="UTC")]  # a month missing at the end
    report = run_suites(stale, None, None, SuiteLimits(3600, len(index), 0.95, 0.4, 24, 0.03, 8,
                                                       window_start=start, window_end=end))
    message = next(f["message"] for s in report["suites"] for f in s["failed"]
                   if f["expectation"] == "expect_table_row_count_to_be_between")
    assert message == (f"{len(stale)} rows in the window; at least {int(np.ceil(0.95 * len(index)))} expected "
                       "(min_row_share x bars); the rows run from the bar opening 2023-10-01T00:00Z to the bar "
                       "opening 2023-11-30T23:00Z, 720 bar(s) (30.0 days) before the window's end: the source's "
                       "data stops there (a stale source or an interrupted ingestion)")
