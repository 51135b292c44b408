"""The gate's skill tests: their level at the null's boundary on persistent errors, and their power."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter
from scipy.stats import binom, norm

from tests.include.test_gate import _noise_rows

#: The class frequencies of :func:`_equal_loss_forecasts`' labels: a 4-bar sum of N(0, 1) returns
#: (standard deviation 2) below -1, between, above +1.
_LABEL_PRIOR = np.array([norm.cdf(-0.5), norm.cdf(0.5) - norm.cdf(-0.5), norm.cdf(-0.5)])


def _equal_loss_forecasts(n: int, phi: float, reps: int, seed: int, scale: float = 0.3,
                          horizon: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``reps`` markets of ``n`` rows with nothing to predict, and two forecasts of equal expected
    log loss whose errors persist.

    Labels are the classes of overlapping ``horizon``-bar sums of a random walk (serially
    dependent, as the pipeline's are). Each forecast is the label prior moved, on the log scale,
    by ``scale`` times a stationary AR(1) of coefficient ``phi`` and unit variance per class,
    independent of the labels and of the other forecast's: the two are exchangeable, so their
    expected losses are equal (the null's boundary), and their loss difference carries a slow
    component beside the labels' noise.

    Returns:
        ``(y, a, b)``: labels ``(reps, n)`` and forecasts ``(reps, n, 3)``.
    """
    rng = np.random.default_rng(seed)
    forward = lfilter(np.ones(horizon), [1.0], rng.normal(size=(reps, n + horizon)), axis=1)[:, horizon:]
    y = np.digitize(forward, [-1.0, 1.0])

    def forecast() -> np.ndarray:
        shocks = rng.normal(size=(reps, n, 3)) * np.sqrt(1 - phi ** 2)
        errors = lfilter([1.0], [1.0, -phi], shocks, axis=1, zi=phi * rng.normal(size=(reps, 1, 3)))[0]
        proba = _LABEL_PRIOR * np.exp(scale * errors)
        return proba / proba.sum(axis=2, keepdims=True)

    return y, forecast(), forecast()


#: Replications per level test, and the most rejections at level 0.10 a test at its level gives
#: in 99 % of runs (the binomial's 99.5 % quantile: 68 of 500).
LEVEL_REPS = 500
MOST_REJECTIONS = int(binom.ppf(0.995, LEVEL_REPS, 0.10))


@pytest.mark.parametrize("phi", [0.9, 0.99])
@pytest.mark.parametrize("n", [164, 1000, 4368])
def test_the_log_loss_test_holds_its_level_at_the_null_boundary_when_errors_persist(n, phi):
    """Two forecasts of equal expected loss: the test may reject in at most 10 % of markets.

    199 resamples per test (not the gate's 1,000) keep 500 replications fast; with
    ``(1 + #) / (B + 1)`` p-values, ``0.10 * 200`` is an integer, so the level is unchanged.
    """
    from include.significance import log_loss_skill_test

    y, a, b = _equal_loss_forecasts(n, phi, LEVEL_REPS, seed=n + int(100 * phi))
    p = np.array([log_loss_skill_test(y[i], a[i], b[i], horizon=4, n_resamples=199, random_state=i)["p_value"]
                  for i in range(LEVEL_REPS)])
    rejections = int(np.sum(p <= 0.10))
    assert rejections <= MOST_REJECTIONS, f"{rejections} of {LEVEL_REPS} at level 0.10"


def test_the_log_loss_test_finds_a_better_forecast_through_persistent_errors():
    from include.significance import log_loss_skill_test

    # The prior itself against a forecast with persistent errors: better by the errors' cost.
    y, noisy, _ = _equal_loss_forecasts(1000, 0.9, 100, seed=5)
    prior = np.broadcast_to(_LABEL_PRIOR, noisy.shape[1:])
    p = np.array([log_loss_skill_test(y[i], prior, noisy[i], horizon=4, n_resamples=199, random_state=i)["p_value"]
                  for i in range(len(y))])
    assert np.mean(p <= 0.10) >= 0.5


def _skill_evidence(frame: pd.DataFrame) -> dict:
    from include.significance import skill_evidence

    return skill_evidence(frame, None, f1_margin=0.0, log_loss_ratio=1.0, sharpe_margin=0.0, horizon=4,
                          bars_per_year=8766, random_state=0)


def test_no_f1_baseline_is_one_a_random_predictor_always_beats():
    """Each F1 test of the intersection-union can fail: a forecast without skill (the prior plus
    noise, whose prior-corrected decision is a random class) passes each one, and the check, in
    at most a share alpha of markets."""
    reps, alpha = 100, 0.10
    most = int(binom.ppf(0.995, reps, alpha))
    tests = [_skill_evidence(_noise_rows(s, n=504))["f1"] for s in range(reps)]
    for name in tests[0]:
        rejected = sum(t[name]["p_value"] is not None and t[name]["p_value"] <= alpha for t in tests)
        assert rejected <= most, f"{name}: {rejected} of {reps}"
    passed = sum(all(t["p_value"] is not None and t["p_value"] <= alpha for t in f1.values()) for f1 in tests)
    assert passed <= most
    assert set(tests[0]) == {"stratified", "momentum"}


def test_each_skill_test_finds_real_skill_at_the_gate_s_weekly_level():
    from include.gate import GatePolicy

    level = GatePolicy().level

    def passes(frame: pd.DataFrame) -> dict[str, bool]:
        ev = _skill_evidence(frame)
        return {"f1": all(t["p_value"] is not None and t["p_value"] <= level for t in ev["f1"].values()),
                "log_loss": ev["log_loss"]["p_value"] is not None and ev["log_loss"]["p_value"] <= level}

    skilled = pd.DataFrame([passes(_noise_rows(s, edge=0.12)) for s in range(10)])
    assert skilled.all().all(), skilled.sum().to_dict()

