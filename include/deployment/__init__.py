"""Local deployment: Airflow on PostgreSQL with the LocalExecutor, run as supervised local processes.

``make airflow`` (``python -m include.deployment up``) starts what docker-compose starts, without
Docker: a PostgreSQL server, then ``airflow api-server``, ``scheduler``, ``dag-processor`` and
``triggerer``. PostgreSQL is the one named by ``DEPLOY_DATABASE_URL`` (a server URL such as
``postgresql+psycopg2://postgres@127.0.0.1:5432/``) or else an embedded server from the
``pgserver`` wheel (PostgreSQL binaries from PyPI) with its data in ``var/deployment/postgres``.
On that server, database ``airflow`` holds Airflow's metadata and database ``market`` the market
store and the model registry; registry artifacts and run folders go under ``var/deployment/``.

The supervisor writes ``var/deployment/state.json`` (its pid, the components' pids, the port,
the environment) and stops everything it started, each component with its process group and
every descendant (LocalExecutor workers, task processes), on Ctrl-C, on SIGTERM (``make
airflow-stop``, ``python -m include.deployment down``) or when one component dies. It refuses
to start on a busy port or while another deployment of this checkout runs.

``python -m include.deployment backfill FROM TO [--conf JSON]`` (``make backfill``) creates a
backfill on the running deployment and follows it; ``env`` prints the deployment's environment
for running ``airflow`` or ``python -m include.registry`` against it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from include.config import PROJECT_ROOT, Settings
from include.deployment.ports import (
    api_port,
    log_server_ports,
    port_holder,
    wait_until_healthy,
)
from include.deployment.postgres import ensure_database, postgres_server, stop_embedded_postgres
from include.errors import ConfigError
from include.paths import input_roots
from include.resources import pool_commands
from include.universe import universe_path

#: Components started, in order (docker-compose services of the same names).
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: Seconds a component gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 30.0
#: Environment variable holding the password of the deployment's ``admin`` user (``.env.example``).
ADMIN_PASSWORD_ENV = "AIRFLOW_ADMIN_PASSWORD"


def var_dir() -> Path:
    """Root of the deployment's state: ``DEPLOY_VAR_DIR``, default ``var/deployment``."""
    return Path(os.environ.get("DEPLOY_VAR_DIR") or PROJECT_ROOT / "var" / "deployment").resolve()


def state_file() -> Path:
    """Where a running deployment records its pids, port and environment."""
    return var_dir() / "state.json"


def alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists (and is not a zombie)."""
    import psutil

    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def read_state() -> dict[str, Any] | None:
    """The running deployment's state, or ``None`` when none runs (a stale file is ignored)."""
    path = state_file()
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if alive(state.get("supervisor_pid")) else None


