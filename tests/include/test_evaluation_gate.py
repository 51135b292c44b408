from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.ensemble import WeightedSoftVotingEnsemble, combine, fit_weights
from include.errors import ConfigError, TrainingError
from include.evaluation import WalkForward, baseline_oof, classification_metrics, iter_splits
from include.gate import GatePolicy, decide


def test_walk_forward_purges_and_ends_on_the_last_rows():
    n, test_size, purge = 5000, 168, 4
    folds = list(iter_splits(n, test_size=test_size, n_splits=5, purge=purge))
    assert len(folds) == 5
    for _, train_idx, test_idx in folds:
        assert len(test_idx) == test_size
        assert train_idx.max() + purge < test_idx.min()  # label window of every training row ends before test
    assert folds[-1][2][-1] == n - 1
    with pytest.raises(TrainingError, match="too few"):
        list(iter_splits(1000, test_size=168, n_splits=5, purge=4))


@pytest.mark.parametrize("scheme", ["expanding", "rolling"])
def test_no_training_row_within_purge_plus_embargo_of_a_test_row(scheme):
    # (c) for every fold and for the early-stopping split inside it.
    splits = WalkForward(n_splits=6, test_size=168, purge=4, embargo=24, scheme=scheme,
                         max_train_size=3000 if scheme == "rolling" else None)
    folds = list(splits.split(8000))
    assert len(folds) == 6 and folds[-1][2][-1] == 7999
    for _, train_idx, test_idx in folds:
        distance = np.abs(train_idx[:, None] - test_idx[None, :]).min()
        assert distance > splits.purge + splits.embargo
        assert train_idx.max() < test_idx.min()  # walk-forward: never trains on the future
        if scheme == "rolling":
            assert len(train_idx) == 3000
        fit_idx, val_idx = splits.inner_split(train_idx)
        assert set(fit_idx) | set(val_idx) <= set(train_idx)  # no test row in early stopping
        assert val_idx.min() - fit_idx.max() > splits.purge + splits.embargo
    starts = {tr[0] for _, tr, _ in folds}
    assert len(starts) == (6 if scheme == "rolling" else 1)  # rolling windows move, expanding ones grow


def test_split_service_refuses_what_it_cannot_do():
    with pytest.raises(TrainingError, match="too few"):
        list(WalkForward(n_splits=5, test_size=168, purge=4, embargo=500).split(3000))
    with pytest.raises(TrainingError, match="max_train_size"):
        list(WalkForward(n_splits=2, test_size=168, purge=4, scheme="rolling").split(8000))


def test_metrics_and_baselines():
    rng = np.random.default_rng(0)
    y = rng.choice([0, 1, 2], size=3000, p=[0.25, 0.5, 0.25])
    perfect = np.eye(3)[y]
    assert classification_metrics(y, perfect)["macro_f1"] == pytest.approx(1.0)
    folds = [(tr, te) for _, tr, te in iter_splits(3000, test_size=200, n_splits=4, purge=2)]
    base = baseline_oof(y, folds, random_state=0)
    assert base["majority"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert base["prior"]["log_loss"] == pytest.approx(1.04, abs=0.05)  # entropy of (.25,.5,.25)
    assert 0.25 < base["stratified"]["macro_f1"] < 0.40


def test_ensemble_weights():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 2000)
    good = 0.6 * np.eye(3)[y] + 0.4 / 3
    noise = rng.dirichlet([1, 1, 1], size=2000)
    w = fit_weights({"good": good, "noise": noise}, y)
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["good"] > 0.9
    assert combine({"a": good, "b": noise}, {"a": 1, "b": 0}) == pytest.approx(good)
    with pytest.raises(ConfigError, match="weights"):
        WeightedSoftVotingEnsemble.from_fitted([("a", None)], [-1.0], np.ones(3) / 3)


