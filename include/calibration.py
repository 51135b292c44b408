"""Temperature scaling of class probabilities, fitted on purged out-of-fold rows only.

Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks", ICML) maps
probabilities ``p`` (n, 3) to ``softmax(log(p) / T)``: one parameter, so it can be fitted on a few
hundred rows, and it keeps each row's ranking of the classes. ``T > 1`` softens over-confident
forecasts, ``T < 1`` sharpens timid ones. The fit is scikit-learn's
(``CalibratedClassifierCV(method="temperature")`` around a ``FrozenEstimator``): the estimator it
calibrates is :class:`ProbabilityInput`, whose "features" are the probabilities themselves, so the
calibrator is fitted on stored out-of-fold probabilities and never on a fitted model's in-sample
predictions.

Walk-forward (:func:`walk_forward_calibration`): fold k's rows are calibrated by a temperature
fitted on the rows of earlier folds, purged at fold k's boundary (the rows
:func:`include.evaluation.earlier_fold_rows` allows), so no row is scored by a calibrator that saw
its label; a fold with fewer than :data:`MIN_CALIBRATION_ROWS` such rows, or without every class
among them, keeps its probabilities.
The registered model's calibrator is fitted on every out-of-fold row (as scikit-learn's
``ensemble=False`` fits its calibrator on cross-validated predictions of a model refitted on all
rows).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from include.evaluation import earlier_fold_rows
from include.labels import CLASSES

logger = logging.getLogger(__name__)

#: Fewest earlier out-of-fold rows a fold's temperature is fitted on (about two weekly folds of
#: hourly bars, less the purge before the fold); a fold with fewer keeps its probabilities.
MIN_CALIBRATION_ROWS = 300


class ProbabilityInput(ClassifierMixin, BaseEstimator):
    """A fitted "classifier" whose input is already a probability matrix ``(n, 3)``: what
    ``CalibratedClassifierCV`` calibrates when the probabilities come from elsewhere (stored
    out-of-fold forecasts)."""

    def __init__(self) -> None:
        self.classes_ = np.asarray(CLASSES)

    def fit(self, X, y=None) -> ProbabilityInput:  # noqa: ARG002 - nothing to fit
        """Nothing to learn; returns ``self``."""
        return self

    def predict_proba(self, X) -> np.ndarray:
        """``X`` itself, rows renormalised, shape ``(n, 3)``."""
        p = np.clip(np.asarray(X, dtype="float64"), 1e-12, 1.0)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> Any:
    """A temperature-scaling calibrator fitted on ``proba`` ``(n, 3)`` and labels ``y`` ``(n,)``;
    ``None`` (nothing to apply) unless every class of :data:`~include.labels.CLASSES` occurs in
    ``y``, since scikit-learn's calibrator maps its outputs to the classes it saw.

    Returns:
        A fitted ``sklearn.calibration.CalibratedClassifierCV`` (:func:`apply_calibrator` uses
        it), or ``None``.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    y = np.asarray(y, dtype=int)
    if set(np.unique(y)) != set(CLASSES):
        logger.warning("calibration: labels %s miss a class; the probabilities are kept as they are",
                       sorted(set(np.unique(y).tolist())))
        return None
    return CalibratedClassifierCV(FrozenEstimator(ProbabilityInput()), method="temperature").fit(
        np.asarray(proba, dtype="float64"), y)


def apply_calibrator(calibrator: Any, proba: np.ndarray) -> np.ndarray:
    """Calibrated probabilities ``(n, 3)`` over :data:`~include.labels.CLASSES` (``proba`` as is
    for ``calibrator=None``). A :func:`fit_temperature` calibrator has seen every class, so its
    columns are the classes in order."""
    proba = np.asarray(proba, dtype="float64")
    if calibrator is None or len(proba) == 0:
        return proba
    return calibrator.predict_proba(proba)


def temperature(calibrator: Any) -> float | None:
    """The fitted temperature ``T`` (``1 / beta``) of a :func:`fit_temperature` calibrator."""
    if calibrator is None:
        return None
    beta = calibrator.calibrated_classifiers_[0].calibrators[0].beta_
    return float(1.0 / beta)


def walk_forward_calibration(proba: np.ndarray, y: np.ndarray, fold_of: np.ndarray, times: pd.DatetimeIndex,
                             gap: pd.Timedelta) -> tuple[np.ndarray, dict[int, float | None]]:
    """Out-of-fold probabilities calibrated walk-forward (module docstring).

    Args:
        proba: out-of-fold probabilities ``(n, 3)``.
        y: labels ``(n,)``.
        fold_of: fold per row ``(n,)``.
        times: bar open times ``(n,)``, sorted.
        gap: purge + embargo as a duration.

    Returns:
        ``(calibrated probabilities (n, 3), fold -> temperature used or None)``.
    """
    out = np.asarray(proba, dtype="float64").copy()
    used: dict[int, float | None] = {}
    for k in np.unique(fold_of):
        rows, seen = fold_of == k, earlier_fold_rows(fold_of, times, int(k), gap)
        calibrator = fit_temperature(proba[seen], y[seen]) if seen.sum() >= MIN_CALIBRATION_ROWS else None
        out[rows] = apply_calibrator(calibrator, proba[rows])
        used[int(k)] = temperature(calibrator)
    return out, used
