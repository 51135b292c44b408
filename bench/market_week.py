"""Benchmark: what one market's steady-state weekly run costs, step by step, against its fits.

Runs one market's weekly run (``include.pipeline.run_once``, default parameters unless ``--set``
changes them) for consecutive weeks on one fresh market store, registry and run folder, as a
user's weekly schedule does: the first week ingests and validates the whole window, the later
ones only what is new. Each week's time is split by step from the run's own record
(``step_times`` in its summary, :func:`include.run_folder.timed_step`).

Then, in the same process, the floor: the full-size fits a week cannot avoid, taken as each
default model family fitted twice on the last week's labelled training rows (``dataset.parquet``,
all rows, the family's default hyperparameters, the thread count a run uses). The target
(issue 32) is a steady-state week at most ``--target`` (0.5) times that floor.

Usage (from the repository root, after ``make install``)::

    PYTHONPATH=. .venv/bin/python bench/market_week.py --symbol BTCUSDT \\
        --weeks 2023-12-10 2023-12-17 2023-12-24

Prints one JSON line per week (``wall_s``; ``decided_s``, the same less the report, which is
rendered after the decision; ``cpu_s``, this process's CPU seconds, all threads: the families
train side by side), then one summary line with ``floor_s``, ``steady_s`` (the last week),
their ratio (``ratio``; ``ratio_to_decision`` without the report; ``cpu_ratio`` of CPU
seconds) and whether ``ratio`` meets the target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.edge_capture import run_overrides  # noqa: E402
from include.config import RunConfig, Settings  # noqa: E402
from include.pipeline import run_once  # noqa: E402
from include.run_folder import RunFolder  # noqa: E402

DAG_ID = "market_week"


def fit_floor(dataset: Path, cfg: RunConfig, repeats: int = 2) -> dict[str, Any]:
    """Seconds to fit each of ``cfg.models`` ``repeats`` times on the labelled rows of ``dataset``
    with its default hyperparameters and the run's thread count.

    Returns:
        ``{"seconds", "per_family": {family: [seconds per fit]}, "cpu_s", "rows", "features"}``.
    """
    from include.resources import model_threads
    from include.training import build_estimator

    spec = json.loads(RunFolder(dataset.parent).feature_spec.read_text())
    table = pd.read_parquet(dataset)
    table = table[table["label"].notna()]
    X, y = table[list(spec["names"])], table["label"].astype(int).to_numpy()
    per_family: dict[str, list[float]] = {}
    cpu = time.process_time()
    for family in cfg.models:
        for _ in range(repeats):
            estimator = build_estimator(family, random_state=cfg.random_state, n_jobs=model_threads())
            started = time.perf_counter()
            estimator.fit(X, y)
            per_family.setdefault(family, []).append(round(time.perf_counter() - started, 3))
    return {"seconds": round(sum(sum(v) for v in per_family.values()), 3), "per_family": per_family,
            "cpu_s": round(time.process_time() - cpu, 3),
            "rows": int(len(X)), "features": int(X.shape[1])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--weeks", nargs="+", default=["2023-12-10", "2023-12-17", "2023-12-24"])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a run parameter (repeat; models as a comma list)")
    parser.add_argument("--target", type=float, default=0.5, help="steady week / floor at most this")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    overrides = run_overrides(args.set)
    root = args.root or Path(tempfile.mkdtemp(prefix="market_week."))
    root.mkdir(parents=True, exist_ok=True)
    settings = Settings.in_folder(root)
    weeks = []
    cfg = None
    for week in args.weeks:
        cfg = RunConfig.from_params({"as_of_date": week, "symbol": args.symbol, **overrides})
        started, cpu = time.perf_counter(), time.process_time()
        run = run_once(cfg, settings, dag_id=DAG_ID, run_id=f"{DAG_ID}__{week}")
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        folder = Path(run["summary"]["path"]).parent
        summary = json.loads(Path(run["summary"]["path"]).read_text())
        # Code from before the runs recorded their step times has none: its week is wall time only.
        steps = {name: rec["wall_s"] for name, rec in summary.get("step_times", {}).items()}
        report = folder / "step_times" / "report.json"
        steps["report"] = json.loads(report.read_text())["wall_s"] if report.is_file() else 0.0
        line = {"benchmark": "market_week", "week": week, "symbol": args.symbol, "wall_s": round(wall, 2),
                "decided_s": round(wall - steps["report"], 2), "cpu_s": round(cpu, 2),
                "steps_s": steps, "action": run["action"]["action"], "folder": str(folder)}
        print(json.dumps(line), flush=True)
        weeks.append(line)
    floor = fit_floor(RunFolder(Path(weeks[-1]["folder"])).dataset, cfg)
    steady = weeks[-1]["wall_s"]
    out = {"benchmark": "market_week_summary", "symbol": args.symbol, "weeks_s": [w["wall_s"] for w in weeks],
           "steady_s": steady, "floor_s": floor["seconds"], "floor": floor,
           "ratio": round(steady / floor["seconds"], 3),
           "ratio_to_decision": round(weeks[-1]["decided_s"] / floor["seconds"], 3),
           "cpu_ratio": round(weeks[-1]["cpu_s"] / floor["cpu_s"], 3), "target": args.target,
           "meets_target": steady <= args.target * floor["seconds"],
           "median_later_week_s": statistics.median(w["wall_s"] for w in weeks[1:]) if len(weeks) > 1 else None}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
