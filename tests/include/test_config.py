from __future__ import annotations

import dataclasses
import math

import pytest

from include.config import MAX_DAYS, RunConfig
from include.errors import ConfigError


def test_defaults_are_valid_and_round_trip():
    cfg = RunConfig()
    assert RunConfig.from_params(cfg.to_dict()) == cfg
    assert cfg.models == ("lightgbm", "xgboost", "random_forest", "logistic")
    assert cfg.member_weights(cfg.models) == dict.fromkeys(cfg.models, 0.25)
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


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"fee_bps": float("nan")}, "fee_bps"),
        ({"gate_min_f1_margin": float("nan")}, "gate_min_f1_margin"),
        ({"gate_max_log_loss_ratio": float("inf")}, "gate_max_log_loss_ratio"),
        ({"gate_min_sharpe_margin": float("-inf")}, "gate_min_sharpe_margin"),
        ({"label_threshold": float("inf")}, "label_threshold"),
        ({"ensemble_weights": {"lightgbm": float("inf"), "xgboost": 0.4}}, "ensemble_weights"),
        ({"ensemble_weights": {"lightgbm": 0.5, "xgboost": float("nan")}}, "ensemble_weights"),
    ],
)
def test_nan_and_infinities_are_refused_naming_the_field_and_the_value(params, field):
    with pytest.raises(ConfigError, match=rf"{field}=.*(nan|inf).*: expected finite numbers"):
        RunConfig.from_params(params)


def test_every_float_parameter_refuses_nan_and_infinities():
    """Whatever float field the configuration holds, now or later: NaN passes every comparison."""
    floats = [f.name for f in dataclasses.fields(RunConfig) if isinstance(getattr(RunConfig(), f.name), float)]
    assert {"fee_bps", "gate_min_f1_margin", "gate_max_log_loss_ratio", "label_threshold"} <= set(floats)
    for name in floats:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ConfigError, match=f"invalid run parameter {name}="):
                RunConfig.from_params({name: bad})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"train_window_days": 1e7}, "train_window_days=10000000.0: expected a number from 14 to 36,525"),
        ({"min_history_days": 10**7}, "min_history_days=10000000: expected a number from 14 to 36,525"),
        ({"cv_rolling_train_days": 10**7}, "cv_rolling_train_days=10000000: expected a number from 0 to 36,525"),
        ({"label_vol_window_bars": 10**9}, "label_vol_window_bars=1000000000: expected a number from 2 to 10,000"),
        ({"approval_timeout_hours": 1e300},
         "approval_timeout_hours=1e\\+300: expected a number of hours in \\(0, 8,760\\]"),
        ({"random_state": -1}, "random_state=-1: expected a number from 0 to 4,294,967,295"),
        ({"train_window_days": "730"}, "train_window_days='730': expected a number from 14 to 36,525"),
    ],
)
def test_day_and_bar_counts_are_bounded_naming_the_field_and_the_range(params, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_params(params)


def test_the_largest_day_and_bar_counts_stay_inside_date_arithmetic():
    """At their bounds, the run's dates (training start, warm-up, ingestion start) are computed,
    and are pandas Timestamps (nanoseconds: 1677-2262) the store and the features can use."""
    import pandas as pd

    from include.windows import resolve_window

    cfg = RunConfig(timeframe="1d", train_window_days=MAX_DAYS, min_history_days=MAX_DAYS,
                    cv_rolling_train_days=MAX_DAYS, label_vol_window_bars=10_000, as_of_date="2023-06-04")
    window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    assert (window.train_start, window.ingest_start) == ("1923-06-04T00:00:00+00:00", "1894-05-11T00:00:00+00:00")
    assert pd.Timestamp(window.ingest_start).year == 1894


def test_the_trigger_form_carries_the_configurations_bounds():
    from airflow.sdk.definitions.param import ParamValidationError

    from dags.weekly_retrain import PARAMS

    intervals = RunConfig.intervals()
    shown = set(intervals) & set(PARAMS)
    assert {"train_window_days", "min_history_days", "cv_folds", "fee_bps", "gate_alpha"} <= shown
    for name in set(intervals) & set(PARAMS):
        schema = PARAMS[name].schema
        assert {k: schema[k] for k in schema if k.endswith(("imum", "Minimum", "Maximum"))} == \
            intervals[name].schema(), name
    assert PARAMS["gate_alpha"].schema["exclusiveMinimum"] == 0 and PARAMS["gate_alpha"].schema["maximum"] == 1
    with pytest.raises(ParamValidationError):
        PARAMS["train_window_days"].resolve(10**7)
