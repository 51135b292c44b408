"""The trading decision applied to forecasts: positions, margins chosen walk-forward, and the
out-of-fold trading simulation.

One rule everywhere (:class:`include.backtest.TradingDecision`): the weekly run's trading step and
gate, the track record's replay, tuning's objective, monitoring's live trading and serving all
take positions through these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.backtest import (
    TradingDecision,
    choose_margin,
    class_moves,
    positions_from_proba,
    simulate,
    standardised_moves,
)
from include.config import RunConfig, Settings
from include.data.store import open_store
from include.errors import ServingError
from include.meta_label import MetaLabel, fit_meta_label, meta_inputs
from include.run_folder import RunFolder


def trading_decision(cfg: RunConfig, margin: float = 0.0) -> TradingDecision:
    """The run's :class:`include.backtest.TradingDecision`: its costs, horizon and probability
    floor, with ``margin``."""
    return TradingDecision.from_config(cfg.to_dict(), margin)


def deployed_decision(config: dict[str, Any], decided: dict[str, Any] | None,
                      trading: dict[str, Any] | None = None) -> TradingDecision:
    """The decision a registered version trades at: its run parameters (``config``, the lineage's
    or a ``RunConfig.to_dict()``) with the margin and meta-label model its gate decision
    ``decided`` chose for the deployed model (:func:`trade_out_of_fold`'s record; margin 0 and
    no meta-label model where none was recorded), and the volatility-scale reference of its
    lineage's ``trading`` record (:func:`trading_inputs`; none recorded: one unit a position).

    Raises:
        ServingError: the record's meta-label model was fitted on other inputs than this code's
            (:data:`include.meta_label.META_INPUTS`); the message names the version.
    """
    record = ((decided or {}).get("trading") or {}).get("decision") or {}
    margin = record.get("deployed_margin")
    try:
        meta = MetaLabel.from_dict((record.get("meta_label") or {}).get("deployed"))
    except ValueError as exc:
        version = (decided or {}).get("candidate")
        raise ServingError(f"version {version}'s gate decision holds a meta-label model this code cannot apply "
                           f"({exc}): retrain, or roll production back to another version") from exc
    reference = (trading or {}).get("scale_reference")
    return TradingDecision.from_config(config, float(margin) if margin is not None else 0.0, meta,
                                       scale_reference=None if reference is None else float(reference))


#: The out-of-fold columns the trading decision reads besides the forecast (written by
#: :func:`include.pipeline.training.assemble`).
DECISION_COLUMNS = ["move_down", "move_range", "move_up", "move_scale", "funding_rate"]

#: The column of a row's volatility-scale reference for sizing (:meth:`TradingDecision.sizes`):
#: its model's median scale over its training rows; a frame without it sizes at the decision's
#: ``scale_reference``.
REFERENCE_COLUMN = "scale_reference"


def forecast_positions(frame: pd.DataFrame, decision: TradingDecision,
                       margins: np.ndarray | float | None = None) -> np.ndarray:
    """Positions of a forecast's rows under ``decision`` (:class:`include.backtest.TradingDecision`).

    Each row needs its forecast (``p_*``) and the decision's inputs (:data:`DECISION_COLUMNS`:
    its model's standardised class moves, the volatility scale and the last settled funding
    rate; with ``decision.vol_target``, :data:`REFERENCE_COLUMN` where the rows' models differ).
    A row without class moves (an out-of-fold record or a version registered without them)
    is traded by the decided-class rule, one unit: the prior-corrected class when its
    probability reaches ``decision.min_probability``
    (:func:`include.backtest.positions_from_proba`).

    Returns:
        ``(n,)`` positions: sides in {-1, 0, +1}, sized in [-1, 1] with ``decision.vol_target``.
    """
    proba = frame[["p_down", "p_range", "p_up"]].to_numpy()
    legacy = positions_from_proba(proba, frame[["prior_down", "prior_range", "prior_up"]].to_numpy(),
                                  decision.min_probability)
    if not all(c in frame for c in DECISION_COLUMNS):
        return legacy
    moves = frame[DECISION_COLUMNS[:3]].to_numpy(dtype="float64")
    known = np.isfinite(moves).all(axis=1)
    reference = frame[REFERENCE_COLUMN].to_numpy(dtype="float64") if REFERENCE_COLUMN in frame else None
    decided = decision.positions(proba, np.nan_to_num(moves), frame["move_scale"].to_numpy(dtype="float64"),
                                 frame["funding_rate"].to_numpy(dtype="float64"), margin=margins,
                                 reference=reference)
    return np.where(known, decided, legacy)


def walk_forward_margins(oof: pd.DataFrame, decision: TradingDecision,
                         net_return: Callable[[np.ndarray, np.ndarray], float]) -> dict[str, Any]:
    """The decision's margin for each out-of-fold row, chosen on earlier folds only, and the
    deployed model's, chosen on every fold (:func:`include.backtest.choose_margin`).

    Args:
        oof: out-of-fold rows with ``fold`` and the decision's inputs.
        decision: the run's :class:`include.backtest.TradingDecision`.
        net_return: ``net_return(positions, rows)``: the after-cost return of trading
            ``positions`` on the rows selected by the boolean mask ``rows``.

    Returns:
        ``{"per_row": (n,) margins, "per_fold": {fold: margin}, "deployed": margin}``; the first
        fold has no earlier fold and trades at the smallest margin of ``decision.margin_grid``.
    """
    fold = oof["fold"].to_numpy()

    def score(margin: float, rows: np.ndarray) -> float:
        return net_return(forecast_positions(oof, decision, margin), rows)

    per_row, per_fold = np.zeros(len(oof)), {}
    for k in sorted(np.unique(fold)):
        earlier = fold < k
        chosen = (choose_margin(lambda m, rows=earlier: score(m, rows), decision.margin_grid) if earlier.any()
                  else decision.margin_grid[0])
        per_fold[int(k)] = chosen
        per_row[fold == k] = chosen
    deployed = choose_margin(lambda m: score(m, np.ones(len(oof), dtype=bool)), decision.margin_grid)
    return {"per_row": per_row, "per_fold": per_fold, "deployed": deployed}


def walk_forward_meta(oof: pd.DataFrame, decision: TradingDecision, margins: np.ndarray,
                      realised: np.ndarray) -> dict[str, Any]:
    """Meta-labeling inside the walk-forward (:mod:`include.meta_label`): fold ``k``'s positions
    are kept where a meta-label model fitted on the positions of folds before ``k`` expects them
    to pay; the deployed model's is fitted on every fold's positions.

    A position is a training row of fold ``k``'s model only when its label horizon ends before
    fold ``k``'s first bar, so its outcome was known when the fold began (purged by the horizon;
    the outcome is the position's own, not a label the fold's forecasts were trained on). The
    models learn from the positions each fold took at its own margin; the deployed model is then
    applied at the deployed margin. Rows without class moves (traded by the decided-class rule,
    as serving trades them without a meta-label model) are neither filtered nor learned from.

    Args:
        oof: out-of-fold rows with ``fold``, the forecast and :data:`DECISION_COLUMNS`.
        decision: the run's decision (without a meta-label model).
        margins: ``(n,)`` each row's margin (:func:`walk_forward_margins`).
        realised: ``(n,)`` log return from each row's close to the close ``h`` bars later (NaN
            where not known).

    Returns:
        ``{"positions": (n,), "per_fold": {fold: positions fitted on, or None}, "deployed":
        MetaLabel or None}``; a fold without a model (too few earlier positions) keeps every
        position.
    """
    fold = oof["fold"].to_numpy()
    sized = forecast_positions(oof, decision, margins)
    side = np.sign(sized).astype(int)  # the meta-label model decides on the side; the size stays
    proba = oof[["p_down", "p_range", "p_up"]].to_numpy(dtype="float64")
    moves, scale = oof[DECISION_COLUMNS[:3]].to_numpy(dtype="float64"), oof["move_scale"].to_numpy(dtype="float64")
    rate = oof["funding_rate"].to_numpy(dtype="float64")
    # The inputs TradingDecision.positions computes for the meta-label model at serving.
    net = decision.net_expected_move(proba, np.nan_to_num(moves), scale, rate)
    inputs = meta_inputs(proba, side, net, decision.round_trip, scale)
    funding = decision.funding_cost(rate, len(oof))
    has_moves = np.isfinite(moves).all(axis=1)
    known = (side != 0) & has_moves & np.isfinite(realised)
    paid = side * (np.nan_to_num(realised) - funding) - decision.round_trip > 0
    ends = oof.index + pd.Timedelta(seconds=decision.horizon_bars * decision.bar_seconds)
    positions, per_fold = sized.copy(), {}
    for k in sorted(np.unique(fold)):
        rows = fold == k
        train = known & (fold < k) & (ends < oof.index[rows].min())
        model = fit_meta_label(inputs[train], paid[train])
        per_fold[int(k)] = None if model is None else model.rows
        if model is not None:
            positions[rows] = np.where(model.acts(inputs[rows]) | ~has_moves[rows], sized[rows], 0)
    return {"positions": positions, "per_fold": per_fold, "deployed": fit_meta_label(inputs[known], paid[known])}


def decided_positions(oof: pd.DataFrame, cfg: RunConfig, bars: pd.DataFrame, funding: pd.DataFrame | None
                      ) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The cost-aware decision's positions over out-of-fold rows, every choice in it made on
    earlier folds only: each fold at the margin chosen on the folds before it
    (:func:`walk_forward_margins`) and, with ``cfg.trade_meta_label``, only the positions a
    meta-label model of earlier folds keeps (:func:`walk_forward_meta`). What the trading step,
    the gate's replay and tuning's trials trade.

    Args:
        oof: out-of-fold rows with ``fold``, the forecast (``p_*``, ``prior_*``) and, for the
            cost-aware rule, :data:`DECISION_COLUMNS`.
        bars: the market's candles over the rows (:func:`market_frames`).
        funding: its funding settlements, or ``None`` (spot).

    Returns:
        ``((n,) positions, record)``: the record is ``{"rule", "round_trip", "margin_per_fold",
        "deployed_margin", "sizing", "meta_label"}`` (``sizing``: ``{"rule", "mean_size"}`` with
        ``trade_vol_target``, else ``None``; ``meta_label``: ``{"per_fold", "deployed"}`` or
        ``None``), read back by :func:`deployed_decision`; ``None``, with the decided-class rule's
        positions, for rows without the decision's inputs.
    """
    decision = trading_decision(cfg)
    if not all(c in oof for c in DECISION_COLUMNS):
        return forecast_positions(oof, decision), None

    def net_return(positions: np.ndarray, rows: np.ndarray) -> float:
        traded = simulate(pd.Series(positions[rows], index=oof.index[rows]), bars, funding, decision.costs,
                          cfg.bar_seconds)
        return float(traded["net_returns"].sum())

    margins = walk_forward_margins(oof, decision, net_return)
    positions, meta = forecast_positions(oof, decision, margins["per_row"]), None
    if cfg.trade_meta_label:
        closes = bars.set_index("timestamp")["close"].astype("float64")
        ahead = oof.index + pd.Timedelta(seconds=decision.horizon_bars * decision.bar_seconds)
        realised = np.log(closes.reindex(ahead).to_numpy() / closes.reindex(oof.index).to_numpy())
        meta = walk_forward_meta(oof, decision, margins["per_row"], realised)
        positions = meta["positions"]
    record = {
        "rule": "long or short where the expected move beats the round trip and funding by the margin",
        "round_trip": decision.round_trip, "margin_per_fold": margins["per_fold"],
        "deployed_margin": margins["deployed"],
        # Volatility targeting: the mean size of the positions taken (units of notional).
        "sizing": None if not decision.vol_target else {
            "rule": "min(1, reference / scale)",
            "mean_size": float(np.abs(positions[positions != 0]).mean()) if (positions != 0).any() else None},
        "meta_label": None if meta is None else {
            "per_fold": meta["per_fold"], "deployed": None if meta["deployed"] is None else meta["deployed"].to_dict()}}
    return positions, record


