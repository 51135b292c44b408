"""The DAG on a real deployment: scheduler, dag-processor, api-server and workers as processes.

* A backfill of three weekly windows of the bundled universe (BTCUSDT and ETHUSDT perpetuals, one
  mapped task group each) through ``airflow backfill create`` with the LocalExecutor on a
  PostgreSQL metadata database, the market store and registry in PostgreSQL through the
  ``market_db`` connection.
* One run of one market through the CeleryExecutor (Redis broker, Celery worker), ingesting from
  the exchange source pointed at a local Binance replay.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from include.data.replay import BinanceReplayServer
from include.data.store import MarketStore
from include.registry import ModelRegistry
from include.storage import location
from tests.builders import PERMISSIVE_GATE
from tests.cluster import LocalAirflow, conf_json, free_port
from tests.conftest import DATA_DIR, create_pg_database, drop_pg_database

DAG_ID = "weekly_retrain"
MODELS = {"BTCUSDT": "binance-btcusdt-perp-1h-h4", "ETHUSDT": "binance-ethusdt-perp-1h-h4"}
SHORT_RUN = {"train_window_days": 120, "cv_folds": 3}


def _conn_uri(url: str) -> str:
    """An Airflow connection URI for a SQLAlchemy PostgreSQL URL."""
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def deployment_env(tmp_path):
    meta, market = create_pg_database("airflow_meta"), create_pg_database("market")
    env = {
        "MARKET_DB_URL": "",  # unset: the market store comes from the connection below
        "AIRFLOW_CONN_MARKET_DB": _conn_uri(market),
        "MODEL_REGISTRY_DIR": str(tmp_path / "models"),
        "RUN_ARTIFACTS_DIR": str(tmp_path / "runs"),
        "MARKET_DATA_DIR": str(DATA_DIR),
    }
    yield meta, market, env
    drop_pg_database(meta)
    drop_pg_database(market)


def _key(run: dict) -> str:
    return f"{run['data_interval_start']:%Y%m%dT%H%M}_{run['data_interval_end']:%Y%m%dT%H%M}"


def _summary(runs_dir: Path, model: str, interval_start: datetime, interval_end: datetime) -> dict:
    key = f"{interval_start:%Y%m%dT%H%M}_{interval_end:%Y%m%dT%H%M}"
    return json.loads((runs_dir / DAG_ID / model / key / "summary.json").read_text())


def test_backfill_of_three_weeks_with_scheduler_and_local_executor(deployment_env, tmp_path):
    meta, market, env = deployment_env
    t0 = time.monotonic()
    with LocalAirflow(tmp_path / "airflow", meta, "LocalExecutor", env) as airflow:
        airflow.wait_for_dag(DAG_ID)
        # --max-active-runs 3: the runs overlap, so the gate's ordering is what keeps them apart.
        # A permissive gate policy (Params), so that every week promotes and each later gate has
        # a champion to compare with: the sequence is what this test is about.
        airflow.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", "2023-06-04",
                        "--to-date", "2023-06-18", "--max-active-runs", "3",
                        "--dag-run-conf", conf_json(**SHORT_RUN, **PERMISSIVE_GATE))
        runs = airflow.wait_for_runs(DAG_ID, 3, timeout=1500, run_type="backfill")
        states = {r["run_id"]: airflow.task_states(DAG_ID, r["run_id"]) for r in runs}
        logs = airflow.logs()
    wall = time.monotonic() - t0
    assert [r["state"] for r in runs] == ["success"] * 3, (states, logs)
    assert {r["run_type"] for r in runs} == {"backfill"}
    intervals = [(r["data_interval_start"], r["data_interval_end"]) for r in runs]
    assert [(a.date().isoformat(), b.date().isoformat()) for a, b in intervals] == [
        ("2023-06-04", "2023-06-11"), ("2023-06-11", "2023-06-18"), ("2023-06-18", "2023-06-25")]

    # Both markets ran in every run, each in its own instance of the mapped task group.
    for run_id, task_states in states.items():
        assert task_states["market.promote_or_keep[0]"] == task_states["market.promote_or_keep[1]"] == "success", \
            (run_id, task_states)
    registry = ModelRegistry(tmp_path / "models", market)
    assert registry.model_names() == sorted(MODELS.values())
    for symbol, model in MODELS.items():
        # Each run's version was trained only on data before its own data_interval_end.
        by_run = {registry.metadata(v)["run_id"]: {**registry.metadata(v), "version": v}
                  for v in registry.versions(model)}
        assert set(by_run) == {r["run_id"] for r in runs}
        for run in runs:
            window = by_run[run["run_id"]]["data_window"]
            end = pd.Timestamp(run["data_interval_end"])
            assert pd.Timestamp(window["interval_end"]) == end
            assert pd.Timestamp(window["last_bar_read_end"]) <= end
            assert pd.Timestamp(window["train_start"]) == end - pd.Timedelta(days=SHORT_RUN["train_window_days"])
            assert by_run[run["run_id"]]["symbol"] == symbol

        # Decisions happened in logical-date order; each gate compared with the production version
        # of the same registered model that the previous week left behind.
        decisions = [e for e in registry.ledger(model) if e["event"] in ("promote", "keep")]
        assert [e["run_id"] for e in decisions] == [r["run_id"] for r in runs]
        production = None
        for run, entry in zip(runs, decisions, strict=True):
            summary = _summary(tmp_path / "runs", model, run["data_interval_start"], run["data_interval_end"])
            champion = summary["gate"]["champion_evaluation"]
            assert (champion or {}).get("version") == production, (run["run_id"], champion, production)
            assert (champion or {}).get("model", model) == model
            assert entry["from"] == production
            assert entry["event"] == "promote" and entry["to"] == by_run[run["run_id"]]["version"]
            production = entry["to"]
        assert registry.production(model).version == production

        # The market store is the PostgreSQL database named by the market_db connection.
        store = MarketStore(market)
        first, last = store.extent("ohlcv", exchange="binance", symbol=symbol, market_type="perp", timeframe="1h")
        store.dispose()
        assert last == pd.Timestamp("2023-06-24 23:00", tz="UTC")
    print(f"\nbackfill: 3 weekly runs in {wall:.1f} s wall including start-up; "
          f"runs {[str(r['end_date'] - r['start_date']) for r in runs]}")


def test_one_run_through_the_celery_executor_with_the_exchange_source(deployment_env, tmp_path):
    """The exchange lists BTCUSDT but no longer ETHUSDT: ETH's ingestion fails on its first try,
    naming the unknown symbol, and BTC's run goes on to its decision."""
    meta, market, env = deployment_env
    with BinanceReplayServer(DATA_DIR, symbols=("BTCUSDT",)) as replay:
        env = {**env, "EXCHANGE_API_URL": replay.url}
        with LocalAirflow(tmp_path / "airflow", meta, "CeleryExecutor", env) as airflow:
            airflow.wait_for_dag(DAG_ID)
            airflow.airflow("dags", "trigger", DAG_ID, "--conf",
                            conf_json(**SHORT_RUN, **PERMISSIVE_GATE, as_of_date="2023-12-31", source="exchange",
                                      markets=["BTCUSDT", "ETHUSDT"]))
            runs = airflow.wait_for_runs(DAG_ID, 1, timeout=900, run_type="manual")
            states = airflow.task_states(DAG_ID, runs[0]["run_id"])
            tries = dict(airflow.query("SELECT map_index, try_number FROM task_instance WHERE dag_id = :d "
                                       "AND task_id = 'market.ingest_market_data'", d=DAG_ID))
            logs = airflow.logs()
            worker_log = (tmp_path / "airflow" / "celery-worker.log").read_text(errors="replace")
    # Map index 0 is BTCUSDT, 1 is ETHUSDT (universe order).
    assert states["market.promote_or_keep[0]"] == "success", (states, logs)
    assert states["market.ingest_market_data[1]"] == "failed" and tries[1] == 1, (states, tries)
    assert states["market.promote_or_keep[1]"] == "upstream_failed"
    assert runs[0]["state"] == "failed" and states["check_markets"] == "failed"
    # Tasks really ran on the Celery worker, and ingestion really went through the exchange API.
    assert "Task execute_workload" in worker_log or "execute_workload" in worker_log, worker_log[-3000:]
    assert len(replay.requests_to("/fapi/v1/klines")) >= 3
    summary = _summary(tmp_path / "runs", MODELS["BTCUSDT"], datetime(2023, 12, 24, tzinfo=UTC),
                       datetime(2023, 12, 31, tzinfo=UTC))
    assert summary["action"]["action"] == "promote"
    assert summary["ingested"]["ohlcv"]["mode"] == "incremental"
    assert summary["ingested"]["source"].startswith("ExchangeSource('binance', 'http://127.0.0.1:")
    universe = json.loads((tmp_path / "runs" / DAG_ID / "_universe" / "20231224T0000_20231231T0000.json").read_text())
    assert {m["model"]: m["status"] for m in universe["markets"]} == {
        MODELS["BTCUSDT"]: "done", MODELS["ETHUSDT"]: "failed"}


