"""Out-of-sample evaluation: the split service, classification metrics, baselines.

Every split in the project comes from :class:`WalkForward`: cross-validation folds, the inner
split that early stopping uses, and (through the folds) the out-of-fold predictions on which
ensemble weights are fitted. Splits are scikit-learn's
:class:`~sklearn.model_selection.TimeSeriesSplit` (expanding, or rolling through
``max_train_size``) with ``gap = purge + embargo``:

* **purge** (López de Prado 2018, *Advances in Financial Machine Learning*, ch. 7.4.1): the
  label of the row at t reads bars up to t + h, so the h rows before a test window are dropped
  from training; their label windows overlap it.
* **embargo** (ch. 7.4.2): a further e rows kept out of training next to the test window,
  against leakage through serially dependent features. López de Prado places it after the test
  window because k-fold CV trains on both sides; walk-forward never trains on rows after its test
  window, so here the embargo widens the gap before it. Either way no training row lies within
  purge + embargo rows of a test row.

Each test fold is one data interval (one week of bars), and the last fold *is* the run's data
interval: the window on which the quality gate compares challenger and champion. With
``test_starts`` (what the pipeline uses) the folds are the calendar intervals before it, so the
fold that tests a given week trains on the same rows in every weekly run that covers it, and
:meth:`WalkForward.final_rows` are the rows the next interval's last fold trains on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from sklearn.model_selection import TimeSeriesSplit

from include.config import RunConfig
from include.errors import TrainingError
from include.labels import CLASS_NAMES, CLASSES
from include.windows import SCHEDULE_INTERVAL, RunWindow

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = ("macro_f1", "balanced_accuracy", "log_loss", "brier")


@dataclass(frozen=True)
class WalkForward:
    """The split service: purged, embargoed walk-forward folds.

    Attributes:
        n_splits: folds.
        test_size: rows per test fold (the labelled rows of one data interval).
        purge: rows dropped before each test window; at least the label horizon in bars.
        embargo: further rows dropped next to each test window.
        scheme: ``expanding`` (all earlier rows) or ``rolling`` (the last ``max_train_size``).
        max_train_size: training rows per fold for ``rolling``.
        inner_validation_share: share of a training set used as early-stopping validation.
        test_starts: first row of each fold's test window, ascending, one per fold; a fold's
            test window runs to the next fold's start (the last to the end). ``None``: folds of
            ``test_size`` rows counted back from the end (scikit-learn's ``TimeSeriesSplit``).

    Raises:
        TrainingError: from :meth:`split`, when the window is too short for the folds.
    """

    n_splits: int
    test_size: int
    purge: int
    embargo: int = 0
    scheme: Literal["expanding", "rolling"] = "expanding"
    max_train_size: int | None = None
    inner_validation_share: float = 0.2
    test_starts: tuple[int, ...] | None = None

    @classmethod
    def for_run(cls, cfg: RunConfig, test_size: int, test_starts: tuple[int, ...] | None = None) -> WalkForward:
        """The folds of a run configuration: ``cv_folds`` folds purged by the label horizon and
        embargoed by ``cv_embargo_bars``, each fold trained on the ``rolling_train_days`` before
        it under the rolling scheme.

        Args:
            cfg: the run's configuration.
            test_size: labelled rows of the run's own data interval (the last fold).
            test_starts: first row of each fold's test window; ``None``: folds of ``test_size``
                rows counted back from the end.
        """
        rolling_rows = cfg.rolling_train_days * 86_400 // cfg.bar_seconds
        return cls(n_splits=cfg.cv_folds, test_size=test_size, purge=cfg.label_horizon_bars,
                   embargo=cfg.cv_embargo_bars, scheme=cfg.cv_scheme,
                   max_train_size=rolling_rows if cfg.cv_scheme == "rolling" else None, test_starts=test_starts)

    @property
    def gap(self) -> int:
        """Rows between the last training row and the first test row."""
        return self.purge + self.embargo

    def splitter(self, n_rows: int) -> TimeSeriesSplit:
        """The configured ``TimeSeriesSplit`` for ``n_rows`` rows (checked for length)."""
        if self.test_size < 1:
            raise TrainingError("the data interval holds no labelled rows to test on")
        if self.scheme not in ("expanding", "rolling"):
            raise TrainingError(f"unknown walk-forward scheme {self.scheme!r} (expanding, rolling)")
        min_train = max(10 * self.test_size, 500)
        if self.scheme == "rolling" and (self.max_train_size or 0) < min_train:
            raise TrainingError(f"rolling walk-forward needs max_train_size >= {min_train} rows, "
                                f"got {self.max_train_size}")
        needed = self.n_splits * self.test_size + self.gap + min_train
        if n_rows < needed:
            raise TrainingError(
                f"{n_rows} labelled rows are too few for {self.n_splits} walk-forward folds of "
                f"{self.test_size} rows with purge {self.purge} + embargo {self.embargo} "
                f"(need >= {needed}); lengthen train_window_days or lower cv_folds")
        return TimeSeriesSplit(n_splits=self.n_splits, test_size=self.test_size, gap=self.gap,
                               max_train_size=self.max_train_size if self.scheme == "rolling" else None)

    def split(self, n_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(fold, train_idx, test_idx)`` over rows sorted by time; the last test fold
        ends at the last row.

        Raises:
            TrainingError: too few rows for the folds, or ``test_starts`` that are not
                ascending, do not match ``n_splits`` or leave a fold without training rows.
        """
        if self.test_starts is None:
            for fold, (train_idx, test_idx) in enumerate(self.splitter(n_rows).split(np.zeros((n_rows, 1)))):
                yield fold, train_idx, test_idx
            return
        self.splitter(n_rows)  # the same length checks
        starts = list(self.test_starts)
        if len(starts) != self.n_splits or starts != sorted(set(starts)) or starts[-1] >= n_rows:
            raise TrainingError(f"test_starts {starts} are not {self.n_splits} ascending row positions "
                                f"below {n_rows}")
        for fold, (lo, hi) in enumerate(zip(starts, [*starts[1:], n_rows], strict=True)):
            end = lo - self.gap
            if end <= 0:
                raise TrainingError(f"fold {fold} has no training rows before its test window at row {lo}")
            begin = max(0, end - self.max_train_size) if self.scheme == "rolling" else 0
            yield fold, np.arange(begin, end), np.arange(lo, hi)

    def final_rows(self, n_rows: int) -> np.ndarray:
        """Rows the model to deploy is fitted on, of ``n_rows`` labelled rows.

        They are the rows the next data interval's last fold trains on: every labelled row but
        the last ``embargo`` (the labels of the last ``purge`` bars are not known yet, so those
        bars are not among the rows), the last ``max_train_size`` of them for ``rolling``.
        The deployed model is therefore the model the next run's out-of-fold record scores on
        the interval it serves.

        Raises:
            TrainingError: fewer rows than the embargo.
        """
        end = n_rows - self.embargo
        if end <= 0:
            raise TrainingError(f"{n_rows} labelled rows leave none after the {self.embargo}-row embargo")
        begin = max(0, end - self.max_train_size) if self.scheme == "rolling" else 0
        return np.arange(begin, end)

    def inner_split(self, train_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split one training set for early stopping: ``(fit_idx, validation_idx)``.

        The validation part is the last ``inner_validation_share`` of the training rows; the
        same purge + embargo gap separates it from the rows fitted. Nothing outside
        ``train_idx`` (in particular no test row) is used.

        Raises:
            TrainingError: the training set is too short to split.
        """
        train_idx = np.asarray(train_idx)
        n_val = int(len(train_idx) * self.inner_validation_share)
        n_fit = len(train_idx) - n_val - self.gap
        if n_val < 50 or n_fit < 200:
            raise TrainingError(f"{len(train_idx)} training rows are too few for an early-stopping split")
        return train_idx[:n_fit], train_idx[-n_val:]


def iter_splits(n_rows: int, *, test_size: int, n_splits: int,
                purge: int, embargo: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(fold, train_idx, test_idx)`` of an expanding :class:`WalkForward`."""
    yield from WalkForward(n_splits=n_splits, test_size=test_size, purge=purge, embargo=embargo).split(n_rows)


def log_loss_rows(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per-row log loss ``-log p[y]`` in nats, shape ``(n,)``: the project's one definition.

    Probabilities are clipped to ``[eps, 1 - eps]`` with ``eps`` the float64 machine epsilon,
    as scikit-learn's :func:`~sklearn.metrics.log_loss` clips them, so the mean over any rows is
    scikit-learn's log loss of those rows, and the mean per-row difference of two forecasts is
    exactly the difference of their log losses.

    Args:
        y_true: labels in {0, 1, 2}, shape ``(n,)``.
        proba: class probabilities, shape ``(n, 3)``, columns in class order.
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype="float64")
    eps = np.finfo("float64").eps
    return -np.log(np.clip(proba[np.arange(len(y_true)), y_true], eps, 1 - eps))


def multiclass_log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean log loss in nats of class probabilities: the mean of :func:`log_loss_rows`, equal to
    scikit-learn's ``log_loss`` with ``labels=[0, 1, 2]``.

    Args:
        y_true: labels in {0, 1, 2}, shape ``(n,)``.
        proba: class probabilities, shape ``(n, 3)``, columns in class order.
    """
    return float(log_loss_rows(y_true, proba).mean())


def brier_score(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score of class probabilities (Brier 1950): the mean over rows of the
    squared distance between the probability vector and the one-hot label, in ``[0, 2]``
    (scikit-learn's :func:`~sklearn.metrics.brier_score_loss` with ``labels=[0, 1, 2]``).

    Args:
        y_true: labels in {0, 1, 2}, shape ``(n,)``.
        proba: class probabilities, shape ``(n, 3)``, columns in class order.
    """
    return float(brier_score_loss(np.asarray(y_true).astype(int), np.asarray(proba, dtype="float64"),
                                  labels=list(CLASSES)))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Classification metrics of class probabilities (scikit-learn's implementations).

    Args:
        y_true: labels in {0, 1, 2}, shape ``(n,)``.
        proba: class probabilities, shape ``(n, 3)``, columns in class order.

    Returns:
        ``macro_f1``, ``balanced_accuracy``, ``log_loss`` (nats), ``brier`` (multi-class Brier
        score: mean squared distance to the one-hot label, Brier 1950), ``n``,
        ``confusion`` (3 x 3, rows = true class), ``precision`` and ``recall`` per class. The
        hard prediction is the most probable class.
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype="float64")
    pred = np.asarray(CLASSES)[proba.argmax(axis=1)]
    labels = list(CLASSES)
    precision, recall, _, _ = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    return {
        "macro_f1": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "log_loss": multiclass_log_loss(y_true, proba),
        "brier": brier_score(y_true, proba),
        "n": int(len(y_true)),
        "confusion": confusion_matrix(y_true, pred, labels=labels).tolist(),
        "precision": dict(zip(CLASS_NAMES, map(float, precision), strict=True)),
        "recall": dict(zip(CLASS_NAMES, map(float, recall), strict=True)),
    }


def reliability(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> dict[str, dict[str, list[float]]]:
    """Reliability (calibration) curve per class, one-vs-rest, quantile bins.

    scikit-learn's :func:`~sklearn.calibration.calibration_curve`: for each class, the mean
    forecast probability and the observed frequency in each bin. A calibrated forecast lies on
    the diagonal.

    Returns:
        class name -> ``{"mean_predicted": [...], "observed": [...]}``.
    """
    from sklearn.calibration import calibration_curve

    y_true = np.asarray(y_true).astype(int)
    out = {}
    for cls, name in zip(CLASSES, CLASS_NAMES, strict=True):
        observed, predicted = calibration_curve(y_true == cls, proba[:, cls], n_bins=n_bins, strategy="quantile")
        out[name] = {"mean_predicted": predicted.round(6).tolist(), "observed": observed.round(6).tolist()}
    return out


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
                 random_state: int, momentum: np.ndarray | None = None,
                 draws: list[np.ndarray] | None = None) -> dict[str, dict[str, Any]]:
    """Naive baselines scored on the same walk-forward folds as the models.

    ``majority`` always predicts the training fold's most frequent class; ``prior`` forecasts
    the training fold's class frequencies (its hard prediction equals the majority's);
    ``stratified`` draws classes at random with those frequencies. All are scikit-learn
    :class:`~sklearn.dummy.DummyClassifier` strategies.

    Args:
        y: labels, shape ``(n,)``.
        folds: ``(train_idx, test_idx)`` pairs.
        random_state: seed of the stratified baseline.
        draws: when given, the stratified baseline's class draws per fold are appended to it
            (the gate's F1 test scores them row by row).

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
                if draws is not None:
                    draws.append(pred)
            probas.append(proba)
            truths.append(y[test_idx])
        name = {"most_frequent": "majority"}.get(strategy, strategy)
        out[name] = classification_metrics(np.concatenate(truths), np.vstack(probas))
    if momentum is not None:
        out["momentum"] = classification_metrics(*momentum_oof(y, folds, momentum))
    return out


def momentum_oof(y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                 momentum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold labels and probabilities of the momentum rule on the same folds.

    The rule's hard forecast gets half the probability mass; the other half is the training
    fold's class prior, so its log loss stays finite and its argmax is the rule's class.

    Args:
        y: labels, shape ``(n,)``.
        folds: ``(train_idx, test_idx)`` pairs.
        momentum: the rule's class per row (:func:`include.labels.momentum_forecast`), ``(n,)``.
    """
    probas, truths = [], []
    for train_idx, test_idx in folds:
        prior = np.bincount(y[train_idx].astype(int), minlength=len(CLASSES)) / len(train_idx)
        proba = np.tile(prior * 0.5, (len(test_idx), 1))
        proba[np.arange(len(test_idx)), np.asarray(momentum)[test_idx].astype(int)] += 0.5
        probas.append(proba)
        truths.append(y[test_idx])
    return np.concatenate(truths), np.vstack(probas)


def paired_log_loss_test(y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, *, block: int,
                         n_resamples: int = 2000, random_state: int = 0) -> dict[str, Any]:
    """One-sided paired test that forecast ``a`` has a lower mean log loss than ``b`` on the same rows.

    The per-row differences ``d_t = -log a_t[y_t] + log b_t[y_t]`` (nats) are serially dependent:
    overlapping label windows and persistent volatility. Their mean is resampled with the
    circular block bootstrap (Politis & Romano 1992, "A circular block-resampling procedure for
    stationary data"; ``arch.bootstrap.CircularBlockBootstrap``) in blocks of ``block`` rows.
    The p-value of H0 "mean d >= 0" against H1 "mean d < 0" is the share of centred bootstrap
    means ``mean(d*) - mean(d)`` at or below ``mean(d)``.

    Args:
        y_true: ``(n,)`` class indices.
        proba_a: ``(n, k)`` probabilities of the forecast tested for being better (challenger).
        proba_b: ``(n, k)`` probabilities of the reference forecast (champion).
        block: block length in rows; at least the label horizon, so that rows whose labels
            overlap are resampled together.
        n_resamples: bootstrap resamples.
        random_state: seed of the resampling.

    Returns:
        ``{"mean_difference" (nats per row, negative favours a; exactly the difference of the
        two forecasts' :func:`multiclass_log_loss`), "p_value", "same_forecast", "n", "block",
        "n_resamples", "method"}``. When both forecasts give every row the same loss,
        ``same_forecast`` is true and ``p_value`` is ``None``.

    Raises:
        TrainingError: the arrays disagree in length, or fewer than ``2 * block`` rows.
    """
    from arch.bootstrap import CircularBlockBootstrap

    y_true = np.asarray(y_true, dtype=int)
    proba_a, proba_b = np.asarray(proba_a, dtype="float64"), np.asarray(proba_b, dtype="float64")
    n, block = len(y_true), max(1, int(block))
    if proba_a.shape != proba_b.shape or len(proba_a) != n:
        raise TrainingError(f"paired test: {n} labels, forecasts of shapes {proba_a.shape} and {proba_b.shape}")
    if n < 2 * block:
        raise TrainingError(f"paired test: {n} rows are too few for blocks of {block}")
    diff = log_loss_rows(y_true, proba_a) - log_loss_rows(y_true, proba_b)
    observed = float(diff.mean())
    if not np.any(diff):
        # The same forecast on every row (e.g. the challenger's last fold model is the champion,
        # fitted on the same rows): nothing to test.
        return {"mean_difference": 0.0, "p_value": None, "same_forecast": True, "n": int(n), "block": block,
                "n_resamples": 0, "method": "circular block bootstrap, one-sided"}
    boot = CircularBlockBootstrap(block, diff, seed=np.random.default_rng(random_state))
    means = boot.apply(lambda d: np.array([d.mean()]), n_resamples)[:, 0]
    p_value = float(np.mean(means - observed <= observed))
    return {"mean_difference": observed, "p_value": p_value, "same_forecast": False, "n": int(n), "block": block,
            "n_resamples": int(n_resamples), "method": "circular block bootstrap, one-sided"}


def interval_splits(cfg: RunConfig, index: pd.DatetimeIndex, window: RunWindow, test_size: int) -> WalkForward:
    """The run's split service with one test fold per data interval: the run's own and the
    ``cv_folds - 1`` weeks of the schedule before it, by calendar (see
    :class:`~include.evaluation.WalkForward`).

    Args:
        index: bar open times of the labelled rows, sorted.
        test_size: labelled rows in the run's own interval.

    Raises:
        TrainingError: an earlier interval holds no rows (its fold would be empty).
    """
    start = pd.Timestamp(window.interval_start)
    # Earlier folds are the schedule's weeks, whatever the run's own interval: a short (requested)
    # interval shares them, and their fits, with the scheduled runs.
    length = pd.Timedelta(SCHEDULE_INTERVAL)
    starts = [int(index.searchsorted(start - k * length)) for k in range(cfg.cv_folds - 1, -1, -1)]
    empty = [str((start - k * length).date()) for k, (a, b) in
             zip(range(cfg.cv_folds - 1, 0, -1), zip(starts, starts[1:], strict=False), strict=True) if a == b]
    if empty:
        raise TrainingError(f"{cfg.model_name}: no labelled bars in the interval(s) starting {empty}, "
                            "so their walk-forward folds would be empty; lower cv_folds")
    return WalkForward.for_run(cfg, test_size, test_starts=tuple(starts))


def earlier_fold_rows(fold_of: np.ndarray, times: pd.DatetimeIndex, fold: int, gap: pd.Timedelta) -> np.ndarray:
    """Out-of-fold rows whose labels may fit what scores fold ``fold`` (ensemble weights, a
    stacker, a calibrator).

    The rows of earlier folds, purged at the fold boundary: a row within ``gap`` (purge +
    embargo bars) before the fold's first row is left out, since its label window reads bars of
    the fold it would weight (López de Prado 2018, ch. 7.4).

    Args:
        fold_of: fold number per out-of-fold row, shape ``(n,)``.
        times: bar open time per row, shape ``(n,)``, sorted.
        fold: the fold to be scored.
        gap: purge + embargo as a duration (bars x bar length).

    Returns:
        Boolean mask, shape ``(n,)``.
    """
    fold_of = np.asarray(fold_of)
    first = times[fold_of == fold].min()
    return (fold_of < fold) & np.asarray(times < first - gap)
