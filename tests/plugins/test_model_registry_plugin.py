"""The registry API and the Models page, through a running Airflow api-server.

The api-server runs as its own process (``airflow api-server``) with the plugin loaded from
``plugins/``, over a real registry made by two pipeline runs. The Models page is loaded in
headless Chromium (Debian's ``chromium``) through the DevTools protocol, logged in with a real
Airflow token; a screenshot is kept in ``var/artifacts/``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cluster import LocalAirflow, free_port
from tests.conftest import ROOT

ARTIFACTS = ROOT / "var" / "artifacts"
BTC, ETH = "binance-btcusdt-perp-1h-h4", "binance-ethusdt-perp-1h-h4"


def _request(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, object]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if resp.headers.get_content_type() == "application/json"
                                 else raw.decode())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def api(trained_registry, tmp_path_factory):
    settings = trained_registry["settings"]
    home = tmp_path_factory.mktemp("api-airflow")
    env = {"MARKET_DB_URL": settings.market_db_url, "MODEL_REGISTRY_DIR": str(settings.registry_dir),
           "RUN_ARTIFACTS_DIR": str(settings.runs_dir), "MODEL_MAX_AGE_HOURS": "none"}
    with LocalAirflow(home, f"sqlite:///{home / 'airflow.db'}", env=env, components=("api-server",)) as airflow:
        base = f"http://127.0.0.1:{airflow.port}"
        status, token = _request(f"{base}/auth/token", body={"username": "admin", "password": "admin"})
        assert status in (200, 201), token
        yield {"base": base, "token": token["access_token"], "versions": trained_registry["versions"],
               "eth": trained_registry["eth_version"]}


def test_every_route_needs_an_airflow_user(api):
    for path in ("/model-registry/versions", "/model-registry/ui", "/model-registry/models",
                 f"/model-registry/models/{BTC}/versions", f"/model-registry/models/{BTC}/aliases/production",
                 f"/model-registry/versions/{api['eth']}/report", "/model-registry/monitoring",
                 f"/model-registry/monitoring/{BTC}", "/model-registry/monitoring-ui",
                 f"/model-registry/versions/{api['eth']}/page", f"/model-registry/models/{BTC}/timeline",
                 f"/model-registry/models/{BTC}/track-record"):
        assert _request(api["base"] + path)[0] == 401, path
    assert _request(api["base"] + "/model-registry/predict", body={"symbol": "BTCUSDT"})[0] == 401
    assert _request(api["base"] + "/model-registry/versions", token="not-a-token")[0] in (401, 403)


def test_a_viewer_reads_the_registry_but_cannot_write_the_prediction_log(api):
    status, token = _request(f"{api['base']}/auth/token", body={"username": "viewer", "password": "viewer"})
    assert status in (200, 201), token
    viewer = token["access_token"]
    assert _request(api["base"] + "/model-registry/models", viewer)[0] == 200
    assert _request(api["base"] + f"/model-registry/versions/{api['eth']}", viewer)[0] == 200
    status, err = _request(api["base"] + "/model-registry/predict", viewer,
                           {"model": BTC, "as_of": "2023-12-31T00:00:00Z"})
    assert status == 403 and err["detail"] == "Forbidden"


def test_monitoring_routes_answer_before_any_monitoring_run(api):
    # Models in production, none monitored yet: empty answers and a page saying how to start.
    assert _request(api["base"] + "/model-registry/monitoring", token=api["token"]) == (200, {})
    assert _request(api["base"] + f"/model-registry/monitoring/{BTC}", token=api["token"]) == (200, [])
    status, page = _request(api["base"] + "/model-registry/monitoring-ui", token=api["token"])
    assert status == 200 and "No monitoring report yet" in page and "make monitor" in page


def test_models_versions_aliases_and_history(api):
    v1, v2 = api["versions"]
    status, models = _request(api["base"] + "/model-registry/models", api["token"])
    assert status == 200 and [(m["name"], m["production"], m["symbol"]) for m in models] == [
        (BTC, v2, "BTCUSDT"), (ETH, api["eth"], "ETHUSDT")]
    status, rows = _request(api["base"] + f"/model-registry/models/{BTC}/versions", api["token"])
    assert status == 200 and [r["version"] for r in rows] == [v2, v1] and {r["model"] for r in rows} == {BTC}
    assert sorted(rows[0]["aliases"]) == ["challenger", "production"] and rows[1]["ever_production"]
    assert 0 < rows[0]["macro_f1"] < 1
    status, every = _request(api["base"] + "/model-registry/versions", api["token"])
    assert status == 200 and {r["version"] for r in every} == {v1, v2, api["eth"]}
    assert _request(api["base"] + "/model-registry/models/nope/versions", api["token"])[0] == 404
    status, one = _request(api["base"] + f"/model-registry/versions/{v1}", api["token"])
    assert status == 200 and one["lineage"]["run_id"] == "fixture__BTCUSDT__2023-12-24" and one["model"] == BTC
    assert len(one["files"]["model.joblib"]) == 64
    assert _request(api["base"] + "/model-registry/versions/v-missing", api["token"])[0] == 404
    status, alias = _request(api["base"] + f"/model-registry/models/{BTC}/aliases/production", api["token"])
    assert status == 200 and alias["version"] == v2 and {h["model"] for h in alias["history"]} == {BTC}
    status, report = _request(api["base"] + f"/model-registry/versions/{api['eth']}/report", api["token"])
    assert status == 200 and api["eth"] in report and "<html" in report.lower()
    # The first two moves are the fixture's promotions (other tests may add and undo moves).
    assert [(h["event"], h["from"], h["to"]) for h in alias["history"][:2]] == [
        ("promote", None, v1), ("promote", v1, v2)]
    assert alias["history"][1]["decision"]["passed"] is True


def test_predict_and_openapi(api):
    status, pred = _request(api["base"] + "/model-registry/predict", api["token"],
                            {"model": BTC, "as_of": "2023-12-31T00:00:00Z"})
    assert status == 200, pred
    assert (pred["model"], pred["version"], pred["bar"]) == (BTC, api["versions"][1], "2023-12-30T23:00:00+00:00")
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0) and pred["data_age_hours"] == 0
    # A symbol resolves to its one registered model; each market is served by its own production version.
    status, eth = _request(api["base"] + "/model-registry/predict", api["token"],
                           {"symbol": "ETHUSDT", "market_type": "perp", "as_of": "2023-12-31T00:00:00Z"})
    assert status == 200 and (eth["model"], eth["version"], eth["symbol"]) == (ETH, api["eth"], "ETHUSDT")
    assert eth["probabilities"] != pred["probabilities"]
    status, err = _request(api["base"] + "/model-registry/predict", api["token"], {"symbol": "SOLUSDT"})
    assert status == 404 and "no registered model forecasts SOLUSDT" in err["detail"]
    status, spec = _request(api["base"] + "/model-registry/openapi.json", api["token"])
    assert status == 200 and {"/models", "/models/{name}/versions", "/models/{name}/aliases/{alias}", "/versions",
                              "/versions/{version}", "/versions/{version}/report", "/predict"} <= set(spec["paths"])
    status, plugins = _request(api["base"] + "/api/v2/plugins", api["token"])
    ours = next(p for p in plugins["plugins"] if p["name"] == "model_registry")
    assert ours["external_views"][0]["name"] == "Models" and ours["fastapi_apps"][0]["url_prefix"] == "/model-registry"


def test_a_version_has_a_page_and_a_model_its_production_history(api):
    v1, v2 = api["versions"]
    status, page = _request(api["base"] + f"/model-registry/versions/{v2}/page", api["token"])
    assert status == 200, page
    for needle in ("Lineage", "last training row", "code version", "lightgbm", "hyperparameters",
                   "Out-of-fold metrics per walk-forward fold", "Gate: PASS", "not_worse_than_champion",
                   f"champion {v1}", "In production", "promote", "fixture__BTCUSDT__2023-12-31"):
        assert needle in page, needle
    status, old = _request(api["base"] + f"/model-registry/versions/{v1}/page", api["token"])
    # v1 held production from its promotion until v2's: both ends of the span are on its page.
    assert status == 200 and "This version has not held production" not in old and "Gate: PASS" in old
    assert _request(api["base"] + "/model-registry/versions/v-missing/page", api["token"])[0] == 404
    status, timeline = _request(api["base"] + f"/model-registry/models/{BTC}/timeline", api["token"])
    assert status == 200 and "production history" in timeline
    # Newest first: v2's promotion over v1, then v1's first promotion, with the run that made each.
    assert timeline.index("fixture__BTCUSDT__2023-12-31") < timeline.index("fixture__BTCUSDT__2023-12-24")
    # other tests sharing the registry may add later moves above them
    assert timeline.count("data-event='promote'") >= 2
    assert _request(api["base"] + "/model-registry/models/nope/timeline", api["token"])[0] == 404
    status, models = _request(api["base"] + "/model-registry/ui", api["token"])
    assert f"href='versions/{v1}/page'" in models and f"href='models/{BTC}/timeline'" in models
    # Which hyperparameters each version used: the fixture's versions trained with the defaults.
    assert "<th>hyperparameters</th>" in models and "<td>defaults</td>" in models
    assert "hyperparameter sets</td><td>defaults" in page.replace("\n", "")
    # The run's report links the validation's Great Expectations Data Docs, served beside it.
    status, report = _request(api["base"] + f"/model-registry/versions/{v2}/report", api["token"])
    assert status == 200 and "href='data_docs/index.html'" in report and "Data validation: passed" in report
    status, docs = _request(api["base"] + f"/model-registry/versions/{v2}/data_docs/index.html", api["token"])
    assert status == 200 and "ohlcv_suite" in docs
    assert _request(api["base"] + f"/model-registry/versions/{v2}/data_docs/..%2F..%2Fsummary.json",
                    api["token"])[0] == 404


def test_the_track_record_command_stores_what_the_models_page_shows(api, trained_registry):
    settings = trained_registry["settings"]
    assert _request(api["base"] + f"/model-registry/models/{BTC}/track-record", api["token"])[0] == 404
    status, page = _request(api["base"] + "/model-registry/ui", api["token"])
    assert status == 200 and f"python -m include.track_record record --model {BTC}" in page
    env = {**os.environ, "MARKET_DB_URL": settings.market_db_url, "MODEL_REGISTRY_DIR": str(settings.registry_dir),
           "RUN_ARTIFACTS_DIR": str(settings.runs_dir), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "include.track_record", "record", "--model", BTC], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "forward record over 1 weeks" in done.stdout and "never_retrain" in done.stdout
    status, record = _request(api["base"] + f"/model-registry/models/{BTC}/track-record", api["token"])
    assert status == 200 and set(record["totals"]) == {"production", "newest", "never_retrain", "gate_default"}
    # The first week: v1 serves under every policy; the replayed default gate promoted nothing.
    first = record["weeks"][0]["policies"]
    assert first["newest"]["version"] == first["production"]["version"] == api["versions"][0]
    status, page = _request(api["base"] + "/model-registry/ui", api["token"])
    assert "Track record" in page and "production chain (the gate)" in page and "never retrain" in page


def _cdp(ws, method: str, **params):
    _cdp.counter = getattr(_cdp, "counter", 0) + 1
    ws.send(json.dumps({"id": _cdp.counter, "method": method, "params": params}))
    while True:
        msg = json.loads(ws.recv(timeout=60))
        if msg.get("id") == _cdp.counter:
            assert "error" not in msg, msg
            return msg.get("result", {})


def test_models_page_in_headless_chromium(api, tmp_path):
    from websockets.sync.client import connect

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium package is required (bash .ci/run installs it)"
    port = free_port()
    proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={port}",
                             "--window-size=1400,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as resp:
                    page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                assert time.monotonic() < deadline, "chromium did not start"
                time.sleep(0.5)
        with connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
            _cdp(ws, "Network.enable")
            _cdp(ws, "Network.setCookie", name="_token", value=api["token"], url=api["base"] + "/")
            # The Airflow UI with the Models page in its navigation, embedded as an iframe.
            _cdp(ws, "Page.navigate", url=api["base"] + "/plugin/models")
            time.sleep(8)
            frame = _cdp(ws, "Runtime.evaluate", expression="document.querySelector('iframe') && "
                         "document.querySelector('iframe').src", returnByValue=True)["result"].get("value")
            shot = _cdp(ws, "Page.captureScreenshot", format="png")["data"]
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "models_view_in_airflow_ui.png").write_bytes(base64.b64decode(shot))
            # The page itself, as the iframe loads it.
            _cdp(ws, "Page.navigate", url=api["base"] + "/model-registry/ui")
            time.sleep(2)
            rows = _cdp(ws, "Runtime.evaluate", returnByValue=True, expression=(
                "Array.from(document.querySelectorAll('section.model tr[data-version]'))"
                ".map(r => [r.dataset.version, r.className, r.innerText, r.closest('section').dataset.model,"
                " r.querySelector('a[href*=\"/report\"]') !== null,"
                " (r.querySelector('a[href^=\"/dags/\"]') || {}).href || ''])"))["result"]["value"]
            shot = _cdp(ws, "Page.captureScreenshot", format="png")["data"]
            (ARTIFACTS / "models_view.png").write_bytes(base64.b64decode(shot))
            # A version's page and the model's production history, followed from the Models page's links.
            pages = {}
            for name, path in (("version_page", f"/model-registry/versions/{api['versions'][1]}/page"),
                               ("alias_timeline", f"/model-registry/models/{BTC}/timeline")):
                _cdp(ws, "Page.navigate", url=api["base"] + path)
                time.sleep(2)
                pages[name] = _cdp(ws, "Runtime.evaluate", returnByValue=True,
                                   expression="document.body.innerText")["result"]["value"]
                shot = _cdp(ws, "Page.captureScreenshot", format="png")["data"]
                (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(shot))
    finally:
        proc.terminate()
        proc.wait(10)
    v1, v2 = api["versions"]
    assert frame and frame.endswith("/model-registry/ui"), frame
    # Grouped by registered model, newest first within each; every row links its run and report.
    assert [(r[3], r[0]) for r in rows] == [(BTC, v2), (BTC, v1), (ETH, api["eth"])]
    assert rows[0][1] == "production" and "production" in rows[0][2] and rows[1][1] == ""
    assert rows[2][1] == "production" and all(r[4] for r in rows)
    assert rows[1][5].endswith("/dags/weekly_retrain/runs/fixture__BTCUSDT__2023-12-24")
    # The gate column shows what the gate compared: both models on the same rows, and the verdict.
    assert "PASS" in rows[0][2] and f"vs champion {v1}" in rows[0][2] and "on the same" in rows[0][2], rows[0][2]
    # v2's last fold model is v1's own fit (v1 was deployed on the rows it trains on): the paired
    # test has nothing to test, and the column says so instead of a p-value of 1.
    assert "same model" in rows[0][2] and "p = " not in rows[0][2]
    assert "PASS" in rows[1][2] and "no champion compared" in rows[1][2], rows[1][2]
    assert Path(ARTIFACTS / "models_view.png").stat().st_size > 5000
    assert "Gate: PASS" in pages["version_page"] and "In production" in pages["version_page"]
    assert "production history" in pages["alias_timeline"] and "promote" in pages["alias_timeline"]
    assert all(Path(ARTIFACTS / f"{name}.png").stat().st_size > 5000 for name in pages)
