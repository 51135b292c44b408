from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.errors import ConfigError
from include.features import (
    DEFAULT_CANDLE_FEATURES,
    FEATURE_SPEC_VERSION,
    KNOWN_FEATURES,
    LEVEL_FEATURES,
    FeatureSpec,
    build_features,
)
from include.labels import class_balance, label_end_offsets, make_labels


def test_default_features_present_and_sane(btc_slice):
    spec = FeatureSpec.default()
    X = build_features(btc_slice["ohlcv"], spec, btc_slice["funding"], btc_slice["open_interest"])
    assert list(X.columns) == list(spec.names)
    assert not set(spec.names) & set(LEVEL_FEATURES)
    # Every candle feature is defined from the warm-up's end on: the first training row is complete.
    assert not X[list(DEFAULT_CANDLE_FEATURES)].iloc[spec.warmup_bars:].isna().any().any()
    valid = X.iloc[max(spec.warmup_bars, 21 * 8):]  # funding z-score needs 21 settlements
    assert not valid.drop(columns=["oi_change_1d"]).isna().any().any()
    assert valid["rsi_14"].between(0, 100).all()
    assert (valid["atr_pct"] > 0).all()


def test_scale_free_features_follow_their_formulas(btc_slice):
    """The default spec's forms of the levels, against the levels themselves and against pandas."""
    X = build_features(btc_slice["ohlcv"], FeatureSpec.default(funding=False, open_interest=False))
    levels = build_features(btc_slice["ohlcv"], FeatureSpec(names=LEVEL_FEATURES))
    window = levels["volume"].rolling(120)  # the trailing window ends at the bar itself
    volume_zscore = (levels["volume"] - window.mean()) / window.std(ddof=0)
    valid = X.index[FeatureSpec.default().warmup_bars:]
    X, levels = X.loc[valid], levels.loc[valid]
    np.testing.assert_allclose(X["ema_20_50_gap"], levels["ema_20"] / levels["ema_50"] - 1, rtol=1e-12)
    np.testing.assert_allclose(X["macd_pct"], levels["macd"] / levels["close"], rtol=1e-12)
    np.testing.assert_allclose(X["macd_signal_pct"], levels["macd_signal"] / levels["close"], rtol=1e-12)
    np.testing.assert_allclose(X["macd_hist_pct"], (levels["macd"] - levels["macd_signal"]) / levels["close"],
                               rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(X["atr_pct"], levels["atr_14"] / levels["close"], rtol=1e-12)
    np.testing.assert_allclose(X["volume_zscore"], volume_zscore.loc[valid], rtol=1e-7)


def _scaled(bars: dict, price: float, volume: float) -> dict:
    """The same market quoted in a unit ``price`` times smaller (a USD-per-10-coins contract), with
    ``volume`` times the traded amount; open interest in USD scales with the price."""
    ohlcv = bars["ohlcv"].copy()
    ohlcv[["open", "high", "low", "close"]] *= price
    ohlcv["volume"] *= volume
    oi = bars["open_interest"].copy()
    oi["open_interest"] *= price
    return {"ohlcv": ohlcv, "funding": bars["funding"], "open_interest": oi}


def _scale_change(bars: dict, spec: FeatureSpec) -> pd.Series:
    """Per feature, the largest change when every price is multiplied by 10 and every volume by 7."""
    one = build_features(bars["ohlcv"], spec, bars["funding"], bars["open_interest"])
    scaled = _scaled(bars, 10.0, 7.0)
    other = build_features(scaled["ohlcv"], spec, scaled["funding"], scaled["open_interest"])
    assert (one.isna() == other.isna()).all().all()
    return (other - one).abs().max()


def test_default_features_are_scale_free(btc_slice):
    """No default feature is a price or volume level: rescaling prices and volume changes none."""
    change = _scale_change(btc_slice, FeatureSpec.default())
    assert (change <= 1e-9).all(), change[change > 1e-9]
    # The check sees a level: each level feature moves by far more than the tolerance.
    levels = _scale_change(btc_slice, FeatureSpec(names=LEVEL_FEATURES))
    assert (levels > 1.0).all(), levels


#: A version-1 spec as the lineage of a model registered before the scale-free default stores it
#: (the default spec of that code: its names, parameters and version), and its sha256.
STORED_V1_SPEC = {
    "names": ["close", "volume", "returns_1", "rsi_14", "macd", "macd_signal", "atr_14", "bb_position", "ema_20",
              "ema_50", "zscore", "volume_ratio", "returns_24", "ema_20_gap", "ema_50_gap", "atr_pct",
              "funding_rate", "funding_rate_zscore", "oi_change_1d"],
    "params": {"rsi_period": 14, "macd_fast": 12, "macd_slow": 26, "macd_signal": 9, "atr_period": 14,
               "bb_period": 20, "bb_nbdev": 2.0, "ema_fast": 20, "ema_slow": 50, "zscore_period": 20,
               "volume_ratio_period": 20, "momentum_bars": 24, "funding_zscore_settlements": 21,
               "open_interest_publish_lag_hours": 24, "funding_max_age_hours": 24, "open_interest_max_age_hours": 48},
    "version": "1",
}
STORED_V1_SHA256 = "c1c534c8cb0d50efbebf6056bf4d86adf8ca8d7706aa678d1f12b7f819fdaec9"
#: What the feature code of version 1 computed for that spec on the real BTCUSDT slice
#: (``btc_slice``), at three bars.
STORED_V1_VALUES = {
    "2023-07-15T00:00Z": {
        "close": 30315.0, "volume": 8385.861, "returns_1": 0.0007163300135673012, "rsi_14": 35.00123986690641,
        "macd": -227.56808578562413, "macd_signal": -133.9764511637976, "atr_14": 219.63695988147887,
        "bb_position": 0.23326412539995273, "ema_20": 30675.291083249565, "ema_50": 30781.74330438086,
        "zscore": -1.066943498400187, "volume_ratio": 0.35132437859847876, "returns_24": -0.03567815857949008,
        "ema_20_gap": -0.011745319132319687, "ema_50_gap": -0.015162991249895619, "atr_pct": 0.007245157838742499,
        "funding_rate": -7.313e-05, "funding_rate_zscore": -2.7651256957173063, "oi_change_1d": -0.12465045632424288},
    "2023-08-01T13:00Z": {
        "close": 28857.0, "volume": 7438.17, "returns_1": -0.0003775820201677993, "rsi_14": 34.029113454141516,
        "macd": -106.66683230669514, "macd_signal": -99.99996700836813, "atr_14": 108.10635369681765,
        "bb_position": 0.24535222896455905, "ema_20": 29002.066086185412, "ema_50": 29138.731375349616,
        "zscore": -1.0185910841417636, "volume_ratio": 0.6319090642641432, "returns_24": -0.016884364587804734,
        "ema_20_gap": -0.005001922475258103, "ema_50_gap": -0.009668621866906424, "atr_pct": 0.003746278327505203,
        "funding_rate": 6.768e-05, "funding_rate_zscore": 0.10449990115164788, "oi_change_1d": 0.02254710811684757},
    "2023-08-31T23:00Z": {
        "close": 25928.0, "volume": 8498.977, "returns_1": -0.004408128158262525, "rsi_14": 19.35996983751444,
        "macd": -328.23933032089553, "macd_signal": -224.80890217183648, "atr_14": 223.7125036697504,
        "bb_position": 0.11062874429148492, "ema_20": 26583.68670374556, "ema_50": 26829.748794892086,
        "zscore": -1.5574850228340587, "volume_ratio": 0.3491572944290454, "returns_24": -0.049922317005247296,
        "ema_20_gap": -0.024665002678246895, "ema_50_gap": -0.03361003495730697, "atr_pct": 0.008628220598185375,
        "funding_rate": 8.105e-05, "funding_rate_zscore": 1.3952088765838457, "oi_change_1d": -0.047129075497012174},
}


def test_a_stored_version_1_spec_computes_what_it_was_trained_on(btc_slice):
    """A registered model's lineage names the level features: its spec loads with its own hash and
    computes, column for column, the values the version-1 code computed."""
    spec = FeatureSpec.from_dict(STORED_V1_SPEC)
    assert spec.version == "1" and spec.sha256 == STORED_V1_SHA256
    assert spec.sha256 != FeatureSpec.default().sha256
    X = build_features(btc_slice["ohlcv"], spec, btc_slice["funding"], btc_slice["open_interest"])
    assert list(X.columns) == STORED_V1_SPEC["names"]
    for bar, values in STORED_V1_VALUES.items():
        np.testing.assert_allclose(X.loc[pd.Timestamp(bar)].to_numpy(), list(values.values()), rtol=1e-12)


def test_a_spec_names_only_what_its_version_knows(btc_slice):
    old = FeatureSpec.from_dict({**STORED_V1_SPEC, "names": ["returns_1", "macd_pct"]})
    with pytest.raises(ConfigError, match=r"version 1\) names unknown features \['macd_pct'\]"):
        build_features(btc_slice["ohlcv"], old)
    # A spec written before the volume z-score's window existed cannot name the z-score.
    no_window = FeatureSpec(names=("volume_zscore",), params=STORED_V1_SPEC["params"])
    with pytest.raises(ConfigError, match="volume_zscore_period"):
        build_features(btc_slice["ohlcv"], no_window)
    assert set(KNOWN_FEATURES["1"]) < set(KNOWN_FEATURES[FEATURE_SPEC_VERSION])


def test_warm_up_covers_the_longest_trailing_window():
    spec = FeatureSpec.default()
    assert spec.warmup_bars >= spec.params["volume_zscore_period"]
    longer = FeatureSpec(names=spec.names, params={**spec.params, "volume_zscore_period": 400})
    assert longer.warmup_bars == 400


def test_funding_is_joined_as_of_settlement(btc_slice):
    spec = FeatureSpec.default(open_interest=False)
    X = build_features(btc_slice["ohlcv"], spec, btc_slice["funding"])
    f = btc_slice["funding"].set_index("timestamp")["funding_rate"]
    t = pd.Timestamp("2023-07-01T08:00Z")
    assert X.loc[t, "funding_rate"] == f.loc[t]  # settled at the bar's open: known
    assert X.loc[t + pd.Timedelta(hours=7), "funding_rate"] == f.loc[t]
    assert X.loc[t - pd.Timedelta(hours=1), "funding_rate"] == f.loc[t - pd.Timedelta(hours=8)]


def test_open_interest_visible_only_after_its_day_closes(btc_slice):
    spec = FeatureSpec.default()
    X = build_features(btc_slice["ohlcv"], spec, btc_slice["funding"], btc_slice["open_interest"])
    oi = btc_slice["open_interest"].set_index("timestamp")["open_interest"]
    day = pd.Timestamp("2023-07-10T00:00Z")
    change = oi.loc[day] / oi.loc[day - pd.Timedelta(days=1)] - 1
    assert X.loc[day + pd.Timedelta(hours=23), "oi_change_1d"] != pytest.approx(change)
    assert X.loc[day + pd.Timedelta(hours=24), "oi_change_1d"] == pytest.approx(change)


def test_spec_hash_is_stable_and_sensitive():
    a, b = FeatureSpec.default(), FeatureSpec.default()
    assert a.sha256 == b.sha256
    assert FeatureSpec.default(open_interest=False).sha256 != a.sha256
    assert FeatureSpec.from_dict(a.to_dict()) == a
    assert FeatureSpec(names=a.names, version="1").sha256 != a.sha256
    with pytest.raises(ConfigError, match="version"):
        FeatureSpec.from_dict({**a.to_dict(), "version": "0"})


def test_labels_follow_the_documented_rule():
    close = pd.Series([100.0, 101.0, 100.0, 98.0, 98.5])
    y = make_labels(close, horizon=1, mode="fixed", threshold=0.009)
    # ln(101/100)=+0.00995 up; ln(100/101)=-0.00995 down; ln(98/100)=-0.0202 down; ln(98.5/98)=+0.0051 range
    assert y.tolist()[:4] == [2.0, 0.0, 0.0, 1.0]
    assert np.isnan(y.iloc[-1])


def test_volatility_labels_on_real_data_are_not_degenerate(btc_slice):
    y = make_labels(btc_slice["ohlcv"]["close"], horizon=4, mode="volatility", threshold=0.43)
    assert y.iloc[-4:].isna().all() and y.iloc[:168].isna().all()
    balance = class_balance(y)
    assert min(balance.values()) > 0.15, balance


def test_triple_barrier_labels_take_the_first_barrier_touched():
    # log closes; barriers at +-1 % (fixed by the volatility estimate below), time limit 2 bars
    lc = np.array([0.0, 0.0, 0.0, 0.005, -0.02, -0.006, -0.0055, -0.0065, 0.01, 0.0, 0.0])
    close = pd.Series(np.exp(lc))
    from include.labels import _first_touch

    label, end = _first_touch(pd.Series(lc), pd.Series(0.01, index=close.index), 2)
    assert (label[2], end[2]) == (0.0, 2)  # +0.5 % stays inside, then -2 % crosses -1 %
    assert (label[3], end[3]) == (0.0, 1)  # -2.5 % at once
    assert (label[4], end[4]) == (2.0, 1)  # +1.4 % at once
    assert (label[5], end[5]) == (1.0, 2)  # +0.05 %, -0.05 %: the time limit comes first
    assert (label[7], end[7]) == (2.0, 1)  # +1.65 %
    assert np.isnan(label[-2:]).all()  # the time limit has not passed


def test_triple_barrier_labels_are_volatility_scaled_and_end_within_the_horizon(btc_slice):
    close = btc_slice["ohlcv"]["close"]
    kw = {"horizon": 4, "mode": "triple_barrier", "threshold": 1.0, "vol_window": 168}
    y, ends = make_labels(close, **kw), label_end_offsets(close, **kw)
    assert y.iloc[-4:].isna().all() and y.iloc[:168].isna().all()
    assert ends.isna().equals(y.isna())
    assert set(ends.dropna().unique()) == {1.0, 2.0, 3.0, 4.0}
    assert (ends[y == 1.0] == 4).all()  # range only when the time limit comes first
    assert min(class_balance(y).values()) > 0.05  # both barriers and the time limit occur


def test_the_purge_covers_every_triple_barrier_labels_end(btc_slice):
    from include.config import RunConfig
    from include.evaluation import WalkForward

    close = btc_slice["ohlcv"]["close"].reset_index(drop=True)
    cfg = RunConfig.from_params({"label_threshold_mode": "triple_barrier", "label_threshold": 1.0,
                                 "cv_embargo_bars": 0, "cv_scheme": "expanding"})
    ends = label_end_offsets(close, horizon=cfg.label_horizon_bars, mode=cfg.label_threshold_mode,
                             threshold=cfg.label_threshold, vol_window=cfg.label_vol_window_bars)
    rows = ends.dropna()
    assert rows.max() == cfg.label_horizon_bars and rows.min() == 1
    end_position = rows.index.to_numpy() + rows.to_numpy()  # the bar at which each label is known

    def violations(splits: WalkForward) -> int:
        bad = 0
        for _, train, test in splits.split(len(rows)):
            first_test_bar = rows.index[test[0]]
            bad += int((end_position[train] >= first_test_bar).sum())
        return bad

    splits = WalkForward.for_run(cfg, test_size=48)
    assert violations(splits) == 0
    # without the purge, the labels just before each test window end inside it
    assert violations(WalkForward(n_splits=splits.n_splits, test_size=48, purge=0)) > 0


def test_a_missing_close_on_the_path_leaves_the_triple_barrier_label_undefined():
    lc = np.array([0.0, 0.0, 0.0, 0.001, np.nan, 0.0, 0.02, 0.0, 0.0, 0.0])
    from include.labels import _first_touch

    label, _ = _first_touch(pd.Series(lc), pd.Series(0.01, index=range(len(lc))), 2)
    assert np.isnan(label[2]) and np.isnan(label[3]) and np.isnan(label[4])  # the path crosses the gap untouched
    assert label[5] == 2.0  # +2 % at once
    assert label[1] == 1.0  # 0 %, +0.1 %: the time limit, before the gap
