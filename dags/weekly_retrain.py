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
`include/gate.py`; the gate's forward record: `python -m include.track_record record --model <name>`.

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
from include.config import MODEL_FAMILIES, RunConfig
from include.extensions import feature_names
from include.notify import on_task_failure
from include.resources import MARKET_DATA_POOL, TRAINING_POOL

DEFAULTS = RunConfig()
DOCS = RunConfig.describe()
BOUNDS = RunConfig.bounds()
#: Run-wide fields a market's universe entry sets instead (exchange, symbol, market type, timeframe).
MARKET_FIELDS = ("exchange", "symbol", "market_type", "timeframe")


#: Sections of the trigger form, in the order shown.
DATA, LABELS, CV, ENSEMBLE, GATE, TRADING = ("Data", "Labels", "Models and cross-validation", "Ensemble",
                                             "Quality gate", "Trading simulation")


def _param(name: str, type_: str | list[str], section: str, title: str, **kwargs) -> Param:
    """A trigger-form field for a :class:`RunConfig` field: its default (floats shown to 4
    decimals), description, title, section, and the field's bounds as minimum and maximum."""
    default = getattr(DEFAULTS, name)
    if isinstance(default, tuple):
        default = list(default)
    if isinstance(default, float):
        default = round(default, 4)  # 1/3 is shown and used as 0.3333
    if name in BOUNDS:
        kwargs = {"minimum": BOUNDS[name][0], "maximum": BOUNDS[name][1], **kwargs}
    return Param(default, type=type_, description=DOCS[name], title=title, section=section,
                 **kwargs)


