"""Benchmark: tuned vs default hyperparameters on the weeks after the tuning's as-of date.

1. Tunes every family of one market as of ``--as-of`` with the weekly run's default parameters
   (``include.tuning.runs``: the steps of ``tune_hyperparameters``), the families in parallel
   processes (one thread each), and reports time per trial and per family.
2. Runs the weekly pipeline (``include.pipeline.run_once``) for each week in ``[--first, --last]``
   twice, in two stores and registries of their own: ``hyperparameters=tuned`` (the store that
   holds the sets) and ``hyperparameters=default``. A week uses a set only when the set's as-of
   date is at or before its first walk-forward test fold, so the compared weeks are out of sample
   for the tuning.
3. Prints, per week and arm, the week's own out-of-sample scores (the ensemble's log loss and
   macro F1 on the run's data interval, and over all its out-of-fold rows) and the gate's
   decision, then the means over the weeks where the tuned arm used a set.

Usage: ``PYTHONPATH=. .venv/bin/python bench/tuning_forward.py [--symbol BTCUSDT] [--as-of 2023-06-30]
[--trials 10] [--folds 6] [--first 2023-07-09] [--last 2023-10-01] [--out FOLDER]``. Writes
``<out>/tuning_forward.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(root: Path) -> None:
    os.environ.update({"MARKET_DB_URL": f"sqlite:///{root / 'market.sqlite'}",
                       "MODEL_REGISTRY_DIR": str(root / "models"),
                       "RUN_ARTIFACTS_DIR": str(root / "runs"), "GX_ANALYTICS_ENABLED": "false",
                       "TRAINING_THREADS": "1"})


def _tune(root: Path, job: dict) -> dict:
    _env(root)
    from include.tuning.runs import tune_and_record

    t0 = time.perf_counter()
    result = tune_and_record(job)
    return {**result, "family_seconds": round(time.perf_counter() - t0, 1)}


def _weeks(root: Path, arm: str, symbol: str, ends: list[str]) -> list[dict]:
    _env(root)
    from include.config import RunConfig, Settings
    from include.pipeline import run_once
    from include.registry import ModelRegistry

    settings, rows = Settings.from_env(), []
    for end in ends:
        t0 = time.perf_counter()
        run = run_once(RunConfig(symbol=symbol, as_of_date=end, hyperparameters=arm), settings,
                       dag_id="weekly_retrain", run_id=f"{arm}__{end}")
        registry = ModelRegistry.from_settings(settings)
        used = registry.metadata(run["assembled"]["version"]).get("hyperparameter_sets") or {}
        registry.dispose()
        window, oof = run["assembled"]["gate_window"], run["assembled"]["ensemble"]
        rows.append({"arm": arm, "week_end": end, "sets": {f: (s or {}).get("set_id") for f, s in used.items()},
                     "week_log_loss": window["log_loss"], "week_macro_f1": window["macro_f1"], "week_rows": window["n"],
                     "oof_log_loss": oof["log_loss"], "oof_macro_f1": oof["macro_f1"],
                     "passed": run["decision"]["passed"], "action": run["action"].get("action"),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--as-of", default="2023-06-30")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--first", default="2023-07-09", help="first week's end (a Sunday)")
    parser.add_argument("--last", default="2023-10-01", help="last week's end")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "tuning_forward")
    args = parser.parse_args()
    tuned_root, default_root = args.out / "tuned", args.out / "default"
    for folder in (tuned_root, default_root):
        folder.mkdir(parents=True, exist_ok=True)
    _env(tuned_root)
    from include.tuning.runs import plan_tuning, prepare, studies

    params = {"markets": [args.symbol], "as_of_date": args.as_of, "tune_trials": args.trials,
              "tune_folds": args.folds, "tune_timeout_minutes": None, "tune_search_space": None}
    t0 = time.perf_counter()
    prepared = [prepare(p) for p in plan_tuning(params, data_interval_start=None, data_interval_end=None,
                                                run_after=None)]
    jobs = studies(prepared)
    with ProcessPoolExecutor(2) as pool:
        tuned = list(pool.map(_tune, [tuned_root] * len(jobs), jobs))
    tuning_seconds = round(time.perf_counter() - t0, 1)
    for t in tuned:
        print(json.dumps({k: t[k] for k in ("family", "set_id", "n_trials", "states", "best_value", "pbo",
                                            "seconds_per_trial", "family_seconds", "params")}), flush=True)
    ends, day = [], date.fromisoformat(args.first)
    while day <= date.fromisoformat(args.last):
        ends.append(day.isoformat())
        day += timedelta(days=7)
    with ProcessPoolExecutor(2) as pool:
        arms = list(pool.map(_weeks, [tuned_root, default_root], ["tuned", "default"], [args.symbol] * 2,
                             [ends] * 2))
    tuned_rows, default_rows = arms
    compared = [(t, d) for t, d in zip(tuned_rows, default_rows, strict=True) if any(t["sets"].values())]
    summary = {"weeks": len(ends), "weeks_using_sets": len(compared), "tuning_seconds": tuning_seconds}
    if compared:
        for key in ("week_log_loss", "week_macro_f1", "oof_log_loss", "oof_macro_f1"):
            summary[key] = {"tuned": sum(t[key] for t, _ in compared) / len(compared),
                            "default": sum(d[key] for _, d in compared) / len(compared)}
        summary["weeks_tuned_lower_week_log_loss"] = sum(t["week_log_loss"] < d["week_log_loss"] for t, d in compared)
        summary["promotions"] = {"tuned": sum(t["action"] == "promote" for t, _ in compared),
                                 "default": sum(d["action"] == "promote" for _, d in compared)}
        summary["gate_passed"] = {"tuned": sum(t["passed"] for t, _ in compared),
                                  "default": sum(d["passed"] for _, d in compared)}
    print(json.dumps(summary, indent=1))
    (args.out / "tuning_forward.json").write_text(json.dumps({"tuning": tuned, "weeks": arms, "summary": summary},
                                                             indent=1, default=str))


if __name__ == "__main__":
    main()
