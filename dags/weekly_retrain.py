"""
# weekly_retrain

Retrains, checks, gates and ships one model per market of the universe every week.

**Markets.** The universe file (`include/universe.yaml`: the bundled BTCUSDT and ETHUSDT
perpetuals; `MARKET_UNIVERSE_FILE` or the `universe_file` param for another) lists the markets.
Each is one **registered model** (e.g. `binance-btcusdt-perp-1h-h4`: exchange, symbol, market
type, timeframe, label horizon) with its own versions, `production` and `challenger` aliases and
ledger. The `markets` param picks a subset (symbols or model names). A market's parameters are
the run's params overridden by its `params` in the universe file. Each market runs in its own
instance of the mapped task group `market` (the map index shows the model name): a failing
market does not stop the others, and its alert names it. A universe larger than
`MARKET_GROUP_INSTANCES` (default: twice the scheduler's `parallelism`) is dealt into that many
instances, each running its markets' steps in turn (the `market_batch_size` param sets the batch
size instead): every instance costs the scheduler its eleven task instances whatever it holds
(measured by `bench/universe_scale.py`: docs/operating/deployment.md). In a batch the others go
on after a market's failure; a retriable one is retried with the task, whose retry runs only the
markets not finished (`include.tasks.each_market`); a final one is alerted by market name.

**Schedule.** Sundays 00:00 UTC with weekly data intervals
(`CronDataIntervalTimetable("0 0 * * 0")`): the run with logical date 2023-12-24 covers
[2023-12-24, 2023-12-31) and starts after it ends. A run uses only market data with timestamps
before its `data_interval_end`, so backfills never see the future. A run triggered from the UI
without a logical date has no data interval: it trains on the **last complete week**
(Sunday to Sunday) before it starts, unless the `as_of_date` param names another week (useful with
the bundled data, which ends on 2023-12-31). The DAG also runs when `monitor_production` updates
the `retrain_request` Asset (`AssetOrTimeSchedule`): such a run retrains only the models the
request names, on data up to the request's day. Its data interval runs from the last Sunday to
that day, so its earlier folds are the scheduled weeks (their fits are reused from the fit
cache) and the champion, trained to that Sunday, is out of sample on the whole interval; the
challenger must pass the gate as any candidate does, and the gate's record carries the request
and its reasons. The next Sunday run compares with a champion promoted mid-week on
the rows after its training data (at least `min_window_rows`, else it keeps it and says so).

**Steps per market.** `ingest_market_data` (OHLCV, funding rates, open interest into the market
store; a market with less history than `train_window_days` trains on what it has when that
reaches `min_history_days`, and is skipped below it, saying when it qualifies) →
`validate_market_data` (Great Expectations; failure stops that market with a report) →
`build_features` (TA-Lib indicators, as-of joined funding and open interest; then the labels:
down / range / up from the forward return) → `train_<family>` (one task per model family;
purged, embargoed walk-forward cross-validation, early stopping on an inner split; families
not in `models` pass through; in the `training` pool, whose slots bound how many fits run at
once, each with the worker's cores divided by the slots as threads: `include/resources.py`) → `assemble_ensemble`
(weighted soft voting; each member's sha256
checked before it is loaded; candidate registered as an immutable version of the market's
registered model; then the trading simulation: out-of-fold positions after fees, slippage and
funding, next to buy-and-hold and momentum) → `quality_gate` (sensor; champion/challenger policy against
the production version of the same registered model only) → `approve_promotion` (asks a person
only with `require_approval` and a passing gate) → `promote_or_keep` → `publish_market_summary`
(HTML report). Then, once for the run: `publish_summary` (every market's outcome, to
Slack/Discord, and as the run's note: `plugins/run_notes.py`) → `apply_retention`
(per registered model: the last `MODEL_REGISTRY_KEEP_LAST`
versions and every version that ever held production are kept) and `check_markets` (fails the
run, so that it shows red, when any market failed; skipped young markets do not fail it).

**Gate rule.** `gate_alpha` (0.10) is the yearly false-promotion rate per registered model:
each week's skill checks are one-sided tests at `gate_alpha / 52` on the candidate's out-of-fold
record (block bootstrap over the serially dependent rows, or the probabilistic Sharpe ratio):
log loss below the class-prior forecast's, macro F1 above every naive baseline's, and after-cost
trading better than flat and than the momentum rule; `gate_required_checks` names those that
decide (default: the log-loss test; the others are recorded), and a challenger that fails one
is never promoted. The maximum drawdown stays within `gate_max_drawdown`. Against the production
version of the same registered model, on every out-of-fold row after its training data: the
challenger is refused when the champion is significantly better (`gate_champion_alpha`). A
champion whose own record (as many rows as the challenger's, same test, same level) is
significantly worse than the class prior's is demoted to "no model" when the challenger is not
promoted (`gate_demote`): production then serves the class-prior forecast and no position. See
`include/gate/`; the gate's forward record: `python -m include.track_record record --model <name>`.

**Outputs.** `var/runs/weekly_retrain/<registered model>/<interval>/` (features, dataset,
candidates, validation, trading and gate reports, report.html, summary.json);
`var/runs/weekly_retrain/_universe/<interval>.json`; `models/versions/<registered model>/`
(immutable artifacts); the registry's aliases and ledger in the market database. A promotion is
smoke-tested (load + predict on the latest bars): on failure production goes back to the
previous version, or, on a model's first promotion, the alias is removed.

**Backfill.** `airflow backfill create --dag-id weekly_retrain --from-date 2023-11-05
--to-date 2023-12-24 --max-active-runs 1`. Each run trains only on data before its own
`data_interval_end`. Runs decide in logical-date order whatever the concurrency: the
`quality_gate` sensor (reschedule mode) waits until no earlier run of this DAG is queued or
running, so each gate compares with the production model as the previous week left it; a failed
week does not block the next. Backfill runs are limited by the backfill's `--max-active-runs`
(default 10), not by the DAG's `max_active_runs=1`; 1 is the sensible value on a small machine.
A backfill over weeks older than a production model's training data cannot promote it: its gates
reject because the champion is not out of sample on enough of those rows.

**Alerts.** Every task's failure goes to the Airflow connections `slack_alerts` and
`discord_alerts` when they exist (see README), naming the market.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import (
    AssetOrTimeSchedule,
    CronDataIntervalTimetable,
    Param,
    PokeReturnValue,
    dag,
    get_current_context,
    task,
    task_group,
)

from include.approval import PromotionApproval
from include.assets import PRODUCTION_ALIAS, RETRAIN_REQUEST
from include.config import FORM_SECTIONS, MODEL_FAMILIES, RunConfig
from include.notify import on_task_failure
from include.parameters import trigger_form
from include.resources import MARKET_DATA_POOL, TRAINING_POOL

#: The trigger form: which markets, then every run parameter the configuration puts in the form
#: (include/config.py declares each one's default, description, bounds, title and section).
PARAMS = {
    "markets": Param(None, type=["null", "array"], items={"type": "string"}, title="Markets", section=FORM_SECTIONS[0],
                     description="Markets to train: symbols (BTCUSDT) or registered-model names from the universe "
                                 "file; empty = every market in it."),
    "universe_file": Param(None, type=["null", "string"], title="Universe file", section=FORM_SECTIONS[0],
                           description="Universe file (YAML) instead of MARKET_UNIVERSE_FILE or the bundled "
                                       "include/universe.yaml."),
    "market_batch_size": Param(None, type=["null", "integer"], minimum=1, title="Markets per instance",
                               section=FORM_SECTIONS[0],
                               description="Markets each instance of the market task group runs in turn; empty = "
                                           "one each while they fit in MARKET_GROUP_INSTANCES instances (default "
                                           "twice the scheduler's parallelism), else evenly spread over them."),
    **trigger_form(RunConfig, FORM_SECTIONS),
}

#: Tasks of the market group show their batch's label as their map index: the registered model's
#: name for a batch of one market.
BATCH = "{{ task.op_kwargs['batch']['label'] }}"


@task
def plan_run(params=None) -> list[dict]:
    """The market group's instances: batches of market plans (registered model, its run
    configuration and window), one market each while they fit (include/universe.py)."""
    from include.pipeline.tasks import plan_run

    return plan_run(params, get_current_context())


# -- the market group's tasks: one step of the routine (include/pipeline/routine.py) per market --

# The market_data pool bounds how many instances read from the exchange at once (its rate limits).
@task(map_index_template=BATCH, pool=MARKET_DATA_POOL)
def ingest_market_data(batch: dict) -> dict:
    from include.pipeline.tasks import ingest_market_data

    return ingest_market_data(batch, get_current_context())


@task(map_index_template=BATCH)
def validate_market_data(batch: dict, ingested: dict) -> dict:
    from include.pipeline.tasks import validate_market_data

    return validate_market_data(batch, ingested, get_current_context())


@task(map_index_template=BATCH)
def build_features(batch: dict, ingested: dict, validation: dict) -> dict:
    """The modelling table: features, then their labels."""
    from include.pipeline.tasks import build_features

    return build_features(batch, ingested, validation, get_current_context())


# The training pool caps how many fits run at once; each uses the cores / slots threads.
@task(map_index_template=BATCH, pool=TRAINING_POOL)
def train_model(batch: dict, ingested: dict, built: dict, family: str) -> dict:
    """Train one family per market; ``None`` for a market whose ``models`` leaves it out."""
    from include.pipeline.tasks import train_model

    return train_model(batch, ingested, built, family, get_current_context())


@task(map_index_template=BATCH)
def assemble_ensemble(batch: dict, ingested: dict, trained: list) -> dict:
    """The candidate: soft-vote the members and register it, then simulate its out-of-fold trading."""
    from include.pipeline.tasks import assemble_ensemble

    return assemble_ensemble(batch, ingested, trained, get_current_context())


@task.sensor(poke_interval=10, timeout=timedelta(hours=12), mode="reschedule", map_index_template=BATCH)
def quality_gate(batch: dict, ingested: dict, candidates: dict) -> PokeReturnValue:
    """Wait for earlier runs to finish and the models' registry locks, then apply the gate policy."""
    from include.pipeline.tasks import quality_gate

    done, decisions = quality_gate(batch, ingested, candidates, get_current_context())
    return PokeReturnValue(is_done=done, xcom_value=decisions)


