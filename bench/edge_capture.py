"""Benchmark: how much of a planted edge the pipeline captures, against the oracle.

Usage (from the repository root, after ``make install``)::

    PYTHONPATH=. .venv/bin/python bench/edge_capture.py --seeds 0-4 [--jobs 2]
    PYTHONPATH=. .venv/bin/python bench/edge_capture.py --cells ar1:0.3 funding:0.15 --seeds 0-4 \
        --set models=lightgbm,xgboost,random_forest,logistic

Each cell is a synthetic BTCUSDT perpetual (:mod:`bench.synthetic_markets`) with an edge of known
form and size: ``walk`` (none), ``ar1:phi`` (the last bar's return predicts the next), ``funding:
beta`` (the last funding settlement predicts the returns until the next) and ``regime:phi`` (an
AR(1) edge only in the high-volatility state). For each cell and seed, one weekly run
(``include.pipeline.run_once``, default parameters unless ``--set`` changes them, week ending
``--week``) trains the candidate; its out-of-fold rows are walk-forward forecasts, each made by a
fold model fitted only on rows before its week (purged and embargoed), so they are forward
forecasts of the recipe, six weeks of them.

**The oracle** is the true conditional distribution of each row's label given what the market
had revealed at the row's bar, from the generating process: the label is the class of the 4-bar
forward log return ``S`` against ``+-k sigma_t sqrt(4)`` (the pipeline's rule, ``sigma_t`` the
trailing 168-bar standard deviation, computed here from the same candles), and ``S`` given the
state is normal with

- ``ar1``: mean ``r_t (phi + phi^2 + phi^3 + phi^4)``, variance ``sigma^2 sum_{j=1..4}
  (sum_{k=0..4-j} phi^k)^2``;
- ``regime``: the same with the state's ``phi`` and ``sigma`` at bar ``t`` (a switch inside the
  next four bars, about 1 % of rows, is ignored: the oracle is then very nearly, not exactly, the
  truth);
- ``funding``: mean ``beta sigma z`` times the bars of the horizon still priced off the known
  settlement, variance ``4 sigma^2`` plus ``(beta sigma)^2 m^2`` per later settlement that moves
  ``m`` of them (its z-score is not yet known);
- ``walk``: mean 0, variance ``4 sigma^2``.

Per cell the table gives the out-of-fold log-loss gain over the class prior (the fold's training
frequencies, as the gate's test uses) of the ensemble and of the oracle, in nats per row, and the
**captured share** ``(prior - ensemble) / (prior - oracle)``; the after-cost Sharpe ratio of the
pipeline's out-of-fold strategy (the run's own trading simulation) and of the **oracle policy**
(long or short the sign of the expected 4-bar move where its size exceeds the round-trip cost of
fees and slippage, flat elsewhere; re-decided every bar; :func:`include.backtest.simulate` on the same bars, costs and
funding), their ratio, the share of bars each holds a position, and the gate's decision. On a
``walk`` the oracle's true gain is zero (its measured gain is sampling noise: the fold's class
prior is itself an estimate), so no share is defined: the table gives the ensemble's gain (within
noise of zero, or below it, when nothing is there to find) and its exposure. A share is a ratio of
two noisy gains: with 1,008 rows the standard error of a gain is about 0.002 nats, so shares are
meaningful only where the oracle's gain is several times that (AR 0.2 and above, the funding edge).

Output: one JSON line per (cell, seed) appended to ``--out`` (default
``var/artifacts/edge_capture.jsonl``; a line already there for the same cell, seed, week and
settings is skipped) and the markdown summary of the file at the same path with ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from bench.gate_year import code_version, seed_range
from bench.synthetic_markets import HOURLY_SIGMA, market_frames, write_market
from include.config import PROJECT_ROOT, RunConfig, Settings
from include.evaluation import log_loss_rows
from include.run_folder import RunFolder

DEFAULT_OUT = PROJECT_ROOT / "var" / "artifacts" / "edge_capture.jsonl"
DEFAULT_CELLS = ("walk", "ar1:0.05", "ar1:0.1", "ar1:0.2", "ar1:0.3", "funding:0.15", "regime:0.3")
#: Days of synthetic history before the training window (warm-up of features and labels).
LEAD_DAYS = 60
PROBA = ["p_down", "p_range", "p_up"]
PRIOR = ["prior_down", "prior_range", "prior_up"]


def parse_cell(cell: str) -> tuple[str, float]:
    """``"ar1:0.3"`` -> ``("ar1", 0.3)``; ``"walk"`` -> ``("walk", 0.0)``.

    Raises:
        ValueError: an unknown kind or a strength that is not a number.
    """
    kind, _, strength = cell.partition(":")
    if kind not in ("walk", "ar1", "funding", "regime"):
        raise ValueError(f"cell {cell!r}: expected walk, ar1:<phi>, funding:<beta> or regime:<phi>")
    return kind, float(strength or 0.0)


def edge_kwargs(kind: str, strength: float) -> dict[str, float]:
    """The :func:`bench.synthetic_markets.market_frames` arguments of a cell's edge."""
    return {"beta": strength} if kind == "funding" else {"phi": strength} if kind in ("ar1", "regime") else {}


