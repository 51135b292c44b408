"""
# rollback_model

Manual DAG: point the production model back at an earlier registry version.

**Param `version`**: the version id to restore (see the **Models** page, `python -m
include.registry list`, or `history production`); empty means the version production held
before the current one. The target's files are checked against the sha256 the registry recorded
before the `production` alias moves; the move is recorded in the alias ledger with this run's id
and the `reason` param, in the same transaction. The same code path as
`python -m include.registry rollback`. Trigger it from the UI (the trigger form shows both
params) or with
`airflow dags trigger rollback_model --conf '{"version": "v20231224T0000-…"}'`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from include.notify import on_task_failure


@dag(
    schedule=None,
    start_date=datetime(2019, 9, 15),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "registry"],
    params={
        "version": Param(None, type=["null", "string"],
                         description="Version id to restore; empty = the previous production version."),
        "reason": Param("manual rollback", type="string", description="Recorded in the ledger."),
    },
    default_args={"owner": "quant-ml", "retries": 0, "retry_delay": timedelta(minutes=1),
                  "on_failure_callback": on_task_failure},
)
def rollback_model():
    @task
    def rollback(params=None) -> dict:
        from include.config import Settings
        from include.registry import ModelRegistry

        ctx = get_current_context()
        registry = ModelRegistry.from_settings(Settings.from_env())
        pointer = registry.rollback(params.get("version") or None, run_id=ctx["run_id"],
                                    reason=params["reason"], dag_id=ctx["dag"].dag_id)
        registry.dispose()
        return {"production": pointer.version, "previous": pointer.previous}

    rollback()


rollback_model()
