"""Benchmark: one weekly run of a universe of N synthetic markets on the local deployment.

For each N, generates N random-walk perpetual markets in the file format (hourly OHLCV and
8-hourly funding, ``<symbol>_perp_1h.csv.gz`` / ``<symbol>_funding_8h.csv.gz``; nothing shipped),
starts a fresh local deployment (:class:`tests.cluster.LocalAirflow`: scheduler, dag-processor,
api-server, PostgreSQL metadata and market store; ``make airflow``'s preloading LocalExecutor and
scheduler settings, or ``--executor LocalExecutor``) and triggers one
``weekly_retrain`` run for the week ending 2023-12-31 with small per-market work (120-day window,
3 folds, LightGBM only, a permissive gate). The run deals the markets into at most
``MARKET_GROUP_INSTANCES`` instances of the market task group (the deployment's default, twice
the parallelism: 8; ``--instances K`` sets it, e.g. ``--instances 1000`` for one market per
instance). Before the deployment starts, the same markets run in this machine's processes
without Airflow (``include.pipeline.run_once``, one process per core, on a PostgreSQL market
store as the deployment's), for the in-process time.

Reported per N (one JSON line each, then a table):

* ``run_wall_s``: the DAG run's start to end; ``per_market_s``: that over N;
* ``in_process_s``: the same markets' steps in ``cores`` processes; ``ratio``: run wall over it;
* ``task_s``: the task instances' summed durations; ``task_instances``;
* ``scheduler_cpu_s`` and ``api_server_cpu_s`` during the run, and the scheduler's CPU per task
  instance;
* ``orchestration_per_market_s``: (run wall x cores - in-process time x cores) / N, the core
  time a market costs beyond its own work;
* ``ready_to_running_s``: the mean gap from a task instance being scheduled to starting;
* ``busy_share``: of the time some task instance was scheduled or queued and not yet running,
  the share of the executor's slots that were running one; ``busy_share_pool_free``: the same
  counting only waiting instances whose pool had a free slot (a fit held back by the training
  pool, which keeps fits within the cores, is not idle capacity);
* ``instances``: the market group's instances in the run.

Usage: ``PYTHONPATH=. .venv/bin/python bench/universe_scale.py [--instances K] [--executor E] [N ...]``
(default 2 20 100 200).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from tests.builders import PERMISSIVE_GATE
from tests.cluster import LocalAirflow, conf_json, market_deployment_env
from tests.conftest import create_pg_database, drop_pg_database

AS_OF = "2023-12-31"
WORK = {"train_window_days": 120, "cv_folds": 3, "models": ["lightgbm"], **PERMISSIVE_GATE}
PARALLELISM = 4


def symbol(i: int) -> str:
    return f"SYN{i:03d}USDT"


def write_markets(folder: Path, n: int, seed: int = 7) -> Path:
    """``n`` random-walk perpetual markets from 2023-05-01 to the as-of date; returns the universe file.

    Hourly log returns are Gaussian with a 0.6 % standard deviation; highs and lows add the
    absolute value of a second draw; volume is log-normal; funding is 0.01 % plus noise.
    """
    rng = np.random.default_rng(seed)
    hours = pd.date_range("2023-05-01", AS_OF, freq="1h", inclusive="left", tz="UTC")
    funding_times = pd.date_range("2023-05-01", AS_OF, freq="8h", inclusive="left", tz="UTC")
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    for i in range(n):
        close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.006, len(hours))))
        open_ = np.concatenate([[100.0], close[:-1]])
        wick = np.abs(rng.normal(0, 0.003, (2, len(hours))))
        frame = pd.DataFrame({"timestamp": hours.strftime(stamp), "open": open_,
                              "high": np.maximum(open_, close) * (1 + wick[0]),
                              "low": np.minimum(open_, close) * (1 - wick[1]),
                              "close": close, "volume": rng.lognormal(8, 0.5, len(hours))})
        with gzip.open(folder / f"{symbol(i).lower()}_perp_1h.csv.gz", "wt") as fh:
            frame.to_csv(fh, index=False)
        funding = pd.DataFrame({"timestamp": funding_times.strftime(stamp),
                                "funding_rate": 1e-4 + rng.normal(0, 5e-5, len(funding_times))})
        with gzip.open(folder / f"{symbol(i).lower()}_funding_8h.csv.gz", "wt") as fh:
            funding.to_csv(fh, index=False)
    universe = folder / "universe.yaml"
    universe.write_text("markets:\n" + "".join(
        f"  - {{symbol: {symbol(i)}, market_type: perp, timeframe: 1h}}\n" for i in range(n)))
    return universe


def _cpu(proc) -> float:
    import psutil

    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


def busy_share(rows: list[tuple], slots: int, pools: dict[str, int] | None = None, step: float = 0.5) -> float:
    """Share of the executor's ``slots`` running a task instance while one was waiting to run.

    Args:
        rows: ``(scheduled, started, ended, pool)`` per task instance that ran.
        pools: pool name -> slots; given, an instance counts as waiting only while its pool had
            a free slot (work that the thread budget holds back is not idle capacity).
    """
    spans = [(s.timestamp() if s else None, b.timestamp() if b else None, e.timestamp() if e else None, p)
             for s, b, e, p in rows]
    t0 = min(s for s, _, _, _ in spans if s)
    t1 = max(e for _, _, e, _ in spans if e)
    waiting_time = busy = 0.0
    for t in np.arange(t0, t1, step):
        running = [p for _, b, e, p in spans if b is not None and b <= t < (e or t1)]
        waiting = [p for s, b, _, p in spans if s is not None and s <= t and (b is None or t < b)]
        if pools is not None:
            waiting = [p for p in waiting if running.count(p) < pools.get(p, slots)]
        if waiting:
            waiting_time += step
            busy += step * min(len(running), slots) / slots
    return busy / waiting_time if waiting_time else 1.0


def _run_market(args: tuple[str, str, str, str]) -> float:
    symbol_, data_dir, root, market_url = args
    os.environ["TASK_CPUS"] = "1"
    from include.config import RunConfig, Settings
    from include.pipeline import run_once

    settings = Settings.in_folder(Path(root), Path(data_dir), market_db_url=market_url)
    cfg = RunConfig(symbol=symbol_, as_of_date=AS_OF, **{k: tuple(v) if isinstance(v, list) else v
                                                         for k, v in WORK.items()})
    t0 = time.perf_counter()
    run_once(cfg, settings, dag_id="bench", run_id=f"bench-{symbol_}")
    return time.perf_counter() - t0


def in_process(n: int, data_dir: Path, cores: int) -> float:
    """Wall time of the N markets' run_once in ``cores`` processes, on a PostgreSQL market store
    (and registry) as the deployment's."""
    root = Path(tempfile.mkdtemp(prefix="bench-inprocess-"))
    url = create_pg_database("bench_inprocess")
    try:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(cores) as pool:
            list(pool.map(_run_market, [(symbol(i), str(data_dir), str(root), url) for i in range(n)]))
        return time.perf_counter() - t0
    finally:
        drop_pg_database(url)


