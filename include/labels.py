"""Three-class direction labels from forward returns.

Fixed-horizon rule (the triple-barrier method's special case with only the vertical barrier;
López de Prado 2018, *Advances in Financial Machine Learning*, ch. 3.2):

    r_t = ln(close[t + h] / close[t])                      forward log return over h bars
    thr_t = k * sigma_t * sqrt(h)        ('volatility')    sigma_t = std of the last
                                                           ``vol_window`` 1-bar log returns,
                                                           ending at bar t (no look-ahead)
    thr_t = k                            ('fixed')
    label = 0 (down) if r_t < -thr_t; 2 (up) if r_t > thr_t; 1 (range) otherwise

With Gaussian returns, k = 0.43 gives three equally likely classes in 'volatility' mode. The
label of bar t is known only at the close of bar t + h: the last h bars of a window have no label,
and training rows must be purged h bars before any test row (see :mod:`include.evaluation`).
Shifts count rows, so across a gap in the candles the horizon spans more wall-clock time.

Triple-barrier rule ('triple_barrier'; López de Prado 2018, ch. 3.4): the same volatility-scaled
thresholds are a profit-take barrier at ``+thr_t`` and a stop-loss barrier at ``-thr_t`` on the
path of closes ``ln(close[t + j] / close[t])``, j = 1..h, and h bars is the time limit (the
vertical barrier). The label is the first barrier the path touches: 2 (up) for the upper one, 0
(down) for the lower one, 1 (range) when the time limit comes first. A label's *end* is the bar
of that touch (:func:`label_end_offsets`), at most h bars after its start, so the h-bar purge of
the walk-forward splits covers every label's end time.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd

from include.errors import ConfigError

logger = logging.getLogger(__name__)

CLASSES: tuple[int, ...] = (0, 1, 2)
CLASS_NAMES: tuple[str, ...] = ("down", "range", "up")


LabelMode = Literal["volatility", "fixed", "triple_barrier"]
#: Modes whose threshold is ``k * sigma_t * sqrt(h)``.
VOLATILITY_SCALED: tuple[str, ...] = ("volatility", "triple_barrier")


def _thresholds(log_close: pd.Series, horizon: int, mode: str, threshold: float, vol_window: int) -> pd.Series:
    if mode in VOLATILITY_SCALED:
        sigma = log_close.diff().rolling(vol_window, min_periods=vol_window).std()
        return threshold * sigma * np.sqrt(horizon)
    if mode == "fixed":
        return pd.Series(threshold, index=log_close.index)
    raise ConfigError(f"unknown label threshold mode {mode!r}: expected one of volatility, fixed, triple_barrier")


def _first_touch(log_close: pd.Series, thr: pd.Series, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bar: the class of the first barrier the next ``horizon`` closes touch and the bars to
    the label's end. NaN where the threshold is not defined and in the last ``horizon`` bars (as
    for the fixed-horizon rules, a label is used only once its time limit has passed)."""
    lc = log_close.to_numpy()
    t = thr.to_numpy()
    n = len(lc)
    label = np.full(n, np.nan)
    end = np.full(n, float(horizon))
    open_ = np.isfinite(t) & np.isfinite(lc)
    broken = np.zeros(n, dtype=bool)  # a missing close on the path before any touch
    for j in range(1, horizon + 1):
        path = np.full(n, np.nan)
        path[: n - j] = lc[j:] - lc[: n - j]
        up, down = open_ & (path > t), open_ & (path < -t)
        label[up], label[down] = 2.0, 0.0
        end[up | down] = j
        open_ &= ~(up | down)
        broken |= open_ & np.isnan(path)
        open_ &= ~broken
    known = np.r_[np.ones(max(n - horizon, 0), dtype=bool), np.zeros(min(horizon, n), dtype=bool)]
    label[open_] = 1.0  # the time limit came first
    label[~known | ~np.isfinite(t) | ~np.isfinite(lc) | broken] = np.nan
    return label, end


