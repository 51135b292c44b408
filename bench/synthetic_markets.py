"""Synthetic perpetual markets in the file format of ``data/binance``, for the gate's benchmarks.

Four kinds of hourly close-to-close log returns ``r_t`` (bar ``t`` opens at hour ``t``), all
with innovations ``sigma * e_t`` (``e_t`` standard normal, ``sigma`` 0.6 % per hour by default):

* ``walk``: ``r_t = sigma * e_t``, a geometric random walk; nothing in it is predictable, so
  every promotion the gate makes on it is a false positive.
* ``ar1``: ``r_t = phi * r_{t-1} + sigma * e_t``, started from the stationary distribution.
  The lag-1 autocorrelation of the returns is ``phi``, and the pipeline's ``returns_1`` feature
  (the last bar's return) carries that edge, so a gate with power should promote on it.
* ``funding``: ``r_t = beta * sigma * z_{s(t-1)} + sigma * e_t``, with ``z_s`` the standardised
  funding rate of settlement ``s`` (``(rate - 0.01 %) / 0.01 %``, standard normal) and ``s(t-1)``
  the last settlement at or before bar ``t - 1``'s open: the rate a bar's funding features see
  (:func:`include.features.build_features`) predicts the next bar's return, until the next
  settlement.
* ``regime``: volatility switches between :data:`REGIME_SIGMAS` (a two-state Markov chain, one
  switch per :data:`REGIME_MEAN_BARS` bars on average), and the AR(1) edge ``phi`` exists only in
  the high-volatility state: ``r_t = phi * [high_t] * r_{t-1} + sigma_{state_t} * e_t``.

:func:`market_frames` also returns what generated the returns (``state``: per bar, the known
funding z-score and the regime), from which :mod:`bench.edge_capture` computes the oracle: the
true conditional distribution of each bar's label.

Around the closes: candles open at the previous close, with small lognormal wicks and lognormal
volume; funding is noise around 0.01 % per 8 h settlement; open interest (USD) is a positive
random walk. A ``walk`` market with a given seed and date range is the market
``bench/random_walk_gate.py``'s ``write_walk`` writes: the random numbers are drawn in the same
order.

Files, for symbol ``BTCUSDT`` (lower-cased in the names, as
:class:`include.data.sources.FileSource` looks for them): ``btcusdt_perp_1h.csv.gz``,
``btcusdt_funding_8h.csv.gz`` and ``btcusdt_perp_open_interest_usd_1d.csv.gz``.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy.signal import lfilter

Kind = Literal["walk", "ar1", "funding", "regime"]
KINDS: tuple[str, ...] = ("walk", "ar1", "funding", "regime")

#: Hourly standard deviation of the return innovations (0.6 %, about BTC's hourly volatility).
HOURLY_SIGMA = 0.006
#: The ``regime`` market's hourly innovation standard deviations, low and high state.
REGIME_SIGMAS = (0.004, 0.009)
#: Mean length of a ``regime`` state, in bars (two weeks).
REGIME_MEAN_BARS = 336
#: Mean and standard deviation of a synthetic funding settlement (fraction per 8 h).
FUNDING_MEAN, FUNDING_SD = 0.0001, 0.0001


def log_returns(kind: Kind, n: int, rng: np.random.Generator, *, phi: float = 0.0,
                sigma: float = HOURLY_SIGMA) -> np.ndarray:
    """Hourly log returns of a synthetic market, shape ``(n,)``.

    Args:
        kind: ``walk`` (independent returns) or ``ar1`` (``r_t = phi r_{t-1} + sigma e_t``).
        n: number of hourly bars.
        rng: the generator the innovations are drawn from (``n`` standard normals, scaled).
        phi: the AR(1) coefficient, ``|phi| < 1``; must be 0 for ``walk``.
        sigma: innovation standard deviation, a log-return fraction per hour.

    Returns:
        Log returns; for ``ar1`` the first one is drawn from the stationary distribution
        (standard deviation ``sigma / sqrt(1 - phi**2)``), so the series has no start-up transient.

    Raises:
        ValueError: an unknown kind, ``|phi| >= 1``, or a nonzero ``phi`` for ``walk``.
    """
    if kind not in ("walk", "ar1"):
        raise ValueError(f"kind={kind!r}: expected walk or ar1 (the others need market_frames)")
    if not abs(phi) < 1:
        raise ValueError(f"phi={phi!r}: expected |phi| < 1 (a stationary AR(1))")
    if kind == "walk" and phi != 0:
        raise ValueError(f"phi={phi!r}: a random walk has phi 0; use kind='ar1'")
    innovations = rng.normal(0.0, sigma, n)
    if kind == "walk":
        return innovations
    innovations[0] /= math.sqrt(1 - phi * phi)
    return lfilter([1.0], [1.0, -phi], innovations)


def market_frames(kind: Kind, seed: int, *, phi: float = 0.0, beta: float = 0.0, start: str = "2020-06-01",
                  end: str = "2023-07-01", sigma: float = HOURLY_SIGMA) -> dict[str, pd.DataFrame]:
    """The three series of one synthetic market over ``[start, end)`` (UTC), as written to files,
    and what generated its returns.

    Args:
        kind, phi, sigma: see the module docstring and :func:`log_returns`; ``phi`` is the
            ``regime`` market's high-state coefficient too.
        beta: the ``funding`` market's edge, in innovation standard deviations per unit z-score.
        seed: seed of the market's random numbers; the same arguments give the same frames (a
            ``walk`` or ``ar1`` market's numbers are drawn in :func:`log_returns`' order, then
            the wicks, volume, funding and open interest).
        start, end: first day and the day after the last (dates or ISO timestamps).

    Returns:
        ``{"ohlcv": (n_bars, 6), "funding": (n_settlements, 2), "open_interest": (n_days, 2)}``,
        each with a ``timestamp`` column of ISO-8601 UTC strings (``2023-01-01T00:00:00Z``), and
        ``"state"``: per bar (index: open time), ``z_known`` (the z-score of the last settlement
        at or before the bar's open, the one predicting the next bar), ``high`` (the regime, 1
        in the high-volatility state) and ``sigma`` (the bar's innovation standard deviation).

    Raises:
        ValueError: an unknown kind, ``|phi| >= 1``, or an edge the kind does not have.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if kind in ("walk", "funding") and phi != 0:
        raise ValueError(f"phi={phi!r}: a {kind} market has no AR(1) edge")
    if kind != "funding" and beta != 0:
        raise ValueError(f"beta={beta!r}: only a funding market has a funding edge")
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, end, freq="h", tz="UTC", inclusive="left")
    returns = log_returns("ar1" if kind == "ar1" else "walk", len(index), rng, phi=phi if kind == "ar1" else 0.0,
                          sigma=sigma)
    wick = np.abs(rng.normal(0.0, 0.002, (2, len(index))))
    volume = rng.lognormal(np.log(500.0), 0.5, len(index))
    settlements = pd.date_range(start, end, freq="8h", tz="UTC", inclusive="left")
    rates = FUNDING_MEAN + rng.normal(0.0, FUNDING_SD, len(settlements))
    days = pd.date_range(start, end, freq="D", tz="UTC", inclusive="left")
    interest = 3e9 * np.exp(np.cumsum(rng.normal(0.0, 0.03, len(days))))
    # The last settlement at or before each bar's open, and its z-score.
    last = np.searchsorted(settlements.asi8, index.asi8, side="right") - 1
    z_known = np.where(last >= 0, (rates[np.maximum(last, 0)] - FUNDING_MEAN) / FUNDING_SD, 0.0)
    high = np.zeros(len(index), dtype=int)
    bar_sigma = np.full(len(index), sigma)
    if kind == "funding":
        returns = returns + beta * sigma * np.concatenate([[0.0], z_known[:-1]])
    elif kind == "regime":
        switch = rng.random(len(index)) < 1.0 / REGIME_MEAN_BARS
        high = np.cumsum(switch) % 2
        bar_sigma = np.asarray(REGIME_SIGMAS)[high]
        shocks = returns / sigma * bar_sigma
        returns = np.empty(len(index))
        previous = 0.0
        for t in range(len(index)):  # an AR(1) whose coefficient changes with the state
            previous = phi * high[t] * previous + shocks[t]
            returns[t] = previous
    close = np.exp(np.log(20_000.0) + np.cumsum(returns))
    open_ = np.concatenate([[close[0]], close[:-1]])
    ohlcv = pd.DataFrame({"timestamp": index.strftime("%Y-%m-%dT%H:%M:%SZ"), "open": open_,
                          "high": np.maximum(open_, close) * (1 + wick[0]),
                          "low": np.minimum(open_, close) * (1 - wick[1]), "close": close,
                          "volume": volume})
    funding = pd.DataFrame({"timestamp": settlements.strftime("%Y-%m-%dT%H:%M:%SZ"), "funding_rate": rates})
    open_interest = pd.DataFrame({"timestamp": days.strftime("%Y-%m-%dT%H:%M:%SZ"), "open_interest": interest})
    state = pd.DataFrame({"z_known": z_known, "high": high, "sigma": bar_sigma}, index=index)
    return {"ohlcv": ohlcv, "funding": funding, "open_interest": open_interest, "state": state}


