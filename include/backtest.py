"""Trading simulation of a forecast: positions, costs, funding, and performance metrics.

Rules (one position at a time, re-decided every bar):

* The forecast for bar t is known when bar t closes; the position it asks for is entered at the
  **next bar's open** and held over open-to-open returns ``open[t+2] / open[t+1] - 1``.
* Position (:class:`TradingDecision`, the one decision the trading simulation, the gate's
  trading evidence, monitoring, the track record and serving's signal use): the forecast's
  **expected move** over the label horizon, ``scale_t * sum_k p_k m_k``, where ``m_k`` is the
  mean forward return of class ``k`` on the model's training rows in units of the label rule's
  volatility scale ``scale_t = sigma_t sqrt(h)`` (:func:`standardised_moves`), is compared with
  what a position costs: the round trip (twice fees and slippage) and the funding the horizon
  pays at the last settled rate. Long when the expected move exceeds that cost by more than the
  decision's ``margin``, short when its negative does, flat otherwise. The margin is chosen on
  earlier walk-forward folds only (:func:`choose_margin`), never on the rows it trades.
* Size (``trade_vol_target``, off by default): one unit of notional per position, or volatility
  targeting without leverage, ``min(1, reference / scale_t)`` units, where ``reference`` is the
  median volatility scale over the rows the forecasting model was trained on (Moreira & Muir
  2017, "Volatility-Managed Portfolios"; Harvey et al. 2018, "The Impact of Volatility
  Targeting"): a position is cut where the market is more volatile than its model's training
  period, and never levered.
* Costs: every change of position pays ``fee_bps + slippage_bps`` per unit of notional traded
  (a reversal trades 2 units). Each unit is booked to the trade it belongs to: the entry to the
  trade's first bar, the exit to its last bar, a resize of a sized position (the same side, another
  size) to the bar it happens on, for the units it trades. A position still open at the end is
  closed there and pays its exit, so every trade in the statistics is a round trip. A trade is a
  run of bars on one side.
* Funding (perpetuals): a settlement at time T is charged to the position held over the bar that
  ends at T (Binance USDT-M charges positions open at the funding time): ``position *
  funding_rate``, so longs pay positive rates and shorts receive them.
* Gaps: returns are indexed by time. A bar whose open or next open is missing from the candles
  (an exchange outage) has no known return; the strategy is flat over it (no return, no
  funding), and ``skipped_bars`` counts such bars. The simulation ends at the last bar whose
  next open is known.

Metrics follow their standard definitions: annualised Sharpe ratio ``mean / std * sqrt(N)`` and
Sortino ratio ``mean / downside deviation * sqrt(N)`` of per-bar net returns with N bars per
year (Sharpe 1994; Sortino & Price 1994); maximum drawdown of the compounded equity curve; Calmar
ratio = annualised return / max drawdown (Young 1991); profit factor = gross profit / gross loss
of closed trades; the probabilistic Sharpe ratio of Bailey & López de Prado (2012), the
probability that the true Sharpe ratio exceeds a benchmark given skew and kurtosis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from include.config import TIMEFRAME_SECONDS
from include.errors import TrainingError
from include.identity import bars_per_year
from include.meta_label import MetaLabel, meta_inputs


@dataclass(frozen=True)
class TradingCosts:
    """Per-trade costs in basis points of notional.

    Attributes:
        fee_bps: exchange fee per side (Binance USDT-M taker: 4.0 bps at the base tier).
        slippage_bps: price impact and spread per side.
    """

    fee_bps: float = 4.0
    slippage_bps: float = 1.0

    @property
    def per_unit(self) -> float:
        """Cost of trading one unit of notional, as a fraction."""
        return (self.fee_bps + self.slippage_bps) / 1e4


#: Margins a decision may take, in multiples of the round-trip cost (0: trade wherever the
#: expected move pays for the round trip and the funding).
MARGIN_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)

#: The margin that takes no position at all ("stay flat"), in the grid when the run's
#: ``trade_may_stay_flat`` is on. A finite number, so that a decision's record stays plain JSON;
#: :meth:`TradingDecision.positions` treats any margin at or above it as flat, whatever the costs.
FLAT_MARGIN: float = 1e6


def stays_flat(margin: float | np.ndarray) -> np.bool_ | np.ndarray:
    """Whether a margin (one, or per row) is the "stay flat" choice: at or above :data:`FLAT_MARGIN`."""
    return np.asarray(margin, dtype="float64") >= FLAT_MARGIN


def margin_words(margin: float) -> str:
    """A margin as the report and logs print it: ``"0.5"``, or ``"flat"`` for :data:`FLAT_MARGIN`."""
    return "flat" if stays_flat(margin) else f"{float(margin):g}"


def standardised_moves(close: pd.Series, *, horizon: int, vol_window: int) -> tuple[pd.Series, pd.Series]:
    """The label rule's volatility scale and each bar's forward move in its units.

    Args:
        close: close prices, ``(n,)``, sorted by time.
        horizon: label horizon ``h`` in bars.
        vol_window: bars of the trailing volatility (the label rule's, :func:`include.labels.make_labels`).

    Returns:
        ``(scale, move)``, both ``(n,)`` aligned with ``close``: ``scale_t = sigma_t sqrt(h)``
        (a log-return fraction; NaN in the warm-up) and ``move_t = ln(close[t+h] / close[t]) /
        scale_t`` (NaN where the forward close is not known yet).
    """
    log_close = np.log(close.astype("float64"))
    scale = log_close.diff().rolling(vol_window, min_periods=vol_window).std() * math.sqrt(horizon)
    move = (log_close.shift(-horizon) - log_close) / scale.where(scale > 0)
    return scale.rename("move_scale"), move.rename("move")


def class_moves(y: np.ndarray, move: np.ndarray) -> np.ndarray:
    """Mean standardised forward move of each class (down, range, up), shape ``(3,)``, over the
    rows where the move is known; 0 for a class without such rows."""
    y, move = np.asarray(y, dtype=int), np.asarray(move, dtype="float64")
    known = np.isfinite(move)
    out = np.zeros(3)
    for k in range(3):
        rows = known & (y == k)
        out[k] = float(move[rows].mean()) if rows.any() else 0.0
    return out


@dataclass(frozen=True)
class TradingDecision:
    """The cost-aware trading decision (module docstring).

    Attributes:
        costs: fees and slippage per side.
        horizon_bars: the label horizon the expected move spans.
        bar_seconds: bar length.
        margin: required edge beyond the costs, in multiples of the round trip.
        min_probability: the position's side (up for long, down for short) must have at least
            this probability as well (``trade_min_probability``; 0 adds nothing).
        settlement_hours: hours between funding settlements (the run's ``funding_interval_hours``;
            8 on most Binance USDT-M perpetuals).
        margin_grid: the margins the walk-forward chooses from (:func:`choose_margin`):
            :data:`MARGIN_GRID`, and :data:`FLAT_MARGIN` when the run's ``trade_may_stay_flat`` is on.
        meta: a meta-label model (:class:`include.meta_label.MetaLabel`) that keeps only the
            positions it expects to pay after costs; ``None``: every position is taken.
        vol_target: size positions by :meth:`sizes` (``trade_vol_target``); off: one unit each.
        scale_reference: the deployed model's volatility-scale reference for :meth:`sizes` (the
            median scale over its training rows); ``None``: none recorded.
    """

    costs: TradingCosts
    horizon_bars: int
    bar_seconds: int
    margin: float = 0.0
    min_probability: float = 0.0
    settlement_hours: float = 8.0
    margin_grid: tuple[float, ...] = MARGIN_GRID
    meta: MetaLabel | None = None
    vol_target: bool = False
    scale_reference: float | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], margin: float = 0.0, meta: MetaLabel | None = None,
                    scale_reference: float | None = None) -> TradingDecision:
        """The decision of a run's parameters (a ``RunConfig.to_dict()`` or a version's lineage
        ``config``): ``fee_bps``, ``slippage_bps``, ``label_horizon_bars``, ``timeframe``,
        ``trade_min_probability``, ``funding_interval_hours``, ``trade_may_stay_flat`` and
        ``trade_vol_target`` (a lineage recorded before either existed chose from
        :data:`MARGIN_GRID` alone, one unit a position).

        Raises:
            KeyError: a parameter is missing.
        """
        return cls(costs=TradingCosts(fee_bps=float(config["fee_bps"]), slippage_bps=float(config["slippage_bps"])),
                   horizon_bars=max(int(config["label_horizon_bars"]), 1),
                   bar_seconds=TIMEFRAME_SECONDS[config["timeframe"]], margin=margin,
                   min_probability=float(config.get("trade_min_probability", 0.0)),
                   settlement_hours=float(config.get("funding_interval_hours", 8)),
                   margin_grid=MARGIN_GRID + ((FLAT_MARGIN,) if config.get("trade_may_stay_flat", False) else ()),
                   meta=meta, vol_target=bool(config.get("trade_vol_target", False)),
                   scale_reference=scale_reference)

    @property
    def round_trip(self) -> float:
        """Cost of entering and leaving one unit, as a fraction."""
        return 2 * self.costs.per_unit

    def expected_move(self, proba: np.ndarray, moves: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """``(n,)`` expected log return over the horizon: ``scale * (proba @ moves)``; ``moves``
        is ``(3,)`` or per row ``(n, 3)``; a row without a scale expects no move."""
        proba = np.asarray(proba, dtype="float64")
        moves = np.broadcast_to(np.asarray(moves, dtype="float64"), proba.shape)
        scale = np.nan_to_num(np.asarray(scale, dtype="float64"), nan=0.0)
        return scale * (proba * moves).sum(axis=1)

    def sizes(self, scale: np.ndarray, reference: float | np.ndarray | None = None) -> np.ndarray:
        """``(n,)`` units of notional a position takes at each bar: 1 without :attr:`vol_target`;
        with it ``min(1, reference / scale)`` (module docstring), and 1 where the scale or the
        reference is unknown or not positive.

        Args:
            scale: ``(n,)`` the label rule's volatility scale at each bar.
            reference: per row or one value, overriding :attr:`scale_reference`.
        """
        scale = np.asarray(scale, dtype="float64")
        if not self.vol_target:
            return np.ones(scale.shape)
        reference = self.scale_reference if reference is None else reference
        ref = np.broadcast_to(np.asarray(np.nan if reference is None else reference, dtype="float64"), scale.shape)
        known = np.isfinite(scale) & (scale > 0) & np.isfinite(ref) & (ref > 0)
        return np.where(known, np.minimum(1.0, ref / np.where(known, scale, 1.0)), 1.0)

    def positions(self, proba: np.ndarray, moves: np.ndarray, scale: np.ndarray,
                  funding_rate: np.ndarray | None = None, margin: float | np.ndarray | None = None,
                  reference: float | np.ndarray | None = None) -> np.ndarray:
        """Target positions, ``(n,)``: the side in {-1, 0, +1}, times :meth:`sizes` with
        :attr:`vol_target` (then floats in [-1, 1]).

        Args:
            proba: ``(n, 3)`` class probabilities (down, range, up).
            moves: ``(3,)`` or ``(n, 3)`` standardised class moves (:func:`class_moves`).
            scale: ``(n,)`` the label rule's volatility scale at each bar.
            funding_rate: ``(n,)`` the last settled funding rate at each bar (fraction per
                settlement; ``None`` or NaN: none, as for spot).
            margin: per row or one value, overriding :attr:`margin`; at or above
                :data:`FLAT_MARGIN`, no position.
            reference: per row or one value, overriding :attr:`scale_reference` (:meth:`sizes`).

        With :attr:`meta`, a position is kept only where the meta-label model expects it to pay
        (it decides on the side; the size comes after).
        """
        proba = np.asarray(proba, dtype="float64")
        net = self.net_expected_move(proba, moves, scale, funding_rate)
        margin = np.asarray(self.margin if margin is None else margin, dtype="float64")
        hurdle = self.round_trip * (1.0 + margin)
        trades = ~stays_flat(margin)
        long_ok = trades & (net > hurdle) & (proba[:, 2] >= self.min_probability)
        short_ok = trades & (-net > hurdle) & (proba[:, 0] >= self.min_probability)
        side = np.where(long_ok, 1, np.where(short_ok, -1, 0))
        if self.meta is not None:
            side = np.where(self.meta.acts(meta_inputs(proba, side, net, self.round_trip, scale)), side, 0)
        return side * self.sizes(scale, reference) if self.vol_target else side

    def net_expected_move(self, proba: np.ndarray, moves: np.ndarray, scale: np.ndarray,
                          funding_rate: np.ndarray | None) -> np.ndarray:
        """``(n,)`` :meth:`expected_move` less the funding a long pays over the horizon
        (:meth:`funding_cost`): what a long expects to make before the round trip, and a short
        its negative."""
        return self.expected_move(proba, moves, scale) - self.funding_cost(funding_rate, len(proba))

    def funding_cost(self, funding_rate: np.ndarray | None, n: int) -> np.ndarray:
        """``(n,)`` funding a long pays over the horizon at the last settled rate (a fraction;
        negative where it receives; 0 for ``None`` or NaN)."""
        rate = (np.zeros(n) if funding_rate is None
                else np.nan_to_num(np.asarray(funding_rate, dtype="float64"), nan=0.0))
        return rate * self.horizon_bars * self.bar_seconds / (self.settlement_hours * 3600)


def choose_margin(score: Any, grid: tuple[float, ...] = MARGIN_GRID) -> float:
    """The margin of ``grid`` whose positions made the most after-cost return, ``score(margin)``
    giving that return (on rows the margin is then *not* used on); ties go to the larger margin
    (fewer trades for the same return), so a grid with :data:`FLAT_MARGIN` stays flat where no
    margin made money."""
    best = max(grid, key=lambda m: (round(float(score(m)), 12), m))
    return float(best)


def positions_from_proba(proba: np.ndarray, prior: np.ndarray, min_probability: float) -> np.ndarray:
    """Target position per bar from class probabilities.

    Args:
        proba: ``(n, 3)`` probabilities (down, range, up).
        prior: ``(3,)`` or ``(n, 3)`` training class frequencies for the decision rule.
        min_probability: the decided class's probability must reach this to take a position.

    Returns:
        ``(n,)`` positions in {-1, 0, +1}.
    """
    proba = np.asarray(proba, dtype="float64")
    prior = np.broadcast_to(np.asarray(prior, dtype="float64"), proba.shape)
    decided = (proba / np.where(prior > 0, prior, 1.0)).argmax(axis=1)
    confident = proba[np.arange(len(proba)), decided] >= min_probability
    return np.where(confident, np.array([-1, 0, 1])[decided], 0)


def simulate(signal: pd.Series, bars: pd.DataFrame, funding: pd.DataFrame | None, costs: TradingCosts,
             bar_seconds: int) -> dict[str, Any]:
    """Simulate target positions over candles (rules in the module docstring).

    Args:
        signal: ``(n,)`` target position per bar open time (index: UTC timestamps), units of
            notional in [-1, 1] (a side, or a sized side); the position is entered at the next
            bar's open.
        bars: candles with ``timestamp`` and ``open``; bars missing inside the span are gaps.
        funding: settlements with ``timestamp`` and ``funding_rate`` (fraction per settlement),
            or ``None`` (spot).
        costs: fees and slippage.
        bar_seconds: bar length in seconds, for annualisation.

    Returns:
        Metrics (see :func:`performance`) plus ``turnover`` (units traded), ``fees_and_slippage``
        and ``funding_paid`` (fractions of equity, summed per bar), ``skipped_bars`` (bars inside
        the span without a known return), ``equity`` (list of ``[iso time, equity]``) and
        ``net_returns`` (per-bar net return indexed by the signal's bar, a Series: not JSON).

    Raises:
        TrainingError: the candles hold no open for any bar after the signal.
    """
    bar = pd.Timedelta(seconds=bar_seconds)
    opens = bars.set_index("timestamp")["open"].astype("float64")
    opens = opens[~opens.index.duplicated()].sort_index()
    held_from = signal.index + bar  # entered at the next bar's open
    if opens.empty or not (held_from + bar <= opens.index.max()).any():
        raise TrainingError("trading simulation: the candles hold no open after the signal's bars "
                            f"({signal.index.min()} to {signal.index.max()})")
    keep = np.asarray(held_from + bar <= opens.index.max())  # the simulation ends with the candles
    held_from = held_from[keep]
    ret = (opens.reindex(held_from + bar).to_numpy() / opens.reindex(held_from).to_numpy()) - 1.0
    skipped = np.isnan(ret)
    pos = np.where(skipped, 0.0, np.asarray(signal, dtype="float64")[keep])
    ret = np.where(skipped, 0.0, ret)
    before = np.concatenate([[0.0], pos[:-1]])
    after = np.concatenate([pos[1:], [0.0]])
    # A resize (same side, another size) trades the difference, booked to the bar it happens on;
    # a change of side exits the whole position on its last bar and enters the new one on its first.
    resized = (pos != before) & (np.sign(pos) == np.sign(before)) & (pos != 0)
    resizes_next = (pos != after) & (np.sign(pos) == np.sign(after)) & (pos != 0)
    entry = np.where(pos != before, np.where(resized, np.abs(pos - before), np.abs(pos)), 0.0)
    exit_ = np.where((pos != after) & ~resizes_next, np.abs(pos), 0.0)
    cost = (entry + exit_) * costs.per_unit
    fund = np.zeros(len(pos))
    if funding is not None and len(funding):
        rates = funding.set_index("timestamp")["funding_rate"].astype("float64")
        rates = rates[~rates.index.duplicated()]
        # The settlement at T is paid by the position held over the bar that ends at T.
        fund = pos * rates.reindex(held_from + bar).fillna(0.0).to_numpy()
    net = pos * ret - cost - fund
    metrics = performance(net, pos, bar_seconds)
    metrics.update({"turnover": float((entry + exit_).sum()), "fees_and_slippage": float(cost.sum()),
                    "funding_paid": float(fund.sum()), "skipped_bars": int(skipped.sum()),
                    "costs": asdict(costs)})
    equity = np.cumprod(1.0 + net)
    step = max(1, len(equity) // 400)  # enough points for a plot, small enough for JSON
    metrics["equity"] = [[t.isoformat(), float(e)] for t, e in zip(held_from[::step], equity[::step], strict=True)]
    metrics["net_returns"] = pd.Series(net, index=signal.index[keep], name="net_return")
    return metrics


def _trades(net: np.ndarray, pos: np.ndarray) -> list[float]:
    """Compounded net return of each run of bars on one side (its costs are booked inside it)."""
    trades, current, prev = [], None, 0.0
    for r, p in zip(net, np.sign(pos), strict=True):
        if p != prev:
            if current is not None:
                trades.append(current - 1.0)
            current = 1.0 + r if p != 0 else None
        elif current is not None:
            current *= 1.0 + r
        prev = p
    if current is not None:
        trades.append(current - 1.0)
    return trades


def probabilistic_sharpe(net: np.ndarray, benchmark: float = 0.0) -> float:
    """Probabilistic Sharpe ratio (Bailey & López de Prado 2012, eq. 2), per-bar Sharpe units.

    ``PSR = Phi((SR - SR*) * sqrt(n - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2))`` with g3 the
    skewness and g4 the (non-excess) kurtosis of the returns.

    Returns:
        A probability in [0, 1]; NaN with fewer than 3 returns or zero variance.
    """
    net = np.asarray(net, dtype="float64")
    if len(net) < 3 or net.std(ddof=1) == 0:
        return float("nan")
    sr = net.mean() / net.std(ddof=1)
    g3, g4 = stats.skew(net), stats.kurtosis(net, fisher=False)
    denom = 1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr**2
    if denom <= 0:
        return float("nan")
    return float(stats.norm.cdf((sr - benchmark) * math.sqrt(len(net) - 1) / math.sqrt(denom)))


#: Euler-Mascheroni constant, in the expected maximum of N standard normals.
EULER_GAMMA = 0.5772156649015329


def expected_max_sharpe(n_trials: int, trials_variance: float) -> float:
    """Expected maximum Sharpe ratio of ``n_trials`` unskilled trials (true Sharpe 0).

    Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", eq. 2 (from the False Strategy
    theorem): ``SR0 = sqrt(V) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e)))``, with ``g``
    the Euler-Mascheroni constant and ``V`` the variance of the trials' Sharpe ratios.

    Args:
        n_trials: configurations evaluated, ``N >= 1``; one trial gives 0.
        trials_variance: variance of their estimated Sharpe ratios, in the units of the result.

    Raises:
        ValueError: ``n_trials < 1`` or a negative variance.
    """
    if n_trials < 1 or trials_variance < 0:
        raise ValueError(f"need n_trials >= 1 and a variance >= 0, got {n_trials}, {trials_variance}")
    if n_trials == 1:
        return 0.0
    z = stats.norm.ppf
    return float(math.sqrt(trials_variance) * ((1 - EULER_GAMMA) * z(1 - 1 / n_trials)
                                               + EULER_GAMMA * z(1 - 1 / (n_trials * math.e))))


def deflated_sharpe_ratio(sharpe: float, n_obs: int, skew: float, kurtosis: float, n_trials: int,
                          trials_variance: float) -> float:
    """Deflated Sharpe ratio: the probability that the true Sharpe ratio exceeds the expected
    maximum of ``n_trials`` unskilled trials.

    Bailey & López de Prado (2014), eq. 1: the probabilistic Sharpe ratio
    ``Phi((SR - SR0) * sqrt(T - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2))`` with the benchmark
    ``SR0`` = :func:`expected_max_sharpe`. All Sharpe ratios per observation (not annualised).

    Args:
        sharpe: the selected strategy's Sharpe ratio per observation.
        n_obs: returns behind it (``T``).
        skew: their skewness (``g3``).
        kurtosis: their non-excess kurtosis (``g4``; 3 for normal returns).
        n_trials: every configuration evaluated (``N``).
        trials_variance: variance of the trials' Sharpe ratios per observation (``V``).

    Returns:
        A probability in [0, 1]; NaN with fewer than 3 observations or a non-positive
        variance term.

    Raises:
        ValueError: from :func:`expected_max_sharpe`.
    """
    benchmark = expected_max_sharpe(n_trials, trials_variance)
    denom = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if n_obs < 3 or denom <= 0:
        return float("nan")
    return float(stats.norm.cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(denom)))


def performance(net: np.ndarray, pos: np.ndarray, bar_seconds: int) -> dict[str, Any]:
    """Performance metrics of per-bar net returns ``net`` with positions ``pos`` (same length)."""
    n = len(net)
    per_year = bars_per_year(bar_seconds)
    equity = np.cumprod(1.0 + net) if n else np.array([1.0])
    total = float(equity[-1] - 1.0)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))
    drawdown = float((1.0 - np.concatenate([[1.0], equity]) / peak).max())
    std = net.std(ddof=1) if n > 1 else 0.0
    downside = np.sqrt(np.mean(np.minimum(net, 0.0) ** 2)) if n else 0.0
    years = n / per_year if n else float("nan")
    annual = (1.0 + total) ** (1.0 / years) - 1.0 if n and total > -1 else float("nan")
    trades = _trades(net, pos)
    gains = sum(t for t in trades if t > 0)
    losses = -sum(t for t in trades if t < 0)
    return {
        "bars": int(n),
        "total_return": total,
        "annualised_return": float(annual),
        "sharpe": float(net.mean() / std * math.sqrt(per_year)) if std > 0 else 0.0,
        "sortino": float(net.mean() / downside * math.sqrt(per_year)) if downside > 0 else 0.0,
        "max_drawdown": drawdown,
        "calmar": float(annual / drawdown) if drawdown > 0 and not math.isnan(annual) else float("nan"),
        "profit_factor": float(gains / losses) if losses > 0 else (float("inf") if gains > 0 else float("nan")),
        "hit_rate": float(np.mean([t > 0 for t in trades])) if trades else float("nan"),
        "trades": len(trades),
        "exposure": float(np.mean(pos != 0)) if n else 0.0,
        "probabilistic_sharpe": probabilistic_sharpe(net),
        # The inputs of a deflated Sharpe ratio (per bar): include.gate counts the trials.
        "sharpe_per_bar": float(net.mean() / std) if std > 0 else 0.0,
        "skew": float(stats.skew(net)) if n > 2 and std > 0 else float("nan"),
        "kurtosis": float(stats.kurtosis(net, fisher=False)) if n > 2 and std > 0 else float("nan"),
    }
