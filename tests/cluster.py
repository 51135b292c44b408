"""Run the docker-compose topology as local processes: a real Airflow deployment without Docker.

:class:`LocalAirflow` migrates a fresh PostgreSQL metadata database and starts ``airflow
api-server``, ``scheduler``, ``dag-processor`` and, for the CeleryExecutor, ``celery worker``
(Redis broker, PostgreSQL result backend) — the services of ``docker-compose.yaml`` — each as
its own process with its own log file. Used by the distributed tests and ``bench/backfill_run.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalAirflow:
    """An Airflow deployment made of local processes.

    Args:
        home: AIRFLOW_HOME (logs, config) and where component logs go.
        metadata_url: SQLAlchemy URL of an empty database for Airflow's metadata (PostgreSQL;
            SQLite is enough for an api-server alone).
        executor: ``LocalExecutor`` or ``CeleryExecutor``.
        env: extra environment for every component (market store, registry, runs folder …).
        broker_url: Celery broker (Redis) for the CeleryExecutor.
        components: start only these (e.g. ``("api-server",)``); default: all.
        workers: for the CeleryExecutor, one Celery worker per entry (name -> its own
            environment on top of ``env``, e.g. its private ``TMPDIR``); default: one worker.
        worker_concurrency: task slots per Celery worker.
    """

    def __init__(self, home: Path, metadata_url: str, executor: str = "LocalExecutor",
                 env: dict[str, str] | None = None, broker_url: str = "redis://127.0.0.1:6379/7",
                 components: tuple[str, ...] | None = None, workers: dict[str, dict[str, str]] | None = None,
                 worker_concurrency: int = 2) -> None:
        self.home = Path(home)
        self.workers = workers or {"celery-worker": {}}
        self.worker_concurrency = worker_concurrency
        self.home.mkdir(parents=True, exist_ok=True)
        self.metadata_url = metadata_url
        self.executor = executor
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.components = components
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": "4",
            # As in production: every DAG starts paused; a test unpauses the one it drives
            # (wait_for_dag), so that monitor_production's daily run does not join in.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": "local-cluster-test-secret-0123456789abcdef",
            # An admin, and a viewer for the authorization tests (Airflow's read-only role).
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url.replace("+psycopg2", ""),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "GX_ANALYTICS_ENABLED": "false",
            **(env or {}),
        }
        for key in [k for k in self.env if k.startswith("AIRFLOW__CORE__UNIT_TEST")]:
            del self.env[key]

    # -- lifecycle ----------------------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Run one ``airflow`` CLI command against this deployment."""
        result = subprocess.run(["airflow", *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, cwd=ROOT)
        if check and result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def start(self) -> LocalAirflow:
        """Migrate the metadata database and start the components; wait for the API."""
        (self.home / "simple_auth_manager_passwords.json.generated").write_text(
            '{"admin": "admin", "viewer": "viewer"}')
        self.airflow("db", "migrate")
        # The thread budget's and the market data's pools (include/resources.py), as `make airflow` sets them.
        from include.resources import pool_commands

        for command in pool_commands():
            self.airflow(*command)
        components: list[tuple[str, list[str]]] = [
            ("api-server", ["api-server", "--port", str(self.port)]),
            ("scheduler", ["scheduler"]),
            ("dag-processor", ["dag-processor"]),
        ]
        if self.executor == "CeleryExecutor":
            components += [(name, ["celery", "worker", "--concurrency", str(self.worker_concurrency),
                                   "--celery-hostname", f"{name}@%h"]) for name in self.workers]
        if self.components is not None:
            components = [(n, a) for n, a in components if n in self.components]
        for name, args in components:
            log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
            env = {**self.env, **self.workers.get(name, {})} if self.executor == "CeleryExecutor" else self.env
            self.procs[name] = subprocess.Popen(["airflow", *args], env=env, stdout=log,
                                                stderr=subprocess.STDOUT, cwd=ROOT,
                                                start_new_session=True)
        self._wait(lambda: self._api_up(), 120, "api-server to answer")
        return self

    def stop(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL) and its children."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> LocalAirflow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation --------------------------------------------------------------------------
    def _api_up(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _wait(self, predicate, timeout: float, what: str, interval: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"component(s) exited while waiting for {what}: {dead}\n{self.logs()}")
            if predicate():
                return
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def logs(self, tail: int = 2500) -> str:
        """The end of every component's log."""
        out = []
        for name in self.procs:
            text = (self.home / f"{name}.log").read_text(errors="replace")
            out.append(f"--- {name} ---\n{text[-tail:]}")
        return "\n".join(out)

    def query(self, sql: str, **params: Any) -> list[sa.Row]:
        """Rows of a read-only query on the metadata database."""
        engine = sa.create_engine(self.metadata_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text(sql), params))
        finally:
            engine.dispose()

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Until the dag-processor has serialised ``dag_id``; then unpause it."""
        self._wait(lambda: bool(self.query("SELECT 1 FROM serialized_dag WHERE dag_id = :d", d=dag_id)),
                   timeout, f"DAG {dag_id} to be parsed")
        self.airflow("dags", "unpause", dag_id)

    def dag_runs(self, dag_id: str, run_type: str | None = None) -> list[dict[str, Any]]:
        """Runs of ``dag_id`` (run id, type, state, interval, start/end), by logical date."""
        rows = self.query(
            "SELECT run_id, run_type, state, logical_date, data_interval_start, data_interval_end, "
            "start_date, end_date, backfill_id FROM dag_run WHERE dag_id = :d "
            "AND (CAST(:t AS TEXT) IS NULL OR run_type = :t) "
            "ORDER BY logical_date NULLS LAST, run_after", d=dag_id, t=run_type)
        return [dict(r._mapping) for r in rows]

    def wait_for_runs(self, dag_id: str, count: int, timeout: float, run_type: str | None = None,
                      finished: Iterable[str] = ("success", "failed")) -> list[dict[str, Any]]:
        """Until ``count`` runs of ``dag_id`` (of ``run_type``, if given) have finished; returns them."""
        done = set(finished)
        self._wait(lambda: sum(r["state"] in done for r in self.dag_runs(dag_id, run_type)) >= count,
                   timeout, f"{count} finished run(s) of {dag_id}", interval=3.0)
        return self.dag_runs(dag_id, run_type)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """``task_id[map_index]`` -> state for one run."""
        rows = self.query("SELECT task_id, map_index, state FROM task_instance "
                          "WHERE dag_id = :d AND run_id = :r", d=dag_id, r=run_id)
        return {(t if m < 0 else f"{t}[{m}]"): s for t, m, s in rows}


def worker_hostname() -> str:
    """The host name a task instance records (``[core] hostname_callable``): ``WORKER_HOSTNAME``
    when set, so that two workers on one machine are told apart, else the machine's name."""
    return os.environ.get("WORKER_HOSTNAME") or socket.getfqdn()


def conf_json(**params: Any) -> str:
    """A ``--conf`` / ``--dag-run-conf`` JSON string."""
    return json.dumps(params)


def market_deployment_env(root: Path, market_url: str, data_dir: Path) -> dict[str, str]:
    """Environment of a local deployment whose market store is ``market_url`` (via the ``market_db``
    connection), with its registry and run folders under ``root`` and market files in ``data_dir``."""
    return {"MARKET_DB_URL": "",
            "AIRFLOW_CONN_MARKET_DB": sa.engine.make_url(market_url).set(drivername="postgresql")
            .render_as_string(hide_password=False),
            "MODEL_REGISTRY_DIR": str(root / "models"), "RUN_ARTIFACTS_DIR": str(root / "runs"),
            "MARKET_DATA_DIR": str(data_dir)}


class S3Server:
    """A local S3-compatible object store: moto's server mode (``moto[server]``) as a process.

    Args:
        log: the server's log file.
        bucket: a bucket created once the server answers.

    ``env()`` is what a deployment sets to keep its artifacts there: ``RUN_ARTIFACTS_DIR``,
    ``MODEL_REGISTRY_DIR`` and the ``artifact_store`` connection (an ``aws`` connection with the
    server's ``endpoint_url``).
    """

    def __init__(self, log: Path, bucket: str = "artifacts") -> None:
        self.port, self.bucket, self.log = free_port(), bucket, log
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _forget_stores() -> None:
        """Drop the object stores this process attached (Airflow caches one per connection id):
        a store attached for an earlier server would keep that server's endpoint."""
        from airflow.sdk.io import store

        store._STORE_CACHE.clear()

    def __enter__(self) -> S3Server:
        import boto3

        self._forget_stores()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=self.bucket)
                break
            except Exception:  # not listening yet
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the S3 server did not start; see {self.log}") from None
                time.sleep(0.3)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._forget_stores()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def connection(self) -> str:
        """The ``artifact_store`` Airflow connection, as JSON."""
        return json.dumps({"conn_type": "aws", "login": "test", "password": "test",
                           "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}})

    def env(self, prefix: str = "") -> dict[str, str]:
        """Settings that put the run folders and the registry in this store under ``prefix``."""
        base = f"s3://{self.bucket}/{prefix}".rstrip("/")
        return {"AIRFLOW_CONN_ARTIFACT_STORE": self.connection(), "RUN_ARTIFACTS_DIR": f"{base}/runs",
                "MODEL_REGISTRY_DIR": f"{base}/models"}
