"""End to end: real Airflow runs (``dag.test()``) of weekly_retrain over a universe of markets.

Short windows keep the suite fast. Run 1 trains both bundled markets (BTCUSDT, ETHUSDT
perpetuals) with a permissive gate, so that each registered model gets its own production
version. Run 2's gates compare each candidate with the champion of its own model. Run 3 is a
universe of three markets built from corrupted or cut copies of the bundled files: one with a
NaN close (validation fails, its alert names it), one listed too recently (skipped, saying when
it qualifies), one young but long enough (trains on its shorter history); the failing market
stops neither of the others. The same markets in one batch, and a batch of two markets from a
replay of Binance's API whose first market the exchange fails: Airflow retries the task, and the
retry runs that market only.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.config import Settings
from tests.builders import PERMISSIVE_SKILL

SHORT = {"train_window_days": 120, "cv_folds": 3}
BTC, ETH = "binance-btcusdt-perp-1h-h4", "binance-ethusdt-perp-1h-h4"


class _Dags:
    """Hands out a freshly parsed ``weekly_retrain`` per run: ``dag.test(run_conf=...)`` leaves the
    conf in the DAG object's params, which would leak into the next run of a shared object."""

    def test(self, **kwargs):
        from airflow.dag_processing.dagbag import DagBag

        from tests.conftest import ROOT

        return DagBag(dag_folder=str(ROOT / "dags")).get_dag("weekly_retrain").test(**kwargs)


@pytest.fixture(scope="module")
def dag(airflow_db):
    return _Dags()


def _run(dag, day: int, conf: dict):
    """Run one week; task states keyed by (task id without the group prefix, model name or -1)."""
    dr = dag.test(logical_date=datetime(2023, 12, day, tzinfo=UTC), run_conf=conf)
    tis = dr.get_task_instances()
    # Tasks that never ran (upstream_failed, skipped early) have no rendered map index; ingestion
    # runs for every market, so its instances name each map index.
    model_of = {ti.map_index: ti.rendered_map_index for ti in tis if ti.task_id == "market.ingest_market_data"}
    states = {(ti.task_id.removeprefix("market."), model_of.get(ti.map_index, ti.map_index)): ti.state
              for ti in tis}
    return dr, states


def _key(dr) -> str:
    return f"{dr.data_interval_start:%Y%m%dT%H%M}_{dr.data_interval_end:%Y%m%dT%H%M}"


def _summary(dr, model: str) -> dict:
    return json.loads((Settings.from_env().runs_dir / "weekly_retrain" / model / _key(dr) / "summary.json").read_text())


