"""Fault injection: a task killed (SIGKILL) at each step from registration to retention, then
retried as Airflow retries it; a cleared task, a zombie try beside its retry, and files planted
in the artifact store; on a local registry with SQLite and on an object store with PostgreSQL.

The base registry holds a production version (week ending 2023-12-10, promoted) and a version
that never served (2023-12-17, kept). Each case copies it, runs the week ending 2023-12-24
(permissive gate: it promotes) in task processes (``tests/fault_child.py``): each batched task
runs for the market and a passenger market through :func:`include.tasks.each_market`, as the
DAG's ``market`` group does, so a retry reads what its earlier try recorded. After every case:
``python -m include.registry verify`` passes, production serves a verified version whose smoke
test passed and is recorded, the ledger holds exactly the entries the finished steps imply,
retention removed the version that never served and left nothing half-done, and no planted file
was unpickled. The outcomes are written to ``var/artifacts/fault_injection.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.builders import PERMISSIVE_GATE
from tests.conftest import PG_ADMIN_URL, ROOT, create_pg_database, drop_pg_database
from tests.fault_child import TASKS

BTC = "binance-btcusdt-perp-1h-h4"
SMALL = dict(train_window_days=120, cv_folds=3, models=("lightgbm",))
RUN_ID = "scheduled__2023-12-24T00:00:00+00:00"
BACKENDS = ("local", "store")

#: (fault point, the task it kills)
KILLS = [
    ("register: staged, not published", "assemble_ensemble"),
    ("register: published, row not committed", "assemble_ensemble"),
    ("register: committed, challenger not moved", "assemble_ensemble"),
    ("challenger moved, trading not simulated", "assemble_ensemble"),
    ("gate: decided, record not written", "quality_gate"),
    ("promote: alias moved, not smoke-tested", "promote_or_keep"),
    ("promote: smoke test predicted, not returned", "promote_or_keep"),
    ("retention: rows marked, files not removed", "apply_retention"),
    ("retention: folder set aside, not deleted", "apply_retention"),
]
#: Cases beyond a kill and its retry (see each test).
OTHERS = ["killed in the smoke test; the retry's smoke test fails", "zombie try beside its retry",
          "clear after a failed run", "planted outcome file", "planted cache copy"]
OUTCOMES: list[dict[str, str]] = []


class Backend:
    """Where a case's registry, run folders and database live: ``local`` (folders and SQLite) or
    ``store`` (moto's S3 server and PostgreSQL)."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind, self.tmp = kind, tmp
        self.s3 = None
        self.databases: list[str] = []

    def __enter__(self) -> Backend:
        if self.kind == "store":
            from tests.cluster import S3Server

            self.s3 = S3Server(self.tmp / "moto.log").__enter__()
            os.environ["AIRFLOW_CONN_ARTIFACT_STORE"] = self.s3.connection()
        return self

    def __exit__(self, *exc) -> None:
        for url in self.databases:
            drop_pg_database(url)
        if self.s3 is not None:
            os.environ.pop("AIRFLOW_CONN_ARTIFACT_STORE", None)
            self.s3.__exit__(*exc)

    def settings(self, name: str, database: str | None = None):
        """Settings of the case or base called ``name``."""
        from include.config import Settings
        from include.storage import location

        if self.kind == "local":
            return Settings.in_folder(self.tmp / name)
        if database is None:
            database = create_pg_database("fault")
            self.databases.append(database)
        base = f"s3://{self.s3.bucket}/{name}"
        return Settings(data_dir=ROOT / "data" / "binance", market_db_url=database,
                        registry_dir=location(f"{base}/models"), runs_dir=location(f"{base}/runs"))

    def copy(self, base, name: str):
        """A copy of the base's registry, run folders and database, as settings named ``name``."""
        if self.kind == "local":
            shutil.copytree(self.tmp / "base", self.tmp / name)
            return self.settings(name)
        import boto3

        client = boto3.client("s3", endpoint_url=self.s3.endpoint, aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket, Prefix="base/"):
            for obj in page.get("Contents", []):
                client.copy_object(Bucket=self.s3.bucket, Key=f"{name}/{obj['Key'][len('base/'):]}",
                                   CopySource={"Bucket": self.s3.bucket, "Key": obj["Key"]})
        source = sa.engine.make_url(base.market_db_url).database
        copy = f"{source}_{name.replace('-', '_')}"[:63]
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": source})
            conn.execute(sa.text(f'CREATE DATABASE "{copy}" TEMPLATE "{source}"'))
        admin.dispose()
        url = sa.engine.make_url(PG_ADMIN_URL).set(database=copy).render_as_string(hide_password=False)
        self.databases.append(url)
        return self.settings(name, url)

    def env(self, settings) -> dict[str, str]:
        """The environment of a process that works on ``settings``' registry."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEL_REGISTRY_DIR": str(settings.registry_dir),
               "RUN_ARTIFACTS_DIR": str(settings.runs_dir), "MARKET_DB_URL": settings.market_db_url}
        return env


@pytest.fixture(scope="module", params=BACKENDS)
def base(request, tmp_path_factory):
    """The registry before the week ending 2023-12-24, and that week trained up to its members."""
    from include.config import RunConfig
    from include.pipeline import features, ingest, labels, run_once, train, validate
    from include.registry import ModelRegistry
    from include.run_folder import staged_run_dir
    from include.windows import RunWindow, resolve_window

    with Backend(request.param, tmp_path_factory.mktemp(f"fault-{request.param}")) as backend:
        settings = backend.settings("base")
        promoted = run_once(RunConfig(as_of_date="2023-12-10", **SMALL, **PERMISSIVE_GATE), settings,
                            dag_id="weekly_retrain", run_id="scheduled__2023-12-10")
        kept = run_once(RunConfig(as_of_date="2023-12-17", **SMALL, gate_max_log_loss_ratio=0.5,
                                  gate_demote=False), settings,
                        dag_id="weekly_retrain", run_id="scheduled__2023-12-17")
        assert promoted["action"]["action"] == "promote" and kept["action"]["action"] == "keep"
        cfg = RunConfig(as_of_date="2023-12-24", **SMALL, **PERMISSIVE_GATE)
        window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
        with staged_run_dir(settings, "weekly_retrain", cfg.model_name, window) as out:
            window = RunWindow(**ingest(cfg, window, settings, out)["window"])
        with staged_run_dir(settings, "weekly_retrain", cfg.model_name, window) as out:
            validate(cfg, window, settings, out)
            features(cfg, window, settings, out)
            labels(cfg, window, out)
            trained = [train(cfg, window, out, family, settings) for family in cfg.models]
        registry = ModelRegistry.from_settings(settings)
        ledger = len(registry.ledger(BTC))
        registry.dispose()
        yield {"backend": backend, "settings": settings, "cfg": cfg, "window": window, "trained": trained,
               "champion": promoted["assembled"]["version"], "never_served": kept["assembled"]["version"],
               "ledger": ledger}


def _case(base, name: str) -> tuple:
    backend = base["backend"]
    settings = backend.copy(base["settings"], name)
    case = backend.tmp / f"{name}-specs"
    case.mkdir()
    spec = {"settings": {k: str(v) for k, v in asdict(settings).items() if v is not None},
            "config": base["cfg"].to_dict(), "window": asdict(base["window"]), "trained": base["trained"],
            "run_id": RUN_ID, "keep_last": 1, "xcom": str(case / "xcom.json")}
    return settings, case, spec


def _child(base, settings, case: Path, spec: dict, tasks: list[str], fault: str | None = None,
           **extra) -> subprocess.CompletedProcess:
    path = case / f"spec-{len(list(case.glob('spec-*.json')))}.json"
    path.write_text(json.dumps({**spec, "tasks": tasks, "fault": fault, **extra}, default=str))
    env = base["backend"].env(settings)
    if "scratch" in extra:
        env["ARTIFACT_SCRATCH_DIR"] = extra["scratch"]
    return subprocess.run([sys.executable, "-m", "tests.fault_child", str(path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def _xcom(case: Path) -> dict:
    return json.loads((case / "xcom.json").read_text()) if (case / "xcom.json").is_file() else {}


def _check(base, settings, *, production: str, run_events: list[tuple], marker: Path | None = None) -> None:
    """What every case must leave: a verifiable registry, production serving ``production`` with
    a passed smoke test on record, the run's ledger entries exactly ``run_events``, retention
    done, and no planted file unpickled."""
    from include.registry import ModelRegistry
    from include.serving import ProductionModel

    verify = subprocess.run([sys.executable, "-m", "include.registry", "verify"], cwd=ROOT,
                            env=base["backend"].env(settings), capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    registry = ModelRegistry.from_settings(settings)
    try:
        pointer = registry.production(BTC)
        assert pointer is not None and pointer.version == production
        served = ProductionModel(registry, settings.market_db_url, BTC, max_age_hours=None).predict(
            datetime(2023, 12, 24, tzinfo=UTC))
        assert served.version == production
        with registry.engine.connect() as conn:
            from include.registry.schema import smoke_test_table

            smoke_runs = set(conn.execute(sa.select(smoke_test_table.c.run_id).where(
                smoke_test_table.c.model == BTC, smoke_test_table.c.version == production)).scalars())
        assert smoke_runs, f"no passed smoke test of {production} is recorded"
        events = [(e["alias"], e["event"], e["to"]) for e in registry.history() if e["run_id"] == RUN_ID]
        assert events == run_events, events
        # Retention: the version that never served is gone, files and all; nothing half-done is left.
        assert base["never_served"] not in registry.versions()
        folders = sorted(p.name for p in (settings.registry_dir / "versions" / BTC).iterdir())
        assert folders == sorted(registry.versions(BTC)), folders
    finally:
        registry.dispose()
    if marker is not None:
        assert not marker.exists(), "a planted file was unpickled"


def _record(base, case: str, task: str, what: str, production: str, ledger: str) -> None:
    OUTCOMES.append({"backend": base["backend"].kind, "case": case, "task": task, "what happened": what,
                     "verify": "ok", "production": f"{production[:12]}… (smoke test passed)", "run ledger": ledger,
                     "planted file unpickled": "no"})


def _name(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:40]


@pytest.mark.parametrize(("fault", "killed_task"), KILLS, ids=[c[0] for c in KILLS])
def test_a_task_killed_and_retried_leaves_a_verifiable_registry(base, fault, killed_task):
    from include.registry import CHALLENGER, PRODUCTION

    settings, case, spec = _case(base, _name(fault))
    killed = _child(base, settings, case, spec, list(TASKS), fault)
    assert killed.returncode == -signal.SIGKILL, (fault, killed.returncode, killed.stderr[-3000:])
    done = _xcom(case)
    assert [t for t in TASKS if t not in done][0] == killed_task
    # Airflow retries the killed task (try 2) in a new process; the tasks after it run as usual.
    retried = _child(base, settings, case, spec, list(TASKS[TASKS.index(killed_task):]), tries={killed_task: 2})
    assert retried.returncode == 0, retried.stderr[-3000:]
    xcom = _xcom(case)
    candidate = xcom["assemble_ensemble"]["ensemble"]["version"]
    assert xcom["promote_or_keep"]["action"] == "promote", xcom["quality_gate"]["summary"]
    assert xcom["apply_retention"]["removed"] in ([base["never_served"]], [])
    _check(base, settings, production=candidate,
           run_events=[(CHALLENGER, "candidate", candidate), (PRODUCTION, "promote", candidate)])
    _record(base, fault, killed_task, "SIGKILL, retried", candidate, "candidate, promote")


def test_a_promotion_killed_in_its_smoke_test_is_smoke_tested_by_the_retry_and_rolled_back(base):
    """The retry finds production at the candidate without a recorded smoke test; its smoke test
    fails, so production goes back to the champion (whose own smoke test passed when promoted)."""
    from include.registry import CHALLENGER, PRODUCTION

    settings, case, spec = _case(base, "smoke-fails")
    killed = _child(base, settings, case, spec, list(TASKS), "promote: alias moved, not smoke-tested")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    retried = _child(base, settings, case, spec, ["promote_or_keep"], "smoke test fails",
                     tries={"promote_or_keep": 2})
    assert retried.returncode != 0 and "smoke test failed" in retried.stderr, retried.stderr[-3000:]
    assert "production rolled back to" in retried.stderr
    candidate = _xcom(case)["assemble_ensemble"]["ensemble"]["version"]
    champion = base["champion"]
    assert _child(base, settings, case, spec, ["apply_retention"]).returncode == 0
    _check(base, settings, production=champion, run_events=[
        (CHALLENGER, "candidate", candidate), (PRODUCTION, "promote", candidate),
        (PRODUCTION, "auto_rollback", champion)])
    _record(base, OTHERS[0], "promote_or_keep", "SIGKILL in the smoke test; retry smoke-tested, failed, rolled back",
            champion, "candidate, promote, auto_rollback")


def test_a_zombie_try_beside_its_retry_changes_nothing(base):
    """Try 1 of promote_or_keep lost its heartbeat (here: killed after the move, then resumed
    once try 2 has finished); it is fenced off and writes nothing."""
    from include.registry import CHALLENGER, PRODUCTION

    settings, case, spec = _case(base, "zombie")
    killed = _child(base, settings, case, spec, list(TASKS), "promote: alias moved, not smoke-tested")
    assert killed.returncode == -signal.SIGKILL
    retried = _child(base, settings, case, spec, ["promote_or_keep", "apply_retention"], tries={"promote_or_keep": 2})
    assert retried.returncode == 0, retried.stderr[-3000:]
    zombie = _child(base, settings, case, spec, ["promote_or_keep"], "smoke test fails")
    assert zombie.returncode != 0 and "SupersededTryError" in zombie.stderr, zombie.stderr[-3000:]
    assert "smoke test failed" not in zombie.stderr  # it stopped before running its step
    candidate = _xcom(case)["assemble_ensemble"]["ensemble"]["version"]
    _check(base, settings, production=candidate,
           run_events=[(CHALLENGER, "candidate", candidate), (PRODUCTION, "promote", candidate)])
    _record(base, OTHERS[1], "promote_or_keep", "try 1 resumed after try 2: fenced off", candidate,
            "candidate, promote")


def test_a_task_cleared_after_a_failed_run_runs_its_markets_again(base):
    """The gate's try 1 decided the market, then the passenger failed (a retriable error) and the
    run was marked failed; a person clears the task later (Airflow raises max_tries): the gate
    decides again, it does not reuse the earlier try sequence's decision."""
    from include.batch_outcomes import outcome_table
    from include.registry import CHALLENGER, PRODUCTION

    settings, case, spec = _case(base, "cleared")
    first = _child(base, settings, case, spec, list(TASKS), None, passenger_error="ConnectionResetError")
    assert first.returncode != 0 and "BatchRetryError" in first.stderr, first.stderr[-3000:]
    engine = sa.create_engine(settings.market_db_url)
    with engine.connect() as conn:
        kept = conn.execute(sa.select(outcome_table.c.outcome).where(
            outcome_table.c.task_id == "market.assemble_ensemble", outcome_table.c.model == BTC)).scalar()
    assert kept is not None  # the market's outcome, kept for a retry of the same sequence
    cleared = _child(base, settings, case, spec, list(TASKS), tries={"assemble_ensemble": 2}, max_tries=2)
    assert cleared.returncode == 0, cleared.stderr[-3000:]
    assert f"ran assemble_ensemble for {BTC} in try 2" in cleared.stdout
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outcome_table)).scalar() == 0
    engine.dispose()
    candidate = _xcom(case)["assemble_ensemble"]["ensemble"]["version"]
    _check(base, settings, production=candidate,
           run_events=[(CHALLENGER, "candidate", candidate), (PRODUCTION, "promote", candidate)])
    _record(base, OTHERS[2], "assemble_ensemble", "try 1 failed (retriable), run failed, cleared: ran again",
            candidate, "candidate, promote")