def test_a_failing_market_does_not_stop_the_other_under_the_scheduler(deployment_env, tmp_path):
    """The scheduler expands the market group on its own schedule (not dag.test's): one market's
    validation failure must leave the other market's run to finish and decide."""
    import gzip

    meta, market, env = deployment_env
    src = tmp_path / "data"
    src.mkdir()
    for kind in ("perp_1h", "funding_8h"):
        frame = pd.read_csv(DATA_DIR / f"btcusdt_{kind}.csv.gz")
        with gzip.open(src / f"btcusdt_{kind}.csv.gz", "wt") as fh:
            frame.to_csv(fh, index=False)
        if kind == "perp_1h":
            frame.loc[frame["timestamp"] == "2023-12-27T05:00:00Z", "close"] = float("nan")
        with gzip.open(src / f"badusdt_{kind}.csv.gz", "wt") as fh:
            frame.to_csv(fh, index=False)
    universe = src / "universe.yaml"
    universe.write_text("markets:\n  - {symbol: BADUSDT, market_type: perp, timeframe: 1h}\n"
                        "  - {symbol: BTCUSDT, market_type: perp, timeframe: 1h}\n")
    with LocalAirflow(tmp_path / "airflow", meta, "LocalExecutor", env) as airflow:
        airflow.wait_for_dag(DAG_ID)
        airflow.airflow("dags", "trigger", DAG_ID, "--conf",
                        conf_json(**SHORT_RUN, **PERMISSIVE_GATE, as_of_date="2023-12-31",
                                  universe_file=str(universe), source_dir=str(src)))
        runs = airflow.wait_for_runs(DAG_ID, 1, timeout=900, run_type="manual")
        states = airflow.task_states(DAG_ID, runs[0]["run_id"])
        logs = airflow.logs()
    assert runs[0]["state"] == "failed", (states, logs)
    # Map index 0 is BADUSDT (universe order), 1 is BTCUSDT.
    assert states["market.validate_market_data[0]"] == "failed"
    assert states["market.promote_or_keep[0]"] == "upstream_failed"
    for task_id in ("market.validate_market_data", "market.train_random_forest", "market.quality_gate",
                    "market.promote_or_keep", "market.publish_market_summary"):
        assert states[f"{task_id}[1]"] == "success", (task_id, states)
    assert states["publish_summary"] == "success" and states["check_markets"] == "failed"
    summary = _summary(tmp_path / "runs", MODELS["BTCUSDT"], datetime(2023, 12, 24, tzinfo=UTC),
                       datetime(2023, 12, 31, tzinfo=UTC))
    assert summary["action"]["action"] == "promote"
    registry = ModelRegistry(tmp_path / "models", market)
    assert registry.model_names() == [MODELS["BTCUSDT"]]
    registry.dispose()