def _note(dr) -> str | None:
    """The run's note as the UI shows it (written by plugins/run_notes.py when the run ended)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(DagRun).where(DagRun.dag_id == dr.dag_id, DagRun.run_id == dr.run_id)).note


def _universe(dr) -> dict:
    path = Settings.from_env().runs_dir / "weekly_retrain" / "_universe" / f"{_key(dr)}.json"
    return {m["model"]: m for m in json.loads(path.read_text())["markets"]}


@pytest.fixture(scope="module")
def first_run(dag):
    # A permissive policy: both markets must promote so that the next run can compare with them. The
    # gate's own checks are unit-tested; here the wiring is.
    dr, states = _run(dag, 24, {**SHORT, **PERMISSIVE_SKILL})
    return dr, states


def test_first_run_promotes_one_loadable_model_per_market(first_run):
    from include.config import RunConfig
    from include.data.store import MarketStore
    from include.feature_store import feature_frame
    from include.features import FeatureSpec
    from include.registry import ModelRegistry
    from include.resources import model_threads

    dr, states = first_run
    assert dr.state == "success", states
    assert (dr.data_interval_start.isoformat(), dr.data_interval_end.isoformat()) == (
        "2023-12-17T00:00:00+00:00", "2023-12-24T00:00:00+00:00")
    for model in (BTC, ETH):
        assert states[("promote_or_keep", model)] == "success"
        assert states[("approve_promotion", model)] == "success"  # answered at once: require_approval is off
    assert {m: o["status"] for m, o in _universe(dr).items()} == {BTC: "done", ETH: "done"}
    settings = Settings.from_env()
    registry = ModelRegistry.from_settings(settings)
    assert registry.model_names() == [BTC, ETH]
    for model, symbol in ((BTC, "BTCUSDT"), (ETH, "ETHUSDT")):
        summary = _summary(dr, model)
        assert summary["model"] == model and summary["action"]["action"] == "promote"
        assert registry.production(model).version == summary["production"] == summary["ensemble"]["version"]
        assert registry.model_of(summary["production"]) == model
        trained, meta = registry.load_production(model)
        assert meta["symbol"] == symbol and meta["registered_model"] == model
        # Only data before the interval end was used.
        assert meta["data_window"]["trained_until"] == "2023-12-24T00:00:00+00:00"
        assert not meta["data_window"]["short_history"]
        assert summary["ingested"]["ohlcv"]["rows_fetched"] > 0
        assert set(summary["ensemble"]["members"]) == {"lightgbm", "xgboost", "random_forest", "logistic"}
        # Each family trained with the thread budget's threads.
        folder = Path(summary["report"]).parent / "candidates"
        for family in ("lightgbm", "xgboost", "random_forest", "logistic"):
            assert json.loads((folder / family / "metadata.json").read_text())["n_jobs"] == model_threads()
        spec = FeatureSpec.from_dict({k: v for k, v in meta["feature_spec"].items() if k != "sha256"})
        store = MarketStore(settings.market_db_url)
        X = feature_frame(store, RunConfig(symbol=symbol), spec, datetime(2023, 12, 10, tzinfo=UTC),
                          datetime(2023, 12, 24, tzinfo=UTC))
        proba = trained.predict_proba(X.iloc[-5:])
        assert proba.shape == (5, 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        assert X.index.max() < pd.Timestamp("2023-12-24T00:00Z")
    # Two markets of one week never share a folder.
    assert _summary(dr, BTC)["report"] != _summary(dr, ETH)["report"]
    # ETH has no open-interest file: its feature spec differs from BTC's.
    assert _summary(dr, BTC)["features"]["open_interest"] and not _summary(dr, ETH)["features"]["open_interest"]
    note = _note(dr)
    assert note.startswith("Weekly retrain, 2 market(s): 2 promoted, 0 kept, 0 skipped, 0 failed.")
    for model in (BTC, ETH):
        version = _summary(dr, model)["production"]
        assert (f"- **{model}**: PROMOTED {version} (was none) "
                f"([report](/model-registry/versions/{version}/report))") in note


def test_second_run_gates_each_market_against_its_own_champion(dag, first_run, webhook_server):
    from include.registry import ModelRegistry

    registry = ModelRegistry.from_settings(Settings.from_env())
    champions = {m: registry.production(m).version for m in (BTC, ETH)}
    # A log loss no forecast can reach (half the class prior's), and a champion kept whatever its
    # live record: the gate must say no, and production must stay.
    dr, states = _run(dag, 31, {**SHORT, "gate_max_log_loss_ratio": 0.5, "gate_demote": False})
    assert dr.state == "success", states  # keeping production is not a failure: the note says what happened
    note = _note(dr)
    for model in (BTC, ETH):
        gate = _summary(dr, model)["gate"]
        assert gate["model"] == model and gate["champion"] == champions[model]
        assert gate["champion_evaluation"]["model"] == model
        names = {c["name"]: c for c in gate["checks"]}
        assert names["champion_out_of_sample"]["passed"]
        assert not gate["passed"] and not names["beats_prior_log_loss"]["passed"]
        # Last week's candidate is the champion, trained to this week's start: compared on this
        # week's rows, where this week's last fold model is that same fit: the same model, said as
        # such (not a failed test with p = 1).
        assert names["not_worse_than_champion"]["passed"]
        assert names["not_worse_than_champion"]["detail"].startswith("same model")
        assert gate["champion_evaluation"]["metrics"]["n"] == gate["candidate_gate_window"]["n"] > 100
        paired = gate["champion_evaluation"]["comparison"]
        assert paired["same_forecast"] and paired["p_value"] is None and paired["statistic"] == 0
        action = _summary(dr, model)["action"]
        assert action["action"] == "keep" and action["rejected"] == gate["candidate"]
        assert registry.production(model).version == champions[model]
        assert (f"- **{model}**: KEEP {champions[model]}; candidate {gate['candidate']} failed the gate "
                f"([report](/model-registry/versions/{gate['candidate']}/report))") in note
        ll = names["beats_prior_log_loss"]
        # The full reason where the note has room, else name, value and threshold.
        assert (f"  - beats_prior_log_loss: {ll['detail']}" in note
                or f"beats_prior_log_loss ({ll['value']:.4g} vs {ll['threshold']:.4g})" in note)

    # The run report of one market: one self-contained HTML file next to the candidate, plots inlined.
    summary = _summary(dr, BTC)
    gate = summary["gate"]
    report = Path(summary["report"])
    assert report.parent.parent.name == BTC
    html = report.read_text()
    assert (report.parent / "candidates" / "ensemble").is_dir()
    assert html.count("data:image/png;base64,") == 4 and "<link" not in html and "src=\"http" not in html
    for needle in (gate["candidate"], "beats_trading_baselines", "buy_and_hold", "Feature importance",
                   "<td>flat</td><td>gate baseline</td>", "<td>buy_and_hold</td><td>reference only</td>",
                   "Challenger against champion", f"champion {champions[BTC]}", "Paired test: same model",
                   "fee 4 bps + slippage 1 bps per side", "beats the round trip (0.10 %)",
                   "Data interval 2023-12-24 00:00 UTC → 2023-12-31 00:00 UTC"):
        assert needle in html, needle
    for raw in ("None / None", "<td>None</td>", '{"fee_bps"', "0.3333333333333333"):
        assert raw not in html, raw
    # One weekly summary per channel, naming every market with its decision, numbers and report.
    texts = [json.loads(b).get("text") or json.loads(b).get("content") for _, b in webhook_server]
    assert len(texts) == 2, texts
    for text in texts:
        for needle in ("2023-12-24 → 2023-12-31", "2 market(s), 2 decided", BTC, ETH, gate["candidate"],
                       "Sharpe", str(report)):
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


@contextlib.contextmanager
def _webhooks():
    """Local Slack and Discord webhook endpoints, as the alert connections, for the block's duration."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    env = {"AIRFLOW_CONN_SLACK_ALERTS": json.dumps(
               {"conn_type": "slackwebhook", "password": f"http://127.0.0.1:{port}/slack/T000/B000/XXX"}),
           "AIRFLOW_CONN_DISCORD_ALERTS": json.dumps(
               {"conn_type": "discord", "host": f"http://127.0.0.1:{port}",
                "extra": {"webhook_endpoint": "webhooks/11111/discordtoken"}})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    received: list[tuple[str, str]] = []
    _Hook.received = received
    try:
        yield received
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.shutdown()


