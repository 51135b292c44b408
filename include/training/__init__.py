"""Model families and their purged walk-forward training.

Each family lives in its own module exposing ``DEFAULT_PARAMS`` and ``build(random_state,
n_jobs, **overrides)``, which returns an unfitted scikit-learn-compatible classifier. ``n_jobs``
is always given by the caller: the task's thread budget (:func:`include.resources.model_threads`).
Models are trained without class weights, so their probabilities estimate the true class
frequencies; hard decisions use the prior-corrected rule of :func:`prior_corrected_predict`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from include.errors import TrainingError
from include.evaluation import (
    WalkForward,
    brier_score,
    classification_metrics,
    log_loss_rows,
    multiclass_log_loss,
    summarise_folds,
)
from include.extensions import load_family
from include.labels import CLASSES
from include.training import lightgbm, logistic, random_forest, xgboost
from include.training.fit_cache import FitCache, evaluation_key, fit_key, rows_digest

logger = logging.getLogger(__name__)

FAMILIES: dict[str, Any] = {
    "lightgbm": lightgbm,
    "xgboost": xgboost,
    "random_forest": random_forest,
    "logistic": logistic,
}


def family_module(family: str) -> Any:
    """The module of ``family``: a built-in one (:data:`FAMILIES`) or an installed plug-in's
    (:func:`include.extensions.load_family`).

    Raises:
        ConfigError: unknown family, or a plug-in that fails to load.
    """
    return FAMILIES[family] if family in FAMILIES else load_family(family)


def build_estimator(family: str, random_state: int, n_jobs: int, **overrides: Any):
    """An unfitted classifier of ``family`` with its default hyperparameters, using ``n_jobs`` threads.

    Raises:
        ConfigError: unknown family.
    """
    return family_module(family).build(random_state=random_state, n_jobs=n_jobs, **overrides)


def family_params(family: str) -> dict[str, Any]:
    """Default hyperparameters of ``family``.

    Raises:
        ConfigError: unknown family.
    """
    return dict(family_module(family).DEFAULT_PARAMS)


def class_prior(y: np.ndarray) -> np.ndarray:
    """Class frequencies of ``y`` over :data:`~include.labels.CLASSES`, shape ``(3,)``."""
    counts = np.bincount(np.asarray(y, dtype=int), minlength=len(CLASSES)).astype("float64")
    return counts / counts.sum()


def prior_corrected_predict(proba: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Hard class decisions ``argmax_k p_k / prior_k``.

    With calibrated probabilities this is the Bayes decision when every class matters equally
    (the objective of macro F1 and balanced accuracy); see Elkan (2001), "The foundations of
    cost-sensitive learning". A zero prior falls back to the plain argmax for that class.

    Args:
        proba: class probabilities, shape ``(n, 3)``.
        prior: training class frequencies, shape ``(3,)``.

    Returns:
        Class labels, shape ``(n,)``.
    """
    safe = np.where(np.asarray(prior) > 0, prior, 1.0)
    return np.asarray(CLASSES)[(np.asarray(proba) / safe).argmax(axis=1)]


def _align_proba(estimator: Any, proba: np.ndarray) -> np.ndarray:
    """Expand ``predict_proba`` output to all classes (a fold may miss a class), as float64 rows
    that sum to one.

    XGBoost returns float32 probabilities whose rows sum to one only within ~1e-7, which
    scikit-learn's log loss and Brier score reject with "The y_prob values do not sum to one";
    rows are renormalised in float64.
    """
    out = np.zeros((proba.shape[0], len(CLASSES)))
    for j, cls in enumerate(estimator.classes_):
        out[:, int(cls)] = proba[:, j]
    return out / out.sum(axis=1, keepdims=True)


def predict_proba_all(estimator: Any, X: pd.DataFrame) -> np.ndarray:
    """``predict_proba`` with one column per class in :data:`CLASSES`, shape ``(n, 3)``."""
    return _align_proba(estimator, estimator.predict_proba(X))


