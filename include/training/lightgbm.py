"""LightGBM gradient-boosted trees (Ke et al. 2017, https://lightgbm.readthedocs.io)."""

from __future__ import annotations

from typing import Any

DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 300,
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_child_samples": 200,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
}


def build(random_state: int, n_jobs: int, **overrides: Any):
    """An unfitted ``lightgbm.LGBMClassifier`` (scikit-learn API) with the defaults above."""
    from lightgbm import LGBMClassifier

    params = {**DEFAULT_PARAMS, **overrides}
    return LGBMClassifier(random_state=random_state, n_jobs=n_jobs, verbose=-1, importance_type="gain", **params)


def best_n_estimators(X_fit, y_fit, X_val, y_val, *, random_state: int, rounds: int,
                      n_jobs: int, **overrides: Any) -> int:
    """Boosting rounds at the best validation multi-class log loss, with early stopping.

    LightGBM's ``early_stopping`` callback stops after ``rounds`` rounds without improvement;
    the cap is ``n_estimators``. The validation rows must come from the training window only.
    """
    import lightgbm

    probe = build(random_state, n_jobs, **overrides)
    probe.fit(X_fit, y_fit, eval_X=(X_val,), eval_y=(y_val,), eval_metric="multi_logloss",
              callbacks=[lightgbm.early_stopping(rounds, verbose=False)])
    return max(int(probe.best_iteration_ or probe.n_estimators), 1)
