"""Ensembles over fitted model families: weighted soft voting, and stacking.

The ensemble's class probabilities are the weighted mean of its members' (Kuncheva 2004,
*Combining Pattern Classifiers*, ch. 5): ``p(x) = sum_m w_m p_m(x) / sum_m w_m``. Hard
predictions use the prior-corrected rule of :func:`include.training.prior_corrected_predict`.
Weights are given (equal over the four families: the trees find non-linear structure, the
sparse logistic family a weak linear edge with far fewer rows), selected (by default: the given
weights or the logistic family alone, whichever has the lower out-of-fold log loss, a choice
between two recipes rather than weights fitted on the few out-of-fold rows a week has;
``docs/concepts/edge-capture.md`` has the measurements) or fitted to minimise the log loss of the
out-of-fold probabilities, never of in-sample ones. Each member's and the combination's
probabilities may be calibrated (:mod:`include.calibration`). Stacking (Wolpert 1992, "Stacked
generalization", Neural Networks 5(2)) replaces the weighted mean by a multinomial logistic
regression on the members' out-of-fold log-probabilities (:class:`StackingEnsemble`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from include.calibration import apply_calibrator
from include.errors import ConfigError
from include.evaluation import earlier_fold_rows, multiclass_log_loss
from include.labels import CLASSES
from include.training import class_prior, predict_proba_all, prior_corrected_predict

logger = logging.getLogger(__name__)


class WeightedSoftVotingEnsemble(ClassifierMixin, BaseEstimator):
    """Soft voting over named ``(name, estimator)`` pairs with explicit weights.

    Follows the scikit-learn estimator contract: ``__init__`` stores parameters, ``fit`` clones
    and fits every member and sets ``estimators_``, ``classes_`` and ``class_prior_``.
    :meth:`from_fitted` wraps members that are already fitted (the final fits of training).

    Args:
        estimators: list of ``(name, estimator)``.
        weights: weight per member, same order; non-negative with a positive sum.
        feature_names: input column order, stored so a caller can check its frame.
        member_calibrators: per member, same order, a calibrator of its probabilities before
            they are combined (:func:`include.calibration.fit_temperature`; ``None``: as is).
        calibrator: a calibrator of the combined probabilities (``None``: as combined).
    """

    #: Class-level defaults: a version pickled before calibration existed has neither attribute.
    member_calibrators: list[Any] | None = None
    calibrator: Any = None

    def __init__(self, estimators: list[tuple[str, Any]], weights: list[float],
                 feature_names: list[str] | None = None, member_calibrators: list[Any] | None = None,
                 calibrator: Any = None) -> None:
        self.estimators = estimators
        self.weights = weights
        self.feature_names = feature_names
        self.member_calibrators = member_calibrators
        self.calibrator = calibrator

    def _check(self) -> np.ndarray:
        w = np.asarray(self.weights, dtype="float64")
        if len(w) != len(self.estimators) or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(
                f"ensemble weights {list(self.weights)} do not fit members "
                f"{[n for n, _ in self.estimators]}: need one non-negative weight each, positive sum"
            )
        return w / w.sum()

    def fit(self, X, y) -> WeightedSoftVotingEnsemble:
        """Clone and fit every member on ``X`` (n_samples, n_features), ``y`` (n_samples,)."""
        self._check()
        self.estimators_ = [(name, clone(est).fit(X, y)) for name, est in self.estimators]
        self.classes_ = np.asarray(CLASSES)
        self.class_prior_ = class_prior(np.asarray(y))
        return self

    @classmethod
    def from_fitted(cls, estimators: list[tuple[str, Any]], weights: list[float], prior: np.ndarray,
                    feature_names: list[str] | None = None) -> WeightedSoftVotingEnsemble:
        """An ensemble over already-fitted members, with the training class prior ``(3,)``."""
        ens = cls(estimators=estimators, weights=weights, feature_names=feature_names)
        ens._check()
        ens.estimators_ = list(estimators)
        ens.classes_ = np.asarray(CLASSES)
        ens.class_prior_ = np.asarray(prior, dtype="float64")
        return ens

    def combine(self, probas: list[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities ``(n, 3)`` from its members' ``(n, 3)`` each, in member
        order: each member's calibrated, combined, and the combination calibrated."""
        members = self.member_calibrators or [None] * len(probas)
        probas = [apply_calibrator(c, p) for c, p in zip(members, probas, strict=True)]
        return apply_calibrator(self.calibrator, self.vote(probas))

    def vote(self, probas: list[np.ndarray]) -> np.ndarray:
        """The weighted mean ``(n, 3)`` of the members' probabilities ``(n, 3)`` each."""
        w = self._check()
        return sum(wi * p for wi, p in zip(w, probas, strict=True))

    def predict_proba(self, X) -> np.ndarray:
        """Weighted mean of member probabilities, shape ``(n_samples, 3)``."""
        return self.combine([predict_proba_all(est, X) for _, est in self.estimators_])

    def predict(self, X) -> np.ndarray:
        """Prior-corrected class decisions, shape ``(n_samples,)``."""
        return prior_corrected_predict(self.predict_proba(X), self.class_prior_)


