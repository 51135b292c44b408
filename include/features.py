"""Feature generation without look-ahead: technical indicators, funding and open-interest features.

Every feature of the row for bar ``t`` (bar open time ``t``) is computed from candles up to and
including bar ``t`` and from funding settlements and open-interest closes *published* at or
before ``t``. Appending later rows never changes an earlier row; ``tests/models`` checks this.

Indicators come from TA-Lib (https://ta-lib.github.io/ta-lib-python/); formulas as documented
there: RSI (Wilder 1978), MACD (Appel; EMA 12/26, signal EMA 9), ATR (Wilder 1978), Bollinger
Bands (Bollinger 2001; SMA 20 +/- 2 population std), EMA.

The :class:`FeatureSpec` (names, order, parameters) is stored with every model and identified by
a sha256 hash, so a model is always served with the features it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from include.errors import ConfigError

logger = logging.getLogger(__name__)

FEATURE_SPEC_VERSION = "1"

#: The reference design's twelve features, in order.
BASE_FEATURES: tuple[str, ...] = (
    "close", "volume", "returns_1", "rsi_14", "macd", "macd_signal", "atr_14", "bb_position",
    "ema_20", "ema_50", "zscore", "volume_ratio",
)
#: Scale-free companions of the price-level features, comparable across price regimes.
RELATIVE_FEATURES: tuple[str, ...] = ("returns_24", "ema_20_gap", "ema_50_gap", "atr_pct")
FUNDING_FEATURES: tuple[str, ...] = ("funding_rate", "funding_rate_zscore")
OPEN_INTEREST_FEATURES: tuple[str, ...] = ("oi_change_1d",)

DEFAULT_PARAMS: dict[str, Any] = {
    "rsi_period": 14,
    "macd_fast": 12,
    "macd_slow": 26,
    "macd_signal": 9,
    "atr_period": 14,
    "bb_period": 20,
    "bb_nbdev": 2.0,
    "ema_fast": 20,
    "ema_slow": 50,
    "zscore_period": 20,
    "volume_ratio_period": 20,
    "momentum_bars": 24,
    "funding_zscore_settlements": 21,
    "open_interest_publish_lag_hours": 24,
    # Older than this, the last funding settlement or open-interest value is missing (NaN), not
    # carried forward: a series that stops arriving shows as missing values.
    "funding_max_age_hours": 24,
    "open_interest_max_age_hours": 48,
}


@dataclass(frozen=True)
class FeatureSpec:
    """Names, order and parameters of the model inputs.

    Attributes:
        names: feature columns in model input order.
        params: indicator parameters (periods in bars; see :data:`DEFAULT_PARAMS`).
        version: version of the feature code's formulas.
    """

    names: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    version: str = FEATURE_SPEC_VERSION

    @classmethod
    def default(cls, *, funding: bool = True, open_interest: bool = True) -> FeatureSpec:
        """The standard spec: base + relative features, plus funding / OI features if asked."""
        names = BASE_FEATURES + RELATIVE_FEATURES
        if funding:
            names += FUNDING_FEATURES
        if open_interest:
            names += OPEN_INTEREST_FEATURES
        return cls(names=names)

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON of the spec."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def warmup_bars(self) -> int:
        """Bars of history needed before the first row with every candle feature defined."""
        p = self.params
        # TA-Lib's EMA seeds with an SMA; 3x the period lets the seed's influence decay.
        return int(max(3 * p["ema_slow"], 3 * (p["macd_slow"] + p["macd_signal"]), p["momentum_bars"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        out = asdict(self)
        out["names"] = list(self.names)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: the stored spec was written by a different feature-code version.
        """
        if data.get("version") != FEATURE_SPEC_VERSION:
            raise ConfigError(
                f"feature spec version {data.get('version')!r} is not supported by this code "
                f"(expects {FEATURE_SPEC_VERSION!r})"
            )
        return cls(names=tuple(data["names"]), params=dict(data["params"]), version=data["version"])


def _asof_join(bars: pd.DataFrame, series: pd.DataFrame, available_col: str,
               columns: list[str], max_age_hours: float | None = None) -> pd.DataFrame:
    """Attach the last value of ``series`` whose ``available_col`` <= bar open time, and no
    older than ``max_age_hours`` (``pandas.merge_asof``'s ``tolerance``; ``None``: any age)."""
    left = bars[["timestamp"]].copy()
    left["timestamp"] = left["timestamp"].astype("datetime64[ns, UTC]")
    right = series[[available_col, *columns]].rename(columns={available_col: "_available"})
    right["_available"] = right["_available"].astype("datetime64[ns, UTC]")
    right = right.sort_values("_available")
    tolerance = pd.Timedelta(hours=max_age_hours) if max_age_hours is not None else None
    joined = pd.merge_asof(left, right, left_on="timestamp", right_on="_available",
                           direction="backward", allow_exact_matches=True, tolerance=tolerance)
    return joined[columns].set_axis(bars.index)


