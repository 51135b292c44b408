"""Tune through Airflow and print the recorded hyperparameter sets.

Usage::

    python -m include.tuning run --as-of 2023-06-30 --markets BTCUSDT --trials 20
    python -m include.tuning show [--model binance-btcusdt-perp-1h-h4]

``run`` passes the parameters to ``airflow dags test tune_hyperparameters`` in this process's
Airflow environment (what ``make tune`` does; the full log goes to ``var/logs/``), then shows the
sets. ``show`` lists every set in the market database: as-of date, family, trials, best
out-of-fold log loss, macro F1, probability of backtest overfitting and the hyperparameters.
Exit status 1 when the DAG run fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from include.config import Settings, TuningConfig
from include.demo import prepare_airflow
from include.training.sets import HyperparameterSets


def show(model: str | None = None) -> str:
    """The recorded sets as text, one block per set, oldest as-of date first."""
    sets = HyperparameterSets(Settings.from_env().market_db_url)
    try:
        rows = sets.list(model)
    finally:
        sets.dispose()
    if not rows:
        return "no hyperparameter sets recorded"
    lines = []
    for s in rows:
        pbo = (s.get("pbo") or {}).get("pbo")
        f1 = (s.get("best_metrics") or {}).get("macro_f1")
        pruned = (s.get("states") or {}).get("pruned", 0)
        # The PBO ranks the completed trials only; the pruner's own selection is not in it.
        caveat = f" (completed trials only; {pruned} pruned: understated)" if pruned and pbo is not None else ""
        lines.append(f"{s['model']}  {s['family']:<13}  as of {s['as_of'][:10]}  {s['set_id']}\n"
                     f"  {s['n_trials']} trials {s.get('states')}, best out-of-fold log loss {s['best_value']:.5f}"
                     f"{'' if f1 is None else f', macro F1 {f1:.4f}'}, "
                     f"probability of backtest overfitting {'n/a' if pbo is None else f'{pbo:.2f}'}{caveat}\n"
                     f"  {json.dumps(s['params'], sort_keys=True)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.tuning", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run tune_hyperparameters with `airflow dags test`, then show the sets")
    run.add_argument("--as-of", required=True, help="tune on data before this date (YYYY-MM-DD)")
    run.add_argument("--markets", nargs="*", default=None, help="symbols or registered-model names")
    defaults = TuningConfig()
    run.add_argument("--trials", type=int, default=defaults.tune_trials, help="finished trials per family")
    run.add_argument("--folds", type=int, default=defaults.tune_folds, help="weekly walk-forward folds per trial")
    run.add_argument("--models", nargs="*", default=None, help="families (default: all)")
    run.add_argument("--timeout-minutes", type=float, default=None, help="time budget per family")
    show_cmd = sub.add_parser("show", help="list the recorded sets")
    show_cmd.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    if args.command == "show":
        print(show(args.model))
        return 0
    conf = {"as_of_date": args.as_of, "markets": args.markets, "tune_trials": args.trials, "tune_folds": args.folds,
            "tune_timeout_minutes": args.timeout_minutes}
    if args.models:
        conf["models"] = args.models
    logs = prepare_airflow()
    if logs is None:
        return 1
    log = logs / f"tune_hyperparameters_{args.as_of}.log"
    exe = Path(sys.executable).with_name("airflow")
    print(f"tune_hyperparameters as of {args.as_of}: {json.dumps(conf)} (log: {log})", flush=True)
    t0 = time.time()
    with open(log, "w") as fh:
        code = subprocess.run([str(exe), "dags", "test", "tune_hyperparameters", args.as_of, "-c", json.dumps(conf)],
                              stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    print(f"finished in {time.time() - t0:.0f} s")
    text = log.read_text(errors="replace")
    failed = code != 0 or "Task failed" in text or "state=failed" in text
    if failed:
        print(f"tune_hyperparameters FAILED (exit {code}); failing tasks:")
        for line in text.splitlines():
            if "Task failed" in line or "ERROR" in line or "Error:" in line:
                print("  " + line[:300])
    print(show())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