FOUR_MARKETS = ("markets:\n"
                "  - {symbol: BTCUSDT, market_type: perp, timeframe: 1h}\n"
                "  - {symbol: ETHUSDT, market_type: perp, timeframe: 1h}\n"
                "  - {symbol: BTCUSDT, market_type: spot, timeframe: 1h}\n"
                "  - {symbol: ETHUSDT, market_type: spot, timeframe: 1h}\n")


def test_two_celery_workers_sharing_only_postgres_redis_and_an_object_store(deployment_env, tmp_path):
    """Two Celery workers, each with a private temporary folder as its only disk: run folders,
    registry artifacts and the fit cache live in an S3-compatible store (moto's server), the
    market store and registry state in PostgreSQL. A backfill of two weeks of four markets decides
    every market, spreads its tasks over both workers, reuses the first week's fits in the second,
    and finds the same out-of-fold numbers and version ids as one process on one disk."""
    import boto3

    from include.config import RunConfig, Settings
    from include.pipeline import run_once
    from tests.cluster import S3Server

    meta, market, env = deployment_env
    universe = tmp_path / "universe.yaml"
    universe.write_text(FOUR_MARKETS)
    workers = {}
    for name in ("worker-a", "worker-b"):
        private = tmp_path / name
        private.mkdir()
        # Its own temporary folder, Airflow home (logs) and log-server port; half the machine's cores.
        workers[name] = {"TMPDIR": str(private), "ARTIFACT_SCRATCH_DIR": str(private / "artifacts"),
                         "AIRFLOW_HOME": str(private / "airflow"), "WORKER_HOSTNAME": name, "TASK_CPUS": "1",
                         "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.cluster.worker_hostname",
                         "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
    conf = conf_json(**SHORT_RUN, **PERMISSIVE_GATE, universe_file=str(universe))
    with S3Server(tmp_path / "moto.log") as s3:
        env = {**env, **s3.env("deployment")}
        del env["MARKET_DATA_DIR"]  # the bundled data: the code's own folder, as in an image
        with LocalAirflow(tmp_path / "airflow", meta, "CeleryExecutor", env, workers=workers,
                          worker_concurrency=1) as airflow:
            airflow.wait_for_dag(DAG_ID)
            airflow.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", "2023-12-17",
                            "--to-date", "2023-12-24", "--max-active-runs", "1", "--dag-run-conf", conf)
            runs = airflow.wait_for_runs(DAG_ID, 2, timeout=1500, run_type="backfill")
            states = {r["run_id"]: airflow.task_states(DAG_ID, r["run_id"]) for r in runs}
            hosts = airflow.query("SELECT run_id, task_id, map_index, hostname FROM task_instance "
                                  "WHERE dag_id = :d", d=DAG_ID)
            logs = airflow.logs()
        client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
                for o in page.get("Contents", [])]
        os.environ["AIRFLOW_CONN_ARTIFACT_STORE"] = s3.connection()
        try:
            remote = Settings(data_dir=DATA_DIR, market_db_url=market, registry_dir=location(env["MODEL_REGISTRY_DIR"]),
                              runs_dir=location(env["RUN_ARTIFACTS_DIR"]))
            registry = ModelRegistry.from_settings(remote)
            folders = {r["run_id"]: {m: remote.runs_dir / DAG_ID / m / _key(r) for m in registry.model_names()}
                       for r in runs}
            summaries = {run_id: {m: json.loads((f / "summary.json").read_text()) for m, f in by_model.items()}
                         for run_id, by_model in folders.items()}
            caches = {m: {fam: json.loads((f / "candidates" / fam / "metadata.json").read_text())["cache"]
                          for fam in ("lightgbm", "xgboost", "random_forest")}
                      for m, f in folders[runs[1]["run_id"]].items()}
            for version in registry.versions():
                registry.verify(version)  # every artifact in the store matches its recorded sha256
            registry.dispose()
        finally:
            del os.environ["AIRFLOW_CONN_ARTIFACT_STORE"]

    assert [r["state"] for r in runs] == ["success"] * 2, (states, logs)
    for run_id, task_states in states.items():
        assert all(task_states[f"market.promote_or_keep[{i}]"] == "success" for i in range(4)), (run_id, task_states)
    # The tasks ran on both workers, and no worker wrote to the shared folders.
    by_host = Counter(host for *_, host in hosts)
    assert set(by_host) >= {"worker-a", "worker-b"} and min(by_host["worker-a"], by_host["worker-b"]) >= 5, by_host
    print(f"\ntask instances per worker: {by_host}")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()
    assert any("/runs/.fit_cache/" in k for k in keys) and any("/models/versions/" in k for k in keys)
    assert not any(k.rsplit("/", 1)[-1].startswith(".") for k in keys), [k for k in keys if "/." in k][:5]

    first = summaries[runs[0]["run_id"]]
    assert len(first) == 4
    # The second week reused the first week's fits (all but its newest fold), whichever worker ran them.
    for model, by_family in caches.items():
        for family, cache in by_family.items():
            assert cache["hits"] >= 1, (model, family, cache)
    print(f"fit cache in week 2: {caches}")

    # One process, one disk, a SQLite store: the same first week gives the same numbers and versions.
    local = Settings.in_folder(tmp_path / "single", DATA_DIR,
                               market_db_url=f"sqlite:///{tmp_path / 'single.sqlite'}")
    for symbol, market_type in (("BTCUSDT", "perp"), ("ETHUSDT", "perp"), ("BTCUSDT", "spot"), ("ETHUSDT", "spot")):
        cfg = RunConfig(symbol=symbol, market_type=market_type, **SHORT_RUN, **PERMISSIVE_GATE)
        single = run_once(cfg, local, dag_id=DAG_ID, run_id=f"single-{symbol}-{market_type}",
                          data_interval_start=runs[0]["data_interval_start"],
                          data_interval_end=runs[0]["data_interval_end"])
        distributed = first[cfg.model_name]["ensemble"]
        assert single["assembled"]["version"] == distributed["version"], cfg.model_name
        assert single["assembled"]["ensemble"] == distributed["ensemble"], cfg.model_name
        assert single["assembled"]["members"] == distributed["members"], cfg.model_name
