"""Hyperparameter search spaces per model family, and how a trial samples them.

A space maps a hyperparameter to a distribution: ``{"type": "float", "low", "high", "log"}`` or
``{"type": "int", "low", "high", "log"}`` or ``{"type": "categorical", "choices"}``. The
defaults below bracket each family's fixed defaults (:mod:`include.training.lightgbm` and its
siblings), so the default set is a point of the space. The number of boosting rounds is not
searched: early stopping on the inner validation split chooses it in every fit.

A team overrides a family's space with the ``tune_search_space`` parameter of
``tune_hyperparameters`` (same format, merged over these per hyperparameter).
"""

from __future__ import annotations

from typing import Any

from include.errors import ConfigError
from include.training import family_module

SEARCH_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "lightgbm": {
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
        "num_leaves": {"type": "int", "low": 4, "high": 63, "log": True},
        "min_child_samples": {"type": "int", "low": 50, "high": 800, "log": True},
        "colsample_bytree": {"type": "float", "low": 0.4, "high": 1.0},
        "subsample": {"type": "float", "low": 0.5, "high": 1.0},
        "reg_lambda": {"type": "float", "low": 0.01, "high": 30.0, "log": True},
    },
    "xgboost": {
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
        "max_depth": {"type": "int", "low": 2, "high": 8},
        "min_child_weight": {"type": "float", "low": 2.0, "high": 200.0, "log": True},
        "colsample_bytree": {"type": "float", "low": 0.4, "high": 1.0},
        "subsample": {"type": "float", "low": 0.5, "high": 1.0},
        "reg_lambda": {"type": "float", "low": 0.01, "high": 30.0, "log": True},
    },
    "random_forest": {
        "max_depth": {"type": "int", "low": 3, "high": 16},
        "min_samples_leaf": {"type": "int", "low": 20, "high": 800, "log": True},
        "max_features": {"type": "categorical", "choices": ["sqrt", "log2", 0.5]},
        "max_samples": {"type": "float", "low": 0.2, "high": 0.9},
    },
    "logistic": {
        "C": {"type": "float", "low": 0.001, "high": 10.0, "log": True},
    },
}


def search_space(family: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The search space of ``family``: the defaults above with ``overrides`` merged per hyperparameter.

    Raises:
        ConfigError: unknown family, or a distribution that is not one of the three forms above
            (the message names the family and hyperparameter).
    """
    if family in SEARCH_SPACES:
        declared = SEARCH_SPACES[family]
    else:
        declared = getattr(family_module(family), "SEARCH_SPACE", None)
        if not isinstance(declared, dict):
            raise ConfigError(f"no search space for model family {family!r}: a plug-in family declares one as "
                              f"SEARCH_SPACE (built-in ones: {sorted(SEARCH_SPACES)})")
    space = {**declared, **(overrides or {})}
    for name, spec in space.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        where = f"search space of {family}, {name}"
        if kind in ("float", "int"):
            low, high = spec.get("low"), spec.get("high")
            if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
                raise ConfigError(f"{where}: expected numbers low < high, got {spec!r}")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log-scale range needs low > 0, got {spec!r}")
        elif kind == "categorical":
            if not spec.get("choices"):
                raise ConfigError(f"{where}: expected a non-empty list of choices, got {spec!r}")
        else:
            raise ConfigError(f"{where}: expected type float, int or categorical, got {spec!r}")
    return space


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One point of ``space`` sampled by an Optuna trial (``trial.suggest_float`` and siblings).

    Returns:
        Hyperparameter name -> value.
    """
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if spec["type"] == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=bool(spec.get("log")))
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            params[name] = trial.suggest_categorical(name, spec["choices"])
    return params
