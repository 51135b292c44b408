"""Static checks of docker-compose.yaml (no Docker engine runs here)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_official_airflow3_topology():
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker"} == set(SERVICES)
    commands = {name: s.get("command") for name, s in SERVICES.items()}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-worker"] == "celery worker"


def test_every_service_has_an_image_and_long_running_ones_a_healthcheck():
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name
        if name != "airflow-init":
            assert "healthcheck" in svc, name


def test_dependencies_name_existing_services():
    for name, svc in SERVICES.items():
        for dep in svc.get("depends_on", {}):
            assert dep in SERVICES, (name, dep)


def test_airflow_services_use_the_project_image_and_mount_the_code():
    for name, svc in SERVICES.items():
        if not name.startswith("airflow-"):
            continue
        assert svc["build"] == "." and svc["env_file"] == ".env"
        mounts = {v.split(":")[1] for v in svc["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include", "/opt/airflow/models"} <= mounts
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        for var in ("MARKET_DB_URL", "MODEL_REGISTRY_DIR", "RUN_ARTIFACTS_DIR", "MARKET_DATA_DIR"):
            assert var in env, (name, var)


def test_settings_read_by_the_code_are_the_ones_compose_sets():
    code = (ROOT / "include" / "config.py").read_text()
    read = set(re.findall(r'"((?:MARKET|MODEL|RUN)_[A-Z_]+)"', code))
    assert read == {"MARKET_DATA_DIR", "MARKET_DB_URL", "MODEL_REGISTRY_DIR", "RUN_ARTIFACTS_DIR"}
    assert read <= set(SERVICES["airflow-scheduler"]["environment"])


def test_secrets_come_from_an_uncommitted_env_file():
    assert (ROOT / ".env.example").is_file()
    example = (ROOT / ".env.example").read_text()
    for var in re.findall(r"(?<!\$)\$\{([A-Z_]+)", (ROOT / "docker-compose.yaml").read_text()):
        assert var in example, var
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert "requirements.txt" in (ROOT / "Dockerfile").read_text()
