"""Random forest (Breiman 2001) from scikit-learn; handles NaN features natively (>= 1.4)."""

from __future__ import annotations

from typing import Any

#: 100 trees: Probst & Boulesteix (2018, "To tune or not to tune the number of trees in
#: random forest", JMLR 18(181)): more trees do not make the expected log loss or Brier score
#: worse, and the largest gain usually comes with the first 100. The forest's fit is the longest
#: step of a weekly run, and its time is linear in the trees. Over 13 weeks of the bundled data
#: (bench/gate_record.py), 100 trees made the same gate decisions as 200, with out-of-fold log
#: loss, Brier score and macro F1 no worse.
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
