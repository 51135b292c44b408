"""The local deployment of ``make airflow`` (include/deployment/), driven as a user drives it.

One test starts the real thing (``python -m include.deployment up``: embedded PostgreSQL from the
``pgserver`` wheel, api-server, scheduler with the LocalExecutor, dag-processor, triggerer) and:

* a second ``up`` on the same port refuses at once and names the port;
* a backfill of three weekly windows created through the official REST client
  (``apache-airflow-client``) runs to success;
* a one-week backfill through ``make backfill``'s command (``include.deployment backfill``) runs
  to success and reports it;
* Ctrl-C (SIGINT to the supervisor) stops every process it started, frees the port and stops the
  embedded PostgreSQL.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.builders import PERMISSIVE_GATE
from tests.cluster import ROOT, free_port

DAG_ID = "weekly_retrain"
#: A small run of one market: the point is the deployment, not the model.
# A gate that lets every candidate through: the monitoring step below needs a model in production.
CONF = {"markets": ["BTCUSDT"], "train_window_days": 120, "cv_folds": 3, "models": ["lightgbm", "random_forest"],
        **PERMISSIVE_GATE}
BTC = "binance-btcusdt-perp-1h-h4"
#: The admin's password, given to the deployment as a user gives it (AIRFLOW_ADMIN_PASSWORD).
ADMIN_PASSWORD = "deployment-test-admin"


def _env(tmp_path: Path, port: int, var: str = "deploy") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "MARKET_", "MODEL_REGISTRY", "RUN_ARTIFACTS"))}
    # BTC alone, with the small run's parameters and a gate that lets every candidate through, for
    # every run whatever triggers it (a retrain that monitoring requests runs with the defaults).
    universe = tmp_path / "universe.yaml"
    universe.write_text(json.dumps({"markets": [{"symbol": "BTCUSDT", "market_type": "perp", "timeframe": "1h",
                                                 "params": {k: v for k, v in CONF.items() if k != "markets"}}]}))
    return {**env, "PYTHONPATH": str(ROOT), "DEPLOY_VAR_DIR": str(tmp_path / var),
            "MARKET_UNIVERSE_FILE": str(universe), "MARKET_INPUT_ROOTS": os.environ["MARKET_INPUT_ROOTS"],
            "AIRFLOW_HOME": str(tmp_path / var / "airflow"), "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5", "AIRFLOW_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _token(port: int) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/auth/token", method="POST",
                                 data=json.dumps({"username": "admin", "password": ADMIN_PASSWORD}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["access_token"]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path, describe=None) -> None:
    """Poll ``predicate`` every 2 s until it is true; fail with the deployment's log tail (and
    ``describe()``, e.g. the run's task states) when ``proc`` exits or ``timeout`` passes."""
    deadline, last_error = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the deployment exited ({proc.returncode}) while waiting for {what}:\n"
                        f"{log.read_text()[-4000:]}")
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - not up yet; reported if it never comes up
            last_error = exc
        time.sleep(2)
    state = ""
    if describe is not None:
        try:
            state = f"\nstate: {describe()}"
        except Exception as exc:  # noqa: BLE001 - the description is a diagnostic only
            state = f"\nstate: unavailable ({exc!r})"
    # The state last: CI shows the end of the output.
    pytest.fail(f"timed out waiting for {what} (last error: {last_error!r}):\n{log.read_text()[-4000:]}{state}")


