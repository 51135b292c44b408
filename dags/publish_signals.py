"""
# publish_signals

An example consumer of the platform's promotions (paused on creation): runs whenever the
production version of `binance-btcusdt-perp-1h-h4` changes, i.e. when its production asset
`model://binance-btcusdt-perp-1h-h4/production` is updated by `weekly_retrain` (a promotion) or
`rollback_model` (a rollback). The event's extra names the new version, the previous one and the
gate's summary.

The task loads the model now in production through the serving API (`include.serving`, the code
behind the plugin's `/predict`), forecasts from the bars that closed by the end of the version's
training data, and appends the class probabilities, as indicators a strategy reads, to
`<RUN_ARTIFACTS_DIR>/signals/<model>.csv` (one row per event: bar, version, p_down, p_range, p_up,
decision, and the event that triggered it).

Copy it and change `MODEL` to follow another registered model; schedule on several assets to
follow several.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from include.assets import production_asset
from include.notify import on_task_failure

MODEL = "binance-btcusdt-perp-1h-h4"


@dag(
    schedule=[production_asset(MODEL)],
    start_date=datetime(2019, 9, 15),
    catchup=False,
    is_paused_upon_creation=True,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "example", "consumer"],
    default_args={"owner": "quant-ml", "retries": 1, "retry_delay": timedelta(minutes=1),
                  "on_failure_callback": on_task_failure},
)
def publish_signals():
    @task
    def publish(triggering_asset_events=None) -> dict:
        from include.config import Settings
        from include.serving import write_signal

        events = [e for batch in (triggering_asset_events or {}).values() for e in batch]
        extra = dict(events[-1].extra) if events else {}
        return write_signal(Settings.from_env(), MODEL, extra)

    publish()


publish_signals()
