"""Feature generation without look-ahead: technical indicators, funding and open-interest features.

Every feature of the row for bar ``t`` (bar open time ``t``) is computed from candles up to and
including bar ``t`` and from funding settlements and open-interest closes *published* at or
before ``t``. Appending later rows never changes an earlier row; ``tests/models`` checks this.

The default features are stationary: returns, ratios, z-scores, gaps and volatility in units of
the price (fractions), none a price or volume level. A level (a close of 30,000 USD, an ATR of
220 USD) recurs only while the market stays in that price regime, so a tree's split on it
describes the training months and says nothing about later ones. Multiplying every price by a
constant and every volume by another leaves the default features unchanged; ``tests/include``
checks this. The level features (:data:`LEVEL_FEATURES`) stay computable by name, so a model
registered with a spec that names them is still served its own inputs.

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
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from include.errors import ConfigError
from include.feature_names import (  # noqa: F401 - the feature code's vocabulary, re-exported
    BASE_FEATURES,
    FEATURE_SPEC_VERSION,
    FUNDING_FEATURES,
    KNOWN_FEATURES,
    LEVEL_FEATURES,
    OPEN_INTEREST_FEATURES,
    RELATIVE_FEATURES,
    STATIONARY_FEATURES,
)

logger = logging.getLogger(__name__)

#: The default spec's candle features, in model input order: every one scale-free.
DEFAULT_CANDLE_FEATURES: tuple[str, ...] = (
    "returns_1", "returns_24", "rsi_14", "bb_position", "zscore", "ema_20_gap", "ema_50_gap",
    "ema_20_50_gap", "macd_pct", "macd_signal_pct", "macd_hist_pct", "atr_pct", "volume_ratio",
    "volume_zscore",
)

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
    # Five days of hourly bars: a whole number of days, so every hour of the day's volume cycle
    # weighs the same in the mean and the deviation; within the EMA warm-up (150 bars).
    "volume_zscore_period": 120,
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
        params: indicator parameters (periods in bars; see :data:`DEFAULT_PARAMS`). A stored
            spec keeps the parameters it was written with: one from before a parameter existed
            lacks it, and names no feature that reads it.
        version: the feature code's version the spec was written by (:data:`KNOWN_FEATURES`).
    """

    names: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    version: str = FEATURE_SPEC_VERSION

    @classmethod
    def default(cls, *, funding: bool = True, open_interest: bool = True, extra: tuple[str, ...] = ()) -> FeatureSpec:
        """The standard spec: the scale-free candle features (:data:`DEFAULT_CANDLE_FEATURES`),
        plus funding / OI features if asked, plus the plug-in features ``extra``
        (:mod:`include.extensions`), each recorded in ``params["plugins"]`` with its package,
        version and warm-up.

        Raises:
            ConfigError: a name in ``extra`` is no installed feature plug-in.
        """
        names = DEFAULT_CANDLE_FEATURES
        if funding:
            names += FUNDING_FEATURES
        if open_interest:
            names += OPEN_INTEREST_FEATURES
        if not extra:
            return cls(names=names)
        from include.extensions import FEATURE_GROUP, load_feature, provenance

        plugins = {name: {"from": provenance(FEATURE_GROUP, name),
                          "warmup_bars": int(getattr(load_feature(name), "warmup_bars", 0))} for name in extra}
        return cls(names=names + tuple(extra), params={**DEFAULT_PARAMS, "plugins": plugins})

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON of the spec."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def warmup_bars(self) -> int:
        """Bars of history needed before the first row with every candle feature defined."""
        p = self.params
        # TA-Lib's EMA seeds with an SMA; 3x the period lets the seed's influence decay. The
        # volume z-score's window is plain: it is defined from its period's last bar on.
        return int(max(3 * p["ema_slow"], 3 * (p["macd_slow"] + p["macd_signal"]), p["momentum_bars"],
                       p.get("volume_zscore_period", 0),
                       *(plugin["warmup_bars"] for plugin in p.get("plugins", {}).values())))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        out = asdict(self)
        out["names"] = list(self.names)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`.

        The version and parameters are kept as stored, so the spec's :attr:`sha256` is the one
        recorded with the model.

        Raises:
            ConfigError: the stored spec was written by a feature-code version this code does not
                know (a later one).
        """
        if data.get("version") not in KNOWN_FEATURES:
            raise ConfigError(
                f"feature spec version {data.get('version')!r} is not supported by this code "
                f"(knows {sorted(KNOWN_FEATURES)})"
            )
        return cls(names=tuple(data["names"]), params=dict(data["params"]), version=data["version"])


def _plugin_feature(name: str, recorded: dict[str, Any], bars: pd.DataFrame) -> np.ndarray:
    """Plug-in feature ``name`` of every bar, from the package the spec recorded.

    Raises:
        ConfigError: the installed plug-in is not the one the spec was made with, or its values
            are not one per bar.
    """
    from include.extensions import FEATURE_GROUP, load_feature, provenance

    installed = provenance(FEATURE_GROUP, name)
    if installed != recorded["from"]:
        raise ConfigError(f"feature {name}: the spec was made with plug-in {recorded['from']!r}, this deployment "
                          f"has {installed!r}; install that version or retrain")
    candles = bars.set_index(pd.DatetimeIndex(bars["timestamp"], name="timestamp"))[
        ["open", "high", "low", "close", "volume"]].astype("float64")
    values = np.asarray(load_feature(name)(candles), dtype="float64").reshape(-1)
    if len(values) != len(candles):
        raise ConfigError(f"feature plug-in {name} returned {len(values)} values for {len(candles)} bars")
    return values


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


def _check_spec(spec: FeatureSpec) -> dict[str, Any]:
    """The spec's recorded plug-ins (``params["plugins"]``, empty without any), after checking that
    this code can compute every feature the spec names.

    Raises:
        ConfigError: the spec's version is unknown, it names a feature its version does not know, or
            lacks a parameter a named feature reads.
    """
    known = KNOWN_FEATURES.get(spec.version)
    if known is None:
        raise ConfigError(f"feature spec version {spec.version!r} is not supported by this code "
                          f"(knows {sorted(KNOWN_FEATURES)})")
    plugins = spec.params.get("plugins", {})
    unknown = [n for n in spec.names if n not in known and n not in plugins]
    if unknown:
        raise ConfigError(f"feature spec (version {spec.version}) names unknown features {unknown}")
    p = spec.params
    if "volume_zscore" in spec.names and "volume_zscore_period" not in p:
        raise ConfigError("feature spec names volume_zscore but has no parameter volume_zscore_period")
    return plugins


def _return_features(c: np.ndarray, p: dict[str, Any]) -> dict[str, np.ndarray]:
    """``returns_1`` and ``returns_24`` (the return over ``momentum_bars``) of closes ``c``, as fractions."""
    feats: dict[str, np.ndarray] = {}
    prev = np.concatenate([[np.nan], c[:-1]])
    feats["returns_1"] = c / prev - 1.0
    m = p["momentum_bars"]
    feats["returns_24"] = c / np.concatenate([np.full(m, np.nan), c[:-m]])[: len(c)] - 1.0
    return feats


def _momentum_features(h: np.ndarray, lo: np.ndarray, c: np.ndarray, p: dict[str, Any]) -> dict[str, np.ndarray]:
    """TA-Lib's RSI, MACD with its signal line (USD) and ATR (USD and as a fraction of the close)."""
    import talib

    feats: dict[str, np.ndarray] = {}
    feats["rsi_14"] = talib.RSI(c, timeperiod=p["rsi_period"])
    macd, macd_signal, _ = talib.MACD(c, fastperiod=p["macd_fast"], slowperiod=p["macd_slow"],
                                      signalperiod=p["macd_signal"])
    feats["macd"], feats["macd_signal"] = macd, macd_signal
    feats["atr_14"] = talib.ATR(h, lo, c, timeperiod=p["atr_period"])
    feats["atr_pct"] = feats["atr_14"] / c
    return feats


def _average_and_band_features(c: np.ndarray, v: np.ndarray, macd: np.ndarray, macd_signal: np.ndarray,
                               spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Bollinger position, EMAs and their gaps, price and volume z-scores, volume ratio and MACD as
    fractions of the close; warm-up bars NaN."""
    import talib

    p = spec.params
    feats: dict[str, np.ndarray] = {}
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
        # Gaps and MACD as fractions of the price: MACD (a difference of EMAs) and its signal line
        # scale with the price, so divided by the close they read the same at 3,000 and 30,000 USD.
        feats["ema_20_50_gap"] = feats["ema_20"] / feats["ema_50"] - 1.0
        feats["macd_pct"] = macd / c
        feats["macd_signal_pct"] = macd_signal / c
        feats["macd_hist_pct"] = (macd - macd_signal) / c
        if "volume_zscore" in spec.names:
            feats["volume_zscore"] = _volume_zscore(v, p["volume_zscore_period"])
    feats["bb_position"][np.isnan(upper)] = np.nan
    feats["zscore"][np.isnan(sma)] = np.nan
    return feats


def _volume_zscore(v: np.ndarray, n: int) -> np.ndarray:
    """Z-score of each bar's volume in its trailing ``n``-bar window; NaN before the first full window."""
    import talib

    # Raw volume, not its logarithm: a bar may trade nothing (the data-quality suite allows
    # volume 0), and log 0 would leave the feature undefined for a whole window.
    v_mean = talib.SMA(v, timeperiod=n)
    v_std = talib.STDDEV(v, timeperiod=n, nbdev=1.0)
    # A window of identical volumes (a halted market) has no spread: the bar is typical.
    volume_zscore = np.where(v_std > 0, (v - v_mean) / v_std, 0.0)
    volume_zscore[np.isnan(v_mean)] = np.nan
    return volume_zscore


def _candle_features(bars: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Every candle feature of every bar of ``bars`` (sorted, default index), indexed by bar open time."""
    p = spec.params
    h, lo, c, v = (bars[k].to_numpy(dtype="float64") for k in ("high", "low", "close", "volume"))

    feats: dict[str, np.ndarray] = {"close": c, "volume": v}
    feats.update(_return_features(c, p))
    feats.update(_momentum_features(h, lo, c, p))
    feats.update(_average_and_band_features(c, v, feats["macd"], feats["macd_signal"], spec))
    return pd.DataFrame(feats, index=pd.DatetimeIndex(bars["timestamp"], name="timestamp"))


def _funding_features(bars: pd.DataFrame, funding: pd.DataFrame | None, p: dict[str, Any]) -> pd.DataFrame:
    """``funding_rate`` and ``funding_rate_zscore`` of the last settlement each bar sees, on ``bars``' index.

    Raises:
        ConfigError: ``funding`` is ``None``.
    """
    if funding is None:
        raise ConfigError("feature spec has funding features but no funding rates were given")
    f = funding.sort_values("timestamp").reset_index(drop=True)
    n = p["funding_zscore_settlements"]
    roll = f["funding_rate"].rolling(n, min_periods=n)
    dev, std = f["funding_rate"] - roll.mean(), roll.std(ddof=0)
    # Funding often sits at its floor for days (std 0): the rate is then exactly typical.
    f["funding_rate_zscore"] = (dev / std.where(std > 0)).where(std != 0, 0.0)
    return _asof_join(bars, f, "timestamp", ["funding_rate", "funding_rate_zscore"],
                      p.get("funding_max_age_hours"))


def _open_interest_change(bars: pd.DataFrame, open_interest: pd.DataFrame | None, p: dict[str, Any]) -> np.ndarray:
    """``oi_change_1d`` of each bar: the last published daily change of open interest it sees.

    Raises:
        ConfigError: ``open_interest`` is ``None``.
    """
    if open_interest is None:
        raise ConfigError("feature spec has open-interest features but none was given")
    oi = open_interest.sort_values("timestamp").reset_index(drop=True)
    oi["oi_change_1d"] = oi["open_interest"].pct_change(fill_method=None)
    oi["available_at"] = oi["timestamp"] + pd.Timedelta(hours=p["open_interest_publish_lag_hours"])
    return _asof_join(bars, oi, "available_at", ["oi_change_1d"],
                      p.get("open_interest_max_age_hours"))["oi_change_1d"].to_numpy()


#: Features a row may lack and still be complete: open interest's daily change, NaN where the
#: exchange published no open interest (the models take NaN; the other features never are).
OPTIONAL_FEATURES: tuple[str, ...] = ("oi_change_1d",)


def complete_rows(frame: pd.DataFrame, names: Iterable[str]) -> pd.Series:
    """Which rows of ``frame`` are complete: every feature of ``names`` defined, but the optional
    ones (:data:`OPTIONAL_FEATURES`). The one rule training, serving, monitoring and the track
    record apply before a row is scored or trained on (the indicator warm-up leaves the first
    rows incomplete).

    Returns:
        ``(n_rows,)`` boolean Series aligned with ``frame``.
    """
    return frame[[c for c in names if c not in OPTIONAL_FEATURES]].notna().all(axis=1)


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
        ConfigError: the spec's version is unknown, it names a feature its version does not know,
            lacks a parameter a named feature reads, or needs funding / open interest that was not
            given.
    """
    plugins = _check_spec(spec)
    p = spec.params
    bars = ohlcv.sort_values("timestamp").reset_index(drop=True)
    out = _candle_features(bars, spec)

    if any(n in spec.names for n in FUNDING_FEATURES):
        joined = _funding_features(bars, funding, p)
        out["funding_rate"] = joined["funding_rate"].to_numpy()
        out["funding_rate_zscore"] = joined["funding_rate_zscore"].to_numpy()

    if any(n in spec.names for n in OPEN_INTEREST_FEATURES):
        out["oi_change_1d"] = _open_interest_change(bars, open_interest, p)

    for name, recorded in plugins.items():
        out[name] = _plugin_feature(name, recorded, bars)

    result = out[list(spec.names)].astype("float64")
    logger.info("built %d features for %d bars (%s .. %s), spec %s", result.shape[1], len(result),
                result.index.min(), result.index.max(), spec.sha256[:12])
    return result
