"""Run ``weekly_retrain`` through Airflow for consecutive weeks and print what each market's run did.

Usage: ``python -m include.demo 2023-12-24 2023-12-31`` (what ``make demo`` runs). Each date is
passed to ``airflow dags test``, which runs the week ending on that date,
``[date - 7 days, date)``, for every market of the universe file, with the DAG's default params,
in this process's Airflow environment (``AIRFLOW_HOME`` etc., set by the Makefile). Full Airflow
logs go to ``var/logs/``. At the end it prints the registered models and their production
versions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from include.config import PROJECT_ROOT, Settings
from include.gate import check_outcome
from include.quality.suites import format_failures
from include.registry import ModelRegistry
from include.run_folder import RunFolder

DAG_ID = "weekly_retrain"


def _airflow(*args: str, log: Path) -> int:
    exe = Path(sys.executable).with_name("airflow")
    with open(log, "w") as fh:
        return subprocess.run([str(exe), *args], stdout=fh, stderr=subprocess.STDOUT, check=False).returncode


def _fmt(m: dict[str, float]) -> str:
    return (f"macro F1 {m['macro_f1']:.4f}  bal.acc {m['balanced_accuracy']:.4f}  log loss {m['log_loss']:.4f}  "
            f"Brier {m['brier']:.4f}")


def report(summary: dict[str, Any]) -> str:
    """Human-readable lines of one run's ``summary.json``."""
    w, ing, ens, gate = summary["window"], summary["ingested"], summary["ensemble"], summary["gate"]
    lines = [
        f"model          {summary.get('model')}",
        f"data interval  [{w['interval_start']}, {w['interval_end']})  training from {w['train_start']}"
        + ("  (short history)" if w.get("requested_train_start") else ""),
        "ingested       " + ", ".join(f"{k}: {v['rows_fetched']} rows ({v['rows_new']} new)"
                                      for k, v in ing.items() if isinstance(v, dict) and "rows_fetched" in v),
        "validation     passed: " + ", ".join(f"{k} {v} rows" for k, v in summary["validation"]["rows"].items()),
        f"features       {len(summary['features']['columns'])} columns, spec {summary['features']['spec_sha256'][:12]}",
        f"labels         {summary['labels']['labelled_rows']} labelled rows, balance "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["labels"]["class_balance"].items()),
        "out-of-fold (purged walk-forward):",
    ]
    for fam, m in ens["members"].items():
        lines.append(f"  {fam:<14} {_fmt(m)}")
    lines.append(f"  {'ensemble':<14} {_fmt(ens['ensemble'])}")
    for name, m in ens["baselines"].items():
        lines.append(f"  {'baseline ' + name:<14} {_fmt(m)}")
    lines.append("ensemble       weights " + ", ".join(f"{k} {v:.3f}" for k, v in ens["weights"].items())
                 + f"; candidate {ens['version']}")
    trading = summary.get("trading") or {}
    lines.append("trading (out-of-fold bars, after fees, slippage and funding):")
    for name, m in (trading.get("out_of_fold") or {}).items():
        sharpe = "n/a" if m.get("sharpe") is None else f"{m['sharpe']:.2f}"
        lines.append(f"  {name:<14} return {100 * m['total_return']:+.2f}%  Sharpe {sharpe}  "
                     f"max drawdown {100 * m['max_drawdown']:.2f}%  trades {m['trades']}  "
                     f"exposure {100 * m['exposure']:.0f}%")
    lines.append(f"gate           {gate['summary']}")
    lines.append(f"decided by     {gate.get('deciding', '')}")
    for check in gate["checks"]:
        mark = {"passed": "ok  ", "failed": "FAIL", "not required": "no (not required)"}[check_outcome(check)]
        lines.append(f"  {mark} {check['name']}: {check['detail']}")
    action = summary["action"]
    lines.append(f"action         {(action or {}).get('action')}; production of {summary.get('model')}: "
                 f"{summary['production']}")
    lines.append(f"report         {summary.get('report')}")
    return "\n".join(lines)


def failure_detail(folder: Path, model: str, log: Path) -> list[str]:
    """Why a market failed: every failed expectation from its validation report, else the log's errors."""
    report = RunFolder(folder).validation
    if report.is_file():
        validation = json.loads(report.read_text())
        if not validation.get("success", True):
            return [f"validation failed ({report}):", *format_failures(validation).splitlines()]
    errors = [line.strip() for line in log.read_text(errors="replace").splitlines()
              if model in line and ("Error" in line or "Exception" in line)]
    return errors[:5] or [f"see {log}"]


def interval_end(date: str, conf: str) -> datetime:
    """The end of the week a run covers: the ``as_of_date`` run param if the conf sets one, else ``date``."""
    as_of = (json.loads(conf) if conf else {}).get("as_of_date")
    return datetime.strptime(as_of or date, "%Y-%m-%d")


def prepare_airflow() -> Path | None:
    """Migrate this environment's Airflow metadata database; the logs folder, or ``None`` (said
    why) when the migration failed."""
    logs = PROJECT_ROOT / "var" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if _airflow("db", "migrate", log=logs / "db_migrate.log") != 0:
        print(f"airflow db migrate failed; see {logs / 'db_migrate.log'}")
        return None
    return logs


def main(argv: list[str] | None = None) -> int:
    """Run each date through Airflow and print its summary; non-zero exit on a failed run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dates", nargs="+", help="interval end dates (YYYY-MM-DD), run in order")
    parser.add_argument("--conf", default="", help="run params as JSON, e.g. a gate policy to try")
    args = parser.parse_args(argv)
    logs = prepare_airflow()
    if logs is None:
        return 1
    settings = Settings.from_env()
    failed = False
    for date in args.dates:
        end = interval_end(date, args.conf)
        key = f"{end - timedelta(days=7):%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"
        universe_path = settings.runs_dir / DAG_ID / "_universe" / f"{key}.json"
        universe_path.unlink(missing_ok=True)
        log = logs / f"{DAG_ID}_{date}.log"
        print(f"\n=== {DAG_ID}: airflow dags test {DAG_ID} {date}  (log: {log})", flush=True)
        started = time.perf_counter()
        code = _airflow("dags", "test", DAG_ID, date, *(["--conf", args.conf] if args.conf else []), log=log)
        elapsed = time.perf_counter() - started
        if not universe_path.is_file():
            print(f"run FAILED after {elapsed:.0f}s (exit {code}) before its summary; failing tasks:")
            for line in log.read_text(errors="replace").splitlines():
                if "Task failed" in line or "ERROR" in line or "Error:" in line:
                    print("  " + line[:300])
            return 1
        for outcome in json.loads(universe_path.read_text())["markets"]:
            print(f"\n--- {outcome['model']}: {outcome['status']}")
            if outcome["status"] == "done":
                print(report(outcome["summary"]))
            elif outcome["status"] == "failed":
                failed = True
                for line in failure_detail(settings.runs_dir / DAG_ID / outcome["model"] / key, outcome["model"], log):
                    print(f"  {line}")
            else:
                print(f"  {outcome.get('reason')}")
        print(f"\nwall time      {elapsed:.1f} s (all markets)")
    print("\n=== registered models (python -m include.registry models)")
    registry = ModelRegistry.from_settings(settings)
    for model in registry.models():
        print(f"  {model['name']:<32} production {model['production'] or 'none':<28} {model['versions']} version(s)")
    registry.dispose()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
