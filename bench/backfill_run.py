"""Benchmark: wall time per run of a real backfill (scheduler + LocalExecutor, PostgreSQL).

Starts the deployment as local processes (:class:`tests.cluster.LocalAirflow`), backfills
``weekly_retrain`` over N weekly windows (default 4, 2023-06-04 onward) with
``--max-active-runs 1`` and the bundled data, and reports each run's duration (scheduler start to
end) and the total. Short window (120 days, 3 folds) as in the backfill test. Prints one JSON line.

Usage: ``PYTHONPATH=. .venv/bin/python bench/backfill_run.py [weeks] [train_window_days]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from tests.cluster import LocalAirflow, conf_json, market_deployment_env
from tests.conftest import DATA_DIR, create_pg_database, drop_pg_database


def main(weeks: int = 4, train_window_days: int = 120) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    meta, market = create_pg_database("bench_meta"), create_pg_database("bench_market")
    env = market_deployment_env(tmp, market, DATA_DIR)
    first = date(2023, 6, 4)
    last = first + timedelta(weeks=weeks - 1)
    try:
        t0 = time.perf_counter()
        with LocalAirflow(tmp / "airflow", meta, "LocalExecutor", env) as airflow:
            started = time.perf_counter()
            airflow.wait_for_dag("weekly_retrain")
            airflow.airflow("backfill", "create", "--dag-id", "weekly_retrain", "--from-date", str(first),
                            "--to-date", str(last), "--max-active-runs", "1", "--dag-run-conf",
                            conf_json(train_window_days=train_window_days, cv_folds=3))
            created = time.perf_counter()
            runs = airflow.wait_for_runs("weekly_retrain", weeks, timeout=3000, run_type="backfill")
            done = time.perf_counter()
    finally:
        drop_pg_database(meta)
        drop_pg_database(market)
    per_run = [round((r["end_date"] - r["start_date"]).total_seconds(), 1) for r in runs]
    print(json.dumps({
        "benchmark": "backfill_local_executor", "weeks": weeks, "train_window_days": train_window_days,
        "states": [r["state"] for r in runs], "per_run_s": per_run,
        "mean_run_s": round(sum(per_run) / len(per_run), 1),
        "backfill_wall_s": round(done - created, 1), "deployment_start_s": round(started - t0, 1),
    }))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
