"""PostgreSQL of the local deployment: the server named by ``DEPLOY_DATABASE_URL`` or an embedded
one from the ``pgserver`` wheel (PostgreSQL binaries from PyPI), its databases, and a stop that
makes sure the postmaster is gone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import warnings
from pathlib import Path
from typing import Any

from include.errors import ConfigError


def postgres_server(root: Path) -> tuple[str, Any]:
    """Base SQLAlchemy URL (no database) of the deployment's PostgreSQL, and the embedded server.

    ``DEPLOY_DATABASE_URL`` names an existing server (the second item is then ``None``);
    otherwise an embedded ``pgserver`` is started on ``root/postgres`` (Unix socket only).

    Raises:
        ConfigError: ``DEPLOY_DATABASE_URL`` is not a PostgreSQL URL.
    """
    import sqlalchemy as sa

    given = os.environ.get("DEPLOY_DATABASE_URL")
    if given:
        url = sa.engine.make_url(given)
        if not url.drivername.startswith("postgresql"):
            raise ConfigError(f"DEPLOY_DATABASE_URL={url.render_as_string(hide_password=True)!r}: "
                              "expected a PostgreSQL URL")
        return url.set(drivername="postgresql+psycopg2", database=None).render_as_string(hide_password=False), None
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset; pgserver then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(root / "postgres", cleanup_mode=None)
    url = sa.engine.make_url(server.get_uri()).set(drivername="postgresql+psycopg2", database=None)
    return url.render_as_string(hide_password=False), server


def stop_embedded_postgres(root: Path, timeout: float = 60.0) -> None:
    """Stop the embedded PostgreSQL of ``root`` if it runs, and make sure it has stopped.

    ``pg_ctl stop -m fast`` first (clients disconnected, shutdown checkpoint). If the postmaster
    is still alive after that, it gets SIGQUIT (immediate shutdown: crash recovery at the next
    start, no data lost); a ``postmaster.pid`` whose process is gone is stale and removed.
    """
    data = root / "postgres"
    pid_file = data / "postmaster.pid"
    if not pid_file.is_file():
        return
    from pgserver._commands import pg_ctl

    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-t", str(int(timeout)), "-m", "fast", "stop"], pgdata=data, user=user)
    except subprocess.CalledProcessError as exc:
        print(f"pg_ctl stop of {data} failed (exit {exc.returncode})", flush=True)
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    import psutil

    if psutil.pid_exists(pid) and "postgres" in psutil.Process(pid).name():
        print(f"PostgreSQL (pid {pid}) did not stop on pg_ctl: immediate shutdown", flush=True)
        with contextlib.suppress(psutil.NoSuchProcess):
            os.kill(pid, signal.SIGQUIT)
            psutil.Process(pid).wait(timeout=timeout)
    if not psutil.pid_exists(pid):
        pid_file.unlink(missing_ok=True)


def ensure_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server if missing; return its SQLAlchemy URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(sa.engine.make_url(server_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)


# -- environment -------------------------------------------------------------------------------
