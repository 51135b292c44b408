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
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from include.data.replay import BinanceReplayServer
from include.data.store import MarketStore
from include.registry import ModelRegistry
from tests.cluster import LocalAirflow, conf_json
from tests.conftest import DATA_DIR, create_pg_database, drop_pg_database

DAG_ID = "weekly_retrain"
MODELS = {"BTCUSDT": "binance-btcusdt-perp-1h-h4", "ETHUSDT": "binance-ethusdt-perp-1h-h4"}
SHORT_RUN = {"train_window_days": 120, "cv_folds": 3}
PERMISSIVE_GATE = {"gate_min_f1_margin": -1.0, "gate_max_log_loss_ratio": 10.0, "gate_champion_alpha": 0.0,
                   "gate_min_sharpe_margin": -1000.0, "gate_max_drawdown": 1.0}


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
    meta, market, env = deployment_env
    with BinanceReplayServer(DATA_DIR, symbols=("BTCUSDT",)) as replay:
        env = {**env, "EXCHANGE_API_URL": replay.url}
        with LocalAirflow(tmp_path / "airflow", meta, "CeleryExecutor", env) as airflow:
            airflow.wait_for_dag(DAG_ID)
            airflow.airflow("dags", "trigger", DAG_ID, "--conf",
                            conf_json(**SHORT_RUN, **PERMISSIVE_GATE, as_of_date="2023-12-31", source="exchange",
                                      markets=["BTCUSDT"]))
            runs = airflow.wait_for_runs(DAG_ID, 1, timeout=900, run_type="manual")
            states = airflow.task_states(DAG_ID, runs[0]["run_id"])
            logs = airflow.logs()
            worker_log = (tmp_path / "airflow" / "celery-worker.log").read_text(errors="replace")
    assert runs[0]["state"] == "success", (states, logs)
    assert states["market.promote_or_keep[0]"] == "success" and "market.promote_or_keep[1]" not in states
    # Tasks really ran on the Celery worker, and ingestion really went through the exchange API.
    assert "Task execute_workload" in worker_log or "execute_workload" in worker_log, worker_log[-3000:]
    assert len(replay.requests_to("/fapi/v1/klines")) >= 3
    summary = _summary(tmp_path / "runs", MODELS["BTCUSDT"], datetime(2023, 12, 24, tzinfo=UTC),
                       datetime(2023, 12, 31, tzinfo=UTC))
    assert summary["action"]["action"] == "promote"
    assert summary["ingested"]["ohlcv"]["mode"] == "incremental"
    assert summary["ingested"]["source"].startswith("ExchangeSource('binance', 'http://127.0.0.1:")


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
