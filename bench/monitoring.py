"""Benchmark: scoring and logging one new bar, and one monitoring run over a week of hourly bars.

Trains and promotes the default weekly model (730-day window, three families) for the week ending
2023-12-17 with the pipeline's own functions into a fresh registry and SQLite store, then:

* one new bar: ``ProductionModel.predict(as_of, log_as="api")`` for each of the 48 hours after the
  training end, each a bar the version has not predicted (features from the market store,
  prediction, one row appended to the prediction log); after one warm-up call. Target: p50 under
  50 ms.
* one monitoring run over a week: :func:`include.monitoring.monitor` up to 2023-12-24 on a store
  that holds no prediction of the week yet (ingest the week from the bundled files, score 168
  bars, labels, metrics, trading, drift, record). Target: under 10 s.

Prints one JSON line. Usage: ``PYTHONPATH=. .venv/bin/python bench/monitoring.py``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np


def main() -> None:
    """Train and promote the default model, then time one-bar scoring and one weekly monitoring run."""
    from include.config import RunConfig, Settings
    from include.monitoring import monitor
    from include.pipeline import run_once
    from include.registry import ModelRegistry
    from include.serving import ProductionModel
    from tests.builders import PERMISSIVE_SKILL

    root = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    try:
        settings = Settings.in_folder(root, market_db_url=f"sqlite:///{root / 'm.sqlite'}")
        cfg = RunConfig(symbol="BTCUSDT", as_of_date="2023-12-17", **PERMISSIVE_SKILL)
        started = time.perf_counter()
        run = run_once(cfg, settings, dag_id="weekly_retrain", run_id="bench-monitoring")
        train_s = time.perf_counter() - started
        assert run["action"]["action"] == "promote", run["decision"]["summary"]
        model = run["action"]["model"]

        # One monitoring run over the week after training (this also ingests the week's bars).
        started = time.perf_counter()
        report = monitor(settings, model, datetime(2023, 12, 24, tzinfo=UTC), run_id="bench-week")
        week_s = time.perf_counter() - started

        # One new bar at a time, through the serving loader, for a version that has not seen it.
        # The weekly run above logged the week's bars; a fresh copy of the store without them:
        serving = ProductionModel(ModelRegistry.from_settings(settings), settings.market_db_url, model,
                                  max_age_hours=None)
        import sqlalchemy as sa

        engine = sa.create_engine(settings.market_db_url)
        with engine.begin() as conn:
            conn.execute(sa.text("delete from prediction_log where source = 'monitor'"))
        serving.predict(datetime(2023, 12, 17, 1, tzinfo=UTC), log_as="api")  # warm-up: loads the model
        times = []
        for hour in range(2, 50):
            t0 = time.perf_counter()
            serving.predict(datetime(2023, 12, 17, tzinfo=UTC) + timedelta(hours=hour), log_as="api")
            times.append(time.perf_counter() - t0)
        with engine.connect() as conn:
            logged = conn.execute(sa.text("select count(*) from prediction_log where source = 'api'")).scalar()
        ms = np.array(times) * 1000
        print(json.dumps({
            "train_and_promote_s": round(train_s, 1),
            "one_bar_score_and_log_ms": {"p50": round(float(np.median(ms)), 1),
                                         "p90": round(float(np.percentile(ms, 90)), 1),
                                         "max": round(float(ms.max()), 1), "calls": len(ms),
                                         "rows_logged": int(logged)},
            "week_monitoring_run_s": round(week_s, 2), "week_bars_scored": report["scoring"]["new_rows"],
            "week_action": report["action"],
            "targets": {"one_bar_p50_ms": 50, "week_run_s": 10}}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
