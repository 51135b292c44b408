"""Estimator contract of every model family and of the ensemble; no look-ahead; determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from include.config import MODEL_FAMILIES
from include.ensemble import WeightedSoftVotingEnsemble
from include.evaluation import WalkForward, baseline_oof
from include.features import FEATURE_SPEC_VERSION, KNOWN_FEATURES, FeatureSpec, build_features
from include.labels import make_labels
from include.training import build_estimator, cross_validate


@pytest.fixture(scope="module")
def xy(btc_slice):
    spec = FeatureSpec.default(open_interest=False)
    X = build_features(btc_slice["ohlcv"], spec, btc_slice["funding"])
    close = btc_slice["ohlcv"].set_index("timestamp")["close"].set_axis(X.index)
    y = make_labels(close, horizon=4, mode="volatility", threshold=0.43)
    keep = X.notna().all(axis=1) & y.notna()
    return X[keep], y[keep].astype(int).to_numpy()


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_estimator_contract(family, xy):
    X, y = xy
    est = build_estimator(family, random_state=7, n_jobs=1, **({} if family == "logistic" else {"n_estimators": 20}))
    # Parameters compare by value (a pipeline's steps are estimators, equal by their parameters).
    assert {k: repr(v) for k, v in clone(est).get_params().items()} == {k: repr(v) for k, v in est.get_params().items()}
    assert est.fit(X, y) is est
    assert list(est.classes_) == [0, 1, 2]
    proba = est.predict_proba(X.iloc[:50])
    assert proba.shape == (50, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_deterministic_under_fixed_seed(family, xy):
    X, y = xy
    small = {} if family == "logistic" else {"n_estimators": 20}
    a = build_estimator(family, random_state=3, n_jobs=2, **small).fit(X, y).predict_proba(X.iloc[-100:])
    b = build_estimator(family, random_state=3, n_jobs=2, **small).fit(X, y).predict_proba(X.iloc[-100:])
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)  # parallel tree sums may differ by 1 ulp


def test_ensemble_contract(xy):
    X, y = xy
    members = [(f, build_estimator(f, random_state=0, n_jobs=1, n_estimators=10))
               for f in ("lightgbm", "xgboost", "random_forest")]
    ens = WeightedSoftVotingEnsemble(members, [0.4, 0.4, 0.2])
    assert clone(ens).get_params()["weights"] == [0.4, 0.4, 0.2]
    assert ens.fit(X, y) is ens
    proba = ens.predict_proba(X.iloc[:30])
    manual = sum(w * e.predict_proba(X.iloc[:30]) for w, (_, e) in zip([0.4, 0.4, 0.2], ens.estimators_, strict=True))
    np.testing.assert_allclose(proba, manual)
    assert set(ens.predict(X)) <= {0, 1, 2}


#: Every feature the code computes, levels included: what a stored spec may name.
EVERY_FEATURE = FeatureSpec(names=tuple(sorted(KNOWN_FEATURES[FEATURE_SPEC_VERSION])))


@pytest.mark.parametrize("spec", [FeatureSpec.default(), EVERY_FEATURE], ids=["default", "every-known-feature"])
def test_features_have_no_look_ahead(btc_slice, spec):
    """Features at bar t are identical whether or not later rows exist."""
    full = build_features(btc_slice["ohlcv"], spec, btc_slice["funding"], btc_slice["open_interest"])
    for cut in (700, 1500, 2000):
        t = btc_slice["ohlcv"]["timestamp"].iloc[cut - 1]
        part = build_features(btc_slice["ohlcv"].iloc[:cut], spec,
                              btc_slice["funding"][btc_slice["funding"]["timestamp"] <= t],
                              btc_slice["open_interest"][btc_slice["open_interest"]["timestamp"] <= t])
        pd.testing.assert_frame_equal(part, full.iloc[:cut])


def _published_by_close_of(bars: dict, cut: int) -> dict:
    """What existed when bar ``cut - 1`` closed: its candles, the settlements up to then, and
    the daily open interest of the days that had closed by then."""
    close = bars["ohlcv"]["timestamp"].iloc[cut - 1] + pd.Timedelta(hours=1)
    oi = bars["open_interest"]
    return {"ohlcv": bars["ohlcv"].iloc[:cut], "funding": bars["funding"][bars["funding"]["timestamp"] <= close],
            "open_interest": oi[oi["timestamp"] + pd.Timedelta(hours=24) <= close]}


def _look_ahead_rows(bars: dict, spec: FeatureSpec) -> list[int]:
    """Cuts at which the feature builder's value for the last bar changes when the data is cut to
    what was published by that bar's close."""
    full = build_features(bars["ohlcv"], spec, bars["funding"], bars["open_interest"])
    leaks = []
    for cut in range(700, 1400, 37):  # bar closes at every hour of the day
        part = _published_by_close_of(bars, cut)
        seen = build_features(part["ohlcv"], spec, part["funding"], part["open_interest"])
        if not np.allclose(seen.iloc[-1].to_numpy(), full.iloc[cut - 1].to_numpy(), equal_nan=True):
            leaks.append(cut)
    return leaks


