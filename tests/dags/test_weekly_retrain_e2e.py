"""End to end: real Airflow runs (``dag.test()``) of weekly_retrain on real data.

Short windows keep the suite fast. Run 1 uses a permissive gate so that a production model
exists for run 2, whose gate must compare with it on run 2's own data interval. Run 3 feeds
corrupted data: validation fails, nothing downstream runs, nothing is promoted, and the Slack
and Discord connections (pointed at a local HTTP server) receive the failure alert.
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.config import Settings

SHORT = {"train_window_days": 120, "cv_folds": 3}
PERMISSIVE = {"gate_min_f1_margin": -1.0, "gate_max_log_loss_ratio": 10.0, "gate_min_sharpe_margin": -1000.0,
              "gate_max_drawdown": 1.0}


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import ROOT

    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("weekly_retrain")


def _run(dag, day: int, conf: dict):
    dr = dag.test(logical_date=datetime(2023, 12, day, tzinfo=UTC), run_conf=conf)
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    return dr, states


def _summary(dr) -> dict:
    start, end = dr.data_interval_start, dr.data_interval_end
    key = f"{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"
    return json.loads((Settings.from_env().runs_dir / "weekly_retrain" / key / "summary.json").read_text())


@pytest.fixture(scope="module")
def first_run(dag):
    # A permissive policy: this run must promote so that the next can compare with it. The gate's
    # own checks are unit-tested; here the wiring is.
    dr, states = _run(dag, 24, {**SHORT, **PERMISSIVE})
    return dr, states


def test_first_run_promotes_a_loadable_model(first_run):
    from include.config import RunConfig
    from include.data.store import MarketStore
    from include.features import FeatureSpec
    from include.pipeline import feature_frame
    from include.registry import ModelRegistry

    dr, states = first_run
    assert dr.state == "success", states
    assert (dr.data_interval_start.isoformat(), dr.data_interval_end.isoformat()) == (
        "2023-12-17T00:00:00+00:00", "2023-12-24T00:00:00+00:00")
    assert states["promote"] == "success" and states["keep_production"] == "skipped"
    summary = _summary(dr)
    settings = Settings.from_env()
    registry = ModelRegistry.from_settings(settings)
    assert registry.production().version == summary["production"] == summary["ensemble"]["version"]
    model, meta = registry.load_production()
    # Only data before the interval end was used.
    assert meta["data_window"]["trained_until"] == "2023-12-24T00:00:00+00:00"
    assert summary["ingested"]["ohlcv"]["rows_fetched"] > 0
    assert set(summary["ensemble"]["members"]) == {"lightgbm", "xgboost", "random_forest"}
    spec = FeatureSpec.from_dict({k: v for k, v in meta["feature_spec"].items() if k != "sha256"})
    store = MarketStore(settings.market_db_url)
    X = feature_frame(store, RunConfig(), spec, datetime(2023, 12, 10, tzinfo=UTC), datetime(2023, 12, 24, tzinfo=UTC))
    proba = model.predict_proba(X.iloc[-5:])
    assert proba.shape == (5, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert X.index.max() < pd.Timestamp("2023-12-24T00:00Z")


def test_second_run_is_compared_with_the_promoted_model(dag, first_run, webhook_server):
    from include.registry import ModelRegistry

    champion = ModelRegistry.from_settings(Settings.from_env()).production().version
    dr, states = _run(dag, 31, SHORT)
    assert dr.state == "success", states
    gate = _summary(dr)["gate"]
    assert gate["champion"] == champion
    names = {c["name"]: c for c in gate["checks"]}
    assert names["champion_out_of_sample"]["passed"]
    assert "beats_champion" in names
    assert gate["champion_evaluation"]["metrics"]["n"] == gate["candidate_gate_window"]["n"] > 100
    production = ModelRegistry.from_settings(Settings.from_env()).production().version
    if gate["passed"]:
        assert states["promote"] == "success" and production == gate["candidate"]
    else:
        assert states["keep_production"] == "success" and production == champion
    assert states["approve_promotion"] == "skipped"  # require_approval is off by default

    # The run report: one self-contained HTML file next to the candidate, plots inlined.
    summary = _summary(dr)
    report = Path(summary["report"])
    html = report.read_text()
    assert (report.parent / "candidates" / "ensemble").is_dir()
    assert html.count("data:image/png;base64,") == 4 and "<link" not in html and "src=\"http" not in html
    for needle in (gate["candidate"], "beats_trading_baselines", "buy_and_hold", "Feature importance"):
        assert needle in html, needle
    # The weekly summary went to both channels, with the decision, the numbers and the report path.
    texts = [json.loads(b).get("text") or json.loads(b).get("content") for _, b in webhook_server]
    assert len(texts) == 2, texts
    for text in texts:
        for needle in ("2023-12-24 → 2023-12-31", gate["candidate"], "Sharpe", str(report)):
            assert needle in text, (needle, text)


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[str, str]] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        _Hook.received.append((self.path, body))
        self.send_response(204 if "discord" in self.path else 200)
        self.end_headers()
        if "discord" not in self.path:
            self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": f"http://127.0.0.1:{port}/slack/T000/B000/XXX"}))
    monkeypatch.setenv("AIRFLOW_CONN_DISCORD_ALERTS", json.dumps(
        {"conn_type": "discord", "host": f"http://127.0.0.1:{port}",
         "extra": {"webhook_endpoint": "webhooks/11111/discordtoken"}}))
    _Hook.received.clear()
    yield _Hook.received
    server.shutdown()


def test_bad_data_stops_the_run_promotes_nothing_and_alerts(dag, first_run, tmp_path, data_dir, webhook_server):
    from include.registry import ModelRegistry

    bars = pd.read_csv(data_dir / "btcusdt_perp_1h.csv.gz")
    bars.loc[bars["timestamp"] == "2023-12-20T05:00:00Z", "close"] = np.nan
    with gzip.open(tmp_path / "badusdt_perp_1h.csv.gz", "wt") as fh:
        bars.to_csv(fh, index=False)
    shutil.copy(data_dir / "btcusdt_funding_8h.csv.gz", tmp_path / "badusdt_funding_8h.csv.gz")

    registry = ModelRegistry.from_settings(Settings.from_env())
    before = (registry.production(), len(registry.ledger()), registry.versions())
    dr, states = _run(dag, 24, {**SHORT, "symbol": "BADUSDT", "source_dir": str(tmp_path)})

    assert dr.state == "failed"
    assert states["validate_market_data"] == "failed"
    for task_id in ("build_features", "train_model", "assemble_ensemble", "quality_gate", "promote"):
        assert states[task_id] == "upstream_failed", (task_id, states[task_id])
    assert (registry.production(), len(registry.ledger()), registry.versions()) == before
    report = json.loads(next((Settings.from_env().runs_dir / "weekly_retrain").glob("*/validation.json")).read_text())
    assert report is not None

    paths = [p for p, _ in webhook_server]
    assert any(p.startswith("/slack") for p in paths) and any("webhooks/11111" in p for p in paths), paths
    body = next(b for p, b in webhook_server if p.startswith("/slack"))
    text = json.loads(body)["text"]
    for needle in ("weekly_retrain", "validate_market_data", dr.run_id, "2023-12-17", "2023-12-24",
                   "expect_column_values_to_not_be_null", "Log:"):
        assert needle in text, (needle, text)


def test_failed_smoke_test_rolls_production_back(first_run, tmp_path):
    """A promoted model that cannot predict on the latest bars is rolled back automatically."""
    from include.errors import PipelineError
    from include.pipeline import promote
    from include.registry import ModelRegistry

    settings = Settings.from_env()
    registry = ModelRegistry.from_settings(settings)
    champion = registry.production().version
    broken = tmp_path / "broken"
    shutil.copytree(registry.versions_dir / champion, broken)
    (broken / "manifest.json").unlink()
    lineage = json.loads((broken / "metadata.json").read_text())
    lineage["feature_spec"]["names"] = [*lineage["feature_spec"]["names"], "feature_the_store_cannot_compute"]
    (broken / "metadata.json").write_text(json.dumps(lineage))
    bad = registry.register(broken, datetime(2023, 12, 31, tzinfo=UTC))
    decision = {"passed": True, "candidate": bad, "champion": champion, "summary": "PASS (test)"}
    with pytest.raises(PipelineError, match="smoke test failed.*rolled back to"):
        promote(settings, decision, run_id="smoke-test", as_of=datetime(2023, 12, 31, tzinfo=UTC))
    assert registry.production().version == champion
    assert [(e["event"], e["to"]) for e in registry.ledger()[-2:]] == [("promote", bad), ("auto_rollback", champion)]
    assert "smoke test failed" in registry.ledger()[-1]["reason"]
