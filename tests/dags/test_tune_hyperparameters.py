"""A real Airflow run (``dag.test()``) of tune_hyperparameters: one study and one set per (market, family)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from include.config import Settings

BTC = "binance-btcusdt-perp-1h-h4"


def test_a_tuning_run_records_one_set_per_family_as_of_its_date(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from include.training.sets import HyperparameterSets
    from tests.conftest import ROOT

    conf = {"markets": ["BTCUSDT"], "as_of_date": "2023-10-01", "train_window_days": 120,
            "models": ["lightgbm", "random_forest"], "tune_trials": 3, "tune_folds": 2}
    dr = DagBag(dag_folder=str(ROOT / "dags")).get_dag("tune_hyperparameters").test(
        logical_date=datetime(2023, 9, 1, tzinfo=UTC), run_conf=conf)
    states = {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}
    assert set(states.values()) == {"success"}, states
    assert {k for k in states if k[0] == "tune_family"} == {("tune_family", 0), ("tune_family", 1)}
    sets = HyperparameterSets(Settings.from_env().market_db_url)
    try:
        recorded = {s["family"]: s for s in sets.list(BTC) if s["as_of"].startswith("2023-10-01")}
    finally:
        sets.dispose()
    assert set(recorded) == {"lightgbm", "random_forest"}
    for s in recorded.values():
        assert s["n_trials"] == 3 and s["states"] == {"complete": 3}, s  # no pruning before 5 trials
        assert s["data_window"]["as_of"].startswith("2023-10-01") and s["data_window"]["folds"] == 2
        assert s["search_space"] and s["code_version"] and s["best_metrics"]["macro_f1"] is not None
        assert len(s["trial_sharpes"]) == s["states"].get("complete", 0)
    # The run's note, where a person looks first, names each set.
    from tests.dags.test_weekly_retrain_e2e import _note

    note = _note(dr)
    assert note.startswith("Tuned 2 hyperparameter set(s) as of 2023-10-01") and "random_forest: 3 trials" in note
    folder = Settings.from_env().runs_dir / "tune_hyperparameters" / BTC / "20230924T0000_20231001T0000"
    assert {r["family"] for r in json.loads((folder / "tuning.json").read_text())} == set(recorded)


def test_a_tuning_run_keeps_its_artifacts_in_an_object_store(airflow_db, tmp_path, monkeypatch):
    """The same DAG with RUN_ARTIFACTS_DIR in an S3-compatible store (moto's server): the study's
    record lands in the store, nothing of the run folder stays on the worker's disk."""
    from airflow.dag_processing.dagbag import DagBag

    from include.storage import location
    from include.training.sets import HyperparameterSets
    from tests.cluster import S3Server
    from tests.conftest import ROOT

    with S3Server(tmp_path / "moto.log") as s3:
        for name, value in (("AIRFLOW_CONN_ARTIFACT_STORE", s3.connection()),
                            ("RUN_ARTIFACTS_DIR", f"s3://{s3.bucket}/runs"),
                            ("MARKET_DB_URL", f"sqlite:///{tmp_path / 'market.sqlite'}"),
                            ("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker"))):
            monkeypatch.setenv(name, value)
        conf = {"markets": ["BTCUSDT"], "as_of_date": "2023-10-01", "train_window_days": 120,
                "models": ["lightgbm"], "tune_trials": 2, "tune_folds": 2}
        dr = DagBag(dag_folder=str(ROOT / "dags")).get_dag("tune_hyperparameters").test(
            logical_date=datetime(2023, 9, 1, tzinfo=UTC), run_conf=conf)
        states = {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}
        assert set(states.values()) == {"success"}, states
        folder = location(f"s3://{s3.bucket}/runs") / "tune_hyperparameters" / BTC / "20230924T0000_20231001T0000"
        rows = json.loads((folder / "tuning.json").read_text())
    sets = HyperparameterSets(Settings.from_env().market_db_url)
    try:
        (recorded,) = [s for s in sets.list(BTC) if s["as_of"].startswith("2023-10-01")]
    finally:
        sets.dispose()
    assert [r["family"] for r in rows] == ["lightgbm"] and recorded["n_trials"] == 2
    steps = tmp_path / "worker" / "steps"
    assert not steps.exists() or not any(steps.iterdir())  # every step's copy was removed