@pytest.fixture
def webhook_server():
    with _webhooks() as received:
        yield received


def _copy_market(data_dir: Path, dest: Path, symbol: str, *, first: str | None = None,
                 nan_close_at: str | None = None) -> None:
    """Copy the bundled ETHUSDT perpetual and funding files as ``symbol``, cut to start at ``first``."""
    for kind in ("perp_1h", "funding_8h"):
        frame = pd.read_csv(data_dir / f"ethusdt_{kind}.csv.gz")
        if first:
            frame = frame[frame["timestamp"] >= first]
        if nan_close_at and kind == "perp_1h":
            frame.loc[frame["timestamp"] == nan_close_at, "close"] = np.nan
        with gzip.open(dest / f"{symbol.lower()}_{kind}.csv.gz", "wt") as fh:
            frame.to_csv(fh, index=False)


@pytest.fixture(scope="module")
def universe_run(dag, first_run, tmp_path_factory, data_dir):
    """One run over three markets: corrupted (NaN close), too young, young but long enough."""
    from include.registry import ModelRegistry

    src = tmp_path_factory.mktemp("universe-data")
    _copy_market(data_dir, src, "BADUSDT", nan_close_at="2023-12-20T05:00:00Z")
    _copy_market(data_dir, src, "YNGUSDT", first="2023-11-14T00:00:00Z")   # 40 days before the interval end
    _copy_market(data_dir, src, "NEWUSDT", first="2023-09-05T00:00:00Z")   # 110 days before it
    universe = src / "universe.yaml"
    universe.write_text("markets:\n" + "".join(
        f"  - {{symbol: {s}, market_type: perp, timeframe: 1h}}\n" for s in ("BADUSDT", "YNGUSDT", "NEWUSDT")))
    registry = ModelRegistry.from_settings(Settings.from_env())
    before = {m: registry.production(m) for m in (BTC, ETH)}
    conf = {**SHORT, **PERMISSIVE_SKILL, "min_history_days": 60, "universe_file": str(universe), "source_dir": str(src)}
    with _webhooks() as received:
        dr, states = _run(dag, 24, conf)
    return dr, states, before, list(received)