def test_selected_weights_choose_between_the_configured_ensemble_and_the_linear_family_alone():
    from functools import partial

    from include.ensemble import select_weights, selection_candidates, walk_forward_weights

    configured = {"lightgbm": 0.25, "xgboost": 0.25, "random_forest": 0.25, "logistic": 0.25}
    candidates = selection_candidates(configured)
    assert candidates == [configured, {"lightgbm": 0.0, "xgboost": 0.0, "random_forest": 0.0, "logistic": 1.0}]
    assert selection_candidates({"lightgbm": 0.5, "xgboost": 0.5}) == [{"lightgbm": 0.5, "xgboost": 0.5}]
    assert selection_candidates({"logistic": 1.0}) == [{"logistic": 1.0}]
    with pytest.raises(ValueError, match="candidate"):
        select_weights({"a": np.full((3, 3), 1 / 3)}, np.zeros(3, dtype=int), [])

    rng = np.random.default_rng(5)
    n = 4 * 168
    y = rng.integers(0, 3, n)
    skilled = 0.3 * np.eye(3)[y] + 0.7 / 3
    noise = {f: rng.dirichlet([4, 4, 4], size=n) for f in ("lightgbm", "xgboost", "random_forest")}
    # The trees are noise: the linear family alone scores best and is chosen.
    chosen = select_weights({**noise, "logistic": skilled}, y, candidates)
    assert chosen == candidates[1]
    # Trees that carry the edge too: averaging keeps the noise-free part, so the ensemble is chosen.
    trees = {f: 0.6 * np.eye(3)[y] + 0.4 * p for f, p in noise.items()}
    assert select_weights({**trees, "logistic": skilled}, y, candidates) == {f: 0.25 for f in configured}

    # Walk-forward: fold 0 is combined with the configured weights, later folds with the choice
    # on earlier rows only; the combined rows are exactly the chosen candidate's.
    times = pd.date_range("2023-01-01", periods=n, freq="h")
    fold_of = np.repeat([0, 1, 2, 3], 168)
    probas = {**noise, "logistic": skilled}
    out, used = walk_forward_weights(probas, y, fold_of, times, pd.Timedelta(hours=28), configured,
                                     partial(select_weights, candidates=candidates))
    assert used[0] == configured and all(used[k] == candidates[1] for k in (1, 2, 3))
    assert out[fold_of == 0] == pytest.approx(combine({f: p[fold_of == 0] for f, p in probas.items()}, configured))
    assert out[fold_of > 0] == pytest.approx(skilled[fold_of > 0])


def test_full_metric_set_and_reliability():
    from include.evaluation import reliability

    rng = np.random.default_rng(3)
    y = rng.choice([0, 1, 2], size=4000, p=[0.25, 0.5, 0.25])
    proba = np.tile([0.25, 0.5, 0.25], (4000, 1))  # the true base rates: calibrated, uninformative
    m = classification_metrics(y, proba)
    assert np.sum(m["confusion"]) == 4000 and np.asarray(m["confusion"])[:, 1].sum() == 4000
    assert m["recall"] == {"down": 0.0, "range": 1.0, "up": 0.0}
    assert m["brier"] == pytest.approx(1 - (0.25**2 + 0.5**2 + 0.25**2), abs=0.02)
    perfect = classification_metrics(y, np.eye(3)[y])
    assert perfect["brier"] == pytest.approx(0.0) and perfect["precision"]["up"] == 1.0
    curves = reliability(y, np.eye(3)[y] * 0.6 + 0.4 / 3)
    assert set(curves) == {"down", "range", "up"}
    assert curves["up"]["observed"][-1] == pytest.approx(1.0)


def test_momentum_rule_uses_only_the_past(btc_slice):
    from include.labels import momentum_forecast

    close = btc_slice["ohlcv"]["close"]
    full = momentum_forecast(close, horizon=4, mode="volatility", threshold=0.43)
    part = momentum_forecast(close.iloc[:1000], horizon=4, mode="volatility", threshold=0.43)
    pd.testing.assert_series_equal(part, full.iloc[:1000])
    assert set(full.dropna().unique()) == {0.0, 1.0, 2.0}
    y = np.asarray(full.fillna(1.0), dtype=int)
    folds = [(tr, te) for _, tr, te in iter_splits(len(y), test_size=168, n_splits=3, purge=4)]
    base = baseline_oof(y, folds, random_state=0, momentum=y)  # the rule forecasting itself
    assert base["momentum"]["macro_f1"] == pytest.approx(1.0)


