"""Which stored rows passed the expectation suites, so that each bar is validated once.

A weekly run's window holds two years of bars, all but the last week's validated by earlier
runs. After a window passes, the validate step records each UTC day of each series in the
market store's ``bar_validation`` table (:meth:`~include.data.store.MarketStore.record_validated_days`)
with the suite's version and a digest of the day's rows. The next run computes the same digests
over its window and runs the suites' row checks only on the rows of days without a matching
record (:func:`validated_rows`): a new day, a day whose stored rows changed (a corrected candle,
a filled gap) or a suite whose row checks changed is validated again. The window's own checks
(row count, gaps, the end of the data) always run on the whole window
(:func:`include.quality.suites.run_suites`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

DAY_MS = 86_400_000


def _row_days(frame: pd.DataFrame) -> np.ndarray:
    """UTC day start of each row's ``timestamp``, ms since the epoch, shape ``(n_rows,)``."""
    ms = (frame["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    return (ms.to_numpy(dtype="int64") // DAY_MS) * DAY_MS


def day_digests(frame: pd.DataFrame) -> list[tuple[int, str, int]]:
    """The digest of each UTC day of a series' rows.

    Args:
        frame: rows of one series as the store loads them, sorted by ``timestamp`` (UTC), with
            their value columns (OHLCV, ``funding_rate`` or ``open_interest``).

    Returns:
        ``(day start ms since epoch UTC, sha256 hex, rows)`` per day with rows, oldest first. The
        digest covers every column of every row of the day (pandas' row hash,
        :func:`pandas.util.hash_pandas_object`), so a changed value, an added or a removed row
        changes it. A day cut by the window's start digests only its rows in the window.
    """
    if frame.empty:
        return []
    hashes = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy()
    days = _row_days(frame)
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
    ends = np.r_[starts[1:], len(days)]
    return [(int(days[a]), hashlib.sha256(hashes[a:b].tobytes()).hexdigest(), int(b - a))
            for a, b in zip(starts, ends, strict=True)]


def validated_rows(frame: pd.DataFrame, digests: list[tuple[int, str, int]],
                   recorded: set[tuple[int, str]]) -> np.ndarray:
    """Which rows of ``frame`` belong to a day recorded as validated with the same digest.

    Args:
        frame: as for :func:`day_digests`.
        digests: :func:`day_digests` of ``frame``.
        recorded: ``(day start ms, digest)`` pairs that passed the suite
            (:meth:`~include.data.store.MarketStore.load_validated_days`).

    Returns:
        Boolean mask, shape ``(n_rows,)``: ``True`` where the row need not be checked again.
    """
    mask = np.zeros(len(frame), dtype=bool)
    if frame.empty or not recorded:
        return mask
    days = _row_days(frame)
    passed = {day for day, digest, _ in digests if (day, digest) in recorded}
    return np.isin(days, np.fromiter(passed, dtype="int64", count=len(passed)))