def combine(probas: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted mean of per-member probability arrays ``(n, 3)``; weights renormalised."""
    names = list(probas)
    w = np.asarray([weights[n] for n in names], dtype="float64")
    w = w / w.sum()
    return sum(wi * probas[n] for wi, n in zip(w, names, strict=True))


def fit_weights(probas: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Simplex weights minimising the log loss of the combined out-of-fold probabilities.

    Solved with SciPy's SLSQP under ``w >= 0, sum(w) = 1``.

    Args:
        probas: member name -> out-of-fold probabilities ``(n, 3)`` on the same rows.
        y: labels of those rows, shape ``(n,)``.

    Returns:
        member name -> weight (sums to 1).
    """
    from scipy.optimize import minimize

    names = list(probas)
    if len(names) == 1:
        return {names[0]: 1.0}

    def loss(w: np.ndarray) -> float:
        return multiclass_log_loss(y, combine(probas, dict(zip(names, np.abs(w) + 1e-12, strict=True))))

    start = np.full(len(names), 1.0 / len(names))
    res = minimize(loss, start, method="SLSQP", bounds=[(0.0, 1.0)] * len(names),
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}])
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum()
    logger.info("fitted ensemble weights %s (out-of-fold log loss %.4f)",
                dict(zip(names, np.round(w, 4), strict=True)), res.fun)
    return {n: float(wi) for n, wi in zip(names, w, strict=True)}


def select_weights(probas: dict[str, np.ndarray], y: np.ndarray,
                   candidates: list[dict[str, float]]) -> dict[str, float]:
    """The candidate weighting whose combined probabilities have the lowest log loss on ``y``.

    Model selection between a few fixed recipes on out-of-fold rows (Hastie, Tibshirani and
    Friedman 2009, *The Elements of Statistical Learning*, ch. 7.10): with two candidates it
    has far less variance than weights fitted freely on the same rows (:func:`fit_weights`).
    Ties go to the earlier candidate.

    Args:
        probas: member name -> out-of-fold probabilities ``(n, 3)`` on the same rows.
        y: labels of those rows, shape ``(n,)``.
        candidates: weightings, each member name -> non-negative weight with a positive sum.

    Returns:
        The chosen candidate, renormalised to sum to 1.

    Raises:
        ValueError: no candidates.
    """
    if not candidates:
        raise ValueError("select_weights needs at least one candidate weighting")
    losses = [multiclass_log_loss(y, combine(probas, w)) for w in candidates]
    chosen = candidates[int(np.argmin(losses))]
    total = sum(chosen.values())
    logger.debug("selected ensemble weights %s (out-of-fold log loss %.4f; candidates' %s)",
                 {n: round(w / total, 4) for n, w in chosen.items()}, min(losses), [round(x, 4) for x in losses])
    return {n: float(w / total) for n, w in chosen.items()}


def selection_candidates(weights: dict[str, float], linear: str = "logistic") -> list[dict[str, float]]:
    """The weightings ``ensemble_weighting='selected'`` chooses between: the configured
    ``weights`` and, where it is a member beside others, the ``linear`` family alone.

    Args:
        weights: member name -> configured weight.
        linear: the family that may stand alone.

    Returns:
        One or two weightings over the same members, the configured one first.
    """
    if linear not in weights or len(weights) == 1:
        return [dict(weights)]
    return [dict(weights), {n: float(n == linear) for n in weights}]


def walk_forward_weights(probas: dict[str, np.ndarray], y: np.ndarray, fold_of: np.ndarray,
                         times: pd.DatetimeIndex, gap: pd.Timedelta, default: dict[str, float],
                         fit: Callable[[dict[str, np.ndarray], np.ndarray], dict[str, float]] = fit_weights,
                         ) -> tuple[np.ndarray, dict[int, dict[str, float]]]:
    """Out-of-fold ensemble probabilities with weights fitted walk-forward.

    Fold k is combined with weights fitted by ``fit`` (:func:`fit_weights`, or
    :func:`select_weights` over fixed candidates) on :func:`earlier_fold_rows` of fold k only,
    so no row is scored by weights that saw its label or a label overlapping its fold; a fold
    with no such rows uses ``default``.

    Args:
        probas: member name -> out-of-fold probabilities ``(n, 3)``.
        y: labels ``(n,)``.
        fold_of: fold per row ``(n,)``.
        times: bar open times ``(n,)``, sorted.
        gap: purge + embargo as a duration.
        default: weights for a fold without earlier rows.
        fit: ``(probas, labels) -> weights`` on the earlier rows.

    Returns:
        ``(probabilities (n, 3), fold -> weights used)``.
    """
    out = np.zeros_like(next(iter(probas.values())))
    used: dict[int, dict[str, float]] = {}
    for k in np.unique(fold_of):
        rows, seen = fold_of == k, earlier_fold_rows(fold_of, times, int(k), gap)
        w_k = fit({f: p[seen] for f, p in probas.items()}, y[seen]) if seen.any() else default
        out[rows] = combine({f: p[rows] for f, p in probas.items()}, w_k)
        used[int(k)] = w_k
    return out, used


