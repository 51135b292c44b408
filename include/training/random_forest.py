"""Random forest (Breiman 2001) from scikit-learn; handles NaN features natively (>= 1.4)."""

from __future__ import annotations

from typing import Any

DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 200,
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
