"""The young-market rule: train on shorter history, skip until it qualifies, fail on missing data."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from include.config import RunConfig
from include.errors import MarketNotReadyError, NoDataError
from include.pipeline import history_window
from include.windows import resolve_window

CFG = RunConfig(symbol="NEWUSDT", train_window_days=365, min_history_days=180)
WINDOW = resolve_window(CFG, data_interval_start=datetime(2023, 12, 24, tzinfo=UTC),
                        data_interval_end=datetime(2023, 12, 31, tzinfo=UTC), run_after=None)
STORED = (datetime(2018, 1, 1, tzinfo=UTC), datetime(2023, 12, 30, 23, tzinfo=UTC))


def test_a_market_with_the_full_window_keeps_it():
    first = datetime.fromisoformat(WINDOW.ingest_start)
    assert history_window(CFG, WINDOW, first, STORED) == WINDOW


def test_a_young_market_trains_from_its_first_bar_plus_warm_up():
    first = datetime(2023, 5, 1, tzinfo=UTC)
    short = history_window(CFG, WINDOW, first, (first, STORED[1]))
    assert short.train_start == "2023-05-08T00:00:00+00:00"  # + 168 bars of warm-up
    assert short.ingest_start == first.isoformat() and short.requested_train_start == WINDOW.train_start
    assert (short.interval_start, short.interval_end, short.run_key) == (
        WINDOW.interval_start, WINDOW.interval_end, WINDOW.run_key)


def test_a_too_young_market_is_skipped_with_the_week_it_qualifies():
    first = datetime(2023, 10, 1, tzinfo=UTC)
    with pytest.raises(MarketNotReadyError, match="leaves 84 days .* min_history_days=180") as info:
        history_window(CFG, WINDOW, first, (first, STORED[1]))
    # 2023-10-08 + 180 days is Friday 2024-04-05 (2024 is a leap year): the first week ending on or
    # after it ends on Sunday 2024-04-07, a real interval end of the weekly schedule.
    assert info.value.qualifies_on == "2024-04-07" and "for the week ending 2024-04-07 or later" in str(info.value)


def test_a_market_listed_within_a_warm_up_of_the_window_end_is_told_so_not_given_negative_days():
    first = datetime(2023, 12, 27, tzinfo=UTC)  # 4 days before the window's end, the warm-up is 7
    with pytest.raises(MarketNotReadyError) as info:
        history_window(CFG, WINDOW, first, (first, STORED[1]))
    assert ("history starts 2023-12-27 00:00Z, less than the 7-day warm-up before 2023-12-31Z, so no training "
            "data yet; min_history_days=180") in str(info.value)
    assert "-" not in str(info.value).split("leaves")[-1][:4] and info.value.qualifies_on == "2024-07-07"


def test_a_market_listed_after_the_window_is_skipped_not_failed():
    listing = datetime(2024, 3, 1, tzinfo=UTC)
    with pytest.raises(MarketNotReadyError, match="not listed yet") as info:
        history_window(CFG, WINDOW, None, (listing, datetime(2024, 6, 1, tzinfo=UTC)))
    assert info.value.qualifies_on == "2024-09-08"  # Wed 2024-09-04 -> the week ending Sunday 09-08


def test_whether_a_market_is_listed_yet_is_the_sources_word_not_the_stores():
    listing = (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC))
    # An empty store (a fresh deployment) and a store that already holds the later candles decide alike.
    for stored in (None, listing):
        with pytest.raises(MarketNotReadyError, match="not listed yet in this window: the source's first candle is "
                                                      "2024-03-01 00:00Z") as info:
            history_window(CFG, WINDOW, None, stored, source_extent=listing)
        assert info.value.qualifies_on == "2024-09-08"
    # A source that holds data before the window but none in it: missing data, not a young market.
    with pytest.raises(NoDataError, match="the source covers 2018-01-01 00:00Z to 2021-06-01 00:00Z"):
        history_window(CFG, WINDOW, None, None,
                       source_extent=(datetime(2018, 1, 1, tzinfo=UTC), datetime(2021, 6, 1, tzinfo=UTC)))


@pytest.mark.parametrize(("stored", "held"), [
    (None, "holds no NEWUSDT perp 1h candles at all"),
    ((datetime(2018, 1, 1, tzinfo=UTC), datetime(2021, 6, 1, tzinfo=UTC)),
     "holds NEWUSDT perp 1h candles from 2018-01-01 00:00Z to 2021-06-01 00:00Z"),
])
def test_no_candles_in_the_window_fails_naming_where_the_data_ends(stored, held):
    with pytest.raises(NoDataError) as info:
        history_window(CFG, WINDOW, None, stored, source="FileSource('data/binance')")
    message = str(info.value)
    for needle in ("FileSource('data/binance') has no NEWUSDT perp 1h candles in "
                   "[2022-11-01 00:00Z, 2023-12-31 00:00Z)",
                   held, "source='exchange'", "as_of_date"):
        assert needle in message, (needle, message)


def test_a_market_listed_inside_the_features_read_margin_keeps_its_full_training_window():
    first = datetime(2022, 11, 20, tzinfo=UTC)  # after ingest_start (2022-11-01), before train_start - warm-up
    window = history_window(CFG, WINDOW, first, (first, STORED[1]))
    assert window.train_start == WINDOW.train_start and window.requested_train_start is None
    assert window.ingest_start == first.isoformat()  # validation covers what there is, from its first bar


def test_each_month_s_features_read_enough_history_for_the_timeframe():
    from datetime import timedelta

    from include.windows import feature_pad, feature_read_start

    assert feature_pad(RunConfig()) == timedelta(days=30)  # 720 hourly bars, over 4 x the 150-bar warm-up
    assert feature_pad(RunConfig(timeframe="1d")) == timedelta(days=600)  # 4 x 150 daily bars
    assert feature_read_start(datetime(2023, 12, 17, 5, tzinfo=UTC), RunConfig()) == datetime(2023, 11, 1, tzinfo=UTC)


def test_a_short_requested_interval_still_names_a_sunday_to_qualify_on():
    requested = resolve_window(RunConfig(symbol="NEWUSDT", train_window_days=365, min_history_days=180,
                                         as_of_date="2023-12-27"),
                               data_interval_start=None, data_interval_end=None, run_after=None)
    assert (requested.interval_start, requested.interval_end) == (
        "2023-12-24T00:00:00+00:00", "2023-12-27T00:00:00+00:00")
    first = datetime(2023, 10, 1, tzinfo=UTC)
    with pytest.raises(MarketNotReadyError) as info:
        history_window(CFG, requested, first, (first, STORED[1]))
    assert info.value.qualifies_on == "2024-04-07"  # a Sunday, not Wednesday plus a multiple of 3 days
