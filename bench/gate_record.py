"""The gate's accept/reject record over consecutive weekly windows of the bundled data.

Runs the weekly pipeline (the same ``include.pipeline`` functions the DAG's tasks call, in the
same order, without the scheduler) for N consecutive weeks with default parameters, on a fresh
market store and registry, so that each week's gate compares with the production model the
previous weeks left. Prints one JSON line per week (decision, failed checks, key numbers) and a
final tally, and writes them to ``var/gate_record.json``.

Usage: ``PYTHONPATH=. .venv/bin/python bench/gate_record.py [weeks=26] [last_week_end=2023-12-31]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(weeks: int = 26, last: str = "2023-12-31") -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gate-record-"))
    os.environ.update({"MARKET_DB_URL": f"sqlite:///{tmp / 'market.sqlite'}", "MODEL_REGISTRY_DIR": str(tmp / "models"),
                       "RUN_ARTIFACTS_DIR": str(tmp / "runs"), "GX_ANALYTICS_ENABLED": "false"})
    from include import pipeline as p
    from include.config import RunConfig, Settings

    settings = Settings.from_env()
    end = date.fromisoformat(last)
    records = []
    for k in range(weeks - 1, -1, -1):
        week_end = end - timedelta(weeks=k)
        t0 = time.perf_counter()
        cfg = RunConfig(as_of_date=week_end.isoformat())
        run = p.run_once(cfg, settings, dag_id="gate_record", run_id=f"gate_record__{week_end}")
        assembled, trading, decision, action = (run[name] for name in ("assembled", "trading", "decision", "action"))
        oof, base = assembled["ensemble"], assembled["baselines"]
        strat, hold, mom = (trading["out_of_fold"][n] for n in ("ensemble", "buy_and_hold", "momentum"))
        gw = trading["gate_window"]["ensemble"]
        record = {
            "week_end": str(week_end), "passed": decision["passed"], "action": action["action"],
            "failed": [c["name"] for c in decision["checks"] if not c["passed"]],
            "oof_macro_f1": round(oof["macro_f1"], 4), "oof_log_loss": round(oof["log_loss"], 4),
            "oof_brier": round(oof["brier"], 4),
            "baseline_f1": {n: round(b["macro_f1"], 4) for n, b in base.items()},
            "prior_log_loss": round(base["prior"]["log_loss"], 4),
            "members_f1": {f: round(m["macro_f1"], 4) for f, m in assembled["members"].items()},
            "gate_window_f1": round(assembled["gate_window"]["macro_f1"], 4),
            "oof_trading": {n: {"return": round(m["total_return"], 4), "sharpe": round(m["sharpe"], 2),
                                "max_dd": round(m["max_drawdown"], 4), "trades": m["trades"]}
                            for n, m in (("ensemble", strat), ("buy_and_hold", hold), ("momentum", mom))},
            "gate_window_return": round(gw["total_return"], 4),
            "champion": decision.get("champion"), "seconds": round(time.perf_counter() - t0, 1),
        }
        records.append(record)
        print(json.dumps(record), flush=True)
    tally = Counter(r["action"] for r in records)
    reasons = Counter(name for r in records for name in r["failed"])
    summary = {"weeks": weeks, "from": records[0]["week_end"], "to": records[-1]["week_end"],
               "accepted": tally.get("promote", 0), "rejected": tally.get("keep", 0),
               "failed_checks": dict(reasons), "config": asdict(RunConfig()) | {"models": list(RunConfig().models)}}
    print(json.dumps(summary), flush=True)
    (ROOT / "var").mkdir(exist_ok=True)
    (ROOT / "var" / "gate_record.json").write_text(json.dumps({"summary": summary, "weeks": records}, indent=1))


if __name__ == "__main__":
    main(*(int(a) if i == 0 else a for i, a in enumerate(sys.argv[1:])))
