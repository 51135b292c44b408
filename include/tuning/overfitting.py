"""Probability of backtest overfitting of a hyperparameter search.

Combinatorially symmetric cross-validation (CSCV) of Bailey, Borwein, López de Prado & Zhu
(2017), "The probability of backtest overfitting", Journal of Computational Finance 20(4),
section 2: split the ``S`` time partitions (here: the walk-forward test folds) into every pair of
halves; in each, pick the configuration with the best in-sample score, and find the relative
rank ``w`` of its out-of-sample score among all configurations; the logit
``lambda = ln(w / (1 - w))`` is at most 0 when the in-sample winner is at or below the
out-of-sample median. PBO is the share of splits with ``lambda <= 0``.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np


def probability_of_backtest_overfitting(scores: np.ndarray, *, higher_is_better: bool = False,
                                        max_splits: int = 5000) -> dict[str, Any]:
    """PBO by CSCV over a configurations x partitions score matrix.

    The score of a configuration on a half is its mean over the half's partitions. Out-of-sample
    ranks are average ranks among the configurations (ties share a rank), ``w = rank / (N + 1)``.

    Args:
        scores: shape ``(n_configurations, n_partitions)``, e.g. each trial's log loss (nats) per
            walk-forward fold. With an odd number of partitions the earliest is left out (CSCV
            needs an even ``S``).
        higher_is_better: ``False`` for losses such as log loss.
        max_splits: at most this many of the ``C(S, S/2)`` splits, taken in order.

    Returns:
        ``{"pbo", "n_splits", "n_configurations", "n_partitions", "logits"}``; ``pbo`` is ``None``
        with fewer than two configurations or two partitions.

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
        return {"pbo": None, "n_splits": 0, "n_configurations": n_conf, "n_partitions": n_part, "logits": []}
    logits = []
    parts = range(n_part)
    for k, train in enumerate(combinations(parts, n_part // 2)):
        if k >= max_splits:
            break
        test = [p for p in parts if p not in train]
        in_sample, out_sample = m[:, list(train)].mean(axis=1), m[:, test].mean(axis=1)
        best = int(np.argmax(in_sample))
        w = rankdata(out_sample)[best] / (n_conf + 1)
        logits.append(float(np.log(w / (1 - w))))
    return {"pbo": float(np.mean(np.asarray(logits) <= 0)), "n_splits": len(logits),
            "n_configurations": n_conf, "n_partitions": n_part, "logits": logits}
