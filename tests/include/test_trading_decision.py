"""The cost-aware trading decision: expected move against the round trip and funding, a margin
chosen on earlier folds only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.backtest import (
    FLAT_MARGIN,
    MARGIN_GRID,
    TradingCosts,
    TradingDecision,
    class_moves,
    margin_words,
    standardised_moves,
)

DECISION = TradingDecision(costs=TradingCosts(fee_bps=4.0, slippage_bps=1.0), horizon_bars=4, bar_seconds=3600)


def _oof(proba: np.ndarray, folds: int) -> pd.DataFrame:
    """Hourly out-of-fold rows from 2023-01-01 with forecasts ``proba`` ``(n, 3)``, a uniform
    prior, class moves of -1.2 / 0 / +1.2, a 1 % volatility scale, no funding, and ``folds``
    equal folds in time order."""
    n = len(proba)
    oof = pd.DataFrame(proba, columns=["p_down", "p_range", "p_up"],
                       index=pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC"))
    oof[["prior_down", "prior_range", "prior_up"]] = 1 / 3
    oof[["move_down", "move_range", "move_up"]] = [-1.2, 0.0, 1.2]
    oof["move_scale"], oof["funding_rate"], oof["momentum"] = 0.01, 0.0, 1
    oof["fold"] = np.repeat(np.arange(folds), n // folds)
    return oof


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

    n = 60
    rng = np.random.default_rng(1)
    oof = _oof(rng.dirichlet([5, 5, 5], n), folds=3)
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


def test_a_market_whose_earlier_folds_lost_at_every_margin_stays_flat():
    """With ``trade_may_stay_flat`` the grid holds :data:`FLAT_MARGIN`: where every margin lost
    after costs on the folds before, the next fold takes no position (and the deployed model, on
    all folds); where one made money, that one trades. Off, the best losing margin trades."""
    from include.trading import walk_forward_margins

    oof = _oof(np.random.default_rng(2).dirichlet([5, 5, 5], 90), folds=3)
    side = DECISION.positions(oof[["p_down", "p_range", "p_up"]].to_numpy(), np.array([-1.2, 0.0, 1.2]),
                              oof["move_scale"].to_numpy())
    assert np.abs(side).sum() > 10  # the forecasts do trade at margin 0
    # Every trade of folds 0 and 1 loses its round trip; fold 2's trades win.
    returns = np.where(oof["fold"].to_numpy() < 2, -0.0005 * side, 0.01 * side)

    def net_return(positions: np.ndarray, rows: np.ndarray) -> float:
        return float((positions[rows] * returns[rows]).sum() - 0.001 * np.abs(positions[rows]).sum())

    config = {"fee_bps": 4.0, "slippage_bps": 1.0, "label_horizon_bars": 4, "timeframe": "1h"}
    may_stay_flat = TradingDecision.from_config({**config, "trade_may_stay_flat": True})
    assert may_stay_flat.margin_grid == MARGIN_GRID + (FLAT_MARGIN,)
    assert TradingDecision.from_config(config).margin_grid == MARGIN_GRID  # a lineage before the parameter
    chosen = walk_forward_margins(oof, may_stay_flat, net_return)
    assert chosen["per_fold"] == {0: MARGIN_GRID[0], 1: FLAT_MARGIN, 2: FLAT_MARGIN}
    assert chosen["deployed"] in MARGIN_GRID  # fold 2's winnings outweigh the earlier losses
    assert may_stay_flat.positions(oof[["p_down", "p_range", "p_up"]].to_numpy(), np.array([-1.2, 0.0, 1.2]),
                                   oof["move_scale"].to_numpy(), margin=chosen["per_row"])[30:].tolist() == [0] * 60
    always = walk_forward_margins(oof, TradingDecision.from_config({**config, "trade_may_stay_flat": False}),
                                  net_return)
    assert FLAT_MARGIN not in always["per_fold"].values()
    # With no costs at all, the flat margin still takes no position.
    free = TradingDecision(costs=TradingCosts(fee_bps=0.0, slippage_bps=0.0), horizon_bars=4, bar_seconds=3600)
    assert not free.positions(np.array([[0.1, 0.1, 0.8]]), np.array([-1.2, 0.0, 1.2]), np.array([0.01]),
                              margin=FLAT_MARGIN).any()
    assert margin_words(FLAT_MARGIN) == "flat" and margin_words(0.5) == "0.5"


def test_meta_labeling_keeps_the_positions_a_model_of_earlier_folds_expects_to_pay():
    """Positions whose side has a high probability pay, the others lose: the meta-label model of
    earlier folds learns that and drops the losing kind; it never reads a fold's own rows or a
    row whose horizon ends inside the fold (changing those outcomes changes nothing before it)."""
    from include.meta_label import META_INPUTS, MIN_META_ROWS, MetaLabel, fit_meta_label
    from include.trading import deployed_decision, forecast_positions, walk_forward_meta

    oof = _oof(np.random.default_rng(3).dirichlet([4, 4, 4], 1200), folds=4)
    proba = oof[["p_down", "p_range", "p_up"]].to_numpy()
    side = forecast_positions(oof, DECISION, 0.0)
    p_side = np.where(side > 0, proba[:, 2], proba[:, 0])
    strong = p_side > np.median(p_side[side != 0])
    rng = np.random.default_rng(4)
    # Realised 4-bar log returns: strong positions gain 1 %, weak ones lose 1 %, with noise.
    realised = side * np.where(strong, 0.01, -0.01) + rng.normal(0, 0.002, len(oof))
    realised[side == 0] = rng.normal(0, 0.01, (side == 0).sum())
    out = walk_forward_meta(oof, DECISION, np.zeros(len(oof)), realised)
    fold = oof["fold"].to_numpy()
    assert out["per_fold"][0] is None and all(out["per_fold"][k] >= MIN_META_ROWS for k in (1, 2, 3))
    # Fold 1's model learned from fold 0's positions, purged of the last 4 bars' (their outcome ends in fold 1).
    assert out["per_fold"][1] == int(((side != 0) & (fold == 0) & (np.arange(len(oof)) < 296)).sum())
    later = fold >= 1
    kept, taken = out["positions"][later] != 0, side[later] != 0
    assert kept.sum() < taken.sum()
    assert (strong[later] & kept).sum() > 0.9 * (strong[later] & taken).sum()  # the paying kind stays
    assert (~strong[later] & kept).sum() < 0.1 * (~strong[later] & taken).sum()  # the losing kind goes
    np.testing.assert_array_equal(out["positions"][fold == 0], side[fold == 0])  # no earlier fold: all kept
    # Fold 3's own outcomes reversed: folds 0-2 keep the same positions.
    changed = realised.copy()
    changed[fold == 3] *= -1
    again = walk_forward_meta(oof, DECISION, np.zeros(len(oof)), changed)
    np.testing.assert_array_equal(again["positions"][fold < 3], out["positions"][fold < 3])

    # The deployed model travels in the gate decision's record and serving's decision applies it.
    deployed = out["deployed"]
    assert isinstance(deployed, MetaLabel) and deployed.coef[META_INPUTS.index("p_side")] > 0
    record = {"trading": {"decision": {"deployed_margin": 0.0, "meta_label": {"deployed": deployed.to_dict()}}}}
    config = {"fee_bps": 4.0, "slippage_bps": 1.0, "label_horizon_bars": 4, "timeframe": "1h"}
    served = forecast_positions(oof, deployed_decision(config, record))
    assert (served != 0).sum() < (side != 0).sum() and set(np.flatnonzero(served)) <= set(np.flatnonzero(side))
    np.testing.assert_array_equal(forecast_positions(oof, deployed_decision(config, None)), side)
    assert MetaLabel.from_dict(deployed.to_dict()) == deployed
    with pytest.raises(ValueError, match="inputs"):
        MetaLabel.from_dict({**deployed.to_dict(), "inputs": ["edge"]})
    # A version whose stored model has other inputs is refused by name, not applied wrongly.
    from include.errors import ServingError

    stale = {"candidate": "v1", "trading": {"decision": {"deployed_margin": 0.0, "meta_label": {
        "deployed": {**deployed.to_dict(), "inputs": ["edge_round_trips", "p_side", "p_range"]}}}}}
    with pytest.raises(ServingError, match="version v1's gate decision holds a meta-label model"):
        deployed_decision(config, stale)
    # Too few positions, or a single outcome: no model.
    inputs = np.zeros((MIN_META_ROWS - 1, len(META_INPUTS)))
    assert fit_meta_label(inputs, np.arange(MIN_META_ROWS - 1) % 2 == 0) is None
    assert fit_meta_label(np.zeros((500, len(META_INPUTS))), np.ones(500, dtype=bool)) is None


@pytest.mark.integration
def test_a_weekly_run_with_meta_labeling_registers_the_model_serving_applies(tmp_path, data_dir):
    """A real weekly run (bundled BTCUSDT, short window) with ``trade_meta_label``: the trading
    step's record holds a meta-label entry per fold, the deployed model's (or none, with too few
    positions), the report says so, and the deployed decision read back from the ledger is the
    one the trading step recorded."""
    import json
    from pathlib import Path

    from include.config import RunConfig, Settings
    from include.pipeline import run_once
    from include.registry import ModelRegistry
    from include.trading import deployed_decision
    from tests.builders import PERMISSIVE_GATE

    settings = Settings.in_folder(tmp_path, data_dir)
    cfg = RunConfig(symbol="BTCUSDT", as_of_date="2023-12-31", train_window_days=120, cv_folds=3,
                    trade_meta_label=True, **PERMISSIVE_GATE)
    run = run_once(cfg, settings, dag_id="weekly_retrain", run_id="meta_label")
    trading = json.loads(Path(run["trading"]["path"]).read_text())
    meta = trading["decision"]["meta_label"]
    assert set(meta["per_fold"]) == set(trading["decision"]["margin_per_fold"])
    assert meta["per_fold"]["0"] is None  # the first fold has no earlier positions
    registry = ModelRegistry.from_settings(settings)
    try:
        decided = registry.decision_of(cfg.model_name, run["assembled"]["version"])
        decision = deployed_decision(registry.metadata(run["assembled"]["version"])["config"], decided)
    finally:
        registry.dispose()
    assert decision.margin == trading["decision"]["deployed_margin"]
    assert (decision.meta is None) == (meta["deployed"] is None)
    if decision.meta is not None:
        assert decision.meta.to_dict() == meta["deployed"]
    report = Path(run["trading"]["path"]).with_name("report.html").read_text()
    assert "Meta-labeling keeps only the positions" in report


def test_a_replay_decides_an_older_version_with_the_margin_grid_it_was_recorded_with():
    """A lineage recorded before ``trade_may_stay_flat`` existed is replayed without "flat"; one
    that records the parameter keeps its value."""
    from include.config import RunConfig
    from include.track_record import recorded_config
    from include.trading import trading_decision

    recorded = RunConfig(symbol="BTCUSDT").to_dict()
    older = {k: v for k, v in recorded.items() if k != "trade_may_stay_flat"}
    assert recorded["trade_may_stay_flat"] is True
    assert trading_decision(recorded_config(older)).margin_grid == MARGIN_GRID
    assert trading_decision(recorded_config(recorded)).margin_grid == MARGIN_GRID + (FLAT_MARGIN,)
    assert not recorded_config({**recorded, "trade_may_stay_flat": False}).trade_may_stay_flat


def test_volatility_targeting_cuts_a_position_where_the_market_is_more_volatile_than_its_model_s_training():
    """``trade_vol_target``: the side of the cost rule times ``min(1, reference / scale)``; one
    unit where the scale or the reference is unknown; never levered; off, the sides alone."""
    from include.config import RunConfig

    moves = np.array([-1.2, 0.0, 1.2])
    proba = np.array([[0.2, 0.4, 0.4], [0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [0.2, 0.4, 0.4], [0.2, 0.4, 0.4]])
    scale = np.array([0.01, 0.02, 0.005, np.nan, 0.04])
    sized = TradingDecision(costs=DECISION.costs, horizon_bars=4, bar_seconds=3600, vol_target=True,
                            scale_reference=0.01)
    # The side: the expected move grows with the scale, so every row but the unknown one trades.
    assert DECISION.positions(proba, moves, scale).tolist() == [1, -1, 1, 0, 1]
    np.testing.assert_allclose(sized.positions(proba, moves, scale), [1.0, -0.5, 1.0, 0.0, 0.25])
    np.testing.assert_allclose(sized.sizes(scale), [1.0, 0.5, 1.0, 1.0, 0.25])
    np.testing.assert_allclose(sized.sizes(scale, reference=np.full(5, 0.02)), [1.0, 1.0, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(TradingDecision(costs=DECISION.costs, horizon_bars=4, bar_seconds=3600,
                                               vol_target=True).sizes(scale), np.ones(5))
    assert DECISION.positions(proba, moves, scale).dtype.kind == "i"
    # From a run's parameters: off by default, and a lineage recorded before the parameter sizes nothing.
    recorded = RunConfig(symbol="BTCUSDT").to_dict()
    assert recorded["trade_vol_target"] is False
    assert not TradingDecision.from_config({k: v for k, v in recorded.items() if k != "trade_vol_target"}).vol_target
    assert TradingDecision.from_config({**recorded, "trade_vol_target": True}, scale_reference=0.01).sizes(
        np.array([0.04])).tolist() == [0.25]


def test_a_sized_position_pays_for_the_units_it_trades_and_a_trade_is_a_run_on_one_side():
    """Resizing a position on the same side trades the difference; a reversal trades both
    positions; unit positions cost what they always did. A trade is a run of bars on one side."""
    from include.backtest import simulate

    index = pd.date_range("2023-01-01", periods=8, freq="h", tz="UTC")
    bars = pd.DataFrame({"timestamp": pd.date_range("2023-01-01", periods=12, freq="h", tz="UTC"),
                         "open": 100.0})
    costs = TradingCosts(fee_bps=4.0, slippage_bps=1.0)  # 5 bps a unit
    sized = simulate(pd.Series([0, 0.5, 0.5, 1.0, -0.4, -0.4, 0, 0], index=index), bars, None, costs, 3600)
    # Units traded: enter 0.5, resize +0.5, reverse (exit 1.0, enter 0.4), exit 0.4.
    assert sized["turnover"] == pytest.approx(2.8)
    assert sized["fees_and_slippage"] == pytest.approx(2.8 * 0.0005)
    assert sized["trades"] == 2
    net = sized["net_returns"].to_numpy()
    np.testing.assert_allclose(net, -0.0005 * np.array([0, 0.5, 0, 0.5 + 1.0, 0.4, 0.4, 0, 0]))
    unit = simulate(pd.Series([0, 1, 1, -1, -1, 0, 0, 0], index=index), bars, None, costs, 3600)
    np.testing.assert_allclose(unit["net_returns"].to_numpy(), -0.0005 * np.array([0, 1, 1, 1, 1, 0, 0, 0]))
    assert unit["turnover"] == pytest.approx(4.0) and unit["trades"] == 2


def test_each_fold_s_scale_reference_is_the_median_over_its_own_training_rows(tmp_path):
    """:func:`include.trading.trading_inputs` gives each out-of-fold row its fold's reference (the
    median volatility scale over that fold's training rows, nothing of the fold itself) and the
    deployed model's over its training rows."""
    from include.config import RunConfig
    from include.run_folder import RunFolder
    from include.trading import REFERENCE_COLUMN, trading_inputs

    rng = np.random.default_rng(3)
    n = 1200
    index = pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC")
    vol = np.where(np.arange(n) < 900, 0.005, 0.02)  # the last rows are four times as volatile
    close = pd.Series(100 * np.exp(np.cumsum(rng.normal(0, vol))), index=index)
    RunFolder(tmp_path).features.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"close": close}).to_parquet(RunFolder(tmp_path).features)
    cfg = RunConfig(symbol="BTCUSDT")
    scale, _ = standardised_moves(close, horizon=cfg.label_horizon_bars, vol_window=cfg.label_vol_window_bars)
    y = rng.integers(0, 3, n)
    folds = [(np.arange(200, 800), np.arange(800, 1000)), (np.arange(400, 1000), np.arange(1000, 1196))]
    oof = pd.DataFrame(index=index[np.concatenate([te for _, te in folds])])
    deployed = trading_inputs(cfg, tmp_path, oof, index, y, folds, np.arange(600, 1196))
    for train, test in folds:
        expected = float(np.nanmedian(scale.to_numpy()[train]))
        assert (oof.loc[index[test], REFERENCE_COLUMN] == expected).all()
    assert deployed["scale_reference"] == pytest.approx(float(np.nanmedian(scale.to_numpy()[600:1196])))
    # The second fold trains on turbulent rows too: its reference is higher, so it cuts less.
    assert oof[REFERENCE_COLUMN].iloc[-1] > oof[REFERENCE_COLUMN].iloc[0]
    assert len(deployed["class_moves"]) == 3


