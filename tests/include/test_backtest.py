"""Trading simulation: entry timing, costs, funding, metrics; and the gate's trading checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.backtest import TradingCosts, positions_from_proba, probabilistic_sharpe, simulate
from include.gate import SKILL_CHECKS, GatePolicy, decide

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
    # Each trade pays its entry and its exit: the long (1 + 1 units), then the short (1 + 1).
    assert flip["turnover"] == 4 and flip["total_return"] == pytest.approx((1 - 10e-4) ** 2 - 1)
    funding = pd.DataFrame({"timestamp": bars["timestamp"].iloc[[2]], "funding_rate": [0.001]})
    long = simulate(_signal(bars, [1, 1, 0]), bars, funding, NO_COSTS, H)   # holds over bars 1-2
    short = simulate(_signal(bars, [-1, -1, 0]), bars, funding, NO_COSTS, H)
    assert long["funding_paid"] == pytest.approx(0.001) and short["funding_paid"] == pytest.approx(-0.001)
    assert long["total_return"] == pytest.approx(-0.001) and short["total_return"] == pytest.approx(0.001)


def test_funding_is_charged_to_the_position_held_into_the_settlement():
    bars = _bars([100.0] * 6)
    # Held: bar 1 long, bar 2 short. Bar 1 ends at bar 2's open time, bar 2 ends at bar 3's.
    signal = _signal(bars, [1, -1, 0])
    at_2 = pd.DataFrame({"timestamp": bars["timestamp"].iloc[[2]], "funding_rate": [0.001]})
    at_3 = pd.DataFrame({"timestamp": bars["timestamp"].iloc[[3]], "funding_rate": [0.001]})
    assert simulate(signal, bars, at_2, NO_COSTS, H)["funding_paid"] == pytest.approx(0.001)    # long pays
    assert simulate(signal, bars, at_3, NO_COSTS, H)["funding_paid"] == pytest.approx(-0.001)   # short receives
    at_1 = pd.DataFrame({"timestamp": bars["timestamp"].iloc[[1]], "funding_rate": [0.001]})
    assert simulate(signal, bars, at_1, NO_COSTS, H)["funding_paid"] == 0  # flat into bar 1's open


def test_each_trade_pays_its_own_exit_and_the_last_position_is_closed():
    # +0.07 % over the one bar held; entry + exit cost 0.10 %: a losing round trip.
    bars = _bars([100.0, 100.0, 100.07, 100.07, 100.07])
    costs = TradingCosts(fee_bps=4.0, slippage_bps=1.0)
    closed = simulate(_signal(bars, [1, 0, 0]), bars, None, costs, H)
    assert closed["trades"] == 1 and closed["hit_rate"] == 0.0
    assert closed["total_return"] == pytest.approx(1.0007 - 10e-4 - 1)
    # Open until the end: still charged its exit.
    still_open = simulate(_signal(bars, [1]), bars, None, costs, H)
    assert still_open["turnover"] == 2 and still_open["hit_rate"] == 0.0
    assert still_open["fees_and_slippage"] == pytest.approx(10e-4)
    # A long then a short: the long's exit is not booked on the short.
    two = simulate(_signal(bars, [1, -1, 0]), bars, None, costs, H)
    assert two["trades"] == 2 and two["hit_rate"] == 0.0 and two["profit_factor"] == 0.0


def test_a_candle_gap_is_skipped_flat_not_an_error():
    bars = _bars([100.0, 100.0, 100.0, 150.0, 150.0, 150.0, 150.0]).drop(index=3)  # bar 3 missing
    signal = pd.Series(1, index=pd.date_range("2023-01-01", periods=5, freq="h", tz="UTC"))
    result = simulate(signal, bars, None, NO_COSTS, H)
    # Held bars 1..5: bar 2 (its next open is missing) and bar 3 (no open) have no return.
    assert result["skipped_bars"] == 2
    assert result["bars"] == 5 and result["total_return"] == pytest.approx(0.0)
    assert result["exposure"] == pytest.approx(3 / 5)


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


@pytest.mark.parametrize(("flat_p", "momentum_p", "drawdown", "failed"), [
    (0.001, 0.0015, 0.05, []),  # both below the weekly level 0.10 / 52
    (0.30, 0.001, 0.05, ["beats_trading_baselines"]),  # no better than staying flat
    (0.001, 0.40, 0.05, ["beats_trading_baselines"]),  # no better than the momentum rule
    (0.001, 0.01, 0.05, ["beats_trading_baselines"]),  # a weekly 0.10 would pass it, a yearly 0.10 does not
    (None, 0.40, 0.0, ["beats_trading_baselines"]),  # never trading: no return variance to test
    (0.001, 0.0015, 0.35, ["max_drawdown"]),  # a limit, whatever the tests say
])
def test_gate_trading_checks(flat_p, momentum_p, drawdown, failed):
    from tests.include.test_gate import evidence

    trading = {"ensemble": {"sharpe": 1.0, "max_drawdown": drawdown, "trades": 0 if flat_p is None else 40},
               "momentum": {"sharpe": 0.4}}
    d = decide(GatePolicy(required=SKILL_CHECKS), candidate_version="v1",
               evidence=evidence(flat_p=flat_p, momentum_p=momentum_p),
               champion=None, trading=trading)
    assert [c.name for c in d.checks if not c.passed] == failed
    assert d.passed == (not failed)


def test_the_deflated_sharpe_ratio_reproduces_the_paper_s_worked_example():
    """Bailey & López de Prado (2014), the numerical example: an annualised Sharpe ratio of 2.5
    over 1,250 daily returns (skew -3, kurtosis 10), the best of N = 100 trials whose annualised
    Sharpe ratios have variance 1/2: SR0 = 0.1132 per day, DSR = 0.9004."""
    import math

    from include.backtest import deflated_sharpe_ratio, expected_max_sharpe

    days = 250
    assert expected_max_sharpe(100, 0.5 / days) == pytest.approx(0.1132, abs=5e-5)
    dsr = deflated_sharpe_ratio(2.5 / math.sqrt(days), 1250, -3.0, 10.0, 100, 0.5 / days)
    assert dsr == pytest.approx(0.9004, abs=2e-4)
    # One trial: nothing to deflate, the probabilistic Sharpe ratio against 0.
    assert expected_max_sharpe(1, 0.5) == 0.0
    # More trials, a higher bar.
    assert (deflated_sharpe_ratio(0.1, 1250, 0.0, 3.0, 1000, 0.002)
            < deflated_sharpe_ratio(0.1, 1250, 0.0, 3.0, 10, 0.002))