def trade_out_of_fold(oof: pd.DataFrame, cfg: RunConfig, bars: pd.DataFrame, funding: pd.DataFrame | None
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], dict[str, Any] | None]:
    """Simulate the gate's strategies over a candidate's out-of-fold bars: what the trading step
    and the gate's replay both run.

    Strategies: ``ensemble`` (the cost-aware decision, :func:`decided_positions`),
    ``momentum``, ``flat`` and ``buy_and_hold``.

    Returns:
        ``(simulations, signals, decision)``: per strategy :func:`include.backtest.simulate`'s
        result over every out-of-fold bar (with ``net_returns``) and its ``(n,)`` positions, and
        the decision's record (:func:`decided_positions`).
    """
    positions, record = decided_positions(oof, cfg, bars, funding)
    signals = {"ensemble": positions, "momentum": oof["momentum"].to_numpy().astype(int) - 1,
               "flat": np.zeros(len(oof), dtype=int), "buy_and_hold": np.ones(len(oof), dtype=int)}
    costs = trading_decision(cfg).costs
    sims = {name: simulate(pd.Series(sig, index=oof.index), bars, funding, costs, cfg.bar_seconds)
            for name, sig in signals.items()}
    return sims, signals, record


def market_frames(cfg: RunConfig, settings: Settings, start: datetime,
                  end: datetime) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The market's OHLCV bars and (perpetuals only, else ``None``) funding rates in
    ``[start, end)`` from the market store: what a trading simulation charges and earns."""
    store = open_store(settings)
    try:
        key = {"exchange": cfg.exchange, "symbol": cfg.symbol, "start": start, "end": end}
        bars = store.load_ohlcv(market_type=cfg.market_type, timeframe=cfg.timeframe, **key)
        funding = store.load_funding_rates(**key) if cfg.market_type == "perp" else None
    finally:
        store.dispose()
    return bars, funding


def scale_reference(scale: np.ndarray) -> float | None:
    """The volatility-scale reference of a model's training rows (:meth:`TradingDecision.sizes`):
    the median of their known scales; ``None`` where none is known."""
    scale = np.asarray(scale, dtype="float64")
    known = scale[np.isfinite(scale) & (scale > 0)]
    return float(np.median(known)) if len(known) else None


def trading_inputs(cfg: RunConfig, out_dir: Path, oof_frame: pd.DataFrame, index: pd.DatetimeIndex, y: np.ndarray,
                   folds: list[tuple[np.ndarray, np.ndarray]], final_rows: np.ndarray) -> dict[str, Any]:
    """Add the trading decision's inputs to the out-of-fold rows; the deployed model's.

    Each out-of-fold row gets its fold's standardised class moves (``move_down``,
    ``move_range``, ``move_up``: :func:`include.backtest.class_moves` on that fold's training
    rows, whose forward moves end before the fold by the purge), the label rule's volatility
    scale at the row (``move_scale``), its fold's scale reference (:data:`REFERENCE_COLUMN`,
    :func:`scale_reference` of the fold's training rows) and the last settled funding rate it saw
    (``funding_rate``, NaN without funding features), so the trading simulation decides each row
    as serving would have, from what its fold model knew.

    Returns:
        ``{"class_moves": (3,), "scale_reference"}`` (:func:`scale_reference`) of the deployed
        model's training rows ``final_rows``.
    """
    feats = pd.read_parquet(RunFolder(out_dir).features)
    scale, move = standardised_moves(feats["close"], horizon=cfg.label_horizon_bars,
                                     vol_window=cfg.label_vol_window_bars)
    move_rows = move.reindex(index).to_numpy()
    scale_rows = scale.reindex(index).to_numpy()
    per_row = pd.DataFrame(np.nan, index=oof_frame.index, columns=["move_down", "move_range", "move_up",
                                                                   REFERENCE_COLUMN])
    for train, test in folds:
        rows = index[test].intersection(oof_frame.index)
        per_row.loc[rows] = [*class_moves(y[train], move_rows[train]), scale_reference(scale_rows[train])]
    oof_frame[list(per_row.columns)] = per_row.to_numpy()
    oof_frame["move_scale"] = scale.reindex(oof_frame.index).to_numpy()
    oof_frame["funding_rate"] = (feats["funding_rate"].reindex(oof_frame.index).to_numpy()
                                 if "funding_rate" in feats else np.nan)
    return {"class_moves": class_moves(y[final_rows], move_rows[final_rows]),
            "scale_reference": scale_reference(scale_rows[final_rows])}