def _forecasts(n: int, edge: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a forecast with ``edge`` extra probability on the true class, and the uniform one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    uniform = np.full((n, 3), 1 / 3)
    better = uniform.copy()
    better[np.arange(n), y] += edge
    better /= better.sum(axis=1, keepdims=True)
    return y, better, uniform


def test_paired_log_loss_test_tells_a_better_forecast_from_an_equal_one():
    from include.evaluation import paired_log_loss_test

    y, better, uniform = _forecasts(168, edge=0.15, seed=1)
    clear = paired_log_loss_test(y, better, uniform, block=4)
    assert clear["mean_difference"] < 0 and clear["p_value"] < 0.01 and clear["n"] == 168
    assert paired_log_loss_test(y, uniform, better, block=4)["p_value"] > 0.99  # the other way round
    same = paired_log_loss_test(y, uniform, uniform, block=4)
    assert same["mean_difference"] == 0 and same["p_value"] is None and same["same_forecast"]  # nothing to test
    with pytest.raises(TrainingError, match="too few for blocks"):
        paired_log_loss_test(y[:6], better[:6], uniform[:6], block=4)


def test_prior_corrected_metrics_score_the_forecast_itself_and_the_corrected_decisions():
    from sklearn.metrics import brier_score_loss, log_loss

    from include.training import metrics_with_prior

    rng = np.random.default_rng(5)
    y = rng.choice([0, 1, 2], size=500, p=[0.2, 0.6, 0.2])
    proba = rng.dirichlet([1.0, 3.0, 1.0], size=500)
    proba[0] = [0.0, 1.0, 0.0]  # a zero probability: clipped to machine epsilon, not an infinite loss
    prior = np.array([0.2, 0.6, 0.2])
    m = metrics_with_prior(y, proba, prior)
    # The proper scores are scikit-learn's, of the forecast itself.
    assert m["log_loss"] == pytest.approx(log_loss(y, proba, labels=[0, 1, 2]), rel=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, proba, labels=[0, 1, 2]), rel=1e-12)
    corrected = proba / prior
    decided = classification_metrics(y, corrected / corrected.sum(axis=1, keepdims=True))
    proper = ("log_loss", "brier")
    assert {k: v for k, v in m.items() if k not in proper} == {k: v for k, v in decided.items() if k not in proper}
    # Dividing by the prior moves hard decisions away from the majority class.
    assert (np.asarray(m["confusion"])[:, 1].sum()
            < np.asarray(classification_metrics(y, proba)["confusion"])[:, 1].sum())


def test_the_brier_score_of_a_calibrated_prior_forecast_is_its_own_not_the_rescaled_decisions():
    from include.training import metrics_with_prior

    rng = np.random.default_rng(0)
    prior = np.array([0.25, 0.5, 0.25])
    y = rng.choice([0, 1, 2], size=20_000, p=prior)
    m = metrics_with_prior(y, np.tile(prior, (len(y), 1)), prior)
    # Expected Brier of a calibrated forecast p: 1 - sum p_k^2 = 0.625; the prior-rescaled
    # probabilities (uniform) would score 2/3.
    assert m["brier"] == pytest.approx(1 - (prior**2).sum(), abs=0.01)
    assert abs(m["brier"] - 2 / 3) > 0.03


def test_one_log_loss_definition_the_paired_difference_is_the_difference_of_the_reported_losses():
    from include.evaluation import multiclass_log_loss, paired_log_loss_test
    from include.training import metrics_with_prior

    y, better, uniform = _forecasts(168, edge=0.15, seed=3)
    better[0] = np.eye(3)[(y[0] + 1) % 3]  # a confident miss: the clipping decides this row's loss
    test = paired_log_loss_test(y, better, uniform, block=4)
    reported = (metrics_with_prior(y, better, np.full(3, 1 / 3))["log_loss"]
                - metrics_with_prior(y, uniform, np.full(3, 1 / 3))["log_loss"])
    assert test["mean_difference"] == pytest.approx(reported, rel=1e-12, abs=1e-15)
    assert multiclass_log_loss(y, better) - multiclass_log_loss(y, uniform) == pytest.approx(reported, rel=1e-12)


def test_fitted_ensemble_weights_are_purged_at_fold_boundaries():
    from include.ensemble import walk_forward_weights
    from include.evaluation import earlier_fold_rows

    times = pd.date_range("2023-01-01", periods=3 * 168, freq="h")
    fold_of = np.repeat([0, 1, 2], 168)
    gap = 4 * pd.Timedelta(hours=1)
    rows = earlier_fold_rows(fold_of, times, 2, gap)
    # Fold 2's weights see folds 0 and 1, less the 4 bars before fold 2 whose labels read into it.
    assert rows.sum() == 2 * 168 - 4 and not rows[2 * 168 - 4:].any() and rows[: 2 * 168 - 4].all()
    assert not earlier_fold_rows(fold_of, times, 0, gap).any()
    # A leak planted in the purged rows (a member that knows those labels) changes no weight.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, len(times))
    noise = rng.dirichlet([1, 1, 1], size=len(times))
    oracle = noise.copy()
    leaky = oracle.copy()
    leaky[2 * 168 - 4: 2 * 168] = np.eye(3)[y[2 * 168 - 4: 2 * 168]]
    default = {"a": 0.5, "b": 0.5}
    _, clean = walk_forward_weights({"a": noise, "b": oracle}, y, fold_of, times, gap, default)
    _, planted = walk_forward_weights({"a": noise, "b": leaky}, y, fold_of, times, gap, default)
    assert clean[2] == planted[2] and clean[0] == default