BAD, YNG, NEW = (f"binance-{s}-perp-1h-h4" for s in ("badusdt", "yngusdt", "newusdt"))


def test_a_failing_market_stops_neither_the_others_nor_alerts_anonymously(universe_run):
    from include.registry import ModelRegistry

    dr, states, before, webhook_server = universe_run
    assert dr.state == "failed"  # one market failed: the run is red, the others finished
    assert states[("validate_market_data", BAD)] == "failed"
    for task_id in ("build_features", "train_lightgbm", "assemble_ensemble", "quality_gate", "promote_or_keep"):
        assert states[(task_id, BAD)] == "upstream_failed", (task_id, states[(task_id, BAD)])
    assert states[("publish_market_summary", NEW)] == "success"
    assert states[("publish_summary", -1)] == "success" and states[("apply_retention", -1)] == "success"
    assert states[("check_markets", -1)] == "failed"
    registry = ModelRegistry.from_settings(Settings.from_env())
    assert BAD not in registry.model_names()  # nothing of the bad market was registered
    assert {m: registry.production(m) for m in (BTC, ETH)} == before  # other models untouched
    report = json.loads((Settings.from_env().runs_dir / "weekly_retrain" / BAD / _key(dr) / "validation.json")
                        .read_text())
    assert not report["success"] and report["suites"][0]["failed"]

    outcomes = _universe(dr)
    assert [outcomes[m]["status"] for m in (BAD, YNG, NEW)] == ["failed", "skipped", "done"]
    slack = [json.loads(b)["text"] for p, b in webhook_server if p.startswith("/slack")]
    alert = next(t for t in slack if t.startswith("Airflow task failed"))
    for needle in (f"Market: {BAD}", "validate_market_data", dr.run_id, "2023-12-17", "2023-12-24",
                   "2023-12-20T05:00Z: close is missing", "kept out of the store", "Log:"):
        assert needle in alert, (needle, alert)
    weekly = next(t for t in slack if t.startswith("weekly_retrain"))
    assert "3 market(s), 1 decided, 1 skipped, 1 failed" in weekly and f"{YNG}: SKIPPED" in weekly


def test_young_markets_train_on_shorter_history_or_are_skipped_with_a_date(universe_run):
    from include.registry import ModelRegistry

    dr, states, _, _ = universe_run
    assert states[("ingest_market_data", YNG)] == "skipped"
    assert states[("publish_market_summary", YNG)] == "skipped"
    # In the grid every market's instances are named, those that never ran included (the skipped
    # young market's, the failed one's downstream): plugins/run_notes.py names them when the run ends.
    named = {ti.rendered_map_index for ti in dr.get_task_instances() if ti.task_id == "market.publish_market_summary"}
    assert named == {YNG, BAD, NEW}, named
    skipped = _universe(dr)[YNG]
    # First bar 2023-11-14, + 7 days of warm-up (168 bars), + 60 days = Saturday 2024-01-20: the
    # first week ending on or after it ends on Sunday 2024-01-21.
    assert skipped["qualifies_on"] == "2024-01-21"
    assert "leaves 33 days" in skipped["reason"] and "min_history_days=60" in skipped["reason"]

    summary = _summary(dr, NEW)
    window = summary["window"]
    assert window["requested_train_start"] == "2023-08-26T00:00:00+00:00"  # 120 days before 2023-12-24
    assert window["train_start"] == "2023-09-12T00:00:00+00:00"  # first bar + warm-up
    meta = ModelRegistry.from_settings(Settings.from_env()).metadata(summary["ensemble"]["version"])
    assert meta["data_window"]["short_history"] and meta["data_window"]["train_start"] == window["train_start"]
    assert meta["data_window"]["first_bar"] >= "2023-09-12"