def test_features_use_only_what_was_published_by_the_bars_close(btc_slice):
    """The project's feature builder, fed only what existed at each bar's close, gives the same
    features as with all the data; with the open-interest publication lag removed (a regression
    in :func:`include.features.build_features`' as-of join), the same check finds the leak."""
    spec = FeatureSpec.default()
    assert _look_ahead_rows(btc_slice, spec) == []
    no_lag = FeatureSpec(names=spec.names, params={**spec.params, "open_interest_publish_lag_hours": 0})
    assert len(_look_ahead_rows(btc_slice, no_lag)) > 5


def _overlaps(cv, horizon: int) -> list[int]:
    """Folds in which a training row's label window reaches the first test row."""
    bar = pd.Timedelta(hours=1)
    return [f["fold"] for f in cv.folds
            if pd.Timestamp(f["train_end"]) + horizon * bar >= pd.Timestamp(f["test_start"])]


def test_the_split_service_keeps_every_training_label_out_of_the_test_window(xy):
    """The run's split service (``RunConfig.walk_forward``, as the training tasks use it) leaves
    a label horizon between each fold's last training row and its first test row, with no
    embargo to hide behind; a split service without a purge fails the same check."""
    from include.config import RunConfig

    X, y = xy
    cfg = RunConfig(cv_folds=3, cv_embargo_bars=0)
    cv = cross_validate("lightgbm", X, y, splits=WalkForward.for_run(cfg, 100), random_state=0, n_jobs=1,
                        early_stopping_rounds=20)
    assert len(cv.folds) == 3 and _overlaps(cv, cfg.label_horizon_bars) == []
    # The out-of-fold rows are exactly the test rows, each scored once.
    assert len(cv.oof_positions) == 300 and len(np.unique(cv.oof_positions)) == 300
    unpurged = cross_validate("lightgbm", X, y, splits=WalkForward(n_splits=3, test_size=100, purge=0),
                              random_state=0, n_jobs=1, early_stopping_rounds=20)
    assert _overlaps(unpurged, cfg.label_horizon_bars) == [0, 1, 2]


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


