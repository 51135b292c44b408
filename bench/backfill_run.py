"""Benchmark: a backfill of ``weekly_retrain`` on a local deployment, with a per-task profile.

Starts the deployment as local processes (:class:`tests.cluster.LocalAirflow`: scheduler,
the deployment's preloading LocalExecutor, api-server, dag-processor on PostgreSQL), backfills N weekly windows (default
52, logical dates 2023-01-01 onward, the bundled data) with ``--max-active-runs 1`` (``--max-active-runs``) and the run
conf given (default: none, i.e. the default parameters: 730-day window, 6 folds, the
default ensemble, every market of the universe), and reports:

* ``per_run_s``: each run's wall time (run start to end) and ``total_s`` from backfill
  creation to the last run's end;
* ``profile``: per task, the mean running time and the mean wait between being queued and
  starting, over all runs and markets, and the median running time over the runs after the
  first (the steady week);
* ``idle_s_per_run``: the mean time per run during which no task of the run was running
  (scheduling gaps and task start-up);
* ``component_cpu_s``: CPU seconds of the scheduler, api-server and dag-processor processes.

Usage: ``PYTHONPATH=. .venv/bin/python bench/backfill_run.py [weeks] [--conf JSON] [--first DATE]``.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tests.cluster import LocalAirflow, market_deployment_env
from tests.conftest import DATA_DIR, create_pg_database, drop_pg_database

#: The executor ``make airflow`` runs (include/deployment/executor.py).
EXECUTOR = "include.deployment.executor.PreloadingLocalExecutor"


def idle_seconds(run_start, run_end, intervals: list[tuple[Any, Any]]) -> float:
    """Seconds of ``[run_start, run_end]`` covered by none of ``intervals`` (start, end pairs)."""
    busy, cursor = 0.0, run_start
    for start, end in sorted(intervals):
        start, end = max(start, cursor), min(end, run_end)
        if end > start:
            busy += (end - start).total_seconds()
            cursor = end
    return (run_end - run_start).total_seconds() - busy


def profile(airflow: LocalAirflow, runs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[float]]:
    """Per-task mean duration and queue wait, the median duration over the runs after the first
    (a steady week: the fit cache warm, only new bars validated), and per-run idle time, of ``runs``."""
    durations: dict[str, list[float]] = defaultdict(list)
    later: dict[str, list[float]] = defaultdict(list)
    waits: dict[str, list[float]] = defaultdict(list)
    idle = []
    for i, run in enumerate(runs):
        rows = airflow.query("SELECT task_id, start_date, end_date, queued_dttm FROM task_instance "
                             "WHERE dag_id = 'weekly_retrain' AND run_id = :r AND start_date IS NOT NULL "
                             "AND end_date IS NOT NULL", r=run["run_id"])
        for task_id, start, end, queued in rows:
            name = task_id.split(".")[-1]
            durations[name].append((end - start).total_seconds())
            if i > 0:
                later[name].append((end - start).total_seconds())
            if queued is not None:
                waits[name].append((start - queued).total_seconds())
        idle.append(idle_seconds(run["start_date"], run["end_date"], [(s, e) for _, s, e, _ in rows]))
    table = {name: {"mean_s": round(sum(v) / len(v), 2), "n": len(v),
                    "median_s_later_runs": round(statistics.median(later[name]), 2) if later[name] else None,
                    "queued_wait_s": round(sum(waits[name]) / len(waits[name]), 2) if waits[name] else None}
             for name, v in durations.items()}
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["mean_s"])), idle


def component_cpu(airflow: LocalAirflow) -> dict[str, float]:
    """CPU seconds (user + system) each deployment component's own process has used so far:
    the overhead the tasks share the cores with (task processes are not included)."""
    import psutil

    out = {}
    for name, proc in airflow.procs.items():
        try:
            times = psutil.Process(proc.pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[name] = round(times.user + times.system, 1)
    return out


def decisions(market_url: str) -> dict[str, list[list[Any]]]:
    """Per registered model, each version registered (oldest first) with what the weekly run did
    with it: ``[version, manifest sha256, alias events naming it as candidate]``. Two backfills
    that decided the same have the same lists."""
    import sqlalchemy as sa

    engine = sa.create_engine(market_url)
    try:
        with engine.connect() as conn:
            events: dict[tuple[str, str], list[str]] = defaultdict(list)
            for model, candidate, event in conn.execute(sa.text(
                    "SELECT model, candidate, event FROM model_alias_event WHERE candidate IS NOT NULL ORDER BY id")):
                events[(model, candidate)].append(event)
            out: dict[str, list[list[Any]]] = defaultdict(list)
            for model, version, sha in conn.execute(sa.text(
                    "SELECT model, version, manifest_sha256 FROM model_version ORDER BY model, interval_end")):
                out[model].append([version, sha, events.get((model, version), [])])
    finally:
        engine.dispose()
    return dict(out)


def main(weeks: int, conf: dict[str, Any], first: date, max_active_runs: int = 1) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    meta, market = create_pg_database("bench_meta"), create_pg_database("bench_market")
    # As make airflow runs it (include/deployment): the scheduler's idle pause.
    env = market_deployment_env(tmp, market, DATA_DIR) | {
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": os.environ.get(
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "0.25")}
    last = first + timedelta(weeks=weeks - 1)
    try:
        t0 = time.perf_counter()
        with LocalAirflow(tmp / "airflow", meta, EXECUTOR, env) as airflow:
            airflow.wait_for_dag("weekly_retrain")
            started = time.perf_counter()
            airflow.airflow("backfill", "create", "--dag-id", "weekly_retrain", "--from-date", str(first),
                            "--to-date", str(last), "--max-active-runs", str(max_active_runs),
                            *(["--dag-run-conf", json.dumps(conf)] if conf else []))
            runs = airflow.wait_for_runs("weekly_retrain", weeks, timeout=6 * 3600, run_type="backfill")
            done = time.perf_counter()
            components = component_cpu(airflow)
            tasks, idle = profile(airflow, runs)
        decided = decisions(market)
    finally:
        drop_pg_database(meta)
        drop_pg_database(market)
    per_run = [round((r["end_date"] - r["start_date"]).total_seconds(), 1) for r in runs]
    print(json.dumps({
        "benchmark": "backfill_local_executor", "weeks": weeks, "first": str(first), "conf": conf,
        "max_active_runs": max_active_runs,
        "states": sorted({r["state"] for r in runs}), "failed": [r["run_id"] for r in runs if r["state"] != "success"],
        "per_run_s": per_run, "mean_run_s": round(sum(per_run) / len(per_run), 1),
        "total_s": round(done - started, 1), "total_min": round((done - started) / 60, 1),
        "deployment_start_s": round(started - t0, 1),
        "idle_s_per_run": round(sum(idle) / len(idle), 1),
        "component_cpu_s": components, "profile": tasks, "decisions": decided,
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weeks", nargs="?", type=int, default=52)
    parser.add_argument("--conf", default="{}", help="run conf JSON (default: none = default parameters)")
    parser.add_argument("--first", default="2023-01-01", help="first logical date (a Sunday)")
    parser.add_argument("--max-active-runs", type=int, default=1, help="the backfill's runs at a time")
    args = parser.parse_args()
    main(args.weeks, json.loads(args.conf), date.fromisoformat(args.first), args.max_active_runs)