def _ar_sum_moments(phi: np.ndarray, sigma: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean multiplier of ``r_t`` and variance of the ``horizon``-bar sum of an AR(1)."""
    mean = sum(phi ** i for i in range(1, horizon + 1))
    var = sum(sum(phi ** k for k in range(0, horizon - j + 1)) ** 2 for j in range(1, horizon + 1)) * sigma ** 2
    return mean, var


def oracle(frames: dict[str, pd.DataFrame], kind: str, strength: float, rows: pd.DatetimeIndex, *,
           horizon: int = 4, k: float = 0.43, vol_window: int = 168) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's label distribution and expected move (the mean of the ``horizon``-bar forward
    log return) at ``rows`` (bar open times).

    Args:
        frames: :func:`bench.synthetic_markets.market_frames` of the market.
        kind, strength: the cell.
        rows: bars to forecast, shape ``(n,)``.
        horizon, k, vol_window: the label rule (:func:`include.labels.make_labels`).

    Returns:
        ``(proba (n, 3), expected_move (n,))``.
    """
    ohlcv = frames["ohlcv"]
    index = pd.DatetimeIndex(pd.to_datetime(ohlcv["timestamp"], utc=True))
    log_close = pd.Series(np.log(ohlcv["close"].to_numpy()), index=index)
    r = log_close.diff()
    sigma_hat = r.rolling(vol_window, min_periods=vol_window).std()
    pos = index.get_indexer(rows)
    if (pos < 0).any():
        raise ValueError("rows outside the market's bars")
    state = frames["state"]
    r_t = r.to_numpy()[pos]
    thr = k * sigma_hat.to_numpy()[pos] * math.sqrt(horizon)
    sig = state["sigma"].to_numpy()[pos]
    if kind in ("ar1", "regime"):
        phi = np.full(len(pos), strength) * (state["high"].to_numpy()[pos] if kind == "regime" else 1)
        mult, var = _ar_sum_moments(phi, sig, horizon)
        mean = r_t * mult
    elif kind == "funding":
        settlements = pd.DatetimeIndex(pd.to_datetime(frames["funding"]["timestamp"], utc=True))
        last = np.searchsorted(settlements.asi8, index.asi8, side="right") - 1
        ids = np.stack([last[np.minimum(pos + i, len(index) - 1)] for i in range(horizon)], axis=1)
        z = state["z_known"].to_numpy()[pos]
        unit = strength * HOURLY_SIGMA
        known = (ids == ids[:, :1]).sum(axis=1)
        mean = unit * z * known
        var = horizon * sig ** 2
        for later in range(1, horizon):  # each later settlement's bars
            count = (ids == ids[:, :1] + later).sum(axis=1)
            var = var + (unit * count) ** 2
    else:
        mean, var = np.zeros(len(pos)), horizon * sig ** 2
    sd = np.sqrt(var)
    down = norm.cdf((-thr - mean) / sd)
    up = norm.sf((thr - mean) / sd)
    return np.c_[down, 1.0 - down - up, up], mean


def oracle_policy_sharpe(frames: dict[str, pd.DataFrame], rows: pd.DatetimeIndex, expected: np.ndarray,
                         cfg: RunConfig) -> dict[str, Any]:
    """After-cost performance of trading the oracle's expected move over the label horizon where
    its size exceeds the round trip (twice fees and slippage), on ``rows``' bars."""
    from include.backtest import TradingCosts, simulate

    costs = TradingCosts(fee_bps=cfg.fee_bps, slippage_bps=cfg.slippage_bps)
    signal = np.where(np.abs(expected) > 2 * costs.per_unit, np.sign(expected), 0.0)
    bars = frames["ohlcv"].assign(timestamp=lambda f: pd.to_datetime(f["timestamp"], utc=True))
    funding = frames["funding"].assign(timestamp=lambda f: pd.to_datetime(f["timestamp"], utc=True))
    result = simulate(pd.Series(signal, index=rows), bars, funding, costs, cfg.bar_seconds)
    return {key: result[key] for key in ("sharpe", "exposure", "trades", "total_return")}


def run_cell(kind: str, strength: float, seed: int, week: str, overrides: dict[str, Any],
             workdir: str | None) -> dict[str, Any]:
    """One (cell, seed): write the market, run the week, score the ensemble against the oracle."""
    from include.pipeline import run_once

    cfg = RunConfig.from_params({"as_of_date": week, "symbol": "BTCUSDT", **overrides})
    end = date.fromisoformat(week)
    start = end - timedelta(days=cfg.train_window_days + LEAD_DAYS)
    root = Path(tempfile.mkdtemp(prefix=f"edge-{kind}-{strength:g}-{seed}-", dir=workdir))
    started = time.perf_counter()
    try:
        frames = market_frames(kind, seed, start=start.isoformat(), end=(end + timedelta(days=1)).isoformat(),
                               **edge_kwargs(kind, strength))
        write_market(root / "data", kind, seed, start=start.isoformat(),
                     end=(end + timedelta(days=1)).isoformat(), **edge_kwargs(kind, strength))
        run = run_once(cfg, Settings.in_folder(root, root / "data"), dag_id="edge_capture",
                       run_id=f"edge_capture__{kind}_{strength:g}_s{seed}__{week}")
        oof = pd.read_parquet(RunFolder(Path(run["summary"]["path"]).parent).ensemble_oof)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    y = oof["label"].to_numpy().astype(int)
    proba, expected = oracle(frames, kind, strength, pd.DatetimeIndex(oof.index), horizon=cfg.label_horizon_bars,
                             k=cfg.label_threshold, vol_window=cfg.label_vol_window_bars)
    prior_ll = float(log_loss_rows(y, oof[PRIOR].to_numpy()).mean())
    ens_ll = float(log_loss_rows(y, oof[PROBA].to_numpy()).mean())
    # The oracle's distribution is the fixed-horizon label's: for another label rule only the
    # trading comparison (the oracle policy) is defined.
    oracle_ll = float(log_loss_rows(y, proba).mean()) if cfg.label_threshold_mode == "volatility" else float("nan")
    decision = run["decision"]
    ens_trading = ((decision.get("trading") or {}).get("out_of_fold") or {}).get("ensemble") or {}
    policy = oracle_policy_sharpe(frames, pd.DatetimeIndex(oof.index), expected, cfg)
    gain, oracle_gain = prior_ll - ens_ll, prior_ll - oracle_ll
    return {"benchmark": "edge_capture", "kind": kind, "strength": strength, "seed": seed, "week": week,
            "settings": overrides, "rows": int(len(oof)), "prior_log_loss": prior_ll, "ensemble_log_loss": ens_ll,
            "oracle_log_loss": oracle_ll, "ensemble_gain": gain, "oracle_gain": oracle_gain,
            "captured_share": gain / oracle_gain if kind != "walk" and oracle_gain > 1e-4 else None,
            "label_rule": cfg.label_threshold_mode,
            "ensemble_sharpe": ens_trading.get("sharpe"), "ensemble_exposure": ens_trading.get("exposure"),
            "oracle_sharpe": policy["sharpe"], "oracle_exposure": policy["exposure"],
            "sharpe_share": (ens_trading.get("sharpe") / policy["sharpe"]
                             if ens_trading.get("sharpe") is not None and policy["sharpe"] > 0.5 else None),
            "log_loss_p": decision["evidence"]["log_loss"]["p_value"], "action": run["action"]["action"],
            "weights": (decision.get("candidate_out_of_fold") or {}).get("weights"),
            "seconds": round(time.perf_counter() - started, 1), "code": code_version(),
            "at": datetime.now(UTC).isoformat(timespec="seconds")}


def _key(kind: str, strength: float, seed: int, week: str, overrides: dict[str, Any]) -> str:
    return json.dumps({"kind": kind, "strength": strength, "seed": seed, "week": week, "settings": overrides},
                      sort_keys=True)


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.fmean(values):.3g} ± {statistics.stdev(values):.2g}"


