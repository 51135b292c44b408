"""The demo's printed report of a market's run summary."""

from __future__ import annotations

import json


def test_report_of_each_market_names_the_model_and_every_step(trained_registry):
    from include.demo import report

    runs = trained_registry["settings"].runs_dir / "weekly_retrain"
    summaries = sorted(runs.glob("*/*/summary.json"))
    assert {p.parent.parent.name for p in summaries} == {"binance-btcusdt-perp-1h-h4", "binance-ethusdt-perp-1h-h4"}
    for path in summaries:
        summary = json.loads(path.read_text())
        text = report(summary)
        lines = {line.split()[0]: line for line in text.splitlines() if line and not line.startswith(" ")}
        assert lines["model"].endswith(summary["model"])
        assert "ohlcv:" in lines["ingested"] and "rows (" in lines["ingested"] and "window" not in lines["ingested"]
        assert summary["gate"]["summary"] in lines["gate"]
        assert f"production of {summary['model']}: {summary['production']}" in lines["action"]
        assert lines["report"].endswith("report.html")
