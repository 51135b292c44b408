"""The features' vocabulary: every name the feature code knows, by spec version and by kind.

Light on purpose (no NumPy, no pandas): the run configuration checks plug-in feature names
against these when it loads, and the DAG files parse it. :mod:`include.features` computes them.
"""

from __future__ import annotations

#: The feature code's version: which names it knows and what each computes. A version knows every
#: name of the versions before it, with the same formulas, so a stored spec of an earlier version
#: computes the same values it was trained on.
FEATURE_SPEC_VERSION = "2"

#: The reference design's twelve features, in order; seven of them are levels (see below).
BASE_FEATURES: tuple[str, ...] = (
    "close", "volume", "returns_1", "rsi_14", "macd", "macd_signal", "atr_14", "bb_position",
    "ema_20", "ema_50", "zscore", "volume_ratio",
)
#: Features in USD (close, EMAs, MACD and its signal line, ATR) or in base-asset units (volume):
#: levels, never in the default spec; computed for stored specs that name them.
LEVEL_FEATURES: tuple[str, ...] = ("close", "volume", "macd", "macd_signal", "atr_14", "ema_20", "ema_50")
#: Scale-free companions of the level features, comparable across price regimes.
RELATIVE_FEATURES: tuple[str, ...] = ("returns_24", "ema_20_gap", "ema_50_gap", "atr_pct")
#: Scale-free forms of the remaining levels: the EMAs' gap to each other, MACD, its signal line and
#: their difference (the histogram) as fractions of the close, and volume as a trailing z-score.
STATIONARY_FEATURES: tuple[str, ...] = (
    "ema_20_50_gap", "macd_pct", "macd_signal_pct", "macd_hist_pct", "volume_zscore",
)
FUNDING_FEATURES: tuple[str, ...] = ("funding_rate", "funding_rate_zscore")
OPEN_INTEREST_FEATURES: tuple[str, ...] = ("oi_change_1d",)

#: The names each spec version knows. Version 1's default spec was ``BASE_FEATURES +
#: RELATIVE_FEATURES`` plus funding and open interest.
KNOWN_FEATURES: dict[str, frozenset[str]] = {
    "1": frozenset(BASE_FEATURES + RELATIVE_FEATURES + FUNDING_FEATURES + OPEN_INTEREST_FEATURES),
}
KNOWN_FEATURES["2"] = KNOWN_FEATURES["1"] | frozenset(STATIONARY_FEATURES)