def test_a_requested_retrain_s_interval_runs_from_the_last_sunday_to_the_request_day():
    from datetime import UTC, datetime

    from include.config import RunConfig
    from include.windows import resolve_window, schedule_start

    assert schedule_start(datetime(2023, 7, 6, tzinfo=UTC)) == datetime(2023, 7, 2, tzinfo=UTC)  # Thursday
    assert schedule_start(datetime(2023, 7, 9, tzinfo=UTC)) == datetime(2023, 7, 2, tzinfo=UTC)  # Sunday: its week
    window = resolve_window(RunConfig(as_of_date="2023-07-06"), data_interval_start=None, data_interval_end=None,
                            run_after=None)
    assert (window.interval_start, window.interval_end, window.source) == (
        "2023-07-02T00:00:00+00:00", "2023-07-06T00:00:00+00:00", "as_of_date")


def test_the_gate_counts_every_candidate_of_the_model_in_the_deflated_sharpe_ratio(tmp_path):
    import json
    from datetime import UTC, datetime

    import joblib
    from sklearn.dummy import DummyClassifier

    from include.backtest import deflated_sharpe_ratio
    from include.gate.evidence import deflated_sharpe_record
    from include.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models", f"sqlite:///{tmp_path / 'r.sqlite'}")
    model = "binance-btcusdt-perp-1h-h4"
    earlier = [0.02, -0.01, 0.005]
    for i, sharpe in enumerate(earlier):
        d = tmp_path / f"c{i}"
        d.mkdir()
        joblib.dump(DummyClassifier().fit(np.zeros((3, 1)), [0, 1, 2]), d / "model.joblib")
        (d / "metadata.json").write_text(json.dumps({
            "exchange": "binance", "symbol": "BTCUSDT", "market_type": "perp", "timeframe": "1h",
            "config": {"label_horizon_bars": 4}, "n": i}))
        version = registry.register(d, datetime(2023, 12, 3 + 7 * i, tzinfo=UTC))
        trading = {"out_of_fold": {"ensemble": {"sharpe_per_bar": sharpe, "sharpe": sharpe * 93.6}}}
        for _ in range(2):  # a keep recorded twice (two runs of one week) is one trial
            registry.record_keep(model, version, run_id=f"r{i}-{_}", reason="x",
                                 decision={"candidate": version, "trading": trading})
    strategy = {"sharpe_per_bar": 0.03, "bars": 1008, "skew": 0.1, "kurtosis": 4.0}
    record = deflated_sharpe_record(registry, model, "v-new", strategy, 3600)
    # A member tuned by a study of 10 trials (7 completed with a Sharpe ratio, 3 pruned): each is a trial.
    tuned = deflated_sharpe_record(registry, model, "v-new", strategy, 3600, {
        "lightgbm": {"n_trials": 10, "trial_sharpes": [0.001 * k for k in range(7)]}, "xgboost": None})
    registry.dispose()
    assert tuned["n_trials"] == 3 + 10 + 1
    assert tuned["trials_variance"] == pytest.approx(np.var([*earlier, *(0.001 * k for k in range(7)), 0.03], ddof=1))
    assert tuned["value"] == pytest.approx(deflated_sharpe_ratio(0.03, 1008, 0.1, 4.0, 14, tuned["trials_variance"]))
    values = [*earlier, 0.03]
    assert record["n_trials"] == 4 and record["trials_variance"] == pytest.approx(np.var(values, ddof=1))
    assert record["value"] == pytest.approx(deflated_sharpe_ratio(0.03, 1008, 0.1, 4.0, 4, np.var(values, ddof=1)))
    assert 0 < record["expected_max_sharpe"] < 0.03
    # The optional check: off by default, and it says no below the level.
    from tests.include.test_gate import evidence

    args = dict(candidate_version="v-new", evidence=evidence(), champion=None,
                trading={"ensemble": {"sharpe": 2.0, "max_drawdown": 0.05, "probabilistic_sharpe": 0.99, "trades": 9},
                         "momentum": {"sharpe": 0.0}},
                deflated={**record, "value": 0.80})
    assert "deflated_sharpe" not in [c.name for c in decide(GatePolicy(), **args).checks]
    strict = decide(GatePolicy(min_deflated_sharpe=0.95), **args)
    check = next(c for c in strict.checks if c.name == "deflated_sharpe")
    assert not strict.passed and not check.passed and "expected maximum of 4 unskilled trials" in check.detail