def build_features(ohlcv: pd.DataFrame, spec: FeatureSpec, funding: pd.DataFrame | None = None,
                   open_interest: pd.DataFrame | None = None) -> pd.DataFrame:
    """Compute the feature matrix for every bar.

    Args:
        ohlcv: candles sorted by ``timestamp`` (bar open, UTC), columns open/high/low/close/volume.
        spec: which features to compute and with which parameters.
        funding: settlements (timestamp = settlement time, funding_rate as a fraction per
            settlement); required when the spec has funding features. A bar sees the last
            settlement at or before its open time, if not older than ``funding_max_age_hours``
            (24 h; else NaN).
        open_interest: daily USD open interest, timestamp = UTC day start of the daily bar whose
            close it is; required when the spec has OI features. A value becomes visible
            ``open_interest_publish_lag_hours`` (24 h) after its day start, when the day closes,
            and stays visible for ``open_interest_max_age_hours`` (48 h; then NaN).

    Returns:
        DataFrame of shape ``(n_bars, len(spec.names))`` indexed by bar open time, columns in
        spec order, float64. Warm-up rows hold NaN.

    Raises:
        ConfigError: the spec names a feature this code does not know, or needs funding / open
            interest that was not given.
    """
    import talib

    known = set(BASE_FEATURES + RELATIVE_FEATURES + FUNDING_FEATURES + OPEN_INTEREST_FEATURES)
    unknown = [n for n in spec.names if n not in known]
    if unknown:
        raise ConfigError(f"feature spec names unknown features {unknown}")
    p = spec.params
    bars = ohlcv.sort_values("timestamp").reset_index(drop=True)
    h, lo, c, v = (bars[k].to_numpy(dtype="float64") for k in ("high", "low", "close", "volume"))

    feats: dict[str, np.ndarray] = {"close": c, "volume": v}
    prev = np.concatenate([[np.nan], c[:-1]])
    feats["returns_1"] = c / prev - 1.0
    m = p["momentum_bars"]
    feats["returns_24"] = c / np.concatenate([np.full(m, np.nan), c[:-m]])[: len(c)] - 1.0
    feats["rsi_14"] = talib.RSI(c, timeperiod=p["rsi_period"])
    macd, macd_signal, _ = talib.MACD(c, fastperiod=p["macd_fast"], slowperiod=p["macd_slow"],
                                      signalperiod=p["macd_signal"])
    feats["macd"], feats["macd_signal"] = macd, macd_signal
    feats["atr_14"] = talib.ATR(h, lo, c, timeperiod=p["atr_period"])
    feats["atr_pct"] = feats["atr_14"] / c
    upper, _, lower = talib.BBANDS(c, timeperiod=p["bb_period"], nbdevup=p["bb_nbdev"],
                                   nbdevdn=p["bb_nbdev"])
    width = upper - lower
    with np.errstate(divide="ignore", invalid="ignore"):
        feats["bb_position"] = np.where(width > 0, (c - lower) / width, 0.5)
        feats["ema_20"] = talib.EMA(c, timeperiod=p["ema_fast"])
        feats["ema_50"] = talib.EMA(c, timeperiod=p["ema_slow"])
        feats["ema_20_gap"] = c / feats["ema_20"] - 1.0
        feats["ema_50_gap"] = c / feats["ema_50"] - 1.0
        sma = talib.SMA(c, timeperiod=p["zscore_period"])
        std = talib.STDDEV(c, timeperiod=p["zscore_period"], nbdev=1.0)
        feats["zscore"] = np.where(std > 0, (c - sma) / std, 0.0)
        vol_sma = talib.SMA(v, timeperiod=p["volume_ratio_period"])
        feats["volume_ratio"] = np.where(vol_sma > 0, v / vol_sma, np.nan)
    feats["bb_position"][np.isnan(upper)] = np.nan
    feats["zscore"][np.isnan(sma)] = np.nan

    out = pd.DataFrame(feats, index=pd.DatetimeIndex(bars["timestamp"], name="timestamp"))

    if any(n in spec.names for n in FUNDING_FEATURES):
        if funding is None:
            raise ConfigError("feature spec has funding features but no funding rates were given")
        f = funding.sort_values("timestamp").reset_index(drop=True)
        n = p["funding_zscore_settlements"]
        roll = f["funding_rate"].rolling(n, min_periods=n)
        dev, std = f["funding_rate"] - roll.mean(), roll.std(ddof=0)
        # Funding often sits at its floor for days (std 0): the rate is then exactly typical.
        f["funding_rate_zscore"] = (dev / std.where(std > 0)).where(std != 0, 0.0)
        joined = _asof_join(bars, f, "timestamp", ["funding_rate", "funding_rate_zscore"],
                            p.get("funding_max_age_hours"))
        out["funding_rate"] = joined["funding_rate"].to_numpy()
        out["funding_rate_zscore"] = joined["funding_rate_zscore"].to_numpy()

    if any(n in spec.names for n in OPEN_INTEREST_FEATURES):
        if open_interest is None:
            raise ConfigError("feature spec has open-interest features but none was given")
        oi = open_interest.sort_values("timestamp").reset_index(drop=True)
        oi["oi_change_1d"] = oi["open_interest"].pct_change(fill_method=None)
        oi["available_at"] = oi["timestamp"] + pd.Timedelta(hours=p["open_interest_publish_lag_hours"])
        out["oi_change_1d"] = _asof_join(bars, oi, "available_at", ["oi_change_1d"],
                                         p.get("open_interest_max_age_hours"))["oi_change_1d"].to_numpy()

    result = out[list(spec.names)].astype("float64")
    logger.info("built %d features for %d bars (%s .. %s), spec %s", result.shape[1], len(result),
                result.index.min(), result.index.max(), spec.sha256[:12])
    return result