def test_a_planted_outcome_file_is_never_read(base):
    """Someone who can write the artifact store plants the retry file that a retry once read: a
    training result naming a malicious pickle and its sha256, and a passing gate result. The
    retry runs its steps; the pickle is never loaded."""
    from include.registry import CHALLENGER, PRODUCTION

    settings, case, spec = _case(base, "planted-outcome")
    marker = case / "unpickled.marker"
    killed = _child(base, settings, case, spec, list(TASKS), "challenger moved, trading not simulated")
    assert killed.returncode == -signal.SIGKILL
    planted = _child(base, settings, case, spec, [], "plant outcome files", marker=str(marker))
    assert planted.returncode == 0, planted.stderr[-3000:]
    retried = _child(base, settings, case, spec, list(TASKS[TASKS.index("assemble_ensemble"):]),
                     tries={"assemble_ensemble": 2})
    assert retried.returncode == 0, retried.stderr[-3000:]
    for task in ("assemble_ensemble", "quality_gate", "promote_or_keep"):
        assert f"ran {task} for {BTC}" in retried.stdout, retried.stdout
    candidate = _xcom(case)["assemble_ensemble"]["ensemble"]["version"]
    assert candidate != "planted"
    _check(base, settings, production=candidate, marker=marker,
           run_events=[(CHALLENGER, "candidate", candidate), (PRODUCTION, "promote", candidate)])
    _record(base, OTHERS[3], "assemble_ensemble", "planted .batches files ignored; steps ran", candidate,
            "candidate, promote")