def test_a_batch_of_markets_runs_each_on_its_own_in_one_instance(dag, universe_run, tmp_path_factory, data_dir):
    """The same three markets dealt into one instance of the market group (market_batch_size 3):
    the corrupted market's failure is alerted with its name, the young one is skipped, the third
    decides, all in one instance whose tasks succeed; the run is red through check_markets."""
    src = tmp_path_factory.mktemp("batch-data")
    _copy_market(data_dir, src, "BADUSDT", nan_close_at="2023-12-20T05:00:00Z")
    _copy_market(data_dir, src, "YNGUSDT", first="2023-11-14T00:00:00Z")
    _copy_market(data_dir, src, "NEWUSDT", first="2023-09-05T00:00:00Z")
    universe = src / "universe.yaml"
    universe.write_text("markets:\n" + "".join(
        f"  - {{symbol: {s}, market_type: perp, timeframe: 1h}}\n" for s in ("BADUSDT", "YNGUSDT", "NEWUSDT")))
    conf = {**SHORT, **PERMISSIVE_SKILL, "min_history_days": 60, "universe_file": str(universe), "source_dir": str(src),
            "market_batch_size": 3}
    with _webhooks() as received:
        dr, states = _run(dag, 24, conf)
    label = f"{BAD} (+2 more)"
    group = {task: state for (task, index), state in states.items() if index == label}
    # Eight steps and one training task per model family (a family the run does not train succeeds empty).
    from include.config import MODEL_FAMILIES

    assert len(group) == 8 + len(MODEL_FAMILIES) and set(group.values()) == {"success"}, states
    assert dr.state == "failed" and states[("check_markets", -1)] == "failed"
    outcomes = _universe(dr)
    assert [outcomes[m]["status"] for m in (BAD, YNG, NEW)] == ["failed", "skipped", "done"]
    assert outcomes[BAD]["reason"].startswith("validation failed")
    slack = [json.loads(b)["text"] for p, b in received if p.startswith("/slack")]
    alerts = [t for t in slack if t.startswith("Airflow task failed")]
    assert len(alerts) == 1, alerts
    for needle in (f"Market: {BAD}", "validate_market_data", "2023-12-20T05:00Z: close is missing"):
        assert needle in alerts[0], (needle, alerts[0])
    assert _summary(dr, NEW)["action"]["action"] in ("promote", "keep")


def test_failed_smoke_test_rolls_production_back_within_the_model(first_run, tmp_path):
    """A promoted model that cannot predict on the latest bars is rolled back automatically."""
    from include.errors import PipelineError
    from include.pipeline import promote
    from include.registry import ModelRegistry

    settings = Settings.from_env()
    registry = ModelRegistry.from_settings(settings)
    champion, other = registry.production(BTC).version, registry.production(ETH).version
    broken = tmp_path / "broken"
    shutil.copytree(registry.root / registry.describe(champion)["artifact_path"], broken)
    (broken / "manifest.json").unlink()
    lineage = json.loads((broken / "metadata.json").read_text())
    lineage["feature_spec"]["names"] = [*lineage["feature_spec"]["names"], "feature_the_store_cannot_compute"]
    (broken / "metadata.json").write_text(json.dumps(lineage))
    bad = registry.register(broken, datetime(2023, 12, 31, tzinfo=UTC))
    decision = {"passed": True, "candidate": bad, "champion": champion, "summary": "PASS (test)", "model": BTC}
    with pytest.raises(PipelineError, match="smoke test failed.*rolled back to"):
        promote(settings, decision, run_id="smoke-test", as_of=datetime(2023, 12, 31, tzinfo=UTC))
    assert registry.production(BTC).version == champion and registry.production(ETH).version == other
    assert [(e["event"], e["to"]) for e in registry.ledger(BTC)[-2:]] == [("promote", bad), ("auto_rollback", champion)]
    assert "smoke test failed" in registry.ledger(BTC)[-1]["reason"]


def _register_copy(registry, version: str, dest: Path, edit) -> str:
    """Register a copy of ``version``'s artifacts whose lineage ``edit`` changed (in place); its id."""
    shutil.copytree(registry.root / registry.describe(version)["artifact_path"], dest)
    (dest / "manifest.json").unlink()
    lineage = json.loads((dest / "metadata.json").read_text())
    edit(lineage)
    (dest / "metadata.json").write_text(json.dumps(lineage))
    return registry.register(dest, datetime(2023, 12, 31, tzinfo=UTC))