def label_end_offsets(close: pd.Series, *, horizon: int, mode: LabelMode, threshold: float,
                      vol_window: int = 168) -> pd.Series:
    """Bars from each bar to the end of its label: ``horizon`` for the fixed-horizon rules, the
    bar of the first barrier touched (1..``horizon``) for 'triple_barrier'.

    Returns:
        Float series aligned with ``close``; NaN where the label is NaN.

    Raises:
        ConfigError: as :func:`make_labels`.
    """
    if mode == "triple_barrier":
        log_close = np.log(close.astype("float64"))
        labels, end = _first_touch(log_close, _thresholds(log_close, horizon, mode, threshold, vol_window), horizon)
    else:
        labels = make_labels(close, horizon=horizon, mode=mode, threshold=threshold, vol_window=vol_window).to_numpy()
        end = np.full(len(close), float(horizon))
    return pd.Series(np.where(np.isnan(labels), np.nan, end), index=close.index, name="label_end")


def make_labels(close: pd.Series, *, horizon: int, mode: LabelMode,
                threshold: float, vol_window: int = 168) -> pd.Series:
    """Label every bar down / range / up from its forward return, or its forward path for
    'triple_barrier'.

    Args:
        close: close prices, shape ``(n_bars,)``, sorted by time.
        horizon: h, forward horizon (the time limit) in bars (>= 1).
        mode: 'volatility', 'fixed' or 'triple_barrier' (see module docstring).
        threshold: k; a multiple of sigma * sqrt(h) (volatility, triple_barrier) or a log-return
            fraction (fixed).
        vol_window: bars in the trailing volatility estimate (volatility-scaled modes).

    Returns:
        Float series aligned with ``close``: 0.0, 1.0, 2.0, or NaN where the forward close or the
        volatility estimate is not available.

    Raises:
        ConfigError: on a non-positive horizon, threshold or window, or an unknown mode.
    """
    if horizon < 1 or threshold <= 0 or vol_window < 2:
        raise ConfigError("horizon, threshold and vol_window must be positive (vol_window >= 2)")
    log_close = np.log(close.astype("float64"))
    thr = _thresholds(log_close, horizon, mode, threshold, vol_window)
    if mode == "triple_barrier":
        return pd.Series(_first_touch(log_close, thr, horizon)[0], index=close.index, name="label")
    forward = log_close.shift(-horizon) - log_close
    labels = pd.Series(np.where(forward > thr, 2.0, np.where(forward < -thr, 0.0, 1.0)),
                       index=close.index, name="label")
    labels[forward.isna() | thr.isna()] = np.nan
    return labels


def class_balance(labels: pd.Series) -> dict[str, float]:
    """Share of each class among the labelled rows, keyed by class name."""
    valid = labels.dropna()
    if valid.empty:
        return {name: 0.0 for name in CLASS_NAMES}
    return {name: float((valid == cls).mean()) for cls, name in zip(CLASSES, CLASS_NAMES, strict=True)}


def momentum_forecast(close: pd.Series, *, horizon: int, mode: LabelMode,
                      threshold: float, vol_window: int = 168) -> pd.Series:
    """The momentum rule: forecast for bar t the class of the *trailing* h-bar return.

    ``ln(close_t / close_{t-h})`` is classified with the same thresholds as the labels, so the
    rule says "the next h bars repeat the last h" and uses only data up to bar t. A standard
    time-series-momentum baseline (Moskowitz, Ooi & Pedersen 2012, "Time series momentum").

    Returns:
        Float series aligned with ``close``: 0.0, 1.0, 2.0, or NaN during warm-up.
    """
    log_close = np.log(close.astype("float64"))
    trailing = log_close - log_close.shift(horizon)
    thr = _thresholds(log_close, horizon, mode, threshold, vol_window)
    out = pd.Series(np.where(trailing > thr, 2.0, np.where(trailing < -thr, 0.0, 1.0)),
                    index=close.index, name="momentum")
    out[trailing.isna() | thr.isna()] = np.nan
    return out
