"""Estimator contract of every model family and of the ensemble; no look-ahead; determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from include.config import MODEL_FAMILIES
from include.ensemble import WeightedSoftVotingEnsemble
from include.evaluation import WalkForward, baseline_oof, classification_metrics
from include.features import FeatureSpec, build_features
from include.labels import make_labels
from include.training import build_estimator, cross_validate


@pytest.fixture(scope="module")
def xy(btc_slice):
    spec = FeatureSpec.default(open_interest=False)
    X = build_features(btc_slice["ohlcv"], spec, btc_slice["funding"])
    y = make_labels(X["close"], horizon=4, mode="volatility", threshold=0.43)
    keep = X.notna().all(axis=1) & y.notna()
    return X[keep], y[keep].astype(int).to_numpy()


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_estimator_contract(family, xy):
    X, y = xy
    est = build_estimator(family, random_state=7, n_jobs=1, n_estimators=20)
    assert clone(est).get_params() == est.get_params()
    assert est.fit(X, y) is est
    assert list(est.classes_) == [0, 1, 2]
    proba = est.predict_proba(X.iloc[:50])
    assert proba.shape == (50, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_deterministic_under_fixed_seed(family, xy):
    X, y = xy
    a = build_estimator(family, random_state=3, n_jobs=2, n_estimators=20).fit(X, y).predict_proba(X.iloc[-100:])
    b = build_estimator(family, random_state=3, n_jobs=2, n_estimators=20).fit(X, y).predict_proba(X.iloc[-100:])
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)  # parallel tree sums may differ by 1 ulp


def test_ensemble_contract(xy):
    X, y = xy
    members = [(f, build_estimator(f, random_state=0, n_jobs=1, n_estimators=10)) for f in MODEL_FAMILIES]
    ens = WeightedSoftVotingEnsemble(members, [0.4, 0.4, 0.2])
    assert clone(ens).get_params()["weights"] == [0.4, 0.4, 0.2]
    assert ens.fit(X, y) is ens
    proba = ens.predict_proba(X.iloc[:30])
    manual = sum(w * e.predict_proba(X.iloc[:30]) for w, (_, e) in zip([0.4, 0.4, 0.2], ens.estimators_, strict=True))
    np.testing.assert_allclose(proba, manual)
    assert set(ens.predict(X)) <= {0, 1, 2}


def test_features_have_no_look_ahead(btc_slice):
    """Features at bar t are identical whether or not later rows exist."""
    spec = FeatureSpec.default()
    full = build_features(btc_slice["ohlcv"], spec, btc_slice["funding"], btc_slice["open_interest"])
    for cut in (700, 1500, 2000):
        t = btc_slice["ohlcv"]["timestamp"].iloc[cut - 1]
        part = build_features(btc_slice["ohlcv"].iloc[:cut], spec,
                              btc_slice["funding"][btc_slice["funding"]["timestamp"] <= t],
                              btc_slice["open_interest"][btc_slice["open_interest"]["timestamp"] <= t])
        pd.testing.assert_frame_equal(part, full.iloc[:cut])


def test_a_peeking_feature_is_caught_by_the_no_look_ahead_check(btc_slice):
    """The check above fails on a feature that uses the next bar's close."""
    bars = btc_slice["ohlcv"]
    leak = lambda b: b["close"].shift(-1) / b["close"] - 1  # noqa: E731
    full, part = leak(bars), leak(bars.iloc[:700])
    assert not np.allclose(full.iloc[:700].to_numpy(), part.to_numpy(), equal_nan=True)


SPLITS = WalkForward(n_splits=5, test_size=100, purge=4, embargo=24)


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_shuffled_labels_score_near_chance(family, xy):
    # (a) Permuted labels carry no information: out-of-sample macro F1 must fall to chance.
    X, y = xy
    shuffled = np.random.default_rng(0).permutation(y)
    cv = cross_validate(family, X, shuffled, splits=SPLITS, random_state=0, n_jobs=2, early_stopping_rounds=20)
    chance = WalkForward(n_splits=5, test_size=100, purge=4)  # same folds for the baseline
    base = baseline_oof(shuffled, [(tr, te) for _, tr, te in chance.split(len(X))], random_state=0)
    assert cv.overall["macro_f1"] < 0.40
    assert cv.overall["macro_f1"] < base["stratified"]["macro_f1"] + 0.06


def test_peeking_feature_soars_in_sample_and_is_exposed_out_of_sample(xy):
    # (b) A feature holding the future return (what the label reads) makes the in-sample score
    # soar, far above what the honest features reach out of sample; the no-look-ahead check
    # above (test_a_peeking_feature_is_caught_by_the_no_look_ahead_check) rejects such a feature.
    X, y = xy
    peek = X.assign(peek=np.log(X["close"].shift(-4) / X["close"])).dropna()
    y_peek = y[: len(peek)]
    model = build_estimator("lightgbm", 0, 2, n_estimators=60).fit(peek, y_peek)
    in_sample = classification_metrics(y_peek, model.predict_proba(peek))["macro_f1"]
    honest = cross_validate("lightgbm", X, y, splits=SPLITS, random_state=0, n_jobs=2, early_stopping_rounds=20)
    assert in_sample > 0.9
    assert honest.overall["macro_f1"] < 0.5


def test_xgboost_float32_probabilities_are_scored_without_the_sum_to_one_warning():
    """XGBoost's float32 rows sum to one only within 1e-7; scikit-learn's log loss warned on every fold."""
    import warnings

    import xgboost

    from include.training import fold_importance, metrics_with_prior, predict_proba_all

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(600, 3)), columns=["a", "b", "c"])
    y = (X["a"] > 0).astype(int).to_numpy() + (X["b"] > 1).astype(int).to_numpy()
    model = xgboost.XGBClassifier(n_estimators=5, n_jobs=1).fit(X, y)
    assert model.predict_proba(X).dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proba = predict_proba_all(model, X)
        metrics_with_prior(y, proba, np.array([0.4, 0.4, 0.2]))
        importance = fold_importance(model, X, y, random_state=0)
    assert proba.dtype == np.float64 and np.abs(proba.sum(axis=1) - 1).max() < 1e-12
    assert importance["permutation"]["a"] > importance["permutation"]["c"]
