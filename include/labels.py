"""Three-class direction labels from forward returns.

Rule (the triple-barrier method's fixed-horizon special case; López de Prado 2018, ch. 3):

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


def make_labels(close: pd.Series, *, horizon: int, mode: Literal["volatility", "fixed"],
                threshold: float, vol_window: int = 168) -> pd.Series:
    """Label every bar down / range / up from its forward return.

    Args:
        close: close prices, shape ``(n_bars,)``, sorted by time.
        horizon: h, forward horizon in bars (>= 1).
        mode: 'volatility' or 'fixed' threshold (see module docstring).
        threshold: k; a multiple of sigma * sqrt(h) or a log-return fraction.
        vol_window: bars in the trailing volatility estimate ('volatility' mode).

    Returns:
        Float series aligned with ``close``: 0.0, 1.0, 2.0, or NaN where the forward close or the
        volatility estimate is not available.

    Raises:
        ConfigError: on a non-positive horizon, threshold or window, or an unknown mode.
    """
    if horizon < 1 or threshold <= 0 or vol_window < 2:
        raise ConfigError("horizon, threshold and vol_window must be positive (vol_window >= 2)")
    log_close = np.log(close.astype("float64"))
    forward = log_close.shift(-horizon) - log_close
    if mode == "volatility":
        sigma = log_close.diff().rolling(vol_window, min_periods=vol_window).std()
        thr = threshold * sigma * np.sqrt(horizon)
    elif mode == "fixed":
        thr = pd.Series(threshold, index=close.index)
    else:
        raise ConfigError(f"unknown label threshold mode {mode!r}")
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


def momentum_forecast(close: pd.Series, *, horizon: int, mode: Literal["volatility", "fixed"],
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
    if mode == "volatility":
        thr = threshold * log_close.diff().rolling(vol_window, min_periods=vol_window).std() * np.sqrt(horizon)
    else:
        thr = pd.Series(threshold, index=close.index)
    out = pd.Series(np.where(trailing > thr, 2.0, np.where(trailing < -thr, 0.0, 1.0)),
                    index=close.index, name="momentum")
    out[trailing.isna() | thr.isna()] = np.nan
    return out
