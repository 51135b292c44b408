"""Benchmark: a year of weekly runs, then the gate's forward track record against the simple policies.

Runs the weekly pipeline (``include.pipeline.run_once``, the functions the DAG's tasks call) with
**default parameters** for each week ending in ``[first, last]`` on a fresh store and registry
that keeps every version, then scores every version forward on the week after its training data
(:func:`include.track_record.track_record`): the production chain the gate built, "newest
candidate" and "never retrain", and replays of other gate policies over the same versions.

Usage: ``PYTHONPATH=. .venv/bin/python bench/track_record_run.py [--symbol BTCUSDT] [--first 2023-01-08]
[--last 2023-12-31] [--reuse FOLDER] [--set NAME=VALUE ...]``. Prints one JSON line per week and the
totals table, and writes ``var/track_record_<symbol>.json`` (``var/track_record_<symbol>_<label>.json``
with ``--label``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ALL = ("beats_baselines_f1", "beats_prior_log_loss", "beats_trading_baselines")

LOG_LOSS = ("beats_prior_log_loss",)

#: Policies replayed over the backfill's versions next to the chain it built.
REPLAYED = {
    "default_policy": {},  # the policy the backfill ran with: its replay reproduces the chain
    "all_tests": {"required": ALL},
    "all_tests_alpha_0.05": {"required": ALL, "alpha": 0.05},
    "log_loss_test_alpha_0.05": {"required": LOG_LOSS, "alpha": 0.05},
    "log_loss_test_alpha_0.01": {"required": LOG_LOSS, "alpha": 0.01},
    "weekly_level_0.10": {"alpha": 0.10 * 52},  # each week at 0.10, as a per-week level would
    "no_demotion": {"demote": False},
    "no_shadow_record": {"record_weeks": 0},  # each candidate's own out-of-fold rows only
    "champion_never_refuses": {"champion_alpha": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--first", default="2023-01-08")
    parser.add_argument("--last", default="2023-12-31")
    parser.add_argument("--reuse", type=Path, help="a folder an earlier run of this bench left: score only")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a run parameter every week runs with (models as a comma list); repeatable")
    parser.add_argument("--label", default="", help="a suffix for the output file")
    args = parser.parse_args()
    tmp = args.reuse or Path(tempfile.mkdtemp(prefix=f"track-record-{args.symbol}-"))
    os.environ.update({"MARKET_DB_URL": f"sqlite:///{tmp / 'market.sqlite'}", "MODEL_REGISTRY_DIR": str(tmp / "models"),
                       "RUN_ARTIFACTS_DIR": str(tmp / "runs"), "GX_ANALYTICS_ENABLED": "false"})
    from bench.edge_capture import run_overrides
    from include.config import RunConfig, Settings
    from include.gate import GatePolicy
    from include.pipeline import run_once
    from include.track_record import table, track_record

    settings = Settings.from_env()
    day, last = date.fromisoformat(args.first), date.fromisoformat(args.last)
    overrides = run_overrides(args.set)
    model = RunConfig(symbol=args.symbol, **overrides).model_name
    started = time.perf_counter()
    while day <= last and args.reuse is None:
        t0 = time.perf_counter()
        try:
            run = run_once(RunConfig(symbol=args.symbol, as_of_date=str(day), **overrides), settings,
                           dag_id="weekly_retrain",
                           run_id=f"track_record__{day}")
            line = {"week_end": str(day), "action": run["action"]["action"], "summary": run["decision"]["summary"]}
        except Exception as exc:  # a failed week registers no version; the record shows the gap
            line = {"week_end": str(day), "error": f"{type(exc).__name__}: {exc}"}
        line["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(line), flush=True)
        day += timedelta(weeks=1)
    backfill_s = time.perf_counter() - started
    policies = {label: GatePolicy(**values) for label, values in REPLAYED.items()}
    record = track_record(settings, model, policies=policies)
    record["backfill_seconds"] = round(backfill_s, 1)
    print(table(record), flush=True)
    (ROOT / "var").mkdir(exist_ok=True)
    name = f"track_record_{args.symbol}{'_' + args.label if args.label else ''}.json"
    (ROOT / "var" / name).write_text(json.dumps(record, default=str, indent=1))


if __name__ == "__main__":
    main()