#: ``make airflow``'s executor (include/deployment/executor.py) and scheduler settings.
DEPLOYMENT_EXECUTOR = "include.deployment.executor.PreloadingLocalExecutor"
DEPLOYMENT_ENV = {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
                  "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10"}


def one(n: int, instances: int | None = None, executor: str = DEPLOYMENT_EXECUTOR) -> dict:
    from include.resources import available_cpus

    cores = available_cpus()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
    data = tmp / "data"
    data.mkdir()
    universe = write_markets(data, n)
    alone = in_process(n, data, cores)  # first, on a quiet machine: no deployment winding down
    meta, market = create_pg_database("bench_meta"), create_pg_database("bench_market")
    env = {**market_deployment_env(tmp, market, data), "MARKET_INPUT_ROOTS": str(data),
           "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
           **(DEPLOYMENT_ENV if executor == DEPLOYMENT_EXECUTOR else {})}
    if instances:
        env["MARKET_GROUP_INSTANCES"] = str(instances)
    try:
        with LocalAirflow(tmp / "airflow", meta, executor, env) as airflow:
            airflow.wait_for_dag("weekly_retrain")
            # Unpausing creates the schedule's latest run (its week has no bundled data: it fails
            # at ingestion); it ends before the measured run starts, so its work is not counted.
            airflow.wait_for_runs("weekly_retrain", 1, timeout=600, run_type="scheduled")
            cpu0 = {name: _cpu(airflow.procs[name]) for name in ("scheduler", "api-server")}
            airflow.airflow("dags", "trigger", "weekly_retrain", "--conf",
                            conf_json(as_of_date=AS_OF, universe_file=str(universe), **WORK))
            (run,) = airflow.wait_for_runs("weekly_retrain", 1, timeout=6 * 3600, run_type="manual")
            cpu = {name: _cpu(airflow.procs[name]) - cpu0[name] for name in cpu0}
            pools = {name: int(slots) for name, slots in airflow.query("SELECT pool, slots FROM slot_pool")}
            rows = airflow.query(
                "SELECT task_id, state, scheduled_dttm, start_date, end_date, "
                "EXTRACT(EPOCH FROM (end_date - start_date)), EXTRACT(EPOCH FROM (start_date - scheduled_dttm)), "
                "map_index, pool "
                "FROM task_instance WHERE dag_id = 'weekly_retrain' AND run_id = :r", r=run["run_id"])
    finally:
        drop_pg_database(meta)
        drop_pg_database(market)
    wall = (run["end_date"] - run["start_date"]).total_seconds()
    ran = [r for r in rows if r[3] is not None]
    gaps = [float(r[6]) for r in ran if r[6] is not None]
    return {"n": n, "executor": executor.rsplit(".", 1)[-1], "state": run["state"], "cores": cores,
            "parallelism": PARALLELISM,
            "run_wall_s": round(wall, 1), "per_market_s": round(wall / n, 2),
            "in_process_s": round(alone, 1), "ratio": round(wall / alone, 2),
            "task_instances": len(ran), "task_s": round(sum(float(r[5] or 0) for r in ran), 1),
            "scheduler_cpu_s": round(cpu["scheduler"], 1), "api_server_cpu_s": round(cpu["api-server"], 1),
            "scheduler_cpu_per_ti_ms": round(1000 * cpu["scheduler"] / max(1, len(ran))),
            "orchestration_per_market_s": round((wall - alone) * cores / n, 2),
            "ready_to_running_s": round(float(np.mean(gaps)), 2) if gaps else None,
            "busy_share": round(busy_share([(r[2], r[3], r[4], r[8]) for r in ran], PARALLELISM), 3),
            "busy_share_pool_free": round(busy_share([(r[2], r[3], r[4], r[8]) for r in ran], PARALLELISM, pools), 3),
            "instances": len({r[7] for r in rows if r[0] == "market.ingest_market_data"}),
            "states": sorted({r[1] for r in rows})}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[2, 20, 100, 200])
    parser.add_argument("--instances", type=int, default=None, help="MARKET_GROUP_INSTANCES of the deployment")
    parser.add_argument("--executor", default=DEPLOYMENT_EXECUTOR,
                        help="Airflow executor (default: make airflow's preloading LocalExecutor)")
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        results.append(one(n, args.instances, args.executor))
        print(json.dumps({"benchmark": "universe_scale", **results[-1]}), flush=True)
    print("| N | instances | TIs | run wall s | per market s | in-process s | ratio | task s | scheduler CPU s "
          "| ms/TI | orchestration s/market | ready→running s | busy | busy, pool free |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']} | {r['instances']} | {r['task_instances']} | {r['run_wall_s']} | {r['per_market_s']} "
              f"| {r['in_process_s']} "
              f"| {r['ratio']} | {r['task_s']} | {r['scheduler_cpu_s']} | {r['scheduler_cpu_per_ti_ms']} "
              f"| {r['orchestration_per_market_s']} | {r['ready_to_running_s']} | {r['busy_share']} "
              f"| {r['busy_share_pool_free']} |")


if __name__ == "__main__":
    main()
