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


def test_a_failed_market_prints_every_failed_expectation(tmp_path):
    from include.demo import failure_detail

    report = {"success": False, "suites": [{"suite": "ohlcv", "failed": [
        {"expectation": "expect_column_values_to_not_be_null", "kwargs": {"column": "close"}, "observed_value": None,
         "unexpected_count": 1, "example_rows": [{"timestamp": "2023-12-20T05:00:00Z"}], "unexpected_examples": [],
         "exception": None},
        {"expectation": "expect_column_pair_values_a_to_be_greater_than_b", "kwargs": {"column_A": "high",
         "column_B": "low"}, "observed_value": None, "unexpected_count": 2, "example_rows": [],
         "unexpected_examples": [], "exception": None}]}]}
    (tmp_path / "validation.json").write_text(json.dumps(report))
    lines = failure_detail(tmp_path, "binance-badusdt-perp-1h-h4", tmp_path / "run.log")
    assert lines[0].startswith("validation failed") and len(lines) == 3
    assert "close" in lines[1] and "2023-12-20T05:00:00Z" in lines[1] and "column_A" in lines[2]


def test_the_demo_reads_the_week_that_as_of_date_names():
    from include.demo import interval_end

    assert interval_end("2023-12-24", "").isoformat() == "2023-12-24T00:00:00"
    assert interval_end("2023-12-24", '{"as_of_date": "2023-11-05"}').isoformat() == "2023-11-05T00:00:00"
