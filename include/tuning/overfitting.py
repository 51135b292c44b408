"""Probability of backtest overfitting of a hyperparameter search.

Combinatorially symmetric cross-validation (CSCV) of Bailey, Borwein, López de Prado & Zhu
(2017), "The probability of backtest overfitting", Journal of Computational Finance 20(4),
section 2: split the ``S`` time partitions (here: the walk-forward test folds) into every pair of
halves; in each, pick the configuration with the best in-sample score, and find the relative
rank ``w`` of its out-of-sample score among all configurations; the logit
``lambda = ln(w / (1 - w))`` is at most 0 when the in-sample winner is at or below the
out-of-sample median. PBO is the share of splits with ``lambda <= 0``. With more than
``max_splits`` of the ``C(S, S/2)`` splits, PBO is estimated on a uniform random sample of them.

What it measures is the selection among the configurations scored on every partition. A
search that prunes (Optuna's pruners stop a trial after a few folds when it trails) leaves out
the trials it judged bad on early folds: the survivors were already selected once, on those
folds, and that selection is not in the matrix, so the PBO of the completed trials understates
the overfitting of the whole search.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np


def cscv_splits(n_partitions: int, max_splits: int, random_state: int = 0) -> np.ndarray:
    """The in-sample halves of CSCV: every one of the ``C(S, S/2)`` splits of ``S`` partitions,
    or, when there are more than ``max_splits``, ``max_splits`` distinct ones drawn uniformly at
    random (each partition is then in-sample in about half of them, as over all splits).

    Args:
        n_partitions: ``S``, even.
        max_splits: most splits returned.
        random_state: seed of the draw.

    Returns:
        ``(n_splits, S / 2)`` sorted partition indices of each split's in-sample half; every
        split in lexicographic order when all are used, otherwise in the order drawn.

    Raises:
        ValueError: ``n_partitions`` is odd or below 2, or ``max_splits`` is below 1.
    """
    if n_partitions < 2 or n_partitions % 2:
        raise ValueError(f"CSCV needs an even number of partitions, at least 2, got {n_partitions}")
    if max_splits < 1:
        raise ValueError(f"max_splits must be at least 1, got {max_splits}")
    half = n_partitions // 2
    if math.comb(n_partitions, half) <= max_splits:
        return np.asarray(list(combinations(range(n_partitions), half)), dtype=int).reshape(-1, half)
    # Distinct uniform draws: a uniform sample without replacement. At most a share max_splits /
    # C(S, S/2) of draws repeat one already taken, so the loop ends quickly.
    rng = np.random.default_rng(random_state)
    seen: set[tuple[int, ...]] = set()
    drawn: list[tuple[int, ...]] = []
    while len(drawn) < max_splits:
        for row in np.sort(rng.random((max_splits, n_partitions)).argsort(axis=1)[:, :half], axis=1):
            key = tuple(int(p) for p in row)
            if key not in seen:
                seen.add(key)
                drawn.append(key)
                if len(drawn) == max_splits:
                    break
    return np.asarray(drawn, dtype=int)


def probability_of_backtest_overfitting(scores: np.ndarray, *, higher_is_better: bool = False,
                                        max_splits: int = 5000, random_state: int = 0) -> dict[str, Any]:
    """PBO by CSCV over a configurations x partitions score matrix.

    The score of a configuration on a half is its mean over the half's partitions. Out-of-sample
    ranks are average ranks among the configurations (ties share a rank), ``w = rank / (N + 1)``.
    The configurations are those scored on every partition: a search's pruned trials are not
    among them, and the PBO of the survivors understates the search's overfitting (see the
    module docstring).

    Args:
        scores: shape ``(n_configurations, n_partitions)``, e.g. each trial's log loss (nats) per
            walk-forward fold. With an odd number of partitions the earliest is left out (CSCV
            needs an even ``S``).
        higher_is_better: ``False`` for losses such as log loss.
        max_splits: at most this many of the ``C(S, S/2)`` splits; with more (from ``S = 16``
            at the default), a uniform random sample of them (:func:`cscv_splits`), whose PBO
            estimates the PBO over all splits with a standard error of at most
            ``0.5 / sqrt(max_splits)`` (0.007).
        random_state: seed of that sample.

    Returns:
        ``{"pbo", "n_splits", "n_possible_splits", "sampled", "n_configurations",
        "n_partitions", "logits"}``; ``pbo`` is ``None`` with fewer than two configurations or
        two partitions; ``sampled`` is true when ``n_splits < n_possible_splits``.

    Raises:
        ValueError: ``scores`` is not two-dimensional or holds a non-finite value.
    """
    from scipy.stats import rankdata

    m = np.asarray(scores, dtype="float64")
    if m.ndim != 2:
        raise ValueError(f"scores must be (configurations, partitions), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("scores hold a non-finite value")
    if not higher_is_better:
        m = -m
    n_conf, n_part = m.shape
    if n_part % 2:
        m, n_part = m[:, 1:], n_part - 1
    if n_conf < 2 or n_part < 2:
        return {"pbo": None, "n_splits": 0, "n_possible_splits": 0, "sampled": False, "n_configurations": n_conf,
                "n_partitions": n_part, "logits": []}
    splits = cscv_splits(n_part, max_splits, random_state)
    in_half = np.zeros((len(splits), n_part), dtype=bool)
    np.put_along_axis(in_half, splits, True, axis=1)
    half = n_part // 2
    in_sample = (m @ in_half.T) / half  # (configurations, splits)
    out_sample = (m @ (~in_half).T) / half
    best = in_sample.argmax(axis=0)
    ranks = rankdata(out_sample, axis=0)[best, np.arange(len(splits))]
    w = ranks / (n_conf + 1)
    logits = np.log(w / (1 - w))
    possible = math.comb(n_part, half)
    return {"pbo": float(np.mean(logits <= 0)), "n_splits": int(len(splits)), "n_possible_splits": possible,
            "sampled": len(splits) < possible, "n_configurations": n_conf, "n_partitions": n_part,
            "logits": [float(v) for v in logits]}