def test_a_promotion_retried_after_it_moved_production_does_not_move_it_twice(first_run, tmp_path):
    """A batch's promote_or_keep retried after a crash promotes its earlier markets again: the
    second call finds the candidate in production and reports it, with no second ledger event."""
    from include.pipeline import promote
    from include.registry import ModelRegistry

    settings = Settings.from_env()
    registry = ModelRegistry.from_settings(settings)
    champion = registry.production(BTC).version
    candidate = _register_copy(registry, champion, tmp_path / "copy",
                               lambda lineage: lineage.update(copied_from=champion))
    decision = {"passed": True, "candidate": candidate, "champion": champion, "summary": "PASS (test)", "model": BTC}
    try:
        first = promote(settings, decision, run_id="retried", as_of=datetime(2023, 12, 24, tzinfo=UTC))
        events = len(registry.ledger(BTC))
        again = promote(settings, decision, run_id="retried", as_of=datetime(2023, 12, 24, tzinfo=UTC))
        assert first["production"] == again["production"] == candidate and again["previous"] == champion
        assert len(registry.ledger(BTC)) == events and registry.production(BTC).version == candidate
    finally:
        registry.rollback(BTC, champion, run_id="retried", reason="test: restore the champion")
    assert registry.production(BTC).version == champion


def test_a_promotion_retried_after_its_smoke_test_was_killed_smoke_tests_and_rolls_back(first_run, tmp_path):
    """Issue 35, finding 2: a worker killed during the smoke test leaves production at the
    candidate with no smoke test recorded; the retry must smoke-test it (and roll back a broken
    one), not report it as promoted."""
    from include.errors import PipelineError
    from include.pipeline import promote
    from include.registry import ModelRegistry

    settings = Settings.from_env()
    registry = ModelRegistry.from_settings(settings)
    champion = registry.production(BTC).version

    def cannot_predict(lineage):
        lineage["feature_spec"]["names"] = [*lineage["feature_spec"]["names"], "feature_the_store_cannot_compute"]

    bad = _register_copy(registry, champion, tmp_path / "broken", cannot_predict)
    run_id = "killed-during-smoke-test"
    decision = {"passed": True, "candidate": bad, "champion": champion, "summary": "PASS (test)", "model": BTC}
    # The first try moved production, then its worker was killed inside the smoke test.
    registry.promote(bad, run_id=run_id, reason="PASS (test)", decision=decision, expected=champion)
    assert registry.smoke_test_passed(BTC, bad, run_id) is None
    with pytest.raises(PipelineError, match="smoke test failed.*rolled back to"):
        promote(settings, decision, run_id=run_id, as_of=datetime(2023, 12, 31, tzinfo=UTC))
    assert registry.production(BTC).version == champion
    assert [(e["event"], e["to"]) for e in registry.ledger(BTC)[-2:]] == [("promote", bad), ("auto_rollback", champion)]
    registry.dispose()


def test_failed_smoke_test_on_a_first_promotion_leaves_no_production(first_run, tmp_path):
    from include.errors import PipelineError
    from include.pipeline import promote
    from include.registry import ModelRegistry

    settings = Settings.from_env()
    registry = ModelRegistry.from_settings(settings)
    source = registry.production(BTC).version

    def to_xrp(lineage):  # a market the store holds no candles of
        lineage["symbol"] = lineage["config"]["symbol"] = "XRPUSDT"

    first = _register_copy(registry, source, tmp_path / "first", to_xrp)
    model = registry.model_of(first)
    assert model == "binance-xrpusdt-perp-1h-h4" and registry.production(model) is None
    decision = {"passed": True, "candidate": first, "champion": None, "summary": "PASS (test)", "model": model}
    with pytest.raises(PipelineError, match="production alias removed"):
        promote(settings, decision, run_id="first-smoke", as_of=datetime(2023, 12, 31, tzinfo=UTC))
    assert registry.production(model) is None
    assert [(e["event"], e["from"], e["to"]) for e in registry.ledger(model)] == [
        ("promote", None, first), ("auto_rollback", first, None)]
    assert registry.production(BTC).version == source


