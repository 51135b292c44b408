"""The cost-aware trading decision: expected move against the round trip and funding, a margin
chosen on earlier folds only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.backtest import MARGIN_GRID, TradingCosts, TradingDecision, class_moves, standardised_moves

DECISION = TradingDecision(costs=TradingCosts(fee_bps=4.0, slippage_bps=1.0), horizon_bars=4, bar_seconds=3600)


def test_moves_are_forward_returns_in_units_of_the_label_rule_s_volatility_scale():
    rng = np.random.default_rng(0)
    close = pd.Series(100 * np.exp(np.cumsum(rng.normal(0, 0.01, 400))),
                      index=pd.date_range("2023-01-01", periods=400, freq="h", tz="UTC"))
    scale, move = standardised_moves(close, horizon=4, vol_window=168)
    log_close = np.log(close)
    expected_scale = log_close.diff().rolling(168).std() * 2.0
    pd.testing.assert_series_equal(scale, expected_scale.rename("move_scale"))
    forward = log_close.shift(-4) - log_close
    np.testing.assert_allclose((move * scale).dropna(), forward.loc[(move * scale).dropna().index])
    assert move.iloc[-4:].isna().all() and scale.iloc[:168].isna().all()
    assert class_moves(np.array([0, 0, 2, 2, 1]), np.array([-1.0, -3.0, 1.0, np.nan, 0.5])).tolist() == [-2.0, 0.5, 1.0]
    assert class_moves(np.array([0, 2]), np.array([-1.0, 1.0])).tolist() == [-1.0, 0.0, 1.0]  # no range row


def test_a_position_is_taken_only_where_the_expected_move_pays_for_the_round_trip_and_funding():
    moves = np.array([-1.2, 0.0, 1.2])
    scale = np.full(5, 0.01)  # 1 % per horizon
    # expected move = 0.01 * 1.2 * (p_up - p_down): 0.0024, 0.0006, -0.0024, 0, 0.0012
    proba = np.array([[0.2, 0.4, 0.4], [0.3, 0.35, 0.35], [0.4, 0.4, 0.2], [0.3, 0.4, 0.3], [0.25, 0.4, 0.35]])
    np.testing.assert_allclose(DECISION.expected_move(proba, moves, scale), [0.0024, 0.0006, -0.0024, 0.0, 0.0012])
    assert DECISION.round_trip == pytest.approx(0.001)
    assert DECISION.positions(proba, moves, scale).tolist() == [1, 0, -1, 0, 1]
    # Funding the horizon pays (4 h of an 8 h settlement: half the rate) counts against a long and
    # for a short: at 0.1 % per settlement the fifth row's long no longer pays.
    funding = np.full(5, 0.001)
    assert DECISION.positions(proba, moves, scale, funding).tolist() == [1, 0, -1, 0, 0]
    assert DECISION.positions(proba, moves, scale, -funding).tolist() == [1, 1, -1, 0, 1]
    # A margin of one round trip asks for twice the cost; the probability floor for the side.
    assert DECISION.positions(proba, moves, scale, margin=1.0).tolist() == [1, 0, -1, 0, 0]
    floor = TradingDecision(costs=DECISION.costs, horizon_bars=4, bar_seconds=3600, min_probability=0.38)
    assert floor.positions(proba, moves, scale).tolist() == [1, 0, -1, 0, 0]
    # Per-row class moves and a row without a volatility scale (expects no move).
    per_row = np.tile(moves, (5, 1))
    assert DECISION.positions(proba, per_row, np.r_[scale[:4], np.nan]).tolist() == [1, 0, -1, 0, 0]


def test_each_fold_s_margin_is_chosen_on_earlier_folds_only():
    """The margin of fold k is chosen by net returns on folds before k: the scorer is never asked
    about fold k's rows or later ones, and changing their returns does not change it."""
    from include.trading import walk_forward_margins

    n, folds = 60, 3
    rng = np.random.default_rng(1)
    oof = pd.DataFrame(rng.dirichlet([5, 5, 5], n), columns=["p_down", "p_range", "p_up"],
                       index=pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC"))
    oof[["prior_down", "prior_range", "prior_up"]] = 1 / 3
    oof[["move_down", "move_range", "move_up"]] = [-1.2, 0.0, 1.2]
    oof["move_scale"], oof["funding_rate"], oof["momentum"] = 0.01, 0.0, 1
    oof["fold"] = np.repeat(np.arange(folds), n // folds)
    fold = oof["fold"].to_numpy()

    def run(returns: np.ndarray) -> tuple[dict, list[np.ndarray]]:
        asked: list[np.ndarray] = []

        def net_return(positions: np.ndarray, rows: np.ndarray) -> float:
            asked.append(rows.copy())
            return float((positions[rows] * returns[rows]).sum() - 0.001 * np.abs(positions[rows]).sum())

        return walk_forward_margins(oof, DECISION, net_return), asked

    returns = rng.normal(0, 0.01, n)
    chosen, asked = run(returns)
    assert chosen["per_fold"][0] == MARGIN_GRID[0] and set(chosen["per_fold"]) == {0, 1, 2}
    per_fold_calls = [rows for rows in asked if not rows.all()]
    assert per_fold_calls and all(fold[rows].max() < fold[~rows].min() for rows in per_fold_calls)
    # Fold 2's own and later rows changed: the margins of folds 0..2 stay, only the deployed one may move.
    changed = returns.copy()
    changed[fold == 2] *= -50
    again, _ = run(changed)
    assert again["per_fold"] == chosen["per_fold"]
    np.testing.assert_array_equal(again["per_row"], chosen["per_row"])
    assert set(np.unique(chosen["per_row"])) <= set(MARGIN_GRID)
