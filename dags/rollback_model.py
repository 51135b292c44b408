"""
# rollback_model

Manual DAG: point one registered model's production back at an earlier version of it.

**Param `model`**: the registered model (e.g. `binance-btcusdt-perp-1h-h4`; see the **Models**
page or `python -m include.registry models`). **Param `version`**: the version to restore;
empty means the version that held production before the current one and was not itself rolled
away from, so triggering it twice walks back two steps and never returns to a rejected version.
Other registered models are not touched. The target's files are checked against the sha256 the
registry recorded before the `production` alias moves; the move is recorded in the ledger with
this run's id and the `reason` param, in the same transaction, and the model's production asset
(`model://<model>/production`) is updated with the restored version. The same code path as
`python -m include.registry rollback --model NAME`. Trigger it from the UI (the trigger form
shows the params) or with
`airflow dags trigger rollback_model --conf '{"model": "binance-btcusdt-perp-1h-h4"}'`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from include.assets import PRODUCTION_ALIAS
from include.notify import on_task_failure


@dag(
    schedule=None,
    start_date=datetime(2019, 9, 15),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "registry"],
    params={
        "model": Param("binance-btcusdt-perp-1h-h4", type="string", minLength=1,
                       description="Registered model whose production to roll back."),
        "version": Param(None, type=["null", "string"],
                         description="Version id to restore; empty = the previous production version that was "
                                     "not itself rolled away from."),
        "reason": Param("manual rollback", type="string", description="Recorded in the ledger."),
    },
    default_args={"owner": "quant-ml", "retries": 0, "retry_delay": timedelta(minutes=1),
                  "on_failure_callback": on_task_failure},
)
def rollback_model():
    @task(outlets=[PRODUCTION_ALIAS])
    def rollback(params=None, outlet_events=None) -> dict:
        from include.assets import production_asset, production_event
        from include.config import Settings
        from include.registry import ModelRegistry

        ctx = get_current_context()
        registry = ModelRegistry.from_settings(Settings.from_env())
        pointer = registry.rollback(params["model"], params.get("version") or None, run_id=ctx["run_id"],
                                    reason=params["reason"], dag_id=ctx["dag"].dag_id, once_per_run=True)
        registry.dispose()
        # The model's production asset: a DAG scheduled on it runs with the restored version.
        outlet_events[PRODUCTION_ALIAS].add(production_asset(pointer.model), extra=production_event(
            pointer.model, pointer.version, pointer.previous, "rollback", params["reason"]))
        return {"model": pointer.model, "production": pointer.version, "previous": pointer.previous}

    rollback()


rollback_model()