def write_market(folder: Path, kind: Kind, seed: int, *, phi: float = 0.0, beta: float = 0.0, symbol: str = "BTCUSDT",
                 start: str = "2020-06-01", end: str = "2023-07-01", sigma: float = HOURLY_SIGMA) -> list[Path]:
    """Write one synthetic perpetual market into ``folder`` in the file format of ``data/binance``.

    Several markets may share a folder under different symbols. Each file is written to a
    temporary name and renamed, so a reader never sees half a file.

    Args:
        folder: created if missing.
        kind, seed, phi, beta, start, end, sigma: see :func:`market_frames`.
        symbol: the instrument the files are named after (``BTCUSDT`` -> ``btcusdt_perp_1h.csv.gz``).

    Returns:
        The three files written: candles, funding, open interest.

    Raises:
        ValueError: see :func:`market_frames`.
    """
    frames = market_frames(kind, seed, phi=phi, beta=beta, start=start, end=end, sigma=sigma)
    stem = symbol.lower()
    names = {"ohlcv": f"{stem}_perp_1h.csv.gz", "funding": f"{stem}_funding_8h.csv.gz",
             "open_interest": f"{stem}_perp_open_interest_usd_1d.csv.gz"}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, name in names.items():
        path = folder / name
        # The temporary name must not match the source's ``<stem>.csv*`` glob.
        partial = folder / f".{name}.{os.getpid()}.partial"
        with gzip.open(partial, "wt") as fh:
            frames[key].to_csv(fh, index=False)
        partial.replace(path)
        written.append(path)
    return written
