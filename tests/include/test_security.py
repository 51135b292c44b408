"""Secrets stay private (masked database URLs, owner-only secret files); the deployment's environment is whole."""

from __future__ import annotations

import json
import os
import stat

import pytest

from include.errors import ConfigError


def test_a_password_in_deploy_database_url_never_reaches_an_error_or_the_terminal(monkeypatch, tmp_path):
    from include.deployment import masked
    from include.deployment.postgres import postgres_server

    monkeypatch.setenv("DEPLOY_DATABASE_URL", "mysql://ops:s3cret-pw@db.internal:3306/x")
    with pytest.raises(ConfigError) as err:
        postgres_server(tmp_path)
    assert "s3cret-pw" not in str(err.value) and "***" in str(err.value)
    assert masked("postgresql+psycopg2://ops:s3cret-pw@db:5432/airflow") == "postgresql+psycopg2://ops:***@db:5432/airflow"
    assert "s3cret" not in masked("not a url s3cret")


def test_the_jwt_secret_and_the_state_file_are_readable_by_their_owner_only(tmp_path, monkeypatch):
    from include.deployment import deployment_env, write_private

    (tmp_path / "jwt_secret").write_text("old-secret")  # one made world-readable before
    (tmp_path / "jwt_secret").chmod(0o644)
    env = deployment_env(tmp_path, "sqlite://", "sqlite://", 8080)
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "old-secret"
    assert stat.S_IMODE((tmp_path / "jwt_secret").stat().st_mode) == 0o600
    fresh = tmp_path / "fresh"
    deployment_env(fresh, "sqlite://", "sqlite://", 8080)
    assert stat.S_IMODE((fresh / "jwt_secret").stat().st_mode) == 0o600
    write_private(tmp_path / "state.json", json.dumps({"env": env}))
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "state.json").read_text())["env"] == env


def test_the_deployment_environment_holds_everything_the_tasks_read(tmp_path, monkeypatch):
    """A second shell that sources `python -m include.deployment env` sees what the components see."""
    from include.deployment import deployment_env

    universe = tmp_path / "u.yaml"
    universe.write_text("markets: [{symbol: BTCUSDT, market_type: perp, timeframe: 1h}]")
    monkeypatch.setenv("MARKET_UNIVERSE_FILE", str(universe))
    monkeypatch.setenv("MARKET_DATA_DIR", str(tmp_path))
    env = deployment_env(tmp_path / "deploy", "sqlite://", "sqlite:///market", 8080)
    assert env["MARKET_UNIVERSE_FILE"] == str(universe.resolve()) and env["MARKET_DATA_DIR"] == str(tmp_path.resolve())
    assert env["MARKET_DB_URL"] == "sqlite:///market" and env["MARKET_INPUT_ROOTS"] == os.environ["MARKET_INPUT_ROOTS"]
    assert {"MODEL_REGISTRY_DIR", "RUN_ARTIFACTS_DIR"} <= set(env)


def test_a_second_deployment_gets_free_log_server_ports_when_the_defaults_are_taken(monkeypatch):
    import socket

    from include.deployment.ports import LOG_SERVER_PORTS, log_server_ports
    from include.errors import ConfigError

    for key in LOG_SERVER_PORTS:
        monkeypatch.delenv(key, raising=False)
    held = []
    try:
        for port in LOG_SERVER_PORTS.values():  # what a first deployment's scheduler and triggerer hold
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # already taken on this machine: the same situation
                sock.close()
                continue
            sock.listen()
            held.append(sock)
        ports = log_server_ports()
        assert set(ports) == set(LOG_SERVER_PORTS)
        assert all(int(p) not in LOG_SERVER_PORTS.values() for p in ports.values()), ports
        assert len(set(ports.values())) == 2
        # A port chosen by hand that is taken is an error that names it, not a silent change.
        monkeypatch.setenv("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "8793")
        with pytest.raises(ConfigError, match="AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=8793 is in use"):
            log_server_ports()
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://ops:s3cret@proxy:8443/api?symbol=BTCUSDT", "https://ops:***@proxy:8443/api?symbol=BTCUSDT"),
        ("https://tok3n@proxy/", "https://***@proxy/"),
        ("https://proxy/v1?apiKey=s3cret&limit=5", "https://proxy/v1?apiKey=***&limit=5"),
        ("https://h/x?X-Amz-Signature=s3cret&api_key=s3cret&passphrase=s3cret&token=s3cret#top",
         "https://h/x?X-Amz-Signature=***&api_key=***&passphrase=***&token=***#top"),
        ("http://127.0.0.1:8080/fapi/v1/klines?symbol=BTCUSDT", "http://127.0.0.1:8080/fapi/v1/klines?symbol=BTCUSDT"),
    ],
)
def test_a_url_s_password_and_secret_query_values_are_masked(url, masked):
    from include.redaction import mask_url, mask_urls

    assert mask_url(url) == masked
    assert mask_urls(f"binance GET {url} 502 Bad Gateway, source='{url}'") == (
        f"binance GET {masked} 502 Bad Gateway, source='{masked}'")


def test_an_alert_never_quotes_a_url_s_credentials():
    from include.notify import failure_message

    error = RuntimeError("could not reach http://ops:s3cret@proxy:8443/api/v3/klines?signature=s1gned&limit=5")
    message = failure_message({"exception": error})
    assert "s3cret" not in message and "s1gned" not in message
    assert "http://ops:***@proxy:8443/api/v3/klines?signature=***&limit=5" in message


def test_the_deployment_s_admin_password_is_private_not_admin_and_taken_from_the_environment(tmp_path, monkeypatch):
    from include.deployment import admin_login

    monkeypatch.delenv("AIRFLOW_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", raising=False)
    path = tmp_path / "simple_auth_manager_passwords.json.generated"  # where Airflow's simple auth manager reads
    path.write_text('{"admin": "admin", "viewer": "v13wer"}')  # a world-readable file with the well-known password
    path.chmod(0o644)
    line = admin_login(tmp_path)
    password = json.loads(path.read_text())["admin"]
    assert password != "admin" and len(password) >= 16 and password in line  # generated, and shown
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["viewer"] == "v13wer"
    again = admin_login(tmp_path)
    assert json.loads(path.read_text())["admin"] == password and password not in again  # shown once
    monkeypatch.setenv("AIRFLOW_ADMIN_PASSWORD", "fr0m-the-env")
    line = admin_login(tmp_path)
    assert json.loads(path.read_text())["admin"] == "fr0m-the-env" and "fr0m-the-env" not in line
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh"
    monkeypatch.delenv("AIRFLOW_ADMIN_PASSWORD")
    admin_login(fresh)
    written = fresh / "simple_auth_manager_passwords.json.generated"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600 and json.loads(written.read_text())["admin"] != "admin"