@dataclass
class CrossValidation:
    """Result of purged walk-forward cross-validation of one family.

    Attributes:
        oof_proba: out-of-fold class probabilities, shape ``(n_test_rows, 3)``.
        oof_positions: row positions of ``oof_proba`` in the training frame, shape ``(n_test_rows,)``.
        oof_fold: fold number of each out-of-fold row.
        oof_prior: class prior of the fold's training set, per out-of-fold row, ``(n_test_rows, 3)``.
        folds: per fold: bounds (timestamps), row counts and metrics.
        summary: mean/std/min/max of each metric over folds.
        overall: metrics over all out-of-fold rows together.
    """

    oof_proba: np.ndarray
    oof_positions: np.ndarray
    oof_fold: np.ndarray
    oof_prior: np.ndarray
    folds: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)
    importance: dict[str, Any] = field(default_factory=dict)


#: Shuffles per feature in :func:`fold_importance`.
IMPORTANCE_REPEATS = 2
#: Most rows :func:`permutation_log_loss` predicts in one call (permuted copies of the test rows
#: stacked): bounds its memory to about this many rows x features x 8 bytes.
IMPORTANCE_BATCH_ROWS = 100_000


def permutation_log_loss(estimator: Any, X: pd.DataFrame, y: np.ndarray, random_state: int,
                         n_repeats: int = IMPORTANCE_REPEATS) -> np.ndarray:
    """Permutation importance (Breiman 2001): the increase in log loss on ``(X, y)`` when one
    feature's values are shuffled, for each feature and repeat.

    The shuffles are those of scikit-learn's :func:`~sklearn.inspection.permutation_importance`
    with the same ``random_state`` (one seed drawn from it; each feature's shuffles start from
    that seed and compound over repeats), and the result equals its ``importances`` for a
    log-loss scorer. The permuted copies are stacked and predicted in a few large calls instead
    of one call per feature and repeat: on one test week (168 rows, 19 features, 2 repeats) a
    200-tree random forest's per-call overhead made the 39 small calls take 1.6 s.

    Args:
        estimator: a fitted classifier over :data:`~include.labels.CLASSES`.
        X: test features, shape ``(n, n_features)``.
        y: test labels in {0, 1, 2}, shape ``(n,)``.
        random_state: seed of the shuffles.
        n_repeats: shuffles per feature.

    Returns:
        Log-loss increases (nats), shape ``(n_features, n_repeats)``.
    """
    from sklearn.utils import check_random_state

    n, n_features = X.shape
    y = np.asarray(y, dtype=int)
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max + 1)
    values = X.to_numpy()
    baseline = float(log_loss_rows(y, predict_proba_all(estimator, X)).mean())
    blocks = []
    for col in range(n_features):
        rng, order, column = check_random_state(seed), np.arange(n), values[:, col].copy()
        for _ in range(n_repeats):
            rng.shuffle(order)
            column = column[order]
            block = values.copy()
            block[:, col] = column
            blocks.append(block)
    per_call = max(1, IMPORTANCE_BATCH_ROWS // max(n, 1))
    losses = []
    for start in range(0, len(blocks), per_call):
        chunk = blocks[start:start + per_call]
        stacked = pd.DataFrame(np.vstack(chunk), columns=X.columns).astype(X.dtypes.to_dict())
        rows = log_loss_rows(np.tile(y, len(chunk)), predict_proba_all(estimator, stacked))
        losses.extend(rows.reshape(len(chunk), n).mean(axis=1))
    return np.asarray(losses).reshape(n_features, n_repeats) - baseline


def fold_importance(estimator: Any, X_test: pd.DataFrame, y_test: np.ndarray,
                    random_state: int, n_repeats: int = IMPORTANCE_REPEATS) -> dict[str, dict[str, float]]:
    """Feature importance of one fitted fold model.

    * ``gain``: the model's own ``feature_importances_`` (total split gain for LightGBM and
      XGBoost, mean impurity decrease for the random forest), normalised to sum to 1.
    * ``permutation``: increase in log loss on the fold's *test* rows when one feature's values
      are shuffled, mean over ``n_repeats`` (:func:`permutation_log_loss`).

    Returns:
        ``{"gain": {feature: value}, "permutation": {feature: value}}``.
    """
    raw = np.asarray(getattr(estimator, "feature_importances_", np.zeros(X_test.shape[1])), dtype="float64")
    gain = raw / raw.sum() if raw.sum() > 0 else raw
    perm = permutation_log_loss(estimator, X_test, y_test, random_state, n_repeats).mean(axis=1)
    return {"gain": dict(zip(X_test.columns, map(float, gain), strict=True)),
            "permutation": dict(zip(X_test.columns, map(float, perm), strict=True))}


def importance_stability(per_fold: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Mean and std of each feature's importance over folds, and how stable the ranking is.

    Stability is the mean Spearman rank correlation between the importance vectors of every
    pair of folds (1: same order in every fold; about 0: no consistent order).
    """
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    for kind in ("gain", "permutation"):
        frame = pd.DataFrame([f[kind] for f in per_fold])
        # A fold whose importances are all equal (no gain importance, as for the logistic family;
        # every coefficient zeroed) has no ranking to compare.
        ranked = [i for i in range(len(frame)) if frame.iloc[i].nunique() > 1]
        corr = [spearmanr(frame.iloc[i], frame.iloc[j]).statistic
                for n, i in enumerate(ranked) for j in ranked[n + 1:]]
        corr = [c for c in corr if np.isfinite(c)]
        out[kind] = {
            "mean": {k: float(v) for k, v in frame.mean().sort_values(ascending=False).items()},
            "std": {k: float(v) for k, v in frame.std(ddof=0).items()},
            "rank_stability": float(np.mean(corr)) if corr else None,
        }
    return out


def metrics_with_prior(y: np.ndarray, proba: np.ndarray, prior: np.ndarray) -> dict[str, float]:
    """:func:`~include.evaluation.classification_metrics` with prior-corrected hard decisions.

    ``log_loss`` and ``brier`` (proper scoring rules) score the forecast ``proba`` itself;
    ``macro_f1``, ``balanced_accuracy``, the confusion matrix, precision and recall score the
    prior-corrected decisions (argmax of ``proba / prior``).

    Args:
        y: labels in {0, 1, 2}, shape ``(n,)``.
        proba: class probabilities, shape ``(n, 3)``.
        prior: one row ``(3,)`` or one row per sample ``(n, 3)``.
    """
    prior = np.broadcast_to(np.asarray(prior, dtype="float64"), proba.shape)
    # Dividing by the prior row-wise and renormalising leaves the argmax at the corrected class.
    scaled = proba / np.where(prior > 0, prior, 1.0)
    decision = scaled / scaled.sum(axis=1, keepdims=True)
    metrics = classification_metrics(y, decision)
    # Proper scores are of the forecast itself, not of the decision rule's rescaled probabilities.
    metrics["log_loss"] = multiclass_log_loss(y, proba)
    metrics["brier"] = brier_score(y, proba)
    return metrics


def fit_family(family: str, X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, splits: WalkForward, *,
               random_state: int, n_jobs: int, early_stopping_rounds: int = 0,
               cache: FitCache | None = None, params: dict[str, Any] | None = None) -> tuple[Any, int | None]:
    """Fit one family on the rows ``train_idx``, early-stopping the boosted families.

    For a family whose module has ``best_n_estimators`` (LightGBM, XGBoost) and
    ``early_stopping_rounds > 0``, the number of boosting rounds is chosen on the inner split of
    ``train_idx`` (:meth:`WalkForward.inner_split`: its last rows, after a purge + embargo gap),
    then the model is refitted on all of ``train_idx`` with that many rounds. A family whose
    module has ``best_params`` (the logistic family's L1 penalty) chooses those hyperparameters
    on the same inner split before its refit. Every fit uses
    ``n_jobs`` threads. With a ``cache``, a fit of the same family and settings on the same rows
    is loaded instead of repeated (:mod:`include.training.fit_cache`), set to ``n_jobs`` threads.
    ``params`` override the family's default hyperparameters (a tuned set); they are part of the
    cache key.

    Returns:
        ``(fitted estimator, chosen n_estimators or None)``.

    Raises:
        ConfigError: unknown family.
        TrainingError: the training set holds a single class or is too short to split.
    """
    return _cached_fit(family, X, y, train_idx, splits, random_state=random_state, n_jobs=n_jobs,
                       early_stopping_rounds=early_stopping_rounds, cache=cache, params=params)[:2]


def _cached_fit(family: str, X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, splits: WalkForward, *,
                random_state: int, n_jobs: int, early_stopping_rounds: int,
                cache: FitCache | None, key: str | None = None,
                params: dict[str, Any] | None = None) -> tuple[Any, int | None, str | None, bool]:
    """:func:`fit_family` through ``cache``: ``(estimator, n_estimators, cache key, hit)``; ``key``
    is the fit's :func:`_fit_key` when the caller has it already."""
    if cache is None:
        return (*_fit(family, X, y, train_idx, splits, random_state=random_state, n_jobs=n_jobs,
                      early_stopping_rounds=early_stopping_rounds, params=params), None, False)
    key = key or _fit_key(family, X, y, train_idx, splits, random_state=random_state,
                          early_stopping_rounds=early_stopping_rounds, params=params)
    stored = cache.get(key)
    if stored is not None:
        est = stored["model"]
        if "n_jobs" in est.get_params():
            est.set_params(n_jobs=n_jobs)
        return est, stored["n_estimators"], key, True
    est, n_best = _fit(family, X, y, train_idx, splits, random_state=random_state, n_jobs=n_jobs,
                       early_stopping_rounds=early_stopping_rounds, params=params)
    cache.put(key, {"model": est, "n_estimators": n_best})
    return est, n_best, key, False


def _fit_key(family: str, X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, splits: WalkForward, *,
             random_state: int, early_stopping_rounds: int, params: dict[str, Any] | None = None) -> str:
    """Cache key of :func:`fit_family`'s fit of ``family`` with ``params`` on ``train_idx``."""
    return fit_key(family, {**family_params(family), **(params or {})}, random_state=random_state,
                   early_stopping_rounds=early_stopping_rounds, gap=splits.gap,
                   inner_validation_share=splits.inner_validation_share,
                   train_digest=rows_digest(X.iloc[train_idx], y[train_idx]))


def _fit(family: str, X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, splits: WalkForward, *,
         random_state: int, n_jobs: int, early_stopping_rounds: int,
         params: dict[str, Any] | None = None) -> tuple[Any, int | None]:
    if len(np.unique(y[train_idx])) < 2:
        raise TrainingError(f"{family}: training set holds a single class")
    module = family_module(family)
    n_best = None
    if early_stopping_rounds > 0 and hasattr(module, "best_n_estimators"):
        fit_idx, val_idx = splits.inner_split(train_idx)
        n_best = module.best_n_estimators(X.iloc[fit_idx], y[fit_idx], X.iloc[val_idx], y[val_idx],
                                          random_state=random_state, rounds=early_stopping_rounds, n_jobs=n_jobs,
                                          **(params or {}))
    chosen = _inner_choice(module, family, X, y, train_idx, splits, random_state=random_state, n_jobs=n_jobs,
                           params=params)
    est = build_estimator(family, random_state, n_jobs, **{**(params or {}), **chosen,
                                                           **({"n_estimators": n_best} if n_best else {})})
    est = est.fit(X.iloc[train_idx], y[train_idx])
    if chosen:
        est.chosen_params_ = chosen  # what the inner split chose, for the version's lineage
    return est, n_best


def _inner_choice(module: Any, family: str, X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray,
                  splits: WalkForward, *, random_state: int, n_jobs: int,
                  params: dict[str, Any] | None) -> dict[str, Any]:
    """The hyperparameters a family's ``best_params`` chooses on the inner split of ``train_idx``;
    ``{}`` (its defaults) for a family without the hook, or where the training rows are too few to
    split or the validation rows hold a class the fitted rows do not."""
    if not hasattr(module, "best_params"):
        return {}
    try:
        fit_idx, val_idx = splits.inner_split(train_idx)
    except TrainingError:
        logger.info("%s: %d training rows are too few for an inner split; default hyperparameters", family,
                    len(train_idx))
        return {}
    if not set(np.unique(y[val_idx])) <= set(np.unique(y[fit_idx])):
        return {}
    chosen = module.best_params(X.iloc[fit_idx], y[fit_idx], X.iloc[val_idx], y[val_idx],
                                random_state=random_state, n_jobs=n_jobs, **(params or {}))
    logger.info("%s: %s chosen on the inner split of %d training rows", family, chosen or "nothing",
                len(train_idx))
    return chosen


def _stored_evaluation(family: str, X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                       splits: WalkForward, *, random_state: int, early_stopping_rounds: int, cache: FitCache,
                       params: dict[str, Any] | None) -> tuple[str, str, dict[str, Any] | None]:
    """The fold's fit key, its evaluation key and the evaluation ``cache`` holds under it (``None``:
    none, or one that cannot be reused)."""
    key = _fit_key(family, X, y, train_idx, splits, random_state=random_state,
                   early_stopping_rounds=early_stopping_rounds, params=params)
    eval_key = evaluation_key(key, rows_digest(X.iloc[test_idx], y[test_idx]), random_state,
                              IMPORTANCE_REPEATS)
    evaluation = cache.get(eval_key)
    if evaluation is not None and "n_estimators" not in evaluation:
        evaluation = None  # written without its fit's n_estimators: evaluated again by the caller
    return key, eval_key, evaluation


def _evaluate_fold(family: str, X: pd.DataFrame, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                   splits: WalkForward, *, random_state: int, n_jobs: int, early_stopping_rounds: int,
                   build: Callable[..., Any] | None, cache: FitCache | None, params: dict[str, Any] | None,
                   importance: bool) -> tuple[dict[str, Any], int | None, str | None]:
    """``(evaluation, n_estimators, what was reused or None)`` of one fold: the evaluation
    (``{"proba", "importance", "n_estimators"}`` on the test rows) stored by an earlier run, or
    computed from a fit (itself possibly cached) and stored in ``cache``."""
    key, eval_key, fit_hit, evaluation = None, None, False, None
    if build is None and cache is not None:
        # A stored evaluation holds all the fold needs from its fit: the fitted model is not loaded.
        key, eval_key, evaluation = _stored_evaluation(family, X, y, train_idx, test_idx, splits,
                                                       random_state=random_state,
                                                       early_stopping_rounds=early_stopping_rounds, cache=cache,
                                                       params=params)
    if evaluation is not None:
        return evaluation, evaluation["n_estimators"], "fit and evaluation"
    if build is not None:
        est, n_best = build(random_state).fit(X.iloc[train_idx], y[train_idx]), None
    else:
        est, n_best, key, fit_hit = _cached_fit(family, X, y, train_idx, splits, random_state=random_state,
                                                n_jobs=n_jobs, early_stopping_rounds=early_stopping_rounds,
                                                cache=cache, key=key, params=params)
    evaluation = {"proba": predict_proba_all(est, X.iloc[test_idx]),
                  "importance": fold_importance(est, X.iloc[test_idx], y[test_idx], random_state,
                                                IMPORTANCE_REPEATS) if importance or key else None,
                  "n_estimators": n_best}
    if key is not None and cache is not None and eval_key is not None:
        cache.put(eval_key, evaluation)
    return evaluation, n_best, "fit" if fit_hit else None


def _fold_record(fold: int, X: pd.DataFrame, train_idx: np.ndarray, test_idx: np.ndarray, n_best: int | None,
                 reused: str | None, started: float, metrics: dict[str, float]) -> dict[str, Any]:
    """One fold's entry of :attr:`CrossValidation.folds`: its bounds, row counts, what it reused,
    its seconds since ``started`` and its metrics."""
    return {
        "fold": fold,
        "train_start": X.index[train_idx[0]].isoformat(), "train_end": X.index[train_idx[-1]].isoformat(),
        "test_start": X.index[test_idx[0]].isoformat(), "test_end": X.index[test_idx[-1]].isoformat(),
        "train_rows": int(len(train_idx)), "test_rows": int(len(test_idx)), "n_estimators": n_best,
        "reused": reused, "seconds": round(time.perf_counter() - started, 3), **metrics,
    }


def _collect_folds(y: np.ndarray, probas: list[np.ndarray], positions: list[np.ndarray],
                   fold_ids: list[np.ndarray], priors: list[np.ndarray], folds: list[dict[str, Any]],
                   importances: list[dict[str, dict[str, float]]]) -> CrossValidation:
    """The :class:`CrossValidation` of the folds' out-of-fold rows, with its summary over folds,
    importance stability and overall metrics."""
    cv = CrossValidation(oof_proba=np.vstack(probas), oof_positions=np.concatenate(positions),
                         oof_fold=np.concatenate(fold_ids), oof_prior=np.vstack(priors), folds=folds)
    cv.summary = summarise_folds(folds)
    cv.importance = {"per_fold": importances, **importance_stability(importances)} if importances else {}
    cv.overall = metrics_with_prior(y[cv.oof_positions], cv.oof_proba, cv.oof_prior)
    return cv


def cross_validate(family: str, X: pd.DataFrame, y: np.ndarray, *, splits: WalkForward, random_state: int,
                   n_jobs: int, early_stopping_rounds: int = 0,
                   build: Callable[..., Any] | None = None, cache: FitCache | None = None,
                   params: dict[str, Any] | None = None, importance: bool = True,
                   on_fold: Callable[[int, dict[str, Any]], None] | None = None) -> CrossValidation:
    """Purged walk-forward cross-validation of one family.

    Args:
        family: model family name (see :data:`FAMILIES`).
        X: features, shape ``(n_rows, n_features)``, indexed by bar open time, sorted.
        y: labels in {0, 1, 2}, shape ``(n_rows,)``.
        splits: the split service (folds, purge, embargo, scheme).
        random_state: seed.
        n_jobs: threads each fit may use (the task's thread budget).
        early_stopping_rounds: see :func:`fit_family` (0: none).
        build: estimator factory ``build(random_state) -> estimator`` replacing the family's
            (no early stopping then, and no cache).
        cache: reuse fits and fold evaluations already computed on the same rows
            (:mod:`include.training.fit_cache`); each fold records what it reused.
        params: hyperparameters overriding the family's defaults (a tuned set).
        importance: compute each fold's feature importance (``False`` for tuning trials; not
            with ``cache``, whose stored evaluations hold it).
        on_fold: called with ``(fold, fold metrics)`` after each fold; an exception it raises
            (a pruned tuning trial) stops the cross-validation.

    Returns:
        The out-of-fold predictions and per-fold metrics.

    Raises:
        TrainingError: too few rows, or a fold's training set has a single class.
    """
    probas, positions, fold_ids, priors, folds, importances = [], [], [], [], [], []
    for fold, train_idx, test_idx in splits.split(len(X)):
        if len(np.unique(y[train_idx])) < 2:
            raise TrainingError(f"{family}: fold {fold} training set holds a single class")
        started = time.perf_counter()
        evaluation, n_best, reused = _evaluate_fold(family, X, y, train_idx, test_idx, splits,
                                                    random_state=random_state, n_jobs=n_jobs,
                                                    early_stopping_rounds=early_stopping_rounds, build=build,
                                                    cache=cache, params=params, importance=importance)
        proba = evaluation["proba"]
        prior = class_prior(y[train_idx])
        metrics = metrics_with_prior(y[test_idx], proba, prior)
        folds.append(_fold_record(fold, X, train_idx, test_idx, n_best, reused, started, metrics))
        if evaluation["importance"] is not None:
            importances.append(evaluation["importance"])
        probas.append(proba)
        positions.append(test_idx)
        fold_ids.append(np.full(len(test_idx), fold))
        priors.append(np.tile(prior, (len(test_idx), 1)))
        logger.info("%s fold %d: train %d rows, test %d rows, macro F1 %.4f, log loss %.4f%s",
                    family, fold, len(train_idx), len(test_idx), metrics["macro_f1"], metrics["log_loss"],
                    f" (reused {reused} of an earlier run)" if reused else "")
        if on_fold is not None:
            on_fold(fold, metrics)
    return _collect_folds(y, probas, positions, fold_ids, priors, folds, importances)
