"""The gate's decision rule and its skill tests: levels held on noise, power on skill, the champion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.gate import SKILL_CHECKS, GatePolicy, decide

#: Every skill test required (the default requires the log-loss test only).
ALL = GatePolicy(required=SKILL_CHECKS)


def _test(p: float | None, **extra) -> dict:
    return {"p_value": p, "n": 1008, "block": 6, **extra}


def evidence(f1_p: float | None = 0.001, ll_p: float | None = 0.001, flat_p: float | None = 0.001,
             momentum_p: float | None = 0.001, stratified_p: float | None = None) -> dict:
    """Skill-test results as :func:`include.significance.skill_evidence` returns them."""
    f1 = {name: _test(f1_p if p is None else p, macro_f1=0.37, reference_macro_f1=ref)
          for name, ref, p in (("stratified", 0.33, stratified_p), ("momentum", 0.30, None))}
    return {"f1": f1, "log_loss": _test(ll_p, log_loss=1.06, reference_log_loss=1.07),
            "trading": {"flat": _test(flat_p, sharpe=1.0, probabilistic_sharpe=None if flat_p is None else 1 - flat_p),
                        "momentum": _test(momentum_p, sharpe=0.5,
                                          probabilistic_sharpe=None if momentum_p is None else 1 - momentum_p)}}


def champion(rows: int = 500, p: float | None = 0.5, live: float = 1.05, prior: float = 1.07,
             live_p: float | None = 0.01) -> dict:
    return {"version": "v0", "trained_until": "2023-11-26T00:00:00+00:00", "window_start": "2023-12-24T00:00:00+00:00",
            "compared_from": "2023-11-26T00:00:00+00:00", "rows_out_of_sample": rows,
            "comparison": {"p_value": p, "n": rows, "block": 6, "challenger_log_loss": 1.06, "champion_log_loss": 1.05,
                           "same_forecast": p is None},
            "live": {"log_loss": live, "prior_log_loss": prior, "p_value": live_p}}


def test_a_candidate_passes_when_every_skill_test_rejects_no_skill_at_its_level():
    d = decide(ALL, candidate_version="v1", evidence=evidence(), champion=None)
    assert d.passed and [c.name for c in d.checks] == ["beats_baselines_f1", "beats_prior_log_loss"]
    check = d.checks[0]
    assert check.value == 0.001 and check.threshold == pytest.approx(0.10 / 52)
    assert "stratified 0.3300 (p = 0.0010)" in check.detail


@pytest.mark.parametrize(("kwargs", "champ", "failed"), [
    ({"stratified_p": 0.3}, None, "beats_baselines_f1"),  # every baseline must be beaten, not the best only
    ({"ll_p": 0.2}, None, "beats_prior_log_loss"),
    ({"ll_p": 0.01}, None, "beats_prior_log_loss"),  # a weekly 0.10 would pass it: the year's level is 0.10
    ({"ll_p": None}, None, "beats_prior_log_loss"),  # the prior's own forecast: nothing to test
    ({}, champion(rows=10), "champion_out_of_sample"),
    ({}, champion(p=0.01), "not_worse_than_champion"),  # the champion is significantly better
])
def test_the_gate_says_no(kwargs, champ, failed):
    d = decide(ALL, candidate_version="v1", evidence=evidence(**kwargs), champion=champ)
    assert not d.passed and failed in [c.name for c in d.checks if not c.passed] and d.reasons


def test_without_evidence_against_it_the_challenger_is_not_held_back_by_the_champion():
    for p in (0.5, 0.06, None):  # no significant difference, or the same model
        d = decide(GatePolicy(), candidate_version="v1", evidence=evidence(), champion=champion(p=p))
        check = next(c for c in d.checks if c.name == "not_worse_than_champion")
        assert d.passed and check.passed
    same = decide(GatePolicy(), candidate_version="v1", evidence=evidence(), champion=champion(p=None))
    assert next(c for c in same.checks if c.name == "not_worse_than_champion").detail.startswith("same model")
    assert decide(GatePolicy(champion_alpha=0.0), candidate_version="v1", evidence=evidence(),
                  champion=champion(p=0.0001)).passed


def _noise_rows(seed: int, n: int = 1008, edge: float = 0.0, horizon: int = 4) -> pd.DataFrame:
    """Out-of-fold rows of a market with nothing to predict: labels of overlapping ``horizon``-bar
    returns of a random walk, and a forecast near the class prior (with ``edge`` extra probability
    on the true class when skilled); the baselines' decisions as the pipeline records them."""
    rng = np.random.default_rng(seed)
    r = rng.normal(0, 1, n + horizon)
    forward = np.convolve(r, np.ones(horizon), "valid")[1:n + 1]
    y = np.digitize(forward, [-1.0, 1.0])  # down, range, up
    prior = np.bincount(y[: n // 2], minlength=3) / (n // 2)
    proba = prior + rng.normal(0, 0.03, (n, 3))
    proba[np.arange(n), y] += edge
    proba = np.clip(proba, 0.01, None)
    proba /= proba.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(proba, columns=["p_down", "p_range", "p_up"],
                         index=pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC"))
    frame[["prior_down", "prior_range", "prior_up"]] = prior
    frame["label"], frame["fold"] = y, 0
    frame["momentum"] = np.digitize(np.convolve(r, np.ones(horizon), "valid")[:n], [-1.0, 1.0])
    frame["pred_stratified"] = rng.choice(3, n, p=prior)
    return frame


def test_the_macro_f1_of_a_resample_is_scikit_learns():
    from sklearn.metrics import f1_score

    from include.significance import macro_f1_from_counts

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, (5, 200)), rng.integers(0, 3, (5, 200))
    pred[1] = 0  # a class never predicted: zero_division
    expected = [f1_score(a, b, labels=[0, 1, 2], average="macro", zero_division=0)
                for a, b in zip(y, pred, strict=True)]
    assert macro_f1_from_counts(y, pred) == pytest.approx(expected)


class _Champion:
    """A fitted model that forecasts its class prior and remembers the rows it was asked about."""

    class_prior_ = np.array([0.3, 0.4, 0.3])

    def __init__(self) -> None:
        self.asked: pd.Index | None = None

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        self.asked = X.index
        return np.tile(self.class_prior_, (len(X), 1))


def test_the_champion_comparison_spans_every_fold_after_its_training_data_and_no_row_before():
    from include.gate.evidence import compare_with_champion

    oof = _noise_rows(1, n=3 * 168)
    oof["fold"] = np.repeat([0, 1, 2], 168)
    features = pd.DataFrame({"f": np.arange(len(oof))}, index=oof.index)
    champ = _Champion()
    # Trained until midway through fold 1, written with another offset: an instant, not a string.
    until = (oof.index[168 + 84]).tz_convert("America/New_York").isoformat()
    meta = {"data_window": {"trained_until": until, "last_training_row": "x"}, "feature_spec": {"names": ["f"]}}
    result = compare_with_champion(oof, champ, meta, "v0", features, horizon=4, random_state=0,
                                   window_start=oof.index[336].isoformat())
    assert list(champ.asked) == list(oof.index[168 + 84:])  # two weeks' rows, only those both never saw
    assert result["rows_out_of_sample"] == 84 + 168 == result["comparison"]["n"]
    assert result["compared_from"] == oof.index[168 + 84].isoformat()
    assert result["live"]["log_loss"] == pytest.approx(result["comparison"]["champion_log_loss"])
    # A champion trained after every out-of-fold row is not compared at all.
    late = {**meta, "data_window": {"trained_until": "2024-01-01T00:00:00+00:00"}}
    assert compare_with_champion(oof, _Champion(), late, "v0", features, horizon=4, random_state=0,
                                 window_start="x")["rows_out_of_sample"] == 0


def test_a_skill_test_the_policy_does_not_require_is_recorded_and_does_not_decide():
    weak_f1 = evidence(stratified_p=0.6)
    assert not decide(ALL, candidate_version="v1", evidence=weak_f1, champion=None).passed
    assert GatePolicy().required == ("beats_prior_log_loss",) and GatePolicy().alpha == 0.10
    only_log_loss = GatePolicy(required=("beats_prior_log_loss",))
    d = decide(only_log_loss, candidate_version="v1", evidence=weak_f1, champion=None)
    f1 = next(c for c in d.checks if c.name == "beats_baselines_f1")
    assert d.passed and not f1.passed and not f1.required and "beats_baselines_f1=no" in d.summary()
    assert not decide(only_log_loss, candidate_version="v1", evidence=evidence(ll_p=0.3), champion=None).passed