def test_a_planted_cache_copy_is_never_read(base):
    """A worker's cached copies of the run folder's objects are replaced by a malicious pickle
    before the retry: the copies are checked against the store and fetched again."""
    from include.registry import CHALLENGER, PRODUCTION

    if base["backend"].kind == "local":
        pytest.skip("a local run folder has no worker cache")
    settings, case, spec = _case(base, "planted-cache")
    marker = case / "unpickled.marker"
    scratch = case / "scratch"
    killed = _child(base, settings, case, spec, list(TASKS), "challenger moved, trading not simulated",
                    scratch=str(scratch))
    assert killed.returncode == -signal.SIGKILL
    planted = _child(base, settings, case, spec, [], "plant cache copies", marker=str(marker), scratch=str(scratch))
    assert planted.returncode == 0 and "planted" in planted.stdout, planted.stderr[-3000:]
    retried = _child(base, settings, case, spec, list(TASKS[TASKS.index("assemble_ensemble"):]),
                     tries={"assemble_ensemble": 2}, scratch=str(scratch))
    assert retried.returncode == 0, retried.stderr[-3000:]
    candidate = _xcom(case)["assemble_ensemble"]["ensemble"]["version"]
    _check(base, settings, production=candidate, marker=marker,
           run_events=[(CHALLENGER, "candidate", candidate), (PRODUCTION, "promote", candidate)])
    _record(base, OTHERS[4], "assemble_ensemble", "poisoned cache copies refused, fetched again", candidate,
            "candidate, promote")


@pytest.fixture(scope="module", autouse=True)
def fault_injection_table():
    """After the module's cases, their table in ``var/artifacts/fault_injection.md`` (for the closing
    note), with how many of the cases ran; a report, not a test, so it never passes or fails."""
    yield
    if not OUTCOMES:
        return
    expected = len(BACKENDS) * (len(KILLS) + len(OTHERS)) - 1  # no worker cache on the local back end
    out = ROOT / "var" / "artifacts" / "fault_injection.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = list(OUTCOMES[0])
    lines = [f"{len(OUTCOMES)} of {expected} cases ran.", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(o[c]) for c in cols) + " |" for o in OUTCOMES]
    out.write_text("\n".join(lines) + "\n")
