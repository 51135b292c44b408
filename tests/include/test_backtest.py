"""Trading simulation: entry timing, costs, funding, metrics; and the gate's trading checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.backtest import TradingCosts, positions_from_proba, probabilistic_sharpe, simulate
from include.gate import GatePolicy, decide

H = 3600
NO_COSTS = TradingCosts(fee_bps=0.0, slippage_bps=0.0)


def _bars(opens: list[float]) -> pd.DataFrame:
    ts = pd.date_range("2023-01-01", periods=len(opens), freq="h", tz="UTC")
    return pd.DataFrame({"timestamp": ts, "open": opens})


def _signal(bars: pd.DataFrame, values: list[int]) -> pd.Series:
    return pd.Series(values, index=bars["timestamp"].iloc[: len(values)])


def test_position_is_entered_at_the_next_bars_open():
    bars = _bars([100, 100, 110, 110, 110])  # the jump happens between bar 1 and bar 2 opens
    early = simulate(_signal(bars, [1, 0, 0]), bars, None, NO_COSTS, H)   # held over open1 -> open2
    late = simulate(_signal(bars, [0, 1, 0]), bars, None, NO_COSTS, H)    # held over open2 -> open3
    assert early["total_return"] == pytest.approx(0.10)
    assert late["total_return"] == pytest.approx(0.0)


def test_costs_per_unit_traded_and_funding_for_held_positions():
    bars = _bars([100.0] * 6)
    costs = TradingCosts(fee_bps=4.0, slippage_bps=1.0)
    flip = simulate(_signal(bars, [1, -1, 0]), bars, None, costs, H)  # trades 1 + 2 + 1 units
    assert flip["turnover"] == 4 and flip["total_return"] == pytest.approx((1 - 5e-4) ** 2 * (1 - 10e-4) - 1)
    funding = pd.DataFrame({"timestamp": bars["timestamp"].iloc[[2]], "funding_rate": [0.001]})
    long = simulate(_signal(bars, [1, 1, 0]), bars, funding, NO_COSTS, H)   # holds over bars 1-2
    short = simulate(_signal(bars, [-1, -1, 0]), bars, funding, NO_COSTS, H)
    assert long["funding_paid"] == pytest.approx(0.001) and short["funding_paid"] == pytest.approx(-0.001)
    assert long["total_return"] == pytest.approx(-0.001) and short["total_return"] == pytest.approx(0.001)


def test_metrics_of_a_known_path():
    rng = np.random.default_rng(0)
    opens = 100 * np.cumprod(1 + rng.normal(0.0005, 0.01, 2000))
    bars = _bars(list(opens))
    hold = simulate(_signal(bars, [1] * 1990), bars, None, NO_COSTS, H)
    flat = simulate(_signal(bars, [0] * 1990), bars, None, NO_COSTS, H)
    # Signals for bars 0..1989 hold bars 1..1990: open[1] -> open[1991].
    assert hold["total_return"] == pytest.approx(opens[1991] / opens[1] - 1)
    assert hold["trades"] == 1 and hold["exposure"] == 1.0
    path = opens[1:1992]
    assert hold["max_drawdown"] == pytest.approx((1 - path / np.maximum.accumulate(path)).max())
    assert flat["total_return"] == 0 and flat["trades"] == 0 and flat["sharpe"] == 0
    assert hold["sharpe"] > 0 and 0.5 < probabilistic_sharpe(np.diff(opens) / opens[:-1]) <= 1


def test_positions_follow_the_prior_corrected_class_and_the_threshold():
    proba = np.array([[0.30, 0.45, 0.25], [0.20, 0.45, 0.35], [0.20, 0.60, 0.20]])
    prior = np.array([0.24, 0.52, 0.24])
    assert positions_from_proba(proba, prior, 0.0).tolist() == [-1, 1, 0]
    assert positions_from_proba(proba, prior, 1 / 3).tolist() == [0, 1, 0]


BASE = {"majority": {"macro_f1": 0.21, "log_loss": 18.0}, "prior": {"macro_f1": 0.21, "log_loss": 1.07},
        "stratified": {"macro_f1": 0.33, "log_loss": 1.3}}
GOOD = {"macro_f1": 0.40, "log_loss": 1.05}


@pytest.mark.parametrize(("ensemble", "momentum", "policy", "failed"), [
    ({"sharpe": 1.2, "max_drawdown": 0.05, "probabilistic_sharpe": 0.9}, {"sharpe": 0.4}, GatePolicy(), []),
    ({"sharpe": 0.3, "max_drawdown": 0.05, "probabilistic_sharpe": 0.6}, {"sharpe": 0.4}, GatePolicy(),
     ["beats_trading_baselines"]),
    ({"sharpe": -0.5, "max_drawdown": 0.05, "probabilistic_sharpe": 0.3}, {"sharpe": -2.0}, GatePolicy(),
     ["beats_trading_baselines"]),  # flat (0) is a baseline too
    ({"sharpe": 0.0, "max_drawdown": 0.0, "probabilistic_sharpe": None}, {"sharpe": -1.0}, GatePolicy(),
     ["beats_trading_baselines"]),  # never trading has not beaten staying flat
    ({"sharpe": 2.0, "max_drawdown": 0.35, "probabilistic_sharpe": 0.9}, {"sharpe": 0.4}, GatePolicy(),
     ["max_drawdown"]),
    ({"sharpe": 1.2, "max_drawdown": 0.05, "probabilistic_sharpe": 0.7}, {"sharpe": 0.4},
     GatePolicy(min_probabilistic_sharpe=0.95), ["significant_sharpe"]),
])
def test_gate_trading_checks(ensemble, momentum, policy, failed):
    d = decide(policy, candidate_version="v1", candidate_oof=GOOD, baselines=BASE, candidate_window=None,
               champion=None, trading={"ensemble": ensemble, "momentum": momentum})
    assert [c.name for c in d.checks if not c.passed] == failed
    assert d.passed == (not failed)
    names = [c.name for c in d.checks]
    assert ("significant_sharpe" in names) == (policy.min_probabilistic_sharpe is not None)
