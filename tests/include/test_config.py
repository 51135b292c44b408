from __future__ import annotations

import pytest

from include.config import RunConfig
from include.errors import ConfigError


def test_defaults_are_valid_and_round_trip():
    cfg = RunConfig()
    assert RunConfig.from_params(cfg.to_dict()) == cfg
    assert cfg.models == ("lightgbm", "xgboost", "random_forest")
    assert set(RunConfig.describe()) == set(cfg.to_dict())
    assert all(RunConfig.describe().values())


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"timeframe": "7m"}, "timeframe"),
        ({"models": ["lightgbm", "catboost"]}, "models"),
        ({"models": []}, "models"),
        ({"cv_folds": 1}, "cv_folds"),
        ({"label_threshold": 0}, "label_threshold"),
        ({"train_window_days": 3}, "train_window_days"),
        ({"symbol": "BTC/USDT"}, "symbol"),
        ({"max_gap_share": 1.5}, "max_gap_share"),
    ],
)
def test_bad_values_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field):
        RunConfig.from_params(params)


def test_models_accept_comma_separated_string_and_none_means_default():
    cfg = RunConfig.from_params({"models": "xgboost, lightgbm", "as_of_date": None, "cv_folds": None})
    assert cfg.models == ("xgboost", "lightgbm")
    assert cfg.cv_folds == RunConfig().cv_folds