def test_a_tampered_member_is_refused_before_it_is_unpickled(first_run, tmp_path):
    from include.config import RunConfig
    from include.errors import IntegrityError
    from include.pipeline import assemble
    from include.registry import ModelRegistry
    from include.windows import RunWindow

    dr, _ = first_run
    settings = Settings.from_env()
    run_folder = settings.runs_dir / "weekly_retrain" / BTC / _key(dr)
    out = tmp_path / "run"
    shutil.copytree(run_folder, out)
    summary = json.loads((out / "summary.json").read_text())
    trained = [{"family": f, "sha256": json.loads((out / "candidates" / f / "metadata.json").read_text())
                ["files"]["model.joblib"]} for f in ("lightgbm", "xgboost", "random_forest")]
    with open(out / "candidates" / "xgboost" / "model.joblib", "ab") as fh:
        fh.write(b"\0")
    registry = ModelRegistry.from_settings(settings)
    before = registry.versions()
    cfg = RunConfig.from_params(SHORT)
    with pytest.raises(IntegrityError, match="member xgboost: model.joblib sha256 .* does not match"):
        assemble(cfg, RunWindow(**summary["window"]), settings, out, trained, dag_id="weekly_retrain",
                 run_id="tamper-test")
    assert registry.versions() == before


def test_an_error_a_retry_cannot_mend_fails_on_the_first_try(dag, tmp_path):
    """A missing data directory: no retry, no two-minute retry delay, one message naming it."""
    import time

    started = time.monotonic()
    dr = dag.test(logical_date=datetime(2023, 12, 17, tzinfo=UTC),
                  run_conf={**SHORT, "markets": ["BTCUSDT"], "source_dir": str(tmp_path / "missing")})
    elapsed = time.monotonic() - started
    ingest = next(ti for ti in dr.get_task_instances() if ti.task_id == "market.ingest_market_data")
    assert dr.state == "failed" and ingest.state == "failed"
    assert ingest.try_number == 1 and ingest.max_tries == 1  # retries were allowed, and not used
    assert elapsed < 60, elapsed


def test_a_bad_universe_selection_fails_planning_at_once_and_publishes_nothing(dag):
    import time

    started = time.monotonic()
    dr = dag.test(logical_date=datetime(2023, 12, 10, tzinfo=UTC), run_conf={**SHORT, "markets": ["SOLUSDT"]})
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == "failed" and states["plan_run"] == "failed"
    assert states["publish_summary"] == "skipped" and states["check_markets"] == "failed"  # the run shows red
    assert time.monotonic() - started < 60  # no retry of anything