PARAMS = {
    # Data
    "markets": Param(None, type=["null", "array"], items={"type": "string"}, title="Markets", section=DATA,
                     description="Markets to train: symbols (BTCUSDT) or registered-model names from the universe "
                                 "file; empty = every market in it."),
    "universe_file": Param(None, type=["null", "string"], title="Universe file", section=DATA,
                           description="Universe file (YAML) instead of MARKET_UNIVERSE_FILE or the bundled "
                                       "include/universe.yaml."),
    "market_batch_size": Param(None, type=["null", "integer"], minimum=1, title="Markets per instance", section=DATA,
                               description="Markets each instance of the market task group runs in turn; empty = "
                                           "one each while they fit in MARKET_GROUP_INSTANCES instances (default "
                                           "twice the scheduler's parallelism), else evenly spread over them."),
    "as_of_date": _param("as_of_date", ["null", "string"], DATA, "As-of date (runs without a data interval)",
                         format="date"),
    "source": _param("source", "string", DATA, "Market data source", enum=["files", "exchange"]),
    "source_dir": _param("source_dir", ["null", "string"], DATA, "Data directory (files source)"),
    "train_window_days": _param("train_window_days", "integer", DATA, "Training window (days)"),
    "min_history_days": _param("min_history_days", "integer", DATA, "Minimum history (days)"),
    # Labels
    "label_horizon_bars": _param("label_horizon_bars", "integer", LABELS, "Horizon (bars)"),
    "label_threshold_mode": _param("label_threshold_mode", "string", LABELS, "Threshold mode",
                                   enum=["volatility", "fixed"]),
    "label_threshold": _param("label_threshold", "number", LABELS, "Threshold", exclusiveMinimum=0),
    # Models and cross-validation
    "models": _param("models", "array", CV, "Model families", items={"type": "string", "enum": list(MODEL_FAMILIES)},
                     examples=list(MODEL_FAMILIES), minItems=1, uniqueItems=True),
    "extra_features": _param("extra_features", "array", DATA, "Plug-in features (installed packages)",
                             items={"type": "string", "enum": list(feature_names())}, uniqueItems=True),
    "cv_folds": _param("cv_folds", "integer", CV, "Walk-forward folds"),
    "cv_scheme": _param("cv_scheme", "string", CV, "Walk-forward scheme", enum=["expanding", "rolling"]),
    "cv_embargo_bars": _param("cv_embargo_bars", "integer", CV, "Embargo (bars)"),
    "hyperparameters": _param("hyperparameters", "string", CV, "Hyperparameters", enum=["tuned", "default"]),
    # Ensemble
    "ensemble_weighting": _param("ensemble_weighting", "string", ENSEMBLE, "Weighting",
                                 enum=["fixed", "fitted", "stacking"]),
    # Quality gate
    "gate_alpha": _param("gate_alpha", "number", GATE, "False-promotion rate per year (each week at 1/52 of it)",
                         exclusiveMinimum=0, maximum=1),
    "gate_min_f1_margin": _param("gate_min_f1_margin", "number", GATE, "Macro-F1 lead over each baseline (H1)"),
    "gate_max_log_loss_ratio": _param("gate_max_log_loss_ratio", "number", GATE,
                                      "Log loss / class-prior log loss to beat (H1)", exclusiveMinimum=0),
    "gate_min_sharpe_margin": _param("gate_min_sharpe_margin", "number", GATE,
                                     "Annualised Sharpe to beat, over flat and over momentum"),
    "gate_max_drawdown": _param("gate_max_drawdown", "number", GATE, "Largest drawdown (fraction)",
                                exclusiveMinimum=0, maximum=1),
    "gate_champion_alpha": _param("gate_champion_alpha", "number", GATE,
                                  "Level at which a better champion refuses the challenger (0: never)",
                                  minimum=0, maximum=1),
    "gate_required_checks": _param("gate_required_checks", "array", GATE, "Skill tests that decide",
                                   items={"type": "string", "enum": ["beats_baselines_f1", "beats_prior_log_loss",
                                                                     "beats_trading_baselines"]}, uniqueItems=True),
    "gate_demote": _param("gate_demote", "boolean", GATE,
                          "Demote a champion significantly worse than the class prior to no model"),
    "gate_record_weeks": _param("gate_record_weeks", "integer", GATE,
                                "Weeks of earlier candidates' forecasts in the log-loss test"),
    "gate_min_deflated_sharpe": _param("gate_min_deflated_sharpe", ["null", "number"], GATE,
                                       "Smallest deflated Sharpe ratio (empty: off)", minimum=0, maximum=1),
    "require_approval": _param("require_approval", "boolean", GATE, "Ask a person to approve a promotion"),
    "approval_timeout_hours": _param("approval_timeout_hours", "number", GATE,
                                     "Hours to wait for the approval (then: rejected)", exclusiveMinimum=0),
    # Trading simulation
    "trade_min_probability": _param("trade_min_probability", "number", TRADING,
                                    "Smallest probability of a position's side (0: the cost rule alone)",
                                    minimum=0, exclusiveMaximum=1),
    "fee_bps": _param("fee_bps", "number", TRADING, "Fee per side (bps)"),
    "slippage_bps": _param("slippage_bps", "number", TRADING, "Slippage per side (bps)"),
}

#: Tasks of the market group show their batch's label as their map index: the registered model's
#: name for a batch of one market.
BATCH = "{{ task.op_kwargs['batch']['label'] }}"