def _approvals(tmp_path: Path, port: int, config, up: subprocess.Popen, log: Path) -> None:
    """require_approval set per market in a universe file: Approve, Reject and no answer, through
    Airflow's human-in-the-loop REST API, each ending as the registry's ledger says."""
    import airflow_client.client as client

    from include.registry import ModelRegistry

    universe = tmp_path / "approvals.yaml"
    ask = {"require_approval": True}
    universe.write_text(json.dumps({"markets": [
        {"symbol": "BTCUSDT", "market_type": "perp", "timeframe": "1h", "params": ask},
        {"symbol": "ETHUSDT", "market_type": "perp", "timeframe": "1h", "params": ask},
        {"symbol": "BTCUSDT", "market_type": "perp", "timeframe": "1h",
         "params": {**ask, "label_horizon_bars": 6, "approval_timeout_hours": 0.01}}]}))
    h6, eth = "binance-btcusdt-perp-1h-h6", "binance-ethusdt-perp-1h-h4"
    conf = {**{k: v for k, v in CONF.items() if k != "markets"}, "universe_file": str(universe),
            "as_of_date": "2023-07-16"}
    base = f"http://127.0.0.1:{port}/api/v2/dags/{DAG_ID}/dagRuns"

    def call(method: str, url: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {_token(port)}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    run_id = call("POST", base, {"logical_date": None, "conf": conf})["dag_run_id"]

    def waiting() -> dict[str, dict]:
        details = call("GET", f"{base}/{run_id}/hitlDetails")["hitl_details"]
        return {d["task_instance"]["rendered_map_index"]: d for d in details}

    def task_states() -> str:
        tis = call("GET", f"{base}/{run_id}/taskInstances?limit=100")["task_instances"]
        return "; ".join(sorted(f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in tis))

    def parked(index: int) -> bool:
        # The scheduler has taken the executor's event for the parked try. Airflow 3.3.2 resumes an
        # answered task in the same try, so an event that arrives after the answer (the workload's
        # process can take seconds to exit on a loaded machine) reads as the resumed try finishing
        # behind the scheduler's back, and the task is retried: the answer is lost.
        key = (f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{DAG_ID}', "
               f"task_id='market.approve_promotion', run_id='{run_id}', try_number=1, map_index={index})")
        return key in log.read_text()

    def answerable() -> bool:
        # Answered once the tasks wait, as a person sees them in Required Actions: Airflow 3.3.2
        # records an answer sent while the task is still parking but resumes the task only at its
        # timeout (docs/concepts/run.md). The third request times out by itself.
        asked = waiting()
        return len(asked) == 3 and all(asked[m]["task_instance"]["state"] == "awaiting_input"
                                       and parked(asked[m]["task_instance"]["map_index"]) for m in (BTC, eth))

    _wait(answerable, 900, "three approval requests", up, log, task_states)
    asked = waiting()
    assert (asked[BTC]["subject"].startswith("Promote v20230716T0000-")
            and asked[BTC]["options"] == ["Approve", "Reject"])
    for model, answer in ((BTC, "Approve"), (eth, "Reject")):
        index = asked[model]["task_instance"]["map_index"]
        done = call("PATCH", f"{base}/{run_id}/taskInstances/market.approve_promotion/{index}/hitlDetails",
                    {"chosen_options": [answer]})
        assert done["chosen_options"] == [answer] and done["responded_by"]["name"] == "admin"
    with client.ApiClient(config) as api:
        runs = client.DagRunApi(api)
        _wait(lambda: getattr(runs.get_dag_run(DAG_ID, run_id).state, "value", None) in ("success", "failed"), 1200,
              "the run with approvals to finish", up, log, task_states)
        assert getattr(runs.get_dag_run(DAG_ID, run_id).state, "value", None) == "success"
    state = json.loads((tmp_path / "deploy" / "state.json").read_text())
    registry = ModelRegistry(state["env"]["MODEL_REGISTRY_DIR"], state["env"]["MARKET_DB_URL"])
    try:
        approved = registry.ledger(BTC)[-1]
        assert approved["event"] == "promote" and approved["run_id"] == run_id
        assert approved["to"].startswith("v20230716T0000-")
        for model, reason in ((eth, "approval: ['Reject'] by admin"),
                              (h6, "approval: no answer within 0.01 h, rejected by default")):
            last = registry.ledger(model)[-1]
            assert last["event"] == "keep" and last["run_id"] == run_id and last["reason"] == reason, last
            assert registry.production(model) is None  # never promoted: nothing served
    finally:
        registry.dispose()


def test_make_airflow_deployment_backfills_through_the_rest_client_and_stops_cleanly(tmp_path):
    import airflow_client.client as client
    import psutil

    port = free_port()
    env = _env(tmp_path, port)
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "include.deployment", "up"], env=env, cwd=ROOT,
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    state_path = tmp_path / "deploy" / "state.json"
    try:
        _wait(lambda: state_path.is_file() and bool(_token(port)), 180, "the api-server", up, log)
        state = json.loads(state_path.read_text())
        assert set(state["components"]) == {"api-server", "scheduler", "dag-processor", "triggerer"}
        assert state["embedded_postgres"] is True
        assert state["env"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert state["env"]["AIRFLOW__CORE__EXECUTOR"] == "include.deployment.executor.PreloadingLocalExecutor"
        # The admin logs in with the environment's password (_token above), kept in a file only its
        # owner reads, and never printed.
        passwords = tmp_path / "deploy" / "airflow" / "simple_auth_manager_passwords.json.generated"
        assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
        assert "login admin, password from AIRFLOW_ADMIN_PASSWORD" in log.read_text(errors="replace")
        assert ADMIN_PASSWORD not in log.read_text(errors="replace")

        # A second deployment on the same port says so and exits instead of half-starting.
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "include.deployment", "up"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, env=_env(tmp_path, port, var="second"))
        assert second.returncode == 1
        assert f"Port {port} on 127.0.0.1 is in use" in second.stderr
        assert time.monotonic() - t0 < 30
        assert not (tmp_path / "second" / "state.json").exists()

        # A second deployment on another port starts cleanly beside the first: its log servers take
        # free ports (the first holds Airflow's 8793 and 8794), and it says "Starting" until its
        # scheduler's first heartbeat, then that it is healthy.
        other = free_port()
        second_log = tmp_path / "second-up.log"
        with open(second_log, "wb") as out:
            beside = subprocess.Popen([sys.executable, "-m", "include.deployment", "up"],
                                      env=_env(tmp_path, other, var="second"), cwd=ROOT, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait(lambda: "Scheduler healthy" in second_log.read_text(errors="replace"), 240,
                  "the second deployment's scheduler", beside, second_log)
            text = second_log.read_text(errors="replace")
            assert text.index("Starting: the scheduler is preloading") < text.index("Scheduler healthy")
            ports = {k: v for k, v in json.loads((tmp_path / "second" / "state.json").read_text())["env"].items()
                     if "LOG_SERVER_PORT" in k}
            firsts = {k: v for k, v in state["env"].items() if "LOG_SERVER_PORT" in k}
            assert len(ports) == 2 and not set(ports.values()) & set(firsts.values()), (ports, firsts)
            assert "address already in use" not in text.lower()
        finally:
            os.killpg(beside.pid, signal.SIGTERM)
            beside.wait(120)
        assert beside.returncode == 0 and not (tmp_path / "second" / "state.json").exists()

        config = client.Configuration(host=f"http://127.0.0.1:{port}", access_token=_token(port))
        with client.ApiClient(config) as api:
            dags, backfills, dag_runs = client.DAGApi(api), client.BackfillApi(api), client.DagRunApi(api)
            _wait(lambda: dags.get_dag(DAG_ID).dag_id == DAG_ID, 180, "the DAG to be parsed", up, log)
            dags.patch_dag(DAG_ID, client.DAGPatchBody(is_paused=False))
            # The example consumer of promotions, paused on creation: a team turns it on.
            for consumer in ("publish_signals", "rollback_model"):
                _wait(lambda c=consumer: dags.get_dag(c).dag_id == c, 180, f"{consumer} to be parsed", up, log)
                assert dags.get_dag(consumer).is_paused
                dags.patch_dag(consumer, client.DAGPatchBody(is_paused=False))
            created = backfills.create_backfill(client.BackfillPostBody(
                dag_id=DAG_ID, from_date="2023-06-04T00:00:00Z", to_date="2023-06-18T00:00:00Z",
                max_active_runs=1, dag_run_conf=CONF))
            assert created.dag_id == DAG_ID

            def backfill_runs() -> list[tuple[str, str, object]]:
                runs = dag_runs.get_dag_runs(DAG_ID, run_type=["backfill"], limit=50).dag_runs
                return sorted((r.logical_date, getattr(r.state, "value", r.state), r) for r in runs)

            _wait(lambda: len(backfill_runs()) == 3 and all(s in ("success", "failed") for _, s, _ in backfill_runs()),
                  1200, "the three backfill runs", up, log)
            runs = [r for _, _, r in backfill_runs()]
            assert [s for _, s, _ in backfill_runs()] == ["success"] * 3, [(r.dag_run_id, r.state) for r in runs]
            assert [r.data_interval_start.date().isoformat() for r in runs] == [
                "2023-06-04", "2023-06-11", "2023-06-18"]
            # The scheduler wrote each run's decision as its note (plugins/run_notes.py).
            for r in runs:
                assert (r.note or "").startswith("Weekly retrain, 1 market(s): 1 promoted, 0 kept"), (
                    r.dag_run_id, r.note)
                assert "/model-registry/versions/" in r.note, r.note
            # Airflow runs one backfill per DAG: the scheduler closes this one shortly after its last run.
            _wait(lambda: backfills.get_backfill(created.id).completed_at is not None, 120,
                  "the backfill to be closed", up, log)

        # make backfill's command, from a "second terminal", against the same deployment.
        cli_env = {**env, "AIRFLOW__API__PORT": str(port)}
        done = subprocess.run([sys.executable, "-m", "include.deployment", "backfill", "2023-06-25", "2023-06-25",
                               "--conf", json.dumps(CONF)], cwd=ROOT, env=cli_env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 run(s), 2023-06-25 to 2023-06-25" in done.stdout
        assert "finished: 1 succeeded, 0 failed" in done.stdout

        # The loop. Monitoring sees a volume shift in the days after production's training data
        # (2023-07-02) and, on Thursday 07-06, updates retrain_request; the deployment's scheduler
        # queues weekly_retrain for it, which retrains on data up to 07-06 and promotes.
        src = tmp_path / "shifted"
        src.mkdir()
        for name in ("btcusdt_perp_1h.csv.gz", "btcusdt_funding_8h.csv.gz", "btcusdt_perp_open_interest_usd_1d.csv.gz"):
            frame = pd.read_csv(ROOT / "data" / "binance" / name)
            if name.endswith("perp_1h.csv.gz"):
                frame.loc[frame["timestamp"] >= "2023-07-02T00:00:00Z", "volume"] *= 10
            with gzip.open(src / name, "wt") as fh:
                frame.to_csv(fh, index=False)
        from include.registry import ModelRegistry

        registry = ModelRegistry(state["env"]["MODEL_REGISTRY_DIR"], state["env"]["MARKET_DB_URL"])
        champion = registry.production(BTC).version
        assert registry.metadata(champion)["data_window"]["trained_until"] == "2023-07-02T00:00:00+00:00"
        monitored = subprocess.run(
            ["airflow", "dags", "test", "monitor_production", "2023-07-06",
             "-c", json.dumps({"models": [BTC], "source_dir": str(src)})],
            cwd=ROOT, env={**cli_env, **state["env"]}, capture_output=True, text=True, timeout=600)
        assert monitored.returncode == 0, monitored.stdout[-3000:] + monitored.stderr[-3000:]
        assert "RETRAIN_REQUESTED" in monitored.stdout + monitored.stderr
        with client.ApiClient(config) as api:
            dag_runs = client.DagRunApi(api)

            def asset_runs() -> list:
                return dag_runs.get_dag_runs(DAG_ID, run_type=["asset_triggered"], limit=10).dag_runs

            _wait(lambda: len(asset_runs()) == 1, 120, "weekly_retrain to be queued by retrain_request", up, log)
            assert getattr(asset_runs()[0].run_type, "value", asset_runs()[0].run_type) == "asset_triggered"
            _wait(lambda: getattr(asset_runs()[0].state, "value", asset_runs()[0].state) in ("success", "failed"),
                  600, "the requested retrain to finish", up, log)
            retrain = asset_runs()[0]
            assert getattr(retrain.state, "value", retrain.state) == "success", retrain.note
            first = (retrain.note or "").splitlines()[0] if retrain.note else ""
            assert first == ("Weekly retrain, 1 market(s): 1 promoted, 0 kept, 0 skipped, 0 failed. Requested by "
                             "monitor_production, on data up to 2023-07-06 (reasons on the Monitoring page)."), \
                retrain.note
        # The request's interval: from the last Sunday to the request's day. Its earlier folds are
        # the scheduled weeks, whose fits the Sunday runs left in the cache.
        requested = json.loads((tmp_path / "deploy" / "runs" / "weekly_retrain" / BTC / "20230702T0000_20230706T0000"
                                / "summary.json").read_text())
        assert requested["window"]["source"] == "as_of_date"
        gate = requested["gate"]
        assert gate["passed"] and gate["request"]["by"] == "monitor_production" and "PSI" in gate["request"]["reason"]
        checks = {c["name"]: c for c in gate["checks"]}
        assert checks["champion_out_of_sample"]["passed"] and gate["champion"] == champion
        promoted = registry.production(BTC).version
        assert promoted == gate["candidate"] and promoted.startswith("v20230706T0000-")
        member = json.loads((tmp_path / "deploy" / "runs" / "weekly_retrain" / BTC / "20230702T0000_20230706T0000"
                             / "candidates" / "lightgbm" / "metadata.json").read_text())
        assert member["cache"]["hits"] >= 2, member["cache"]  # the scheduled weeks' folds

        # The next Sunday run decides normally: it compares with the mid-week champion on the rows
        # after that champion's training data.
        done = subprocess.run([sys.executable, "-m", "include.deployment", "backfill", "2023-07-02", "2023-07-02",
                               "--conf", json.dumps(CONF)], cwd=ROOT, env=cli_env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0 and "finished: 1 succeeded, 0 failed" in done.stdout, done.stdout + done.stderr
        sunday = json.loads((tmp_path / "deploy" / "runs" / "weekly_retrain" / BTC / "20230702T0000_20230709T0000"
                             / "summary.json").read_text())["gate"]
        checks = {c["name"]: c for c in sunday["checks"]}
        assert sunday["champion"] == promoted and sunday["request"] is None
        assert checks["champion_out_of_sample"]["passed"] and checks["champion_out_of_sample"]["detail"].startswith(
            "68 out-of-fold rows where both models are out of sample, from 2023-07-06T00:00:00+00:00")
        assert sunday["champion_evaluation"]["metrics"]["n"] == 68 and sunday["passed"]
        assert registry.production(BTC).version == sunday["candidate"]
        history = [e for e in registry.ledger(BTC) if e["event"] == "promote"]
        assert [e["to"] for e in history[-2:]] == [promoted, sunday["candidate"]]

        # Every promotion updated model://<model>/production: the consumer DAG ran on the events
        # and published the probabilities of the version the event names.
        signals = Path(state["env"]["RUN_ARTIFACTS_DIR"]) / "signals" / f"{BTC}.csv"

        def published(event: str, version: str) -> bool:
            if not signals.is_file():
                return False
            rows = pd.read_csv(signals)
            return bool(((rows["event"] == event) & (rows["event_version"] == version)
                         & (rows["version"] == version)).any())

        _wait(lambda: published("promote", sunday["candidate"]), 300, "publish_signals to run on the promotion",
              up, log)
        # A rollback through rollback_model updates the asset too, with the restored version.
        with client.ApiClient(config) as api:
            client.DagRunApi(api).trigger_dag_run("rollback_model", client.TriggerDAGRunPostBody(
                logical_date=None, conf={"model": BTC, "reason": "asset event test"}))
        _wait(lambda: registry.production(BTC).version == promoted, 300, "rollback_model to restore", up, log)
        _wait(lambda: published("rollback", promoted), 300, "publish_signals to run on the rollback", up, log)
        registry.dispose()

        _approvals(tmp_path, port, config, up, log)

        pids = [state["supervisor_pid"], *state["components"].values()]
        tree = [p.pid for pid in state["components"].values() if psutil.pid_exists(pid)
                for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]]
    finally:
        # Ctrl-C in the terminal: SIGINT to the supervisor.
        if up.poll() is None:
            os.kill(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            subprocess.run([sys.executable, "-m", "include.deployment", "down"], cwd=ROOT, env=env, timeout=120)
            pytest.fail(f"the deployment did not stop on SIGINT:\n{log.read_text()[-4000:]}")
    assert up.returncode == 0, log.read_text()[-3000:]
    assert "Stopped" in log.read_text()
    left = [pid for pid in set(pids + tree) if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert left == [], [psutil.Process(p).cmdline() for p in left]
    assert not state_path.exists()
    assert not (tmp_path / "deploy" / "postgres" / "postmaster.pid").exists()
    from include.deployment.ports import port_holder

    assert port_holder(port) is None  # a new api-server could bind the port again