def test_monitoring_a_drifting_market_updates_the_retrain_request_asset(dag, first_run, tmp_path, data_dir):
    """Last in this module: it writes a shifted week of BTC candles into the shared market store."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from include.pipeline import retrain_scope
    from tests.conftest import ROOT

    src = tmp_path / "data"
    src.mkdir()
    for name in ("btcusdt_perp_1h.csv.gz", "btcusdt_funding_8h.csv.gz", "btcusdt_perp_open_interest_usd_1d.csv.gz"):
        frame = pd.read_csv(data_dir / name)
        if name.endswith("perp_1h.csv.gz"):
            frame.loc[frame["timestamp"] >= "2023-12-24T00:00:00Z", "volume"] *= 10
        with gzip.open(src / name, "wt") as fh:
            frame.to_csv(fh, index=False)
    monitor = DagBag(dag_folder=str(ROOT / "dags")).get_dag("monitor_production")
    with _webhooks() as received:
        # ETH's monitoring fails: the source folder holds BTC's files only.
        dr = monitor.test(logical_date=datetime(2023, 12, 31, tzinfo=UTC),  # interval [12-30, 12-31)
                          run_conf={"models": [BTC, ETH], "source_dir": str(src)})
    # BTC's request still goes out: one alert per channel for it, with the numbers, besides ETH's failure alerts.
    texts = [json.loads(b).get("text") or json.loads(b).get("content") for _, b in received]
    monitor_texts = [t for t in texts if t.startswith("monitor_production: ")]
    assert len(monitor_texts) == 2, texts
    for text in monitor_texts:
        for needle in ("monitor_production: 1 of 1 model(s) need attention", f"{BTC} ", "RETRAIN_REQUESTED",
                       "feature_drift: largest PSI among the top 5 features: "):
            assert needle in text, (needle, text)
    states = {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}
    assert sorted(s for (t, _), s in states.items() if t == "monitor_model") == ["failed", "success"], states
    assert states[("request_retrain", -1)] == "success" and states[("check_models", -1)] == "failed", states
    # The run is red: a model went unmonitored.
    assert dr.state == "failed"
    # The cooldown started with the event: BTC's report is marked as emitted.
    import sqlalchemy as sa

    from include.config import Settings
    from include.predictions import report_table

    engine = sa.create_engine(Settings.from_env().market_db_url)
    with engine.connect() as conn:
        marked = conn.execute(sa.select(report_table.c.model, report_table.c.requested_at)
                              .where(report_table.c.run_id == dr.run_id)).all()
    engine.dispose()
    assert [(m, t is not None) for m, t in marked] == [(BTC, True)]
    with create_session() as session:
        events = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                 .where(AssetModel.name == "retrain_request")).all()
    assert len(events) == 1 and events[0].source_run_id == dr.run_id
    extra = events[0].extra
    assert extra["models"] == [BTC] and extra["as_of"] == "2023-12-31T00:00:00+00:00"
    assert "PSI" in extra["reasons"][BTC]
    # What the weekly_retrain run it triggers will retrain: that model, the week ending 2023-12-31.
    scope = retrain_scope({"retrain_request": events})
    assert scope["markets"] == [BTC] and scope["as_of_date"] == "2023-12-31"


def test_a_batch_retries_the_market_the_exchange_failed_and_reuses_the_other(airflow_db, tmp_path, monkeypatch,
                                                                            data_dir):
    """Two markets in one instance, ingested from a local replay of Binance's API: BTCUSDT's
    candles keep failing through the source's own retries (HTTP 503), ETHUSDT's come through.
    The task is retried by Airflow; its second try ingests BTCUSDT only, reusing ETHUSDT's
    result, and both markets decide."""
    from datetime import timedelta

    from airflow.dag_processing.dagbag import DagBag

    from include.data.replay import BinanceReplayServer
    from tests.conftest import ROOT

    for name, value in (("MARKET_DB_URL", f"sqlite:///{tmp_path / 'market.sqlite'}"),
                        ("MODEL_REGISTRY_DIR", str(tmp_path / "models")),
                        ("RUN_ARTIFACTS_DIR", str(tmp_path / "runs"))):
        monkeypatch.setenv(name, value)
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("weekly_retrain")
    for task in dag.tasks:  # the retry at once rather than after the DAG's two minutes
        task.retry_delay = timedelta(seconds=1)
    with BinanceReplayServer(data_dir, symbols=("BTCUSDT", "ETHUSDT")) as replay:
        monkeypatch.setenv("EXCHANGE_API_URL", replay.url)
        replay.fail_next("/fapi/v1/klines", 503, times=6)  # the first request and the source's 5 retries
        dr = dag.test(logical_date=datetime(2023, 12, 24, tzinfo=UTC), run_conf={
            **SHORT, **PERMISSIVE_SKILL, "models": ["lightgbm"], "source": "exchange",
            "markets": ["BTCUSDT", "ETHUSDT"], "market_batch_size": 2})
        klines = [q["symbol"] for q in replay.requests_to("/fapi/v1/klines")]
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    ingest = tis["market.ingest_market_data"]
    assert ingest.rendered_map_index == f"{BTC} (+1 more)" and ingest.try_number == 2, ingest
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    assert klines[:6] == ["BTCUSDT"] * 6 and "ETHUSDT" in klines
    for model in (BTC, ETH):
        # Each market's ingestion as it ran, once, from the empty store: the whole window (run
        # again, ETHUSDT's would have found every bar stored and fetched nothing).
        ingested = _summary(dr, model)["ingested"]["ohlcv"]
        assert [r[0] for r in ingested["ranges"]] == ["all"] and ingested["rows_fetched"] > 0, ingested
        assert _summary(dr, model)["action"]["action"] == "promote"  # a first model, a permissive gate
    # Each promotion of the batch updated its model's production asset.
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        uris = session.scalars(select(AssetModel.uri).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
                               .where(AssetEvent.source_run_id == dr.run_id)).all()
    assert sorted(uris) == [f"model://{BTC}/production", f"model://{ETH}/production"]
    # The retry's reused outcomes were kept in the market database, and removed when the tasks ended.
    import sqlalchemy as sa

    from include.batch_outcomes import outcome_table
    from include.config import Settings

    engine = sa.create_engine(Settings.from_env().market_db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outcome_table)
                            .where(outcome_table.c.run_id == dr.run_id)).scalar() == 0
    engine.dispose()
    assert not (tmp_path / "runs" / ".batches").exists()