@pytest.mark.parametrize("family", ["random_forest", "lightgbm", "xgboost"])
def test_permutation_log_loss_equals_scikit_learns_permutation_importance(family):
    """The stacked predictions give what scikit-learn's one-call-per-shuffle loop gives, shuffle
    for shuffle (NaN features included)."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import log_loss

    from include.training import build_estimator, permutation_log_loss, predict_proba_all

    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(900, 4)), columns=["a", "b", "c", "d"])
    X.loc[X.index[:300], "d"] = np.nan
    y = (X["a"] > 0).astype(int).to_numpy() + (X["b"] > 0.8).astype(int).to_numpy()
    model = build_estimator(family, random_state=0, n_jobs=1, n_estimators=20).fit(X.iloc[:700], y[:700])
    test_X, test_y = X.iloc[700:], y[700:]

    ours = permutation_log_loss(model, test_X, test_y, random_state=11, n_repeats=3)
    theirs = permutation_importance(
        model, test_X, test_y, n_repeats=3, random_state=11,
        scoring=lambda est, X_, y_: -log_loss(y_, predict_proba_all(est, X_), labels=[0, 1, 2]))
    assert ours.shape == (4, 3)
    np.testing.assert_allclose(ours, theirs.importances, rtol=1e-9, atol=1e-12)
    assert ours[0].mean() > ours[2].mean()  # the label depends on a, not c


def test_permutation_log_loss_batches_rows_without_changing_the_result(monkeypatch):
    """Smaller prediction batches (several calls) give the same importances as one call."""
    import include.training as training
    from include.training import build_estimator, permutation_log_loss

    rng = np.random.default_rng(4)
    X = pd.DataFrame(rng.normal(size=(400, 3)), columns=["a", "b", "c"])
    y = (X["a"] > 0).astype(int).to_numpy() * 2
    model = build_estimator("random_forest", random_state=0, n_jobs=1, n_estimators=10).fit(X, y)
    whole = permutation_log_loss(model, X, y, random_state=1)
    monkeypatch.setattr(training, "IMPORTANCE_BATCH_ROWS", 450)  # one permuted copy per call
    np.testing.assert_array_equal(permutation_log_loss(model, X, y, random_state=1), whole)


def test_the_logistic_family_captures_most_of_a_linear_edge_and_reads_missing_values():
    """A label whose log-odds are linear in one feature (an AR(1) in returns is one in
    ``returns_1``): the logistic family's out-of-fold log loss gains at least 70 % of the gain
    of the true conditional distribution over the class prior, with a tenth of the feature
    missing and nine noise features beside it."""
    from scipy.stats import norm

    from include.evaluation import log_loss_rows
    from include.training import class_prior

    rng = np.random.default_rng(3)
    n = 9000
    X = pd.DataFrame(rng.normal(size=(n, 10)), columns=[f"f{i}" for i in range(10)],
                     index=pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC"))
    signal = 0.3 * X["f0"].to_numpy()
    y = np.digitize(signal + rng.normal(size=n), [-0.45, 0.45])
    X.loc[X.index[rng.random(n) < 0.1], "f0"] = np.nan
    splits = WalkForward(n_splits=5, test_size=500, purge=4, embargo=24)
    cv = cross_validate("logistic", X, y, splits=splits, random_state=0, n_jobs=1)
    rows = cv.oof_positions
    truth = np.c_[norm.cdf(-0.45 - signal), norm.cdf(0.45 - signal) - norm.cdf(-0.45 - signal),
                  1 - norm.cdf(0.45 - signal)][rows]
    known = ~X["f0"].isna().to_numpy()[rows]  # the truth needs the feature; score where it is known
    prior = np.tile(class_prior(y), (len(rows), 1))
    gain = (log_loss_rows(y[rows], prior) - log_loss_rows(y[rows], cv.oof_proba))[known].mean()
    oracle = (log_loss_rows(y[rows], prior) - log_loss_rows(y[rows], truth))[known].mean()
    assert oracle > 0.02 and gain >= 0.7 * oracle, (gain, oracle)


def test_the_logistic_penalty_is_chosen_on_the_inner_split_zeroing_noise_features():
    """Twenty features, one with a linear edge: the L1 penalty chosen on the inner split keeps
    the edge's coefficient well above every other; on pure noise it zeroes them all, so the fit
    is the class prior. A tuned set that fixes ``C`` is kept."""
    from include.training import fit_family
    from include.training.logistic import C_GRID

    rng = np.random.default_rng(5)
    n = 12000
    X = pd.DataFrame(rng.normal(size=(n, 20)), columns=[f"f{i}" for i in range(20)],
                     index=pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC"))
    splits = WalkForward(n_splits=2, test_size=500, purge=4, embargo=24)
    rows = np.arange(n)
    edge = np.digitize(0.3 * X["f0"].to_numpy() + rng.normal(size=n), [-0.45, 0.45])
    noise = np.digitize(rng.normal(size=n), [-0.45, 0.45])

    model, _ = fit_family("logistic", X, edge, rows, splits, random_state=0, n_jobs=1)
    coef = np.abs(model.named_steps["model"].coef_).max(axis=0)
    assert model.named_steps["model"].C in C_GRID
    assert coef[0] > 5 * coef[1:].max() and (coef[1:] == 0).any(), coef

    model, _ = fit_family("logistic", X, noise, rows, splits, random_state=0, n_jobs=1)
    assert (model.named_steps["model"].coef_ == 0).all()

    model, _ = fit_family("logistic", X, edge, rows, splits, random_state=0, n_jobs=1, params={"C": 0.5})
    assert model.named_steps["model"].C == 0.5


def test_the_logistic_family_has_a_native_serving_path_equal_to_predict_proba():
    from include.serving import _native_member
    from include.training import fit_family

    rng = np.random.default_rng(6)
    n = 4000
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)])
    X.loc[X.index[::5], "f3"] = np.nan
    y = np.digitize(0.4 * X["f0"].to_numpy() + rng.normal(size=n), [-0.45, 0.45])
    model, _ = fit_family("logistic", X, y, np.arange(n), WalkForward(n_splits=2, test_size=300, purge=4, embargo=24),
                          random_state=0, n_jobs=1)
    native = _native_member(model)
    assert native is not None
    np.testing.assert_allclose(native(X.iloc[:300].to_numpy()), model.predict_proba(X.iloc[:300]), atol=1e-12)


def test_the_relaxed_lasso_refits_the_selected_features_without_shrinkage():
    """The logistic family's two stages (Meinshausen 2007): the lasso chooses the features, and
    the refit on them alone estimates their coefficients as an unpenalised fit on those features
    does, where the lasso's own are shrunk towards zero. With every coefficient zeroed the refit
    is the intercept-only fit (the class frequencies); ``refit_C=None`` is the lasso."""
    from sklearn.linear_model import LogisticRegression

    from include.training.relaxed_lasso import RelaxedLassoLogisticRegression

    rng = np.random.default_rng(11)
    n = 8000
    X = rng.normal(size=(n, 8))
    y = np.digitize(0.4 * X[:, 0] + rng.normal(size=n), [-0.45, 0.45])

    relaxed = RelaxedLassoLogisticRegression(C=0.003, random_state=0).fit(X, y)
    lasso = RelaxedLassoLogisticRegression(C=0.003, refit_C=None, random_state=0).fit(X, y)
    alone = LogisticRegression(C=1.0).fit(X[:, relaxed.support_], y)
    assert 0 in relaxed.support_ and len(relaxed.support_) < 8
    np.testing.assert_allclose(relaxed.coef_[:, relaxed.support_], alone.coef_, rtol=1e-4, atol=1e-6)
    assert (relaxed.coef_[:, np.setdiff1d(np.arange(8), relaxed.support_)] == 0).all()
    assert np.abs(relaxed.coef_[:, 0]).max() > 1.2 * np.abs(lasso.coef_[:, 0]).max()
    np.testing.assert_allclose(relaxed.predict_proba(X[:5]), alone.predict_proba(X[:5, relaxed.support_]), atol=1e-9)

    noise = np.digitize(rng.normal(size=n), [-0.45, 0.45])
    empty = RelaxedLassoLogisticRegression(C=1e-5, random_state=0).fit(X, noise)
    assert len(empty.support_) == 0 and (empty.coef_ == 0).all()
    proba = empty.predict_proba(X[:3])
    np.testing.assert_allclose(proba, np.tile(proba[0], (3, 1)))
    np.testing.assert_allclose(proba[0], np.bincount(noise) / n, atol=0.01)

    binary = RelaxedLassoLogisticRegression(C=0.01, random_state=0).fit(X, (y == 2).astype(int))
    reference = LogisticRegression(C=1.0).fit(X[:, binary.support_], (y == 2).astype(int))
    np.testing.assert_allclose(binary.predict_proba(X[:5]), reference.predict_proba(X[:5, binary.support_]),
                               atol=1e-6)


def test_the_logistic_family_names_an_unknown_hyperparameter():
    from include.errors import ConfigError
    from include.training.logistic import build

    with pytest.raises(ConfigError, match=r"unknown hyperparameter\(s\) \['l1_ratio'\]"):
        build(random_state=0, n_jobs=1, l1_ratio=0.5)