@task(map_index_template=BATCH, outlets=[PRODUCTION_ALIAS])
def promote_or_keep(batch: dict, ingested: dict, decisions: dict, approvals: dict, outlet_events=None) -> dict:
    """Apply each market's decision: promote (after approval, when asked), demote to no model, or
    keep. A move updates the model's production asset (``model://<model>/production``)."""
    from include.pipeline.tasks import promote_or_keep

    return promote_or_keep(batch, ingested, decisions, approvals, get_current_context(), outlet_events)


@task(map_index_template=BATCH)
def publish_market_summary(batch: dict, ingested: dict, validation: dict, built: dict, candidates: dict,
                           decisions: dict, actions: dict) -> dict:
    from include.pipeline.tasks import publish_market_summary

    return publish_market_summary(batch, ingested, validation, built, candidates, decisions, actions,
                                  get_current_context())


@task_group(group_id="market")
def market(batch: dict):
    """One instance per batch of markets (one market per batch while the markets fit within
    ``MARKET_GROUP_INSTANCES``: include/universe.py); each task runs its step per market."""
    # Keyword arguments: the map index template and the alerts read the batch from op_kwargs["batch"].
    ingested = ingest_market_data(batch=batch)
    validation = validate_market_data(batch=batch, ingested=ingested)
    built = build_features(batch=batch, ingested=ingested, validation=validation)
    trained = [train_model.override(task_id=f"train_{family}")(batch=batch, ingested=ingested, built=built,
                                                               family=family)
               for family in MODEL_FAMILIES]
    candidates = assemble_ensemble(batch=batch, ingested=ingested, trained=trained)
    decisions = quality_gate(batch=batch, ingested=ingested, candidates=candidates)
    approve_promotion = PromotionApproval(
        task_id="approve_promotion",
        gate_task_id="market.quality_gate",
        # The run parameter's default; each market's own approval_timeout_hours replaces it.
        response_timeout=timedelta(hours=RunConfig.__dataclass_fields__["approval_timeout_hours"].default),
        map_index_template="{% set m = ti.xcom_pull(task_ids='market.quality_gate', map_indexes=ti.map_index)"
                           " | list %}{{ m[0] }}{% if m | length > 1 %} (+{{ m | length - 1 }} more){% endif %}",
    )
    decisions >> approve_promotion
    actions = promote_or_keep(batch=batch, ingested=ingested, decisions=decisions, approvals=approve_promotion.output)
    return publish_market_summary(batch=batch, ingested=ingested, validation=validation, built=built,
                                  candidates=candidates, decisions=decisions, actions=actions)


# -- once per run, after every market ----------------------------------------------------------

@task(trigger_rule="all_done")
def publish_summary() -> dict:
    """Every market's outcome (decision, skip or failure), to the run's log and the alert channels."""
    from include.pipeline.tasks import publish_summary

    return publish_summary(get_current_context())


@task(trigger_rule="all_done", on_failure_callback=None)
def check_markets() -> dict:
    """Fail the run when a market failed, so it shows red; the others' results stand.

    No alert of its own: the failing task's alert and the weekly summary already name the market.
    """
    from include.pipeline.tasks import check_markets

    return check_markets(get_current_context())


@task
def apply_retention() -> dict:
    from include.pipeline.tasks import apply_retention

    return apply_retention(get_current_context())


@dag(
    # Weekly, or when monitor_production asks for a retrain (include/assets.py).
    schedule=AssetOrTimeSchedule(timetable=CronDataIntervalTimetable("0 0 * * 0", timezone="UTC"),
                                 assets=[RETRAIN_REQUEST]),
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
    markets = market.expand(batch=plan_run())
    published = publish_summary()
    markets >> published >> [apply_retention(), check_markets()]


weekly_retrain()
