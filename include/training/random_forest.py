"""Random forest (Breiman 2001) from scikit-learn; handles NaN features natively (>= 1.4)."""

from __future__ import annotations

from typing import Any

#: 100 trees: Probst & Boulesteix (2018, "To tune or not to tune the number of trees in random
#: forest", JMLR 18(181)) find that most of the gain in log loss and Brier score over a single
#: tree comes within the first 100 trees. The forest's fit is the longest step of a weekly run,
#: and its time is linear in the trees; bench/gate_record.py compares 100 with 200 trees.
DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": 8,
    "min_samples_leaf": 100,
    "max_features": "sqrt",
    "max_samples": 0.5,
}


def build(random_state: int, n_jobs: int, **overrides: Any):
    """An unfitted ``sklearn.ensemble.RandomForestClassifier`` with the defaults above."""
    from sklearn.ensemble import RandomForestClassifier

    params = {**DEFAULT_PARAMS, **overrides}
    return RandomForestClassifier(random_state=random_state, n_jobs=n_jobs, **params)