#: Fewest out-of-fold rows a fold's stacker is fitted on; with fewer, the fold is combined with
#: the default weights.
MIN_STACKING_ROWS = 100


def stacking_features(probas: list[np.ndarray]) -> np.ndarray:
    """The stacker's inputs: each member's log-probabilities side by side, ``(n, 3 * members)``
    (clipped at 1e-6, so a zero probability stays finite)."""
    return np.hstack([np.log(np.clip(np.asarray(p, dtype="float64"), 1e-6, 1.0)) for p in probas])


def fit_stacker(probas: list[np.ndarray], y: np.ndarray, random_state: int = 0) -> Any:
    """A multinomial logistic regression (scikit-learn's ``LogisticRegression``, L2 penalty,
    ``C=1``) from the members' log-probabilities to the label.

    Args:
        probas: out-of-fold probabilities ``(n, 3)`` per member, same rows.
        y: labels ``(n,)`` with at least two classes.

    Raises:
        ValueError: ``y`` holds a single class.
    """
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000, random_state=random_state).fit(stacking_features(probas), y)


def stacker_proba(stacker: Any, probas: list[np.ndarray]) -> np.ndarray:
    """The stacker's class probabilities ``(n, 3)`` over :data:`CLASSES` (a class the stacker never
    saw gets 0)."""
    raw = stacker.predict_proba(stacking_features(probas))
    out = np.zeros((raw.shape[0], len(CLASSES)))
    for j, cls in enumerate(stacker.classes_):
        out[:, int(cls)] = raw[:, j]
    return out


class StackingEnsemble(WeightedSoftVotingEnsemble):
    """Members combined by a fitted stacker (:func:`fit_stacker`) instead of a weighted mean.

    ``weights`` are kept for display and as the members' order; the probabilities are the
    stacker's on the members' log-probabilities.
    """

    def __init__(self, estimators: list[tuple[str, Any]], weights: list[float], stacker: Any = None,
                 feature_names: list[str] | None = None, member_calibrators: list[Any] | None = None,
                 calibrator: Any = None) -> None:
        super().__init__(estimators, weights, feature_names, member_calibrators, calibrator)
        self.stacker = stacker

    @classmethod
    def from_fitted(cls, estimators: list[tuple[str, Any]], weights: list[float], prior: np.ndarray,
                    feature_names: list[str] | None = None, stacker: Any = None) -> StackingEnsemble:
        """An ensemble over already-fitted members and a fitted ``stacker``."""
        ens = super().from_fitted(estimators, weights, prior, feature_names=feature_names)
        ens.stacker = stacker
        return ens

    def vote(self, probas: list[np.ndarray]) -> np.ndarray:
        """The stacker's probabilities ``(n, 3)`` from the members' ``(n, 3)`` each."""
        return stacker_proba(self.stacker, probas)


def walk_forward_stacking(probas: dict[str, np.ndarray], y: np.ndarray, fold_of: np.ndarray,
                          times: pd.DatetimeIndex, gap: pd.Timedelta, default: dict[str, float],
                          random_state: int = 0) -> tuple[np.ndarray, dict[int, str]]:
    """Out-of-fold stacked probabilities: fold k is combined by a stacker fitted only on
    :func:`earlier_fold_rows` of fold k (earlier folds, purged at its boundary), so no row is
    scored by a stacker that saw its label. A fold with fewer than :data:`MIN_STACKING_ROWS` such
    rows, or a single class among them, is combined with the ``default`` weights.

    Args:
        probas: member name -> out-of-fold probabilities ``(n, 3)``.
        y: labels ``(n,)``.
        fold_of: fold per row ``(n,)``.
        times: bar open times ``(n,)``, sorted.
        gap: purge + embargo as a duration.
        default: weights for a fold without enough earlier rows.

    Returns:
        ``(probabilities (n, 3), fold -> "stacker" or "default weights")``.
    """
    names = list(probas)
    out = np.zeros_like(probas[names[0]])
    used: dict[int, str] = {}
    for k in np.unique(fold_of):
        rows, seen = fold_of == k, earlier_fold_rows(fold_of, times, int(k), gap)
        if seen.sum() >= MIN_STACKING_ROWS and len(np.unique(y[seen])) > 1:
            stacker = fit_stacker([probas[n][seen] for n in names], y[seen], random_state)
            out[rows] = stacker_proba(stacker, [probas[n][rows] for n in names])
            used[int(k)] = "stacker"
        else:
            out[rows] = combine({n: probas[n][rows] for n in names}, default)
            used[int(k)] = "default weights"
    return out, used


# -- 6. ensemble -----------------------------------------------------------------------------
def ranked_features(member_meta: dict[str, Any], families: list[str], names: list[str]) -> list[str]:
    """Feature names by mean permutation importance over the families, largest first."""
    score = dict.fromkeys(names, 0.0)
    for fam in families:
        perm = ((member_meta[fam].get("cv") or {}).get("importance") or {}).get("permutation", {}).get("mean", {})
        for name, value in perm.items():
            if name in score and value == value:
                score[name] += value / len(families)
    return sorted(score, key=lambda n: (-score[n], n))
