"""Ports of a local deployment: the api-server's, Airflow's log servers', and its health."""

from __future__ import annotations

import json
import os
import socket
import time

from include.errors import ConfigError


def api_port() -> int:
    """Port of the api-server (UI, REST and Execution API): ``AIRFLOW__API__PORT``, default 8080."""
    raw = os.environ.get("AIRFLOW__API__PORT", "8080")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"AIRFLOW__API__PORT={raw!r}: expected a port number") from None


def port_holder(port: int) -> str | None:
    """``None`` when 127.0.0.1:``port`` is free, else a description of what listens there."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline()[:3])})"
    except (psutil.Error, OSError):
        pass
    return "another process"


#: Airflow's log servers (``[logging] worker_log_server_port``, ``trigger_log_server_port``): the
#: scheduler's LocalExecutor workers and the triggerer serve task logs to the api-server there.
LOG_SERVER_PORTS = {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": 8793,
                    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": 8794}


def log_server_ports() -> dict[str, str]:
    """Ports for Airflow's log servers: the ones set in the environment, else Airflow's defaults
    when free, else free ports (a second deployment on the machine holds the defaults).

    Raises:
        ConfigError: a port set in the environment is not a number or is in use.
    """
    out = {}
    for key, default in LOG_SERVER_PORTS.items():
        raw = os.environ.get(key)
        try:
            port = int(raw) if raw else default
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected a port number") from None
        holder = port_holder(port)
        if holder and raw:
            raise ConfigError(f"{key}={port} is in use by {holder}: choose another port")
        while holder or str(port) in out.values():
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            holder = None
        out[key] = str(port)
    return out


def wait_until_healthy(port: int, timeout: float = 180.0, say=print) -> bool:
    """Poll the api-server's health endpoint until the scheduler reports healthy; say "starting"
    meanwhile (the scheduler preloads the pipeline first, about 30 s), instead of "unhealthy".

    Returns:
        Whether the scheduler became healthy within ``timeout`` seconds.
    """
    import urllib.request

    deadline, said = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as resp:
                health = json.loads(resp.read())
            if (health.get("scheduler") or {}).get("status") == "healthy":
                say("Scheduler healthy: the deployment is ready.", flush=True)
                return True
        except (OSError, ValueError):
            pass
        if not said:
            say("Starting: the scheduler is preloading the pipeline (about 30 s) ...", flush=True)
            said = True
        time.sleep(2)
    return False