def masked(url: str) -> str:
    """A database URL with its password replaced by ``***`` (SQLAlchemy's ``hide_password``),
    for terminals, logs and error messages."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: say nothing of it
        return "<unparseable database URL>"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600), atomically: the file is
    created with that mode, so its content is never readable by others, not even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def admin_login(home: Path) -> str:
    """Set the password of the ``admin`` user of Airflow's simple auth manager; say how to log in.

    The password comes from ``AIRFLOW_ADMIN_PASSWORD``; without it, a password already in the
    password file is kept, except the well-known ``admin``, and otherwise one is generated
    (:func:`secrets.token_urlsafe`). The file (``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE``,
    default ``<home>/simple_auth_manager_passwords.json.generated``, Airflow's own) is written
    readable by its owner only, other users' entries kept.

    Args:
        home: the deployment's ``AIRFLOW_HOME``.

    Returns:
        The line ``up`` prints about the login: it shows a password only when it was just
        generated (nobody could know it otherwise), once.
    """
    path = Path(os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
                or home / "simple_auth_manager_passwords.json.generated")
    try:
        passwords = json.loads(path.read_text() or "{}") if path.is_file() else {}
    except ValueError:  # a damaged file: Airflow could not read it either
        passwords = {}
    given, kept = os.environ.get(ADMIN_PASSWORD_ENV), passwords.get("admin")
    if given:
        password, line = given, f"login admin, password from {ADMIN_PASSWORD_ENV}"
    elif kept and kept != "admin":
        password, line = kept, f"login admin, password in {path}"
    else:
        password = secrets.token_urlsafe(16)
        line = f"login admin / {password}  (generated, shown once; kept in {path}; or set {ADMIN_PASSWORD_ENV})"
    write_private(path, json.dumps({**passwords, "admin": password}))
    return line


# -- database ----------------------------------------------------------------------------------
def deployment_env(root: Path, metadata_url: str, market_url: str, port: int) -> dict[str, str]:
    """Environment of every component and CLI call of the deployment: Airflow's settings, and
    everything the tasks read (market store, registry, run folder, data directory, universe file,
    the folders run parameters may name), so ``python -m include.deployment env`` gives a second
    shell exactly what the components run with.

    The JWT secret is made once and kept in ``root/jwt_secret``: the api-server and the task
    processes must share it.
    """
    secret_file = root / "jwt_secret"
    if not secret_file.is_file():
        write_private(secret_file, secrets.token_hex(32))
    os.chmod(secret_file, 0o600)  # also one made before files were written private
    home = Path(os.environ.get("AIRFLOW_HOME") or PROJECT_ROOT / "var" / "airflow").resolve()
    return {
        "PYTHONPATH": str(PROJECT_ROOT),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "include.deployment.executor.PreloadingLocalExecutor",
        # The scheduler's pause when a loop found nothing to do (Airflow's default: 1 s): each
        # step of a run waits for the next loop, and a weekly run has about a dozen steps in a row.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": os.environ.get(
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "0.25"),
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": os.environ.get("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "10"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text().strip(),
        "GX_ANALYTICS_ENABLED": "false",
        "MARKET_DB_URL": market_url,
        "MODEL_REGISTRY_DIR": os.environ.get("MODEL_REGISTRY_DIR") or str(root / "models"),
        "RUN_ARTIFACTS_DIR": os.environ.get("RUN_ARTIFACTS_DIR") or str(root / "runs"),
        # What the tasks read, resolved once: a second shell that sources `env` sees the same.
        "MARKET_DATA_DIR": str(Settings.from_env().data_dir),
        "MARKET_UNIVERSE_FILE": str(universe_path()),
        "MARKET_INPUT_ROOTS": os.pathsep.join(map(str, input_roots())),
    }


def process_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment with the deployment's on top, and this venv's ``bin`` first on
    ``PATH`` (components and tasks start ``airflow`` as a subprocess)."""
    return {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


# -- supervisor --------------------------------------------------------------------------------
def _stop_tree(pids: list[int], grace: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM each pid's process group and all its descendants, SIGKILL what is left after
    ``grace`` seconds; returns the pids that were running."""
    import psutil

    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                procs[proc.pid] = proc
        except psutil.Error:
            continue
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, left = psutil.wait_procs(list(procs.values()), timeout=grace)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5)
    return sorted(procs)


def _pump(stream, log_path: Path, prefix: str) -> None:
    """Copy a component's output to its log file and, prefixed, to this terminal."""
    with open(log_path, "ab") as log:
        for line in iter(stream.readline, b""):
            log.write(line)
            log.flush()
            sys.stdout.write(f"{prefix} | {line.decode(errors='replace')}")
            sys.stdout.flush()


def up() -> int:
    """Start the deployment and supervise it until Ctrl-C, SIGTERM or a component's death.

    Returns:
        The exit status: 0 after a requested stop, 1 when it could not start or a component died.
    """
    root = var_dir()
    root.mkdir(parents=True, exist_ok=True)
    port = api_port()
    running = read_state()
    if running:
        print(f"A deployment of this checkout is already running (supervisor pid {running['supervisor_pid']}, "
              f"http://127.0.0.1:{running['port']}). Stop it with `make airflow-stop`.", file=sys.stderr)
        return 1
    holder = port_holder(port)
    if holder:
        print(f"Port {port} on 127.0.0.1 is in use by {holder}; the api-server cannot bind it. Stop that "
              f"process (`make airflow-stop` if it is an earlier deployment) or choose another port with "
              f"AIRFLOW__API__PORT=<port> make airflow.", file=sys.stderr)
        return 1
    server_url, embedded = postgres_server(root)
    try:
        log_ports = log_server_ports()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        if embedded is not None:
            stop_embedded_postgres(root)
        return 1
    env = {**deployment_env(root, ensure_database(server_url, "airflow"), ensure_database(server_url, "market"), port),
           **log_ports}
    full_env = process_env(env)
    home = Path(env["AIRFLOW_HOME"])
    (home / "logs").mkdir(parents=True, exist_ok=True)
    login = admin_login(home)
    for args in (["db", "migrate"], *pool_commands()):
        done = subprocess.run(["airflow", *args], env=full_env, capture_output=True, text=True, cwd=PROJECT_ROOT)
        if done.returncode != 0:
            print(f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}", file=sys.stderr)
            if embedded is not None:
                stop_embedded_postgres(root)
            return 1

    procs: dict[str, subprocess.Popen] = {}
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for name in COMPONENTS:
        procs[name] = subprocess.Popen(["airflow", name], env=full_env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=_pump, args=(procs[name].stdout, home / "logs" / f"{name}.log", name),
                         daemon=True).start()
    state = {"supervisor_pid": os.getpid(), "port": port, "components": {n: p.pid for n, p in procs.items()},
             "embedded_postgres": embedded is not None, "env": env}
    write_private(state_file(), json.dumps(state, indent=2))  # holds the whole environment: secrets
    print(f"\nAirflow on PostgreSQL ({'embedded, ' + str(root / 'postgres') if embedded else masked(server_url)}), "
          f"LocalExecutor.\n  UI: http://127.0.0.1:{port}  ({login})\n"
          f"  Logs: {home / 'logs'}\n  Backfill from another terminal: make backfill FROM=2023-11-05 TO=2023-12-24\n"
          f"  Stop: Ctrl-C here, or make airflow-stop\n", flush=True)
    threading.Thread(target=wait_until_healthy, args=(port,), daemon=True).start()
    status, died = 0, None
    while not stop.wait(1.0):
        died = next((n for n, p in procs.items() if p.poll() is not None), None)
        if died:
            status = 1
            break
    if died:
        print(f"\n{died} exited with status {procs[died].returncode} (log: {home / 'logs' / (died + '.log')}); "
              f"stopping the deployment.", file=sys.stderr, flush=True)
    else:
        print("\nStopping the deployment ...", flush=True)
    stopped = _stop_tree([p.pid for p in procs.values()])
    if embedded is not None:
        stop_embedded_postgres(root)
    state_file().unlink(missing_ok=True)
    print(f"Stopped {len(stopped)} process(es){' and the embedded PostgreSQL' if embedded else ''}.", flush=True)
    return status


def down(timeout: float = STOP_GRACE_S + 30) -> int:
    """Stop the running deployment (``make airflow-stop``); 0 when nothing is left running."""
    path = state_file()
    if not path.is_file():
        print("No deployment of this checkout is running.")
        return 0
    state = json.loads(path.read_text())
    supervisor = state.get("supervisor_pid")
    if alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.5)
    # A supervisor that was killed outright leaves its components: stop them here.
    left = [pid for pid in state.get("components", {}).values() if alive(pid)]
    if left:
        _stop_tree(left)
    if state.get("embedded_postgres"):
        stop_embedded_postgres(var_dir())
    path.unlink(missing_ok=True)
    print(f"Stopped the deployment on port {state.get('port')}.")
    return 0


def require_running() -> dict[str, Any]:
    """The running deployment's state.

    Raises:
        ConfigError: no deployment of this checkout is running.
    """
    state = read_state()
    if state is None:
        raise ConfigError("no deployment of this checkout is running: start it with `make airflow` in another "
                          "terminal first")
    return state


def airflow_cli(state: dict[str, Any], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``airflow <args>`` with the running deployment's environment.

    Raises:
        ConfigError: the command failed (its output is in the message).
    """
    env = process_env(state["env"])
    done = subprocess.run(["airflow", *args], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
    if check and done.returncode != 0:
        raise ConfigError(f"airflow {' '.join(args)} failed ({done.returncode}):\n"
                          f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done


def _metadata(state: dict[str, Any], sql: str, **params: Any) -> list[Any]:
    import sqlalchemy as sa

    engine = sa.create_engine(state["env"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def backfill(dag_id: str, start: str, end: str, conf: str | None, max_active_runs: int,
             reprocess: str, follow: bool) -> int:
    """Create a backfill of ``dag_id`` for logical dates ``start``..``end`` (inclusive) on the running
    deployment, unpausing the DAG (backfill runs of a paused DAG never start), and follow it.

    Returns:
        0 when every run succeeded (or ``follow`` is off), 1 otherwise.

    Raises:
        ConfigError: no deployment runs, ``conf`` is not a JSON object, or Airflow refused the backfill.
    """
    state = require_running()
    if conf:
        try:
            if not isinstance(json.loads(conf), dict):
                raise ValueError
        except ValueError:
            raise ConfigError(f"CONF={conf!r}: expected a JSON object, e.g. CONF='{{\"cv_folds\": 4}}'") from None
    paused = _metadata(state, "SELECT is_paused FROM dag WHERE dag_id = :d", d=dag_id)
    if not paused:
        raise ConfigError(f"DAG {dag_id!r} is not known to the deployment yet (the dag-processor parses dags/ "
                          f"every few seconds after start); try again in a moment")
    if paused[0][0]:
        airflow_cli(state, "dags", "unpause", dag_id)
        print(f"Unpaused {dag_id}: backfill runs only start on an unpaused DAG (its weekly schedule is now on too).")
    before = _metadata(state, "SELECT coalesce(max(id), 0) FROM backfill WHERE dag_id = :d", d=dag_id)[0][0]
    args = ["backfill", "create", "--dag-id", dag_id, "--from-date", start, "--to-date", end,
            "--max-active-runs", str(max_active_runs), "--reprocess-behavior", reprocess]
    active = _metadata(state, "SELECT id FROM backfill WHERE dag_id = :d AND completed_at IS NULL", d=dag_id)
    if active:
        raise ConfigError(f"backfill {active[0][0]} of {dag_id} is still running, and Airflow runs one backfill per "
                          f"DAG at a time: wait for it (the scheduler closes it a few seconds after its last run) "
                          f"or cancel it in the UI or with PUT /api/v2/backfills/{active[0][0]}/cancel")
    airflow_cli(state, *args, *(["--dag-run-conf", conf] if conf else []))
    created = _metadata(state, "SELECT id FROM backfill WHERE dag_id = :d AND id > :b ORDER BY id", d=dag_id, b=before)
    if not created:
        print("Airflow created no backfill: no logical date in that range needs a run "
              "(see --reprocess-behavior).", file=sys.stderr)
        return 1
    backfill_id = created[-1][0]
    runs = _metadata(state, "SELECT count(*) FROM dag_run WHERE backfill_id = :b", b=backfill_id)[0][0]
    print(f"Backfill {backfill_id} of {dag_id}: {runs} run(s), {start} to {end}. "
          f"Watch it at http://127.0.0.1:{state['port']}/dags/{dag_id}/runs")
    if not follow:
        return 0
    seen: set[str] = set()
    started = time.monotonic()
    try:
        while True:
            rows = _metadata(state, "SELECT run_id, state, start_date, end_date FROM dag_run WHERE backfill_id = :b "
                                    "ORDER BY logical_date", b=backfill_id)
            for run_id, run_state, t0, t1 in rows:
                if run_state in ("success", "failed") and run_id not in seen:
                    seen.add(run_id)
                    took = f" in {(t1 - t0).total_seconds():.0f} s" if t0 and t1 else ""
                    print(f"  {run_id}: {run_state}{took}  ({len(seen)}/{len(rows)}, "
                          f"{time.monotonic() - started:.0f} s elapsed)", flush=True)
            if rows and len(seen) == len(rows):
                failed = [r for r in rows if r[1] != "success"]
                print(f"Backfill {backfill_id} finished: {len(rows) - len(failed)} succeeded, {len(failed)} failed.")
                return 1 if failed else 0
            if not alive(state["supervisor_pid"]):
                print("The deployment stopped before the backfill finished.", file=sys.stderr)
                return 1
            time.sleep(3)
    except KeyboardInterrupt:
        print(f"\nStopped following; backfill {backfill_id} goes on in the deployment.")
        return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: ``up``, ``down``, ``backfill``, ``env``, ``status``."""
    parser = argparse.ArgumentParser(prog="python -m include.deployment", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the deployment and supervise it (make airflow)")
    sub.add_parser("down", help="stop the running deployment (make airflow-stop)")
    sub.add_parser("status", help="say whether a deployment runs, and where")
    sub.add_parser("env", help="print `export` lines of the running deployment's environment")
    bf = sub.add_parser("backfill", help="create a backfill on the running deployment and follow it (make backfill)")
    bf.add_argument("start", help="first logical date, e.g. 2023-11-05 (the interval start)")
    bf.add_argument("end", help="last logical date, inclusive")
    bf.add_argument("--conf", default=None, help="run conf JSON for every run of the backfill")
    bf.add_argument("--dag-id", default="weekly_retrain")
    bf.add_argument("--max-active-runs", type=int, default=1)
    bf.add_argument("--reprocess-behavior", default="none", choices=["none", "failed", "completed"])
    bf.add_argument("--no-follow", action="store_true", help="return once the backfill is created")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up()
        if args.command == "down":
            return down()
        if args.command == "backfill":
            return backfill(args.dag_id, args.start, args.end, args.conf, args.max_active_runs,
                            args.reprocess_behavior, not args.no_follow)
        state = require_running()
        if args.command == "env":
            import shlex

            print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in state["env"].items()))
        else:
            print(f"Running: supervisor pid {state['supervisor_pid']}, http://127.0.0.1:{state['port']}, "
                  f"components {state['components']}")
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

