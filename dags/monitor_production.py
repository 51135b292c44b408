"""
### monitor_production: watch each production model between retrains

Daily, for every registered model with a production version (or the models named in `models`):
ingest the newest bars, score every closed bar the production version has not scored yet (into
the prediction log), join realised labels once their horizon has passed, and compare with what
the gate saw at promotion: realised macro F1, log loss against the class-prior forecast, Brier;
the live strategy record after fees, slippage and funding next to buy-and-hold; feature drift
(PSI against the training distribution stored at registration, and missing values per feature);
data freshness. See `include/monitoring/monitor.py`.

**Policy** (run params, documented defaults): PSI above `monitor_max_psi` (0.25) on any of the
`monitor_psi_top_k` (5) most important features; a feature's missing share up by more than
`monitor_max_missing_increase` (0.2); realised log loss worse than the class-prior forecast's on
each of the last `monitor_log_loss_days` (3) days; live drawdown beyond `monitor_max_drawdown`
(15 %); the last bar older than `monitor_max_data_age_hours` (3 h).

**Actions.** Drift or degradation: an alert with the numbers, and a retraining request, the
`retrain_request` Asset, which `weekly_retrain` is scheduled on besides its weekly timetable,
for the models concerned; at most one request per model within `monitor_cooldown_hours` (72 h of
data time), so one incident gives one retrain. The cooldown starts when the request is emitted,
and one model whose monitoring fails neither cancels the other models' requests nor leaves the
run green (`check_models` fails it). Stale data alone: an alert (retraining on stale
data does not help). Every run's report, with every number and the decision, is kept in the
market database's `monitor_report` table and shown on the **Monitoring** page.

**Window.** A scheduled run monitors up to its `data_interval_end`; a manual run up to the
`as_of` param, or its start time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from include.assets import RETRAIN_REQUEST
from include.config import MonitorPolicy
from include.notify import on_task_failure
from include.parameters import trigger_form

PARAMS = {
    "models": Param(None, type=["null", "array"], items={"type": "string"}, title="Registered models",
                    section="Scope", description="Registered models to monitor; empty = every model in production."),
    "as_of": Param(None, type=["null", "string"], title="Monitor up to (UTC)", section="Scope",
                   description="End of the monitored span for a manual run (ISO 8601 date-time); a scheduled "
                               "run uses its data interval's end."),
    "source": Param("files", type="string", enum=["files", "exchange"], title="Market data source", section="Scope",
                    description="Where the newest bars come from: the files in the data directory, or the exchange "
                                "(incremental)."),
    "source_dir": Param(None, type=["null", "string"], title="Data directory (files source)", section="Scope",
                        description="Directory of the files source instead of MARKET_DATA_DIR."),
    # The monitoring policy, declared once (include/config.py, MonitorPolicy), as monitor_<field>.
    **{f"monitor_{name}": param for name, param in trigger_form(MonitorPolicy).items()},
}


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2023, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "monitoring"],
    params=PARAMS,
    default_args={"owner": "quant-ml", "retries": 1, "retry_delay": timedelta(minutes=2),
                  "on_failure_callback": on_task_failure},
)
def monitor_production():
    @task
    def list_models(params=None) -> list[str]:
        """The registered models with a production version (or the ones asked for)."""
        from include.config import Settings
        from include.monitoring.tasks import production_models

        return production_models(Settings.from_env(), params.get("models"))

    @task(map_index_template="{{ task.op_kwargs['model'] }}")
    def monitor_model(model: str, params=None, data_interval_end=None, dag_run=None) -> dict:
        """Ingest, score, join labels, measure, decide; the report's headline for XCom."""
        from include.config import Settings
        from include.monitoring.tasks import monitor_one
        from include.tasks import fail_fast

        with fail_fast():  # missing data or a bad parameter: no retry, the alert goes out at once
            return monitor_one(Settings.from_env(), model, params=params, data_interval_end=data_interval_end,
                               run_after=getattr(dag_run, "run_after", None), run_id=get_current_context()["run_id"])

    # all_done: one model whose monitoring failed does not cancel the other models' requests.
    @task(outlets=[RETRAIN_REQUEST], trigger_rule="all_done")
    def request_retrain(results: list[dict], outlet_events=None) -> dict:
        """Alert on anything tripped; update the retrain_request asset for the models that need it."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.config import Settings
        from include.monitoring.tasks import retrain_request

        request = retrain_request(list(results or []), get_current_context(), Settings.from_env())
        if request is None:
            raise AirflowSkipException("no model needs a retrain: no retrain_request event")
        outlet_events[RETRAIN_REQUEST].extra = request
        return request

    @task(trigger_rule="all_done", on_failure_callback=None)
    def check_models(models: list[str], results: list[dict]) -> list[str]:
        """Fail the run when a model's monitoring failed (its own alert named it); the others stand."""
        from airflow.sdk.exceptions import AirflowFailException

        done = {r["model"] for r in results or []}
        failed = sorted(set(models or []) - done)
        if failed:
            raise AirflowFailException(f"monitoring failed for {len(failed)} of {len(models)} model(s): "
                                       f"{', '.join(failed)}; the other models' results and requests stand")
        return sorted(done)

    models = list_models()
    results = monitor_model.expand(model=models)
    request_retrain(results)
    check_models(models, results)


monitor_production()
