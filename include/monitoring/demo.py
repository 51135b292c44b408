"""Run ``monitor_production`` through Airflow over days of bundled data the production model never saw.

Usage: ``python -m include.monitoring.demo [--trained-until 2023-12-17] [--days 7]`` (what
``make monitor`` runs), in the Makefile's Airflow environment with a market store and registry of
its own (``var/monitor/``), so that it finds the same state whatever ``make demo`` left.

1. If BTCUSDT has no production version, or only one trained after ``--trained-until``, it runs
   ``weekly_retrain`` for the week ending ``--trained-until`` (``airflow dags test``) with the
   gate relaxed as the README's try-it command does (no skill test required, no drawdown cap),
   so that a model is in production whatever the default gate says of that week. It says so.
2. It runs ``airflow dags test monitor_production`` for each of the ``--days`` days after the
   production model's training end, and prints, per day and model, the action and why; then,
   for the last day, the live metrics against the promised ones, the live strategy, the drift
   table and freshness.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from include.config import Settings
from include.demo import _airflow, prepare_airflow
from include.monitoring import reports
from include.registry import ModelRegistry

BTC = "binance-btcusdt-perp-1h-h4"
RELAXED = {"markets": ["BTCUSDT"], "gate_required_checks": [], "gate_max_drawdown": 1}


def _production(settings: Settings) -> tuple[str, datetime] | None:
    registry = ModelRegistry.from_settings(settings)
    try:
        pointer = registry.production(BTC) if BTC in registry.model_names() else None
        if pointer is None:
            return None
        until = datetime.fromisoformat(registry.metadata(pointer.version)["data_window"]["trained_until"])
        return pointer.version, until
    finally:
        registry.dispose()


def describe(report: dict[str, Any]) -> str:
    """Human-readable lines of one monitoring report: live vs promised, strategy, drift, freshness."""
    live, realised = report["live"], report["live"].get("realised") or {}
    promised = live["promised"]
    s, bh = report["trading"]["strategy"], report["trading"]["buy_and_hold"]

    def num(v: Any, fmt: str = "{:.4f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [
        f"model          {report['model']} {report['version']} (trained until {report['trained_until']})",
        f"span           up to {report['as_of']}: {live['scored_rows']} bars scored "
        f"({report['scoring']['new_rows']} new this run), {live['labelled_rows']} with realised labels",
        f"live vs promised (out-of-fold):  macro F1 {num(realised.get('macro_f1'))} vs {num(promised.get('macro_f1'))}"
        f"   log loss {num(realised.get('log_loss'))} vs {num(promised.get('log_loss'))}"
        f" (class prior on the same rows {num(realised.get('prior_log_loss'))})   Brier {num(realised.get('brier'))}"
        f" vs {num(promised.get('brier'))}",
        f"live strategy  return {num(s.get('total_return'), '{:+.2%}')}, Sharpe {num(s.get('sharpe'), '{:.2f}')}, "
        f"max drawdown {num(s.get('max_drawdown'), '{:.2%}')}, {s.get('trades', 0)} trades; buy-and-hold "
        f"{num(bh.get('total_return'), '{:+.2%}')}",
        f"freshness      last bar closed {report['freshness']['last_bar_close']} "
        f"({num(report['freshness']['age_hours'], '{:.1f}')} h before the span's end)",
        f"drift          last {report['policy']['drift_window_days']} days, PSI against training "
        f"(* = top {report['policy']['psi_top_k']} features):",
    ]
    top = report["drift"]["top_features"][: report["policy"]["psi_top_k"]]
    for row in report["drift"]["table"]:
        lines.append(f"  {'*' if row['feature'] in top else ' '} {row['feature']:<20} PSI {num(row['psi'], '{:7.3f}')}"
                     f"   missing {num(row['missing_share'], '{:.0%}')} "
                     f"(training {num(row['reference_missing_share'], '{:.0%}')})")
    lines.append("checks:")
    lines += [f"  {'TRIPPED' if c['tripped'] else 'ok     '} {c['name']:<18} {c['detail']}" for c in report["checks"]]
    lines.append(f"decision       {report['action'].upper()}: {report['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Make sure a model is in production, monitor the days after it, print what was seen."""
    import sqlalchemy as sa

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trained-until", default="2023-12-17", help="week end of the model to monitor")
    parser.add_argument("--days", type=int, default=7, help="days to monitor after its training end")
    args = parser.parse_args(argv)
    logs = prepare_airflow()
    if logs is None:
        return 1
    settings = Settings.from_env()
    wanted = datetime.fromisoformat(args.trained_until).replace(tzinfo=UTC)
    production = _production(settings)
    if production is None or production[1] > wanted:
        why = "has no production version" if production is None else \
            f"is in production with {production[0]}, trained until {production[1]:%Y-%m-%d}, too late to monitor here"
        print(f"{BTC} {why}. Training one for the week ending {args.trained_until} with the gate relaxed "
              f"({json.dumps(RELAXED)}), so that a model the bundled data has later bars for is in production.")
        log = logs / f"weekly_retrain_{args.trained_until}.log"
        code = _airflow("dags", "test", "weekly_retrain", args.trained_until, "--conf", json.dumps(RELAXED), log=log)
        production = _production(settings)
        if code != 0 or production is None or production[1] > wanted:
            print(f"weekly_retrain did not promote a model (exit {code}); see {log}")
            return 1
    version, until = production
    print(f"monitoring {BTC} {version}, trained until {until.isoformat()}")
    for day in range(1, args.days + 1):
        end = until + timedelta(days=day)
        log = logs / f"monitor_production_{end:%Y-%m-%d}.log"
        code = _airflow("dags", "test", "monitor_production", f"{end:%Y-%m-%d}", log=log)
        engine = sa.create_engine(settings.market_db_url)
        latest = [r for r in reports(engine, limit=50) if r["as_of"] == end.isoformat()]
        engine.dispose()
        if code != 0 or not latest:
            print(f"=== {end:%Y-%m-%d}: monitor_production FAILED (exit {code}); see {log}")
            return 1
        for report in latest:
            print(f"=== up to {end:%Y-%m-%d %H:%M}: {report['model']} {report['action'].upper()}: {report['reason']}")
    print()
    for report in latest:
        print(describe(report))
    print("\nThese reports are in the monitor_report table of the market store. On a deployment "
          "(make airflow), the Monitoring page in the navigation bar and GET /model-registry/monitoring "
          "show that deployment's reports.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