def _pooled(rows: list[dict[str, Any]], own: str, oracle: str) -> str:
    """The share of the oracle's total over the seeds that the pipeline's total reaches (a ratio
    of sums: per-seed ratios of two noisy numbers are unstable where the oracle's is small);
    "–" without an edge."""
    if rows[0]["kind"] == "walk":
        return "–"
    mine = [r[own] for r in rows if r[own] is not None and r[oracle] is not None]
    best = [r[oracle] for r in rows if r[own] is not None and r[oracle] is not None]
    return f"{sum(mine) / sum(best):.2f}" if best and sum(best) > 0 else "–"


def summary(records: list[dict[str, Any]]) -> str:
    """Markdown table: per cell and settings, mean ± standard deviation over seeds, and the
    captured shares of the oracle's log-loss gain and after-cost Sharpe ratio pooled over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "walk":  # no edge: the oracle's "gain" is sampling noise, and no share is defined
            r = {**r, "captured_share": None, "sharpe_share": None}
        label = f"{r['kind']}" + (f" {r['strength']:g}" if r["kind"] != "walk" else "")
        groups.setdefault((json.dumps(r["settings"], sort_keys=True), label), []).append(r)
    lines = ["| settings | cell | seeds | ensemble gain (nats/row) | oracle gain | captured share | "
             "ensemble Sharpe | oracle-policy Sharpe | Sharpe share | ensemble exposure | oracle exposure | "
             "log-loss p | promoted |", "|" + "---|" * 13]
    for (settings, label), rows in sorted(groups.items()):
        lines.append(" | ".join([
            settings, label, str(len(rows)),
            _mean_sd([r["ensemble_gain"] for r in rows]), _mean_sd([r["oracle_gain"] for r in rows]),
            _pooled(rows, "ensemble_gain", "oracle_gain"), _mean_sd([r["ensemble_sharpe"] for r in rows]),
            _mean_sd([r["oracle_sharpe"] for r in rows]), _pooled(rows, "ensemble_sharpe", "oracle_sharpe"),
            _mean_sd([r["ensemble_exposure"] for r in rows]), _mean_sd([r["oracle_exposure"] for r in rows]),
            _mean_sd([r["log_loss_p"] for r in rows]),
            f"{sum(r['action'] == 'promote' for r in rows)}/{len(rows)}"]).join(["| ", " |"]))
    return "\n".join(lines) + "\n"


def run_overrides(pairs: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs as run parameters: JSON values where they parse (numbers, booleans),
    ``models`` as a comma list, anything else as a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name == "models":
            out[name] = value.split(",")
            continue
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=list(DEFAULT_CELLS), help="cells (default: all seven)")
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0-4"), help="seed range (default 0-4)")
    parser.add_argument("--week", default="2023-01-08", help="the run's week end (a Sunday)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a run parameter (models as a comma list); repeatable")
    parser.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--log-level", default="ERROR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level)
    overrides = run_overrides(args.set)
    RunConfig.from_params({"as_of_date": args.week, **overrides})  # bad settings fail before any run
    cells = [parse_cell(c) for c in args.cells]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            r = json.loads(line)
            done.add(_key(r["kind"], r["strength"], r["seed"], r["week"], r["settings"]))
    todo = [(kind, strength, seed) for kind, strength in cells for seed in args.seeds
            if _key(kind, strength, seed, args.week, overrides) not in done]
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = [pool.submit(run_cell, kind, strength, seed, args.week, overrides, args.workdir)
                   for kind, strength, seed in todo]
        for future in as_completed(futures):
            record = future.result()
            with args.out.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(f"{record['kind']} {record['strength']:g} seed {record['seed']}: captured "
                  f"{record['captured_share']}, gain {record['ensemble_gain']:.5f} / {record['oracle_gain']:.5f}, "
                  f"Sharpe {record['ensemble_sharpe']} / {record['oracle_sharpe']:.2f}, {record['seconds']} s",
                  file=sys.stderr, flush=True)
    records = [json.loads(line) for line in args.out.read_text().splitlines()]
    table = summary(records)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
