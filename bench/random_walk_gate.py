"""Benchmark: how often each gate check passes on markets with no predictability at all.

Usage (from the repository root, after ``make install``)::

    PYTHONPATH=. .venv/bin/python bench/random_walk_gate.py [--seeds 20] [--week-end 2023-06-11]

For each seed, a geometric random walk of hourly BTCUSDT-like candles (hourly volatility 0.6 %,
lognormal volume), funding rates (noise around 0.01 % per 8 h) and daily open interest (a
positive random walk) is written in the file format of ``data/binance`` into a folder of its
own, and one weekly run with **default parameters** (``include.pipeline.run_once``: 730-day
window, six folds, the default families, fresh store and registry, so no champion) decides the week
ending ``--week-end``. Nothing in such data is predictable, so every skill check that passes
is a false positive: a check posed as a test at level a should pass in about a share a of the
seeds, and the gate as a whole should promote rarely. ``values`` holds each check's number (a
skill test's p-value). Prints one JSON line per seed and a
summary line with the pass rate of every check and of the gate.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd


def write_walk(folder: Path, seed: int, start: str = "2020-06-01", end: str = "2023-07-01") -> None:
    """A random-walk market in the file format of ``data/binance`` (symbol BTCUSDT, perpetual)."""
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, end, freq="h", tz="UTC", inclusive="left")
    log_close = np.log(20_000.0) + np.cumsum(rng.normal(0.0, 0.006, len(index)))
    close = np.exp(log_close)
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = np.abs(rng.normal(0.0, 0.002, (2, len(index))))
    high = np.maximum(open_, close) * (1 + wick[0])
    low = np.minimum(open_, close) * (1 - wick[1])
    volume = rng.lognormal(np.log(500.0), 0.5, len(index))
    stamp = index.strftime("%Y-%m-%dT%H:%M:%SZ")
    frames = {
        "btcusdt_perp_1h.csv.gz": pd.DataFrame({"timestamp": stamp, "open": open_, "high": high, "low": low,
                                                "close": close, "volume": volume}),
    }
    settlements = pd.date_range(start, end, freq="8h", tz="UTC", inclusive="left")
    frames["btcusdt_funding_8h.csv.gz"] = pd.DataFrame({
        "timestamp": settlements.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "funding_rate": 0.0001 + rng.normal(0.0, 0.0001, len(settlements))})
    days = pd.date_range(start, end, freq="D", tz="UTC", inclusive="left")
    frames["btcusdt_perp_open_interest_usd_1d.csv.gz"] = pd.DataFrame({
        "timestamp": days.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "open_interest": 3e9 * np.exp(np.cumsum(rng.normal(0.0, 0.03, len(days))))})
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        with gzip.open(folder / name, "wt") as fh:
            frame.to_csv(fh, index=False)


def run_seed(seed: int, week_end: str, root: Path) -> dict:
    """One default weekly run on the seed's walk; the gate's checks and decision."""
    from include.config import RunConfig, Settings
    from include.pipeline import run_once

    folder = root / f"seed{seed}"
    write_walk(folder / "data", seed)
    settings = Settings.in_folder(folder, folder / "data")
    started = time.perf_counter()
    run = run_once(RunConfig(as_of_date=week_end), settings, dag_id="weekly_retrain", run_id=f"walk{seed}")
    decision = run["decision"]
    trading = (run["trading"] or {}).get("out_of_fold", {}).get("ensemble", {})
    return {"seed": seed, "passed": decision["passed"], "checks": {c["name"]: c["passed"] for c in decision["checks"]},
            "values": {c["name"]: c["value"] for c in decision["checks"]},
            "macro_f1": run["assembled"]["ensemble"]["macro_f1"], "log_loss": run["assembled"]["ensemble"]["log_loss"],
            "prior_log_loss": run["assembled"]["baselines"]["prior"]["log_loss"],
            "sharpe": trading.get("sharpe"), "probabilistic_sharpe": trading.get("probabilistic_sharpe"),
            "deflated_sharpe": (decision.get("deflated_sharpe") or {}).get("value"),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--week-end", default="2023-06-11")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="random-walk-gate-"))
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rows.append(run_seed(seed, args.week_end, root))
        print(json.dumps(rows[-1]), flush=True)
    names = sorted({n for r in rows for n in r["checks"]})
    rates = {n: sum(r["checks"].get(n, False) for r in rows) / len(rows) for n in names}
    print(json.dumps({"benchmark": "random_walk_gate", "week_end": args.week_end, "seeds": len(rows),
                      "check_pass_rate": rates, "gate_promote_rate": sum(r["passed"] for r in rows) / len(rows),
                      "mean_seconds": round(float(np.mean([r["seconds"] for r in rows])), 1),
                      "at": datetime.now(UTC).isoformat(timespec="seconds")}))


if __name__ == "__main__":
    main()
