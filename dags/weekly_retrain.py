"""
# weekly_retrain

Retrains, checks, gates and ships the market-direction model every week.

**Schedule.** Sundays 00:00 UTC with weekly data intervals
(`CronDataIntervalTimetable("0 0 * * 0")`): the run with logical date 2023-12-24 covers
[2023-12-24, 2023-12-31) and starts after it ends. A run uses only market data with timestamps
before its `data_interval_end`, so backfills never see the future. A run triggered from the UI
without a logical date has no data interval: it trains on the **last complete week**
(Sunday to Sunday) before it starts, unless the `as_of_date` param names another week (useful with
the bundled data, which ends on 2023-12-31).

**Steps.** `plan_run` → `ingest_market_data` (OHLCV, funding rates, open interest into the market
store; idempotent upserts) → `validate_market_data` (Great Expectations; failure stops the run
with a report) → `build_features` (TA-Lib indicators, as-of joined funding and open interest) →
`build_labels` (down / range / up from the forward return) → `train_model` (one mapped task per
model family; purged, embargoed walk-forward cross-validation, early stopping on an inner split)
→ `assemble_ensemble` (weighted soft voting; candidate registered as an immutable version) →
`simulate_trading` (out-of-fold positions after fees, slippage and funding, next to buy-and-hold
and momentum) → `quality_gate` (sensor; champion/challenger policy) → `approve_promotion` (only
with `require_approval`: Airflow's human-in-the-loop approval) → `promote` or `keep_production`
→ `publish_summary` (HTML report, weekly summary to Slack/Discord) → `apply_retention` (registry
cleanup: the last `MODEL_REGISTRY_KEEP_LAST` versions and every version that ever held production
are kept).

**Gate rule.** Promote only if the ensemble's out-of-fold macro F1 beats the best naive baseline by
`gate_min_f1_margin`, its out-of-fold log loss is at most `gate_max_log_loss_ratio` x the class-
prior forecast's, and, when a production model exists, it was trained before this run's data
interval and the candidate's macro F1 on that interval is within `gate_champion_tolerance` of
the champion's; and the simulated strategy's out-of-fold Sharpe after costs beats flat and the
momentum rule by `gate_min_sharpe_margin` with a maximum drawdown within `gate_max_drawdown`
(optionally a probabilistic Sharpe ratio of at least `gate_min_probabilistic_sharpe`). See
`include/gate.py`.

**Outputs.** `var/runs/weekly_retrain/<interval>/` (features, dataset, candidates, validation,
trading and gate reports, report.html, summary.json); `models/versions/` (immutable artifacts);
the registry's aliases (`production`, `challenger`) and ledger in the market database.
`promote` smoke-tests the new production model (load + predict on the latest bars) and rolls
back automatically if that fails.

**Backfill.** `airflow backfill create --dag-id weekly_retrain --from-date 2023-11-05
--to-date 2023-12-24 --max-active-runs 1`. Each run trains only on data before its own
`data_interval_end`. Runs decide in logical-date order whatever the concurrency: the
`quality_gate` sensor (reschedule mode) waits until no earlier run of this DAG is queued or
running, so each gate compares with the production model as the previous week left it; a failed
week does not block the next. Backfill runs are limited by the backfill's `--max-active-runs`
(default 10), not by the DAG's `max_active_runs=1`; 1 is the sensible value on a small machine.
A backfill over weeks older than the production model's training data cannot promote: its gates
reject because the champion is not out-of-sample there.

**Alerts.** Every task's failure goes to the Airflow connections `slack_alerts` and
`discord_alerts` when they exist (see README).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import CronDataIntervalTimetable, Param, PokeReturnValue, dag, get_current_context, task

from include.config import MODEL_FAMILIES, TIMEFRAME_SECONDS, RunConfig
from include.notify import on_task_failure

DEFAULTS = RunConfig()
DOCS = RunConfig.describe()


def _param(name: str, type_: str | list[str], **kwargs) -> Param:
    default = getattr(DEFAULTS, name)
    if isinstance(default, tuple):
        default = list(default)
    return Param(default, type=type_, description=DOCS[name], **kwargs)


PARAMS = {
    "symbol": _param("symbol", "string", pattern="^[A-Za-z0-9]+$"),
    "market_type": _param("market_type", "string", enum=["perp", "spot"]),
    "timeframe": _param("timeframe", "string", enum=list(TIMEFRAME_SECONDS)),
    "train_window_days": _param("train_window_days", "integer", minimum=14),
    "label_horizon_bars": _param("label_horizon_bars", "integer", minimum=1, maximum=168),
    "label_threshold_mode": _param("label_threshold_mode", "string", enum=["volatility", "fixed"]),
    "label_threshold": _param("label_threshold", "number", exclusiveMinimum=0),
    "models": _param("models", "array", items={"type": "string", "enum": list(MODEL_FAMILIES)},
                     minItems=1, uniqueItems=True),
    "cv_folds": _param("cv_folds", "integer", minimum=2, maximum=52),
    "ensemble_weighting": _param("ensemble_weighting", "string", enum=["fixed", "fitted"]),
    "gate_min_f1_margin": _param("gate_min_f1_margin", "number"),
    "gate_max_log_loss_ratio": _param("gate_max_log_loss_ratio", "number", exclusiveMinimum=0),
    "gate_champion_tolerance": _param("gate_champion_tolerance", "number", minimum=0),
    "cv_scheme": _param("cv_scheme", "string", enum=["expanding", "rolling"]),
    "cv_embargo_bars": _param("cv_embargo_bars", "integer", minimum=0, maximum=1000),
    "gate_min_sharpe_margin": _param("gate_min_sharpe_margin", "number"),
    "gate_max_drawdown": _param("gate_max_drawdown", "number", exclusiveMinimum=0, maximum=1),
    "gate_min_probabilistic_sharpe": _param("gate_min_probabilistic_sharpe", ["null", "number"],
                                            minimum=0, maximum=1),
    "trade_min_probability": _param("trade_min_probability", "number", minimum=0, exclusiveMaximum=1),
    "fee_bps": _param("fee_bps", "number", minimum=0),
    "slippage_bps": _param("slippage_bps", "number", minimum=0),
    "require_approval": _param("require_approval", "boolean"),
    "as_of_date": _param("as_of_date", ["null", "string"], format="date"),
    "source": _param("source", "string", enum=["files", "exchange"]),
    "source_dir": _param("source_dir", ["null", "string"]),
}


def _ctx() -> tuple[str, str]:
    ctx = get_current_context()
    return ctx["dag"].dag_id, ctx["run_id"]


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * 0", timezone="UTC"),
    start_date=datetime(2019, 9, 15),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "retraining", "market-data"],
    params=PARAMS,
    default_args={
        "owner": "quant-ml",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": on_task_failure,
    },
)
def weekly_retrain():
    @task(multiple_outputs=True)
    def plan_run(params=None, data_interval_start=None, data_interval_end=None, dag_run=None) -> dict:
        from dataclasses import asdict

        from include.pipeline import resolve_window

        cfg = RunConfig.from_params(params)
        window = resolve_window(cfg, data_interval_start=data_interval_start,
                                data_interval_end=data_interval_end,
                                run_after=getattr(dag_run, "run_after", None))
        return {"config": cfg.to_dict(), "window": asdict(window)}

    @task
    def model_families(config: dict) -> list[str]:
        return list(config["models"])

    @task
    def ingest_market_data(config: dict, window: dict) -> dict:
        from include.pipeline import ingest
        from include.tasks import unpack

        cfg, win, settings, _ = unpack(config, window, _ctx()[0])
        return ingest(cfg, win, settings)

    @task
    def validate_market_data(config: dict, window: dict, ingested: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from include.errors import DataQualityError
        from include.pipeline import validate
        from include.tasks import unpack

        cfg, win, settings, out = unpack(config, window, _ctx()[0])
        try:
            return validate(cfg, win, settings, out)
        except DataQualityError as exc:
            # Bad data does not improve on retry: fail now, with the full report in the message.
            raise AirflowFailException(str(exc)) from exc

    @task
    def build_features(config: dict, window: dict, validation: dict) -> dict:
        from include.pipeline import features
        from include.tasks import unpack

        cfg, win, settings, out = unpack(config, window, _ctx()[0])
        return features(cfg, win, settings, out)

    @task
    def build_labels(config: dict, window: dict, feature_info: dict) -> dict:
        from include.pipeline import labels
        from include.tasks import unpack

        cfg, win, _, out = unpack(config, window, _ctx()[0])
        return labels(cfg, win, out)

    @task(map_index_template="{{ task.op_kwargs['family'] }}")
    def train_model(config: dict, window: dict, dataset: dict, family: str) -> dict:
        from include.pipeline import train
        from include.tasks import unpack

        cfg, win, _, out = unpack(config, window, _ctx()[0])
        return train(cfg, win, out, family)

    @task
    def assemble_ensemble(config: dict, window: dict, trained: list, logical_date=None) -> dict:
        from include.pipeline import assemble
        from include.tasks import unpack

        dag_id, run_id = _ctx()
        cfg, win, settings, out = unpack(config, window, dag_id)
        return assemble(cfg, win, settings, out, list(trained), dag_id=dag_id, run_id=run_id,
                        logical_date=logical_date.isoformat() if logical_date else None)

    @task
    def simulate_trading(config: dict, window: dict, assembled: dict) -> dict:
        from include.pipeline import simulate_trading as simulate
        from include.tasks import unpack

        cfg, win, settings, out = unpack(config, window, _ctx()[0])
        return simulate(cfg, win, settings, out)

    @task.sensor(poke_interval=10, timeout=timedelta(hours=12), mode="reschedule")
    def quality_gate(config: dict, window: dict, assembled: dict, trading: dict, ti=None,
                     dag_run=None) -> PokeReturnValue:
        """Wait for earlier runs to finish and the registry to be free, then apply the gate policy."""
        import logging

        from include.pipeline import gate
        from include.registry import ModelRegistry
        from include.tasks import unfinished_earlier_runs, unpack

        cfg, win, settings, out = unpack(config, window, _ctx()[0])
        waiting = unfinished_earlier_runs(ti, dag_run)
        if waiting:
            logging.getLogger(__name__).info("waiting for %d earlier run(s) to decide first", waiting)
            return PokeReturnValue(is_done=False)
        if ModelRegistry.from_settings(settings).is_locked():
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=gate(cfg, win, settings, out, assembled, trading))

    @task.branch
    def choose_action(decision: dict, config: dict) -> str:
        if not decision["passed"]:
            return "keep_production"
        return "approve_promotion" if config.get("require_approval") else "promote"

    approve_promotion = ApprovalOperator(
        task_id="approve_promotion",
        subject="Promote {{ ti.xcom_pull(task_ids='quality_gate')['candidate'] }} to production?",
        body="Gate: {{ ti.xcom_pull(task_ids='quality_gate')['summary'] }}\n\n"
             "Run {{ run_id }}. Approve moves the production alias; Reject keeps production as it is.",
        execution_timeout=timedelta(days=3),
    )

    @task(trigger_rule="none_failed_min_one_success")
    def promote(decision: dict, window: dict) -> dict:
        from datetime import datetime as dt

        from include.config import Settings
        from include.pipeline import promote as promote_candidate

        dag_id, run_id = _ctx()
        return promote_candidate(Settings.from_env(), decision, run_id=run_id, dag_id=dag_id,
                                 as_of=dt.fromisoformat(window["interval_end"]))

    @task
    def keep_production(decision: dict) -> dict:
        from include.config import Settings
        from include.pipeline import keep

        dag_id, run_id = _ctx()
        return keep(Settings.from_env(), decision, run_id=run_id, dag_id=dag_id)

    @task(trigger_rule="none_failed_min_one_success")
    def publish_summary(config: dict, window: dict, ingested: dict, validation: dict, feature_info: dict,
                        dataset: dict, assembled: dict, trading: dict, decision: dict, promoted: dict | None,
                        kept: dict | None) -> dict:
        from include.pipeline import summarise
        from include.tasks import unpack

        cfg, win, settings, out = unpack(config, window, _ctx()[0])
        parts = {"ingested": ingested, "validation": validation, "features": feature_info,
                 "labels": dataset, "ensemble": assembled, "trading": trading, "gate": decision,
                 "action": promoted or kept}
        return summarise(settings, out, win, parts, context=get_current_context())

    @task
    def apply_retention() -> dict:
        from include.config import Settings
        from include.registry import ModelRegistry

        settings = Settings.from_env()
        registry = ModelRegistry.from_settings(settings)
        removed = registry.cleanup(settings.registry_keep_last)
        registry.dispose()
        return {"removed": removed, "keep_last": settings.registry_keep_last}

    plan = plan_run()
    config, window = plan["config"], plan["window"]
    ingested = ingest_market_data(config, window)
    validation = validate_market_data(config, window, ingested)
    feature_info = build_features(config, window, validation)
    dataset = build_labels(config, window, feature_info)
    trained = train_model.partial(config=config, window=window, dataset=dataset).expand(
        family=model_families(config))
    assembled = assemble_ensemble(config, window, trained)
    trading = simulate_trading(config, window, assembled)
    decision = quality_gate(config, window, assembled, trading)
    action = choose_action(decision, config)
    promoted, kept = promote(decision, window), keep_production(decision)
    action >> [approve_promotion, promoted, kept]
    approve_promotion >> promoted
    published = publish_summary(config, window, ingested, validation, feature_info, dataset, assembled, trading,
                                decision, promoted, kept)
    published >> apply_retention()


weekly_retrain()
