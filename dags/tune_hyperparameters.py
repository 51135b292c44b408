"""
# tune_hyperparameters

Tunes each model family's hyperparameters per market of the universe, as of a date, and records
the result as a **hyperparameter set** that later `weekly_retrain` runs use.

**Schedule.** Monthly by default (`TUNE_SCHEDULE`, a cron expression; default `0 0 1 * *`), with
monthly data intervals: the run for [2023-06-01, 2023-07-01) tunes as of 2023-07-01. On demand:
trigger with `as_of_date`. A study uses only rows whose labels end before the as-of date.

**Steps.** `plan_tuning` (the markets, as `weekly_retrain` plans them; `cv_folds` becomes
`tune_folds`) → `prepare_dataset` per market (the weekly run's ingest, Great Expectations
validation, features and labels, for the window ending at the as-of date) → `tune_family`, one
mapped task per (market, family), in the `training` pool: an Optuna study (TPE sampler, median
pruner across folds, the family's defaults as the first trial) whose trials are scored by the
purged, embargoed walk-forward service on the last `tune_folds` weeks, objective the out-of-fold
log loss, macro F1 and the after-cost trading record beside it; trials are stored in the market
database (Optuna's RDB storage) so several workers share a study and a re-run resumes it; the
best trial becomes the set, with its trial count, search space, data window, code version and
probability of backtest overfitting → `publish_summary` (one line per set in the log and in
`tuning.json` in the run folder; the run's note lists the sets).

**Use.** A `weekly_retrain` run with `hyperparameters=tuned` (opt-in) trains each family
with the newest set whose as-of date is at or before its first walk-forward test fold, so no
tuned-on row is tested on; the version's lineage names the set and the gate's deflated Sharpe
ratio counts the study's trials. See `include/tuning/`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from include.config import MODEL_FAMILIES, TuningConfig
from include.notify import on_task_failure
from include.parameters import trigger_form
from include.resources import TRAINING_POOL

PARAMS = {
    "markets": Param(None, type=["null", "array"], items={"type": "string"}, title="Markets",
                     description="Markets to tune: symbols (BTCUSDT) or registered-model names from the universe "
                                 "file; empty = every market in it."),
    "universe_file": Param(None, type=["null", "string"], title="Universe file",
                           description="Universe file (YAML) instead of MARKET_UNIVERSE_FILE or the bundled one."),
    "as_of_date": Param(None, type=["null", "string"], format="date", title="As-of date",
                        description="Tune on data before this date (00:00 UTC); empty: the data interval's end."),
    "source": Param("files", type="string", enum=["files", "exchange"], title="Market data source",
                    description="Where market data is ingested from."),
    "source_dir": Param(None, type=["null", "string"], title="Data directory (files source)",
                        description="Directory of market-data files; empty: MARKET_DATA_DIR or the bundled data."),
    "models": Param(list(MODEL_FAMILIES), type="array", items={"type": "string", "enum": list(MODEL_FAMILIES)},
                    minItems=1, uniqueItems=True, title="Model families", description="Families to tune."),
    # Trials, time budget, folds and search space: declared once (include/config.py, TuningConfig).
    **trigger_form(TuningConfig),
}

#: Tasks show the market and family as their map index.
JOB = "{{ task.op_kwargs['job']['model'] }} {{ task.op_kwargs['job']['family'] }}"


@dag(
    schedule=CronDataIntervalTimetable(os.environ.get("TUNE_SCHEDULE", "0 0 1 * *"), timezone="UTC"),
    start_date=datetime(2019, 9, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "tuning"],
    params=PARAMS,
    default_args={"owner": "quant-ml", "retries": 1, "retry_delay": timedelta(minutes=2),
                  "on_failure_callback": on_task_failure},
)
def tune_hyperparameters():
    @task
    def plan_tuning(params=None, data_interval_start=None, data_interval_end=None, dag_run=None) -> list[dict]:
        """One plan per market, for the window ending at the as-of date."""
        from include.tasks import fail_fast
        from include.tuning.runs import plan_tuning as plan

        with fail_fast():
            return plan(dict(params), data_interval_start=data_interval_start, data_interval_end=data_interval_end,
                        run_after=getattr(dag_run, "run_after", None))

    @task(map_index_template="{{ task.op_kwargs['plan']['model'] }}")
    def prepare_dataset(plan: dict) -> dict:
        """The market's modelling table up to the as-of date (the weekly run's own steps)."""
        from include.tasks import fail_fast
        from include.tuning.runs import prepare

        with fail_fast():
            return prepare(plan)

    @task
    def list_studies(prepared: list) -> list[dict]:
        """One job per (market, family)."""
        from include.tuning.runs import studies

        return studies(list(prepared))

    @task(map_index_template=JOB, pool=TRAINING_POOL)
    def tune_family(job: dict, ti=None) -> dict:
        """Run the study of one (market, family) and record its hyperparameter set."""
        from include.tasks import fail_fast
        from include.tuning.runs import tune_and_record

        with fail_fast():
            return tune_and_record(job, worker=ti.map_index if ti is not None else 0)

    @task
    def publish_summary(results: list) -> dict:
        """Every set of the run, one line each in the log and in each market's ``tuning.json``; the
        run's note (plugins/run_notes.py) lists them."""
        import logging

        from include.tuning.runs import report, run_note

        sets = list(results)
        logging.getLogger(__name__).info("hyperparameter sets:\n%s", report(sets))
        return {"note": run_note(sets), "sets": [s["set_id"] for s in sets if s]}

    prepared = prepare_dataset.expand(plan=plan_tuning())
    publish_summary(tune_family.expand(job=list_studies(prepared)))


tune_hyperparameters()
