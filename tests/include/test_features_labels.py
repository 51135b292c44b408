from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.errors import ConfigError
from include.features import BASE_FEATURES, FeatureSpec, build_features
from include.labels import class_balance, make_labels


def test_reference_features_present_and_sane(btc_slice):
    spec = FeatureSpec.default()
    X = build_features(btc_slice["ohlcv"], spec, btc_slice["funding"], btc_slice["open_interest"])
    assert list(X.columns) == list(spec.names)
    assert set(BASE_FEATURES) <= set(X.columns)
    valid = X.iloc[max(spec.warmup_bars, 21 * 8):]  # funding z-score needs 21 settlements
    assert not valid.drop(columns=["oi_change_1d"]).isna().any().any()
    assert valid["rsi_14"].between(0, 100).all()
    np.testing.assert_allclose(valid["close"], btc_slice["ohlcv"]["close"].iloc[max(spec.warmup_bars, 168):])


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
