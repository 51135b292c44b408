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


@pytest.fixture(scope="module")
def weekly(dagbag):
    return dagbag.get_dag("weekly_retrain")


M = "market."


def _edges(dag) -> set[tuple[str, str]]:
    return {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}


def test_weekly_retrain_runs_each_market_through_the_routine_in_order(weekly):
    assert set(weekly.tags) == {"ml", "retraining", "market-data"}
    assert weekly.max_active_runs == 1 and not weekly.catchup
    edges = _edges(weekly)
    chain = ["plan_run", M + "ingest_market_data", M + "validate_market_data", M + "build_features",
             M + "train_lightgbm", M + "assemble_ensemble",
             M + "quality_gate", M + "approve_promotion", M + "promote_or_keep", M + "publish_market_summary",
             "publish_summary", "apply_retention"]
    for up, down in zip(chain, chain[1:], strict=False):
        assert (up, down) in edges, (up, down)
    for family in ("xgboost", "random_forest", "logistic"):
        assert (M + "build_features", M + f"train_{family}") in edges
        assert (M + f"train_{family}", M + "assemble_ensemble") in edges
    assert ("publish_summary", "check_markets") in edges
    assert weekly.get_task("publish_summary").trigger_rule == "all_done"  # reports failed markets too


def test_every_fit_runs_in_the_training_pool_and_nothing_else_does(weekly):
    """The thread budget (include/resources.py)."""
    assert {t.task_id for t in weekly.tasks if t.pool == "training"} == {
        M + f"train_{f}" for f in ("lightgbm", "xgboost", "random_forest", "logistic")}


def test_markets_run_in_one_mapped_group_with_all_success_rules_only(weekly):
    """Airflow evaluates the "fast" rules (none_failed_min_one_success, one_*) of a not-yet-expanded
    group task against every market's upstream instances, so one failing market would stop the others."""
    from airflow.sdk.definitions.taskgroup import MappedTaskGroup

    assert isinstance(weekly.task_group_dict["market"], MappedTaskGroup)
    for t in weekly.tasks:
        if t.task_id.startswith(M):
            assert t.trigger_rule == "all_success", t.task_id


def test_every_task_retries_once_and_alerts_but_check_markets(weekly):
    """check_markets only turns the run red; the failing market's own task already alerted."""
    for t in weekly.tasks:
        assert t.retries == 1 and t.owner == "quant-ml"
        assert bool(t.on_failure_callback) == (t.task_id != "check_markets"), t.task_id


def test_the_trigger_form_has_every_field_titled_in_six_sections(weekly):
    """Families as a multi-select, defaults shown rounded; the market fields come from the universe file."""
    assert {"markets", "universe_file", "min_history_days", "models", "as_of_date"} <= set(weekly.params)
    assert not {"symbol", "market_type", "timeframe"} & set(weekly.params)
    assert weekly.params["source"] == "files"  # the offline default
    sections = {"Data", "Labels", "Models and cross-validation", "Ensemble", "Quality gate", "Trading simulation"}
    schemas = {name: weekly.params.get_param(name).schema for name in weekly.params}
    assert {s["section"] for s in schemas.values()} == sections
    assert all(s.get("title") and "_" not in s["title"] for s in schemas.values()), schemas
    assert schemas["models"]["type"] == "array" and schemas["models"]["examples"] == list(MODEL_FAMILIES)
    floats = [v for v in weekly.params.dump().values() if isinstance(v, float)]
    assert floats and all(len(repr(v)) <= 6 for v in floats), floats


def test_the_gate_waits_for_earlier_runs_without_holding_a_worker_slot(weekly):
    assert weekly.get_task(M + "quality_gate").mode == "reschedule"


def test_it_runs_weekly_or_on_monitorings_retrain_request(weekly):
    schedule = weekly.timetable
    assert type(schedule).__name__ == "AssetOrTimeSchedule"
    assert "retrain_request" in repr(schedule.asset_condition)
    assert type(schedule.timetable).__name__ == "CronDataIntervalTimetable"


def test_its_page_documents_the_universe_and_the_gate_rule(weekly):
    assert weekly.doc_md and "Gate rule" in weekly.doc_md and "universe" in weekly.doc_md


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
