"""An example plug-in model family: a strongly regularised logistic regression on standardised features."""

from __future__ import annotations

from typing import Any

DEFAULT_PARAMS: dict[str, Any] = {"C": 0.01}
SEARCH_SPACE = {"C": {"type": "float", "low": 0.001, "high": 1.0, "log": True}}


def build(random_state: int, n_jobs: int, **overrides: Any):
    """An unfitted pipeline: median imputation, standardisation, logistic regression."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()),
                     ("model", LogisticRegression(random_state=random_state, max_iter=1000,
                                                  **{**DEFAULT_PARAMS, **overrides}))])
