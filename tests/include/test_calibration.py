"""Temperature scaling on purged out-of-fold rows (include/calibration.py) and in the ensemble."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.calibration import (
    MIN_CALIBRATION_ROWS,
    apply_calibrator,
    fit_temperature,
    temperature,
    walk_forward_calibration,
)
from include.evaluation import multiclass_log_loss

GAP = pd.Timedelta(hours=28)


def _overconfident(n: int, seed: int, power: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities, and forecasts that are those probabilities sharpened
    (``p ** power``, renormalised): over-confident by a known temperature, ``1 / power``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=0.6, size=(n, 3))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in truth])
    sharp = truth ** power
    return sharp / sharp.sum(axis=1, keepdims=True), y


def test_temperature_scaling_recovers_a_known_over_confidence_and_lowers_log_loss():
    proba, y = _overconfident(6000, 0)
    calibrator = fit_temperature(proba[:3000], y[:3000])
    assert temperature(calibrator) == pytest.approx(2.5, rel=0.15)
    later = apply_calibrator(calibrator, proba[3000:])
    assert np.allclose(later.sum(axis=1), 1.0)
    assert (later.argmax(axis=1) == proba[3000:].argmax(axis=1)).all()  # the ranking is kept
    assert multiclass_log_loss(y[3000:], later) < multiclass_log_loss(y[3000:], proba[3000:]) - 0.02


def test_no_fold_is_calibrated_by_a_row_of_its_own_or_within_the_purge_gap():
    proba, y = _overconfident(6 * 168, 1)
    times = pd.date_range("2023-01-01", periods=len(y), freq="h", tz="UTC")
    fold_of = np.repeat(np.arange(6), 168)
    out, used = walk_forward_calibration(proba, y, fold_of, times, GAP)
    # folds 0 and 1 have fewer than MIN_CALIBRATION_ROWS earlier rows: kept as they are
    assert MIN_CALIBRATION_ROWS > 168 and used[0] is None and used[1] is None
    assert np.array_equal(out[fold_of < 2], proba[fold_of < 2])
    assert all(used[k] is not None for k in range(2, 6))
    for k in range(2, 6):
        # Relabel fold k, every later fold and the gap before fold k: fold k's forecasts stay the same.
        first = times[fold_of == k][0]
        touched = (fold_of >= k) | ((times >= first - GAP) & (times < first))
        y2 = np.where(touched, (y + 1) % 3, y)
        out2, _ = walk_forward_calibration(proba, y2, fold_of, times, GAP)
        assert np.array_equal(out2[fold_of == k], out[fold_of == k])
        # ...while relabelling earlier rows outside the gap changes them (the check can fail).
        y3 = np.where((fold_of < k) & ~touched, (y + 1) % 3, y)
        out3, _ = walk_forward_calibration(proba, y3, fold_of, times, GAP)
        assert not np.allclose(out3[fold_of == k], out[fold_of == k])


def test_the_ensemble_applies_its_calibrators_and_an_ensemble_without_them_serves_as_before():
    from include.ensemble import WeightedSoftVotingEnsemble

    a, y = _overconfident(2000, 2)
    b, _ = _overconfident(2000, 3)
    ens = WeightedSoftVotingEnsemble.from_fitted([("a", None), ("b", None)], [0.5, 0.5], np.full(3, 1 / 3))
    plain = ens.combine([a, b])
    assert np.allclose(plain, 0.5 * a + 0.5 * b)
    ens.member_calibrators = [fit_temperature(a, y), None]
    ens.calibrator = fit_temperature(plain, y)
    calibrated = ens.combine([a, b])
    expected = apply_calibrator(ens.calibrator, 0.5 * apply_calibrator(ens.member_calibrators[0], a) + 0.5 * b)
    assert np.allclose(calibrated, expected) and not np.allclose(calibrated, plain)
    # A version pickled before calibration existed has neither attribute.
    del ens.member_calibrators, ens.calibrator
    assert np.allclose(ens.combine([a, b]), plain)


def test_labels_without_every_class_leave_the_probabilities_as_they_are():
    proba, y = _overconfident(1200, 4)
    y = np.where(y == 2, 1, y)  # no "up" among the rows
    assert fit_temperature(proba, y) is None
    times = pd.date_range("2023-01-01", periods=len(y), freq="h", tz="UTC")
    out, used = walk_forward_calibration(proba, y, np.repeat(np.arange(6), 200), times, GAP)
    assert np.array_equal(out, proba) and set(used.values()) == {None}


def test_a_cloned_stacking_ensemble_keeps_its_calibrators():
    from sklearn.base import clone

    from include.ensemble import StackingEnsemble

    proba, y = _overconfident(1000, 5)
    calibrator = fit_temperature(proba, y)
    ens = StackingEnsemble([("a", None)], [1.0], stacker=None, calibrator=calibrator)
    assert clone(ens).get_params()["calibrator"] is not None
    assert "member_calibrators" in clone(ens).get_params()