@pytest.mark.integration
def test_a_weekly_run_with_volatility_targeting_records_the_reference_serving_sizes_with(tmp_path, data_dir):
    """A real weekly run (bundled BTCUSDT, short window) with ``trade_vol_target``: the version's
    lineage holds its training rows' scale reference, the trading step's positions are the sides
    times their sizes, the report says how positions are sized, and the deployed decision read
    back for serving sizes with the lineage's reference."""
    import json
    from pathlib import Path

    from include.config import RunConfig, Settings
    from include.pipeline import run_once
    from include.registry import ModelRegistry
    from include.run_folder import RunFolder
    from include.trading import REFERENCE_COLUMN, deployed_decision, forecast_positions
    from tests.builders import PERMISSIVE_GATE

    settings = Settings.in_folder(tmp_path, data_dir)
    cfg = RunConfig(symbol="BTCUSDT", as_of_date="2023-12-31", train_window_days=120, cv_folds=3,
                    trade_vol_target=True, trade_may_stay_flat=False, **PERMISSIVE_GATE)
    run = run_once(cfg, settings, dag_id="weekly_retrain", run_id="vol_target")
    version = run["assembled"]["version"]
    registry = ModelRegistry.from_settings(settings)
    try:
        lineage = registry.metadata(version)
        decision = deployed_decision(lineage["config"], registry.decision_of(cfg.model_name, version),
                                     lineage["trading"])
    finally:
        registry.dispose()
    reference = lineage["trading"]["scale_reference"]
    assert reference > 0 and decision.vol_target and decision.scale_reference == reference
    trading = json.loads(Path(run["trading"]["path"]).read_text())
    assert trading["decision"]["sizing"]["rule"] == "min(1, reference / scale)"
    oof = pd.read_parquet(RunFolder(Path(run["trading"]["path"]).parent).ensemble_oof)
    assert (oof[REFERENCE_COLUMN] > 0).all()
    margins = oof["fold"].map({int(k): v for k, v in trading["decision"]["margin_per_fold"].items()}).to_numpy()
    unit = TradingDecision.from_config({**lineage["config"], "trade_vol_target": False})
    sides = forecast_positions(oof, unit, margins)
    sized = forecast_positions(oof, TradingDecision.from_config(lineage["config"]), margins)
    scale, ref = oof["move_scale"].to_numpy(), oof[REFERENCE_COLUMN].to_numpy()
    known = np.isfinite(scale) & (scale > 0)
    np.testing.assert_allclose(sized, sides * np.where(known, np.minimum(1.0, ref / np.where(known, scale, 1)), 1))
    assert set(np.unique(sides)) <= {-1, 0, 1}
    mean_size = trading["decision"]["sizing"]["mean_size"]
    assert mean_size is None or 0 < mean_size <= 1
    report = Path(run["trading"]["path"]).with_name("report.html").read_text()
    assert "Each position takes min(1, reference / volatility scale) units of notional" in report
