"""The calendar of a run: data intervals, the run window, closed bars, and the feature window.

Every stage and workflow that asks "which bars" reads it here: the weekly schedule's intervals
(Sunday 00:00 UTC to Sunday), a run's :class:`RunWindow` (data interval, training start,
ingestion start), the last bar closed by a moment, and how much history before a bar its
features read (the indicator warm-up, the funding look-back, the month segments features are
computed and stored in).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from include.config import RunConfig
from include.errors import ConfigError
from include.features import FeatureSpec

logger = logging.getLogger(__name__)

FUNDING_LOOKBACK = timedelta(days=10)


#: Least history before each calendar month from which that month's features are computed
#: (:func:`include.feature_store.feature_frame`); see :func:`feature_pad`.
FEATURE_SEGMENT_PAD = timedelta(days=30)


def month_start(moment: datetime) -> datetime:
    """00:00 UTC on the first day of ``moment``'s month."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def feature_pad(cfg: RunConfig) -> timedelta:
    """History before each calendar month from which its features are computed: 30 days, or four
    times the indicator warm-up in the run's bars if longer (daily bars). With 720 hourly bars
    against a warm-up of 150, an EMA's seed weighs under 0.1 % at the month's first bar."""
    spec = FeatureSpec.default(extra=cfg.extra_features)
    return max(FEATURE_SEGMENT_PAD, 4 * spec.warmup_bars * timedelta(seconds=cfg.bar_seconds))


def feature_read_start(start: datetime, cfg: RunConfig) -> datetime:
    """The first bar :func:`~include.feature_store.feature_frame` reads for features from ``start``:
    :func:`feature_pad` before the start of ``start``'s month."""
    return month_start(start) - feature_pad(cfg)


# -- the run's window ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunWindow:
    """Time bounds of one run (ISO-8601 UTC strings, half-open intervals).

    Attributes:
        interval_start / interval_end: the data interval (one week); the gate window.
        train_start: first bar of the training window (``interval_end - train_window_days``).
        ingest_start: first bar ingested and validated: the first bar the features of
            ``train_start`` minus the indicator warm-up read (:func:`feature_read_start`).
        run_key: ``<interval_start>_<interval_end>`` as ``YYYYmmddTHHMM``; names the run folder.
        source: how the interval was chosen: ``data_interval``, ``as_of_date`` or ``last_complete_week``.
        requested_train_start: for a market with less history than ``train_window_days``, the
            training start the window asked for (``train_start`` is then later); else ``None``.
    """

    interval_start: str
    interval_end: str
    train_start: str
    ingest_start: str
    run_key: str
    source: str
    requested_train_start: str | None = None

    def ts(self, name: str) -> datetime:
        """One bound as an aware datetime."""
        return datetime.fromisoformat(getattr(self, name))


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


#: The weekly schedule's interval: every walk-forward fold but a run's own is one of these weeks.
SCHEDULE_INTERVAL = timedelta(days=7)


def schedule_start(end: datetime) -> datetime:
    """The weekly schedule's last boundary (Sunday 00:00 UTC) strictly before ``end`` (a day's 00:00).

    ``end`` a Sunday gives the week before it; a Wednesday, the Sunday three days before, so a
    run as of a mid-week day has a short interval whose earlier folds are the scheduled weeks'
    (their fits are in the fit cache) and whose champion, trained to that Sunday, is out of
    sample on all of it.
    """
    days = (end.weekday() + 1) % 7 or 7
    return end - timedelta(days=days)


def schedule_end_on_or_after(moment: datetime) -> datetime:
    """The weekly schedule's first boundary (Sunday 00:00 UTC) at or after ``moment``: the end of
    the first data interval that holds it."""
    moment = moment.astimezone(UTC)
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if day < moment:
        day += timedelta(days=1)
    return day + timedelta(days=(6 - day.weekday()) % 7)


def closed_bars_end(as_of: datetime, bar: timedelta) -> datetime:
    """The exclusive open-time bound of the bars that closed by ``as_of``: a bar opening at ``t``
    is complete when ``t + bar <= as_of``."""
    return ((pd.Timestamp(as_of) - bar).floor(bar) + bar).to_pydatetime()


def resolve_window(cfg: RunConfig, *, data_interval_start: Any, data_interval_end: Any,
                   run_after: Any) -> RunWindow:
    """Choose the run's data interval and training window.

    Precedence: the ``as_of_date`` param (data up to that date's 00:00 UTC; the interval starts
    at the weekly schedule's last boundary before it, so a Sunday gives the week ending then and
    a mid-week date, such as a retrain monitoring requested, the days since the last Sunday: see
    :func:`schedule_start`), then the run's data interval, then, for a run triggered without a
    logical date (no data interval), the last complete Sunday-to-Sunday week before ``run_after``.

    Raises:
        ConfigError: ``as_of_date`` does not parse.
    """

    start, end = _utc(data_interval_start), _utc(data_interval_end)
    if cfg.as_of_date:
        try:
            end = _utc(pd.Timestamp(cfg.as_of_date).normalize())
        except ValueError as exc:
            raise ConfigError(f"invalid run parameter as_of_date={cfg.as_of_date!r}: {exc}") from exc
        assert end is not None
        start, source = schedule_start(end), "as_of_date"
    elif start is not None and end is not None and end > start:
        source = "data_interval"
    else:
        now = _utc(run_after) or datetime.now(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = midnight - timedelta(days=(midnight.weekday() + 1) % 7)  # last Sunday 00:00
        start, source = end - timedelta(days=7), "last_complete_week"
    assert start is not None and end is not None
    train_start = end - timedelta(days=cfg.train_window_days)
    # Everything the features read is ingested and validated by this run, whatever the store held.
    ingest_start = feature_read_start(train_start - warmup(cfg), cfg)
    key = run_key(start, end)
    window = RunWindow(start.isoformat(), end.isoformat(), train_start.isoformat(),
                       ingest_start.isoformat(), key, source)
    logger.info("run window (%s): interval [%s, %s), training from %s", source, start, end, train_start)
    return window


def warmup(cfg: RunConfig) -> timedelta:
    """Bars before the training window that features and labels need: indicator warm-up or the
    label's volatility window, whichever is longer."""
    spec = FeatureSpec.default(extra=cfg.extra_features)
    return max(spec.warmup_bars, cfg.label_vol_window_bars) * timedelta(seconds=cfg.bar_seconds)


def run_key(start: datetime, end: datetime) -> str:
    """The folder name of a data interval ``[start, end)``: ``20231224T0000_20231231T0000``."""
    return f"{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"