def _dag_id() -> str:
    return get_current_context()["dag"].dag_id


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
    @task
    def plan_run(params=None, data_interval_start=None, data_interval_end=None, dag_run=None,
                 triggering_asset_events=None) -> list[dict]:
        """The market group's instances: batches of market plans (registered model, its run
        configuration and window), one market each while they fit (include/universe.py).

        A run triggered by monitor_production's retrain_request retrains the models it names,
        for the week ending at the request's as_of day.
        """
        import logging

        from include.pipeline import plan_universe, retrain_scope
        from include.tasks import fail_fast
        from include.universe import batch_markets

        run_params = {k: v for k, v in params.items() if k not in ("markets", "universe_file", "market_batch_size")}
        selected = params.get("markets")
        scope = retrain_scope(triggering_asset_events) if dag_run.run_type == "asset_triggered" else None
        if scope is not None:
            logging.getLogger(__name__).warning("retrain requested by monitoring for %s as of %s: %s",
                                                ", ".join(scope["markets"]), scope["as_of_date"], scope["reasons"])
            selected, run_params["as_of_date"] = scope["markets"], scope["as_of_date"]
            data_interval_start = data_interval_end = None
        with fail_fast():
            plans = plan_universe(run_params, selected=selected,
                                  universe_file=params.get("universe_file"), data_interval_start=data_interval_start,
                                  data_interval_end=data_interval_end, run_after=getattr(dag_run, "run_after", None))
        if scope is not None:  # the gate records what monitoring found, next to its own checks
            for plan in plans:
                plan["request"] = {"by": "monitor_production", "as_of_date": scope["as_of_date"],
                                   "reason": scope["reasons"].get(plan["model"])}
        with fail_fast():
            return batch_markets(plans, params.get("market_batch_size"))

    @task_group(group_id="market")
    def market(batch: dict):
        """One instance per batch of markets (one market per batch while the markets fit within
        ``MARKET_GROUP_INSTANCES``: include/universe.py); each task runs its step per market."""

        # The market_data pool bounds how many instances read from the exchange at once (its rate limits).
        @task(map_index_template=BATCH, pool=MARKET_DATA_POOL)
        def ingest_market_data(batch: dict) -> dict:
            from airflow.sdk.exceptions import AirflowSkipException

            from include.errors import MarketNotReadyError
            from include.pipeline import ingest
            from include.tasks import each_market, fail_fast, market_run

            def step(plan):
                with fail_fast(), market_run(plan, None, _dag_id()) as (cfg, win, settings, out):
                    try:
                        return ingest(cfg, win, settings, out)
                    except MarketNotReadyError as exc:
                        raise AirflowSkipException(str(exc)) from exc

            return each_market(batch, step, context=get_current_context())

        @task(map_index_template=BATCH)
        def validate_market_data(batch: dict, ingested: dict) -> dict:
            from include.pipeline import validate
            from include.tasks import each_market, fail_fast, market_run

            # Bad data does not improve on a retry: the full report is in the message.
            def step(plan):
                with fail_fast(), market_run(plan, ingested[plan["model"]]["window"], _dag_id()) as (cfg, win, s, out):
                    return validate(cfg, win, s, out)

            return each_market(batch, step, ingested, context=get_current_context())

        @task(map_index_template=BATCH)
        def build_features(batch: dict, ingested: dict, validation: dict) -> dict:
            """The modelling table: features, then their labels (one task: one step fewer to schedule)."""
            from include.pipeline import features, labels
            from include.tasks import each_market, fail_fast, market_run

            def step(plan):
                with fail_fast(), market_run(plan, ingested[plan["model"]]["window"], _dag_id()) as (cfg, win, s, out):
                    return {"features": features(cfg, win, s, out), "labels": labels(cfg, win, out)}

            return each_market(batch, step, ingested, validation, context=get_current_context())

        @task(map_index_template=BATCH)
        def train_model(batch: dict, ingested: dict, built: dict, family: str) -> dict:
            """Train one family per market; ``None`` for a market whose ``models`` leaves it out."""
            import logging

            from include.config import RunConfig
            from include.pipeline import train
            from include.tasks import each_market, fail_fast, market_run

            def step(plan):
                with fail_fast():
                    models = RunConfig.from_params(plan["config"]).models
                if family not in models:
                    logging.getLogger(__name__).info("%s: %s is not in its models %s: nothing to train",
                                                     plan["model"], family, list(models))
                    return None
                with fail_fast(), market_run(plan, ingested[plan["model"]]["window"], _dag_id()) as (cfg, win, s, out):
                    return train(cfg, win, out, family, s)

            return each_market(batch, step, ingested, built, context=get_current_context())

        @task(map_index_template=BATCH)
        def assemble_ensemble(batch: dict, ingested: dict, trained: list, logical_date=None) -> dict:
            """The candidate: soft-vote the members and register it, then simulate its out-of-fold
            trading (one task: one step fewer to schedule)."""
            from include.pipeline import assemble, simulate_trading
            from include.tasks import each_market, fail_fast, market_run

            ctx = get_current_context()

            def step(plan):
                members = [family[plan["model"]] for family in trained]
                with fail_fast(), market_run(plan, ingested[plan["model"]]["window"], _dag_id()) as (cfg, win, s, out):
                    assembled = assemble(cfg, win, s, out, members, dag_id=_dag_id(), run_id=ctx["run_id"],
                                         logical_date=logical_date.isoformat() if logical_date else None)
                    return {"ensemble": assembled, "trading": simulate_trading(cfg, win, s, out)}

            return each_market(batch, step, ingested, *trained, context=ctx)

        @task.sensor(poke_interval=10, timeout=timedelta(hours=12), mode="reschedule", map_index_template=BATCH)
        def quality_gate(batch: dict, ingested: dict, candidates: dict, ti=None, dag_run=None) -> PokeReturnValue:
            """Wait for earlier runs to finish and the models' registry locks, then apply the gate policy."""
            import logging

            from include.config import Settings
            from include.pipeline import gate
            from include.registry import ModelRegistry
            from include.tasks import each_market, fail_fast, market_run, unfinished_earlier_runs

            waiting = unfinished_earlier_runs(ti, dag_run)
            if waiting:
                logging.getLogger(__name__).info("waiting for %d earlier run(s) to decide first", waiting)
                return PokeReturnValue(is_done=False)
            with fail_fast():
                registry = ModelRegistry.from_settings(Settings.from_env())
                try:
                    if any(registry.is_locked(model) for model in candidates):
                        return PokeReturnValue(is_done=False)
                finally:
                    registry.dispose()

            def step(plan):
                made = candidates[plan["model"]]
                with fail_fast(), market_run(plan, ingested[plan["model"]]["window"], _dag_id()) as (cfg, win, s, out):
                    return gate(cfg, win, s, out, made["ensemble"], made["trading"], request=plan.get("request"))

            return PokeReturnValue(is_done=True, xcom_value=each_market(batch, step, candidates,
                                                                        context=get_current_context()))

        approve_promotion = PromotionApproval(
            task_id="approve_promotion",
            gate_task_id="market.quality_gate",
            # The run parameter's default; each market's own approval_timeout_hours replaces it.
            response_timeout=timedelta(hours=RunConfig.__dataclass_fields__["approval_timeout_hours"].default),
            map_index_template="{% set m = ti.xcom_pull(task_ids='market.quality_gate', map_indexes=ti.map_index)"
                               " | list %}{{ m[0] }}{% if m | length > 1 %} (+{{ m | length - 1 }} more){% endif %}",
        )

        @task(map_index_template=BATCH, outlets=[PRODUCTION_ALIAS])
        def promote_or_keep(batch: dict, ingested: dict, decisions: dict, approvals: dict, outlet_events=None) -> dict:
            """Apply each market's decision: promote (after approval, when asked), demote to no
            model, or keep. A move updates the model's production asset (``model://<model>/production``)."""
            from datetime import datetime as dt

            from include.assets import production_asset, production_event
            from include.config import Settings
            from include.pipeline import act
            from include.tasks import each_market, fail_fast

            run_id = get_current_context()["run_id"]

            # A refused or rolled-back promotion must not be retried: a retry would promote again.
            def step(plan):
                with fail_fast():
                    return act(Settings.from_env(), decisions[plan["model"]], run_id=run_id, dag_id=_dag_id(),
                               as_of=dt.fromisoformat(ingested[plan["model"]]["window"]["interval_end"]),
                               approval=approvals[plan["model"]] if decisions[plan["model"]]["passed"] else None)

            done = each_market(batch, step, decisions, approvals, context=get_current_context())
            # The events go out with the task's success: a move an earlier try made is in ``done`` too.
            for model, result in done.items():
                if result["action"] in ("promote", "demote"):
                    outlet_events[PRODUCTION_ALIAS].add(production_asset(model), extra=production_event(
                        model, result["production"], result["previous"], result["action"],
                        decisions[model].get("summary")))
            return done

        @task(map_index_template=BATCH)
        def publish_market_summary(batch: dict, ingested: dict, validation: dict, built: dict, candidates: dict,
                                   decisions: dict, actions: dict) -> dict:
            from include.pipeline import summarise
            from include.tasks import each_market, fail_fast, market_run

            def step(plan):
                model = plan["model"]
                parts = {"ingested": ingested[model], "validation": validation[model],
                         "features": built[model]["features"], "labels": built[model]["labels"],
                         "ensemble": candidates[model]["ensemble"], "trading": candidates[model]["trading"],
                         "gate": decisions[model], "action": actions[model]}
                with fail_fast(), market_run(plan, ingested[model]["window"], _dag_id()) as (cfg, win, s, out):
                    return summarise(s, cfg, out, win, parts, dag_id=_dag_id())

            return each_market(batch, step, ingested, validation, built, candidates, decisions, actions,
                               context=get_current_context())

        # Keyword arguments: the map index template and the alerts read the batch from op_kwargs["batch"].
        ingested = ingest_market_data(batch=batch)
        validation = validate_market_data(batch=batch, ingested=ingested)
        built = build_features(batch=batch, ingested=ingested, validation=validation)
        # The training pool caps how many fits run at once; each uses the cores / slots threads.
        trained = [train_model.override(task_id=f"train_{family}", pool=TRAINING_POOL)(
                       batch=batch, ingested=ingested, built=built, family=family)
                   for family in MODEL_FAMILIES]
        candidates = assemble_ensemble(batch=batch, ingested=ingested, trained=trained)
        decisions = quality_gate(batch=batch, ingested=ingested, candidates=candidates)
        decisions >> approve_promotion
        actions = promote_or_keep(batch=batch, ingested=ingested, decisions=decisions,
                                  approvals=approve_promotion.output)
        return publish_market_summary(batch=batch, ingested=ingested, validation=validation, built=built,
                                      candidates=candidates, decisions=decisions, actions=actions)

    @task(trigger_rule="all_done")
    def publish_summary(ti=None, dag_run=None, triggering_asset_events=None) -> dict:
        """Every market's outcome (decision, skip or failure), to the run's log and the alert channels."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.config import Settings
        from include.pipeline import publish_universe, retrain_scope

        batches = ti.xcom_pull(task_ids="plan_run")
        if batches is None:  # plan_run failed (and alerted): there are no markets to report on
            raise AirflowSkipException("plan_run did not plan any market; nothing to publish")
        requested = retrain_scope(triggering_asset_events) if dag_run.run_type == "asset_triggered" else None
        return publish_universe(Settings.from_env(), _dag_id(), [p for b in batches for p in b["plans"]],
                                context=get_current_context(),
                                requested=requested)

    @task(trigger_rule="all_done", on_failure_callback=None)
    def check_markets(ti=None) -> dict:
        """Fail the run when a market failed, so it shows red; the others' results stand.

        No alert of its own: the failing task's alert and the weekly summary already name the market.
        """
        from airflow.sdk.exceptions import AirflowFailException

        published = ti.xcom_pull(task_ids="publish_summary")
        if published is None:  # a leaf that fails keeps the run red when planning failed
            raise AirflowFailException("no market ran: plan_run failed (see its log and alert)")
        failed = sorted(m for m, status in published["markets"].items() if status == "failed")
        if failed:
            raise AirflowFailException(f"{len(failed)} of {len(published['markets'])} market(s) failed: "
                                       f"{', '.join(failed)}; the other markets' decisions stand")
        return published["markets"]

    @task
    def apply_retention(run_id=None) -> dict:
        from include.config import Settings
        from include.registry import ModelRegistry
        from include.tasks import forget_batch_outcomes

        forget_batch_outcomes(_dag_id(), run_id)
        settings = Settings.from_env()
        registry = ModelRegistry.from_settings(settings)
        removed = registry.cleanup(settings.registry_keep_last)
        registry.dispose()
        return {"removed": removed, "keep_last": settings.registry_keep_last}

    markets = market.expand(batch=plan_run())
    published = publish_summary()
    markets >> published >> [apply_retention(), check_markets()]


weekly_retrain()
