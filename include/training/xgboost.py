"""XGBoost gradient-boosted trees (Chen & Guestrin 2016, https://xgboost.readthedocs.io)."""

from __future__ import annotations

from typing import Any

DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 300,
    "learning_rate": 0.03,
    "max_depth": 4,
    "min_child_weight": 20.0,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "tree_method": "hist",
}


def build(random_state: int, n_jobs: int, **overrides: Any):
    """An unfitted ``xgboost.XGBClassifier`` (scikit-learn API) with the defaults above."""
    from xgboost import XGBClassifier

    params = {**DEFAULT_PARAMS, **overrides}
    return XGBClassifier(random_state=random_state, n_jobs=n_jobs, objective="multi:softprob",
                         eval_metric="mlogloss", **params)


def best_n_estimators(X_fit, y_fit, X_val, y_val, *, random_state: int, rounds: int,
                      n_jobs: int, **overrides: Any) -> int:
    """Boosting rounds at the best validation ``mlogloss``, with XGBoost's early stopping.

    The cap is ``n_estimators``. The validation rows must come from the training window only.
    """
    probe = build(random_state, n_jobs, early_stopping_rounds=rounds, **overrides)
    probe.fit(X_fit, y_fit, eval_set=[(X_val, y_val)], verbose=False)
    return max(int(probe.best_iteration) + 1, 1)
