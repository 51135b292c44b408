"""Out-of-sample evaluation: purged walk-forward splits, classification metrics, baselines.

Splits are scikit-learn's :class:`~sklearn.model_selection.TimeSeriesSplit` with
``gap = label horizon``: every training row's label window ends before the first test row, which
is the purge of López de Prado (2018, *Advances in Financial Machine Learning*, ch. 7.4.1).
Walk-forward splits never train on rows after the test fold, so no embargo is needed. Each test
fold is as long as the run's own data interval (one week of bars), and the last fold *is* the
run's data interval: the window on which the quality gate compares challenger and champion.

Metrics are scikit-learn's: macro F1, balanced accuracy, multi-class log loss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss
from sklearn.model_selection import TimeSeriesSplit

from include.errors import TrainingError
from include.labels import CLASSES

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = ("macro_f1", "balanced_accuracy", "log_loss")


def walk_forward_splitter(n_rows: int, *, test_size: int, n_splits: int, purge: int) -> TimeSeriesSplit:
    """A purged walk-forward splitter whose last test fold is the last ``test_size`` rows.

    Args:
        n_rows: labelled rows in the training window, sorted by time.
        test_size: rows per test fold (the labelled rows of one data interval).
        n_splits: number of folds.
        purge: rows dropped between each training set and its test fold; at least the label
            horizon in bars.

    Returns:
        A fitted-config ``TimeSeriesSplit`` (expanding training window).

    Raises:
        TrainingError: the window is too short for the folds, or a fold would be empty.
    """
    if test_size < 1:
        raise TrainingError("the data interval holds no labelled rows to test on")
    min_train = max(10 * test_size, 500)
    needed = n_splits * test_size + purge + min_train
    if n_rows < needed:
        raise TrainingError(
            f"{n_rows} labelled rows are too few for {n_splits} walk-forward folds of {test_size} "
            f"rows with purge {purge} (need >= {needed}); lengthen train_window_days or lower cv_folds"
        )
    return TimeSeriesSplit(n_splits=n_splits, test_size=test_size, gap=purge)


def iter_splits(n_rows: int, *, test_size: int, n_splits: int,
                purge: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(fold, train_idx, test_idx)`` for :func:`walk_forward_splitter`."""
    splitter = walk_forward_splitter(n_rows, test_size=test_size, n_splits=n_splits, purge=purge)
    for fold, (train_idx, test_idx) in enumerate(splitter.split(np.zeros((n_rows, 1)))):
        yield fold, train_idx, test_idx


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Macro F1, balanced accuracy and log loss of class probabilities.

    Args:
        y_true: labels in {0, 1, 2}, shape ``(n,)``.
        proba: class probabilities, shape ``(n, 3)``, columns in class order.

    Returns:
        ``{"macro_f1", "balanced_accuracy", "log_loss", "n"}``; the hard prediction is the most
        probable class.
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype="float64")
    pred = np.asarray(CLASSES)[proba.argmax(axis=1)]
    return {
        "macro_f1": float(f1_score(y_true, pred, labels=list(CLASSES), average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=list(CLASSES))),
        "n": int(len(y_true)),
    }


def summarise_folds(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, std, min and max of each metric over folds."""
    frame = pd.DataFrame(per_fold)
    return {
        name: {
            "mean": float(frame[name].mean()), "std": float(frame[name].std(ddof=0)),
            "min": float(frame[name].min()), "max": float(frame[name].max()),
        }
        for name in METRIC_NAMES if name in frame
    }


def baseline_oof(y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                 random_state: int) -> dict[str, dict[str, float]]:
    """Naive baselines scored on the same walk-forward folds as the models.

    ``majority`` always predicts the training fold's most frequent class; ``prior`` forecasts
    the training fold's class frequencies (its hard prediction equals the majority's);
    ``stratified`` draws classes at random with those frequencies. All are scikit-learn
    :class:`~sklearn.dummy.DummyClassifier` strategies.

    Args:
        y: labels, shape ``(n,)``.
        folds: ``(train_idx, test_idx)`` pairs.
        random_state: seed of the stratified baseline.

    Returns:
        strategy -> metrics over the concatenated out-of-fold predictions.
    """
    out: dict[str, dict[str, float]] = {}
    for strategy in ("most_frequent", "prior", "stratified"):
        probas, truths = [], []
        for train_idx, test_idx in folds:
            dummy = DummyClassifier(strategy=strategy, random_state=random_state)
            dummy.fit(np.zeros((len(train_idx), 1)), y[train_idx])
            proba = np.zeros((len(test_idx), len(CLASSES)))
            p = dummy.predict_proba(np.zeros((len(test_idx), 1)))
            for j, cls in enumerate(dummy.classes_):
                proba[:, int(cls)] = p[:, j]
            if strategy == "stratified":
                # Hard random draws: make the argmax the drawn class, keep prior for log loss.
                pred = dummy.predict(np.zeros((len(test_idx), 1))).astype(int)
                prior = np.bincount(y[train_idx].astype(int), minlength=len(CLASSES)) / len(train_idx)
                proba = np.tile(prior * 0.5, (len(test_idx), 1))
                proba[np.arange(len(test_idx)), pred] += 0.5
            probas.append(proba)
            truths.append(y[test_idx])
        name = {"most_frequent": "majority"}.get(strategy, strategy)
        out[name] = classification_metrics(np.concatenate(truths), np.vstack(probas))
    return out
