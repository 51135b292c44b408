"""Benchmark: one weekly universe run of 2 markets against 1 market, on a local deployment.

Starts the deployment as local processes (:class:`tests.cluster.LocalAirflow`: scheduler,
dag-processor, api-server, LocalExecutor with parallelism 4, PostgreSQL metadata and market
store), triggers ``weekly_retrain`` for the week ending 2023-12-31 with the default parameters
(730-day window, 6 folds, three families, strict gate) for ``markets=["BTCUSDT"]``, then, on a
fresh deployment and fresh databases, for ``["BTCUSDT", "ETHUSDT"]``. Reports each run's wall
time (run start to end), the ratio (target: at most 2.1), and the summed duration of each task
across map indexes. Prints one JSON line.

Usage: ``PYTHONPATH=. .venv/bin/python bench/universe_run.py``.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.cluster import LocalAirflow, conf_json, market_deployment_env
from tests.conftest import DATA_DIR, create_pg_database, drop_pg_database


def one_run(markets: list[str]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-universe-"))
    meta, market = create_pg_database("bench_meta"), create_pg_database("bench_market")
    env = market_deployment_env(tmp, market, DATA_DIR)
    try:
        with LocalAirflow(tmp / "airflow", meta, "LocalExecutor", env) as airflow:
            airflow.wait_for_dag("weekly_retrain")
            t0 = time.perf_counter()
            airflow.airflow("dags", "trigger", "weekly_retrain", "--conf",
                            conf_json(as_of_date="2023-12-31", markets=markets))
            (run,) = airflow.wait_for_runs("weekly_retrain", 1, timeout=3000, run_type="manual")
            wall = time.perf_counter() - t0
            rows = airflow.query("SELECT task_id, map_index, state, "
                                 "EXTRACT(EPOCH FROM (end_date - start_date)) FROM task_instance "
                                 "WHERE dag_id = 'weekly_retrain' AND run_id = :r", r=run["run_id"])
    finally:
        drop_pg_database(meta)
        drop_pg_database(market)
    tasks: dict[str, float] = defaultdict(float)
    for task_id, _, _, seconds in rows:
        tasks[task_id] += float(seconds or 0)
    return {"markets": markets, "state": run["state"],
            "run_s": round((run["end_date"] - run["start_date"]).total_seconds(), 1),
            "trigger_to_done_s": round(wall, 1),
            "task_seconds_summed": {k: round(v, 1) for k, v in sorted(tasks.items(), key=lambda kv: -kv[1])},
            "states": sorted({(t, s) for t, _, s, _ in rows})}


def main() -> None:
    single = one_run(["BTCUSDT"])
    double = one_run(["BTCUSDT", "ETHUSDT"])
    print(json.dumps({"benchmark": "universe_run", "single": single, "double": double,
                      "ratio": round(double["run_s"] / single["run_s"], 3), "target_ratio": 2.1}))


if __name__ == "__main__":
    main()
