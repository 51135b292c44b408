"""Every DAG imports cleanly, parses without side effects, and has the expected shape."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from include.config import MODEL_FAMILIES
from tests.conftest import ROOT

HEAVY = ("pandas", "numpy", "lightgbm", "xgboost", "sklearn", "great_expectations", "talib", "pyarrow")


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"weekly_retrain", "rollback_model", "monitor_production", "publish_signals",
                                   "tune_hyperparameters"}


@pytest.mark.parametrize("dag_file", ["weekly_retrain.py", "rollback_model.py", "monitor_production.py",
                                      "publish_signals.py", "tune_hyperparameters.py"])
def test_parsing_runs_no_query_connection_lookup_or_heavy_import(dag_file):
    code = textwrap.dedent(f"""
        import runpy, sys
        import airflow.sdk
        import sqlalchemy.engine
        def boom(*a, **k):
            raise AssertionError("side effect at parse time")
        sqlalchemy.engine.Engine.connect = boom
        airflow.sdk.BaseHook.get_connection = classmethod(boom)
        airflow.sdk.Variable.get = staticmethod(boom)
        before = set(sys.modules)
        runpy.run_path({str(ROOT / 'dags' / dag_file)!r})
        loaded = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {HEAVY!r})
        assert not loaded, loaded
        print("clean")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-2000:]


def test_weekly_retrain_graph(dagbag):
    from airflow.sdk.definitions.taskgroup import MappedTaskGroup

    dag = dagbag.get_dag("weekly_retrain")
    assert set(dag.tags) == {"ml", "retraining", "market-data"}
    assert dag.max_active_runs == 1 and not dag.catchup
    edges = {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}
    m = "market."
    chain = ["plan_run", m + "ingest_market_data", m + "validate_market_data", m + "build_features",
             m + "train_lightgbm", m + "assemble_ensemble",
             m + "quality_gate", m + "approve_promotion", m + "promote_or_keep", m + "publish_market_summary",
             "publish_summary", "apply_retention"]
    for up, down in zip(chain, chain[1:], strict=False):
        assert (up, down) in edges, (up, down)
    for family in ("xgboost", "random_forest", "logistic"):
        assert (m + "build_features", m + f"train_{family}") in edges
        assert (m + f"train_{family}", m + "assemble_ensemble") in edges
    # The thread budget: every fit runs in the training pool; nothing else does.
    assert {t.task_id for t in dag.tasks if t.pool == "training"} == {
        m + f"train_{f}" for f in ("lightgbm", "xgboost", "random_forest", "logistic")}
    # One mapped task group per market; inside it only all_success rules: Airflow evaluates the
    # "fast" rules (none_failed_min_one_success, one_*) of a not-yet-expanded group task against every
    # market's upstream instances, so one failing market would stop the others.
    group = dag.task_group_dict["market"]
    assert isinstance(group, MappedTaskGroup)
    assert ("publish_summary", "check_markets") in edges
    for t in dag.tasks:
        assert t.retries == 1 and t.owner == "quant-ml"
        # check_markets only turns the run red; the failing market's own task already alerted.
        assert bool(t.on_failure_callback) == (t.task_id != "check_markets"), t.task_id
        if t.task_id.startswith(m):
            assert t.trigger_rule == "all_success", t.task_id
    assert dag.get_task("publish_summary").trigger_rule == "all_done"  # reports failed markets too
    assert {"markets", "universe_file", "min_history_days", "models", "as_of_date"} <= set(dag.params)
    assert not {"symbol", "market_type", "timeframe"} & set(dag.params)  # they come from the universe file
    assert dag.params["source"] == "files"  # the offline default
    # The trigger form: every field titled and in one of six sections, families as a multi-select,
    # defaults shown rounded.
    sections = {"Data", "Labels", "Models and cross-validation", "Ensemble", "Quality gate", "Trading simulation"}
    schemas = {name: dag.params.get_param(name).schema for name in dag.params}
    assert {s["section"] for s in schemas.values()} == sections
    assert all(s.get("title") and "_" not in s["title"] for s in schemas.values()), schemas
    assert schemas["models"]["type"] == "array" and schemas["models"]["examples"] == list(MODEL_FAMILIES)
    floats = [v for v in dag.params.dump().values() if isinstance(v, float)]
    assert floats and all(len(repr(v)) <= 6 for v in floats), floats
    # The gate waits for earlier runs without holding a worker slot.
    assert dag.get_task(m + "quality_gate").mode == "reschedule"
    # Weekly, or on monitor_production's retrain request.
    schedule = dag.timetable
    assert type(schedule).__name__ == "AssetOrTimeSchedule"
    assert "retrain_request" in repr(schedule.asset_condition)
    timetable = schedule.timetable
    assert type(timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.doc_md and "Gate rule" in dag.doc_md and "universe" in dag.doc_md


def test_tune_hyperparameters_graph(dagbag):
    dag = dagbag.get_dag("tune_hyperparameters")
    assert [t.task_id for t in dag.topological_sort()] == ["plan_tuning", "prepare_dataset", "list_studies",
                                                           "tune_family", "publish_summary"]
    assert dag.get_task("tune_family").pool == "training"
    assert dag.max_active_runs == 1 and not dag.catchup
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable" and dag.timetable.expression == "0 0 1 * *"
    assert dag.params["tune_trials"] == 20 and dag.params["tune_folds"] == 8


def test_rollback_graph(dagbag):
    dag = dagbag.get_dag("rollback_model")
    assert dag.schedule is None or dag.timetable.summary in ("None", "")
    assert [t.task_id for t in dag.tasks] == ["rollback"]
    assert set(dag.params) == {"model", "version", "reason"}


def test_monitor_production_graph(dagbag):
    dag = dagbag.get_dag("monitor_production")
    assert [t.task_id for t in dag.topological_sort()][:2] == ["list_models", "monitor_model"]
    assert {t.task_id for t in dag.topological_sort()[2:]} == {"request_retrain", "check_models"}
    # One model's failed monitoring neither cancels the others' requests nor leaves the run green.
    assert dag.get_task("request_retrain").trigger_rule == "all_done"
    assert dag.get_task("check_models").trigger_rule == "all_done"
    outlets = dag.get_task("request_retrain").outlets
    assert [a.name for a in outlets] == ["retrain_request"]
    assert dag.params["monitor_max_psi"] == 0.25 and dag.params["monitor_cooldown_hours"] == 72.0
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"


def test_promotions_and_rollbacks_update_each_models_production_asset_and_the_example_consumer_follows_one(dagbag):
    from include.assets import PRODUCTION_ALIAS, production_asset

    promote = dagbag.get_dag("weekly_retrain").get_task("market.promote_or_keep")
    rollback = dagbag.get_dag("rollback_model").get_task("rollback")
    assert PRODUCTION_ALIAS in promote.outlets and PRODUCTION_ALIAS in rollback.outlets
    consumer = dagbag.get_dag("publish_signals")
    asset = production_asset("binance-btcusdt-perp-1h-h4")
    assert asset.uri == "model://binance-btcusdt-perp-1h-h4/production"
    condition = consumer.timetable.asset_condition
    assert [a.uri for a in getattr(condition, "objects", [condition])] == [asset.uri]
    assert consumer.is_paused_upon_creation and "example" in consumer.tags
