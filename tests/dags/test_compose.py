"""Static checks of docker-compose.yaml (no Docker engine runs here)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_official_airflow3_topology():
    assert {"postgres", "redis", "minio", "minio-init", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker"} == set(SERVICES)
    commands = {name: s.get("command") for name, s in SERVICES.items()}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-worker"] == "celery worker"


def test_every_service_has_an_image_and_long_running_ones_a_healthcheck():
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name
        if not name.endswith("-init"):
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
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        for var in ("AIRFLOW_CONN_MARKET_DB", "MODEL_REGISTRY_DIR", "RUN_ARTIFACTS_DIR", "MARKET_DATA_DIR"):
            assert var in env, (name, var)


def _env_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "include").rglob("*.py"):
        names |= set(re.findall(r'os\.environ(?:\.get\(|\[)"([A-Z_]+)"', path.read_text()))
        names |= set(re.findall(r'_?env_(?:path|int)\("([A-Z_]+)"', path.read_text()))
        names |= set(re.findall(r'os\.environ\.get\("([A-Z_]+)", ', path.read_text()))
    return names


def test_settings_read_by_the_code_are_the_ones_compose_sets():
    read = _env_read_by_the_code()
    assert {"MARKET_DATA_DIR", "MARKET_DB_URL", "MARKET_DB_CONN_ID", "MODEL_REGISTRY_DIR",
            "RUN_ARTIFACTS_DIR", "EXCHANGE_API_URL"} <= read
    env = SERVICES["airflow-scheduler"]["environment"]
    # Optional settings with working defaults need not be set; the rest must be.
    optional = {"MARKET_DB_URL", "MARKET_DB_CONN_ID", "EXCHANGE_API_URL", "ALERT_SLACK_CONN_ID",
                "ALERT_DISCORD_CONN_ID", "MODEL_REGISTRY_KEEP_LAST", "MODEL_MAX_AGE_HOURS", "MODEL_MAX_DATA_LAG_BARS",
                "MODEL_STALE_POLICY", "CODE_VERSION", "TASK_CPUS", "TRAINING_SLOTS", "TRAINING_THREADS",
                "ARTIFACT_SCRATCH_DIR", "ARTIFACT_CACHE_MAX_MB", "MARKET_GROUP_INSTANCES"}
    # Settings of the local launcher (include/deployment/, `make airflow`), which compose replaces.
    launcher = {"DEPLOY_DATABASE_URL", "DEPLOY_VAR_DIR", "AIRFLOW_HOME", "AIRFLOW__API__PORT",
                "AIRFLOW__CORE__PARALLELISM", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "AIRFLOW_ADMIN_PASSWORD",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"}
    assert read - optional - launcher - {"GX_ANALYTICS_ENABLED"} <= set(env)
    # Every non-Airflow variable compose sets is one the code reads (catches misspellings).
    ours = {k for k in env if not k.startswith(("AIRFLOW", "_", "DUMB_"))}
    assert ours <= read | {"GX_ANALYTICS_ENABLED"}, ours - read


def test_market_store_is_the_market_db_connection_on_the_compose_postgres():
    env = SERVICES["airflow-scheduler"]["environment"]
    url = env["AIRFLOW_CONN_MARKET_DB"]
    assert url.startswith("postgresql://") and "@postgres:5432/market" in url
    init_sql = (ROOT / ".ci" / "create-market-db.sql").read_text()
    assert re.search(r"CREATE DATABASE\s+market\b", init_sql, re.I)
    mounted = SERVICES["postgres"]["volumes"]
    assert any(v.startswith("./.ci/create-market-db.sql:/docker-entrypoint-initdb.d/") for v in mounted)


def test_healthchecks_back_every_service_healthy_dependency_and_ports_match():
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in SERVICES[dep], (name, dep)
    api = SERVICES["airflow-apiserver"]
    assert "8080:8080" in api["ports"] and "localhost:8080" in " ".join(api["healthcheck"]["test"])
    sched = SERVICES["airflow-scheduler"]
    assert "8974" in " ".join(sched["healthcheck"]["test"])
    assert sched["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"
    # Tasks reach the Execution API of the api-server service, by its compose name.
    assert "airflow-apiserver:8080/execution" in sched["environment"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]


def test_executor_broker_and_result_backend_point_at_compose_services():
    env = SERVICES["airflow-worker"]["environment"]
    assert (env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
            and "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"])
    assert "@postgres/airflow" in env["AIRFLOW__CELERY__RESULT_BACKEND"]
    assert "@postgres/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    reqs = (ROOT / "requirements.txt").read_text()
    assert "apache-airflow-providers-celery" in reqs and "celery[redis]" in reqs


def test_secrets_come_from_an_uncommitted_env_file():
    assert (ROOT / ".env.example").is_file()
    example = (ROOT / ".env.example").read_text()
    for var in re.findall(r"(?<!\$)\$\{([A-Z_]+)", (ROOT / "docker-compose.yaml").read_text()):
        assert var in example, var
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert "requirements.txt" in (ROOT / "Dockerfile").read_text()


def test_artifacts_live_in_the_object_store_so_workers_can_scale_out():
    """Workers share only PostgreSQL, Redis and MinIO: no artifact folder is a shared volume."""
    import json

    env = SERVICES["airflow-worker"]["environment"]
    for var in ("RUN_ARTIFACTS_DIR", "MODEL_REGISTRY_DIR"):
        assert env[var].startswith("s3://artifacts/"), var
    conn = json.loads(env["AIRFLOW_CONN_ARTIFACT_STORE"])
    assert conn["conn_type"] == "aws" and conn["extra"]["endpoint_url"] == "http://minio:9000"
    assert env["ARTIFACT_STORE_CONN_ID"] == "artifact_store"
    assert "store/artifacts" in " ".join(SERVICES["minio-init"]["command"])
    assert SERVICES["airflow-worker"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    mounts = {v.split(":")[1] for v in SERVICES["airflow-worker"]["volumes"]}
    assert not mounts & {"/opt/airflow/models", "/opt/airflow/var/runs"}
    reqs = (ROOT / "requirements.txt").read_text()
    assert "apache-airflow-providers-amazon" in reqs and "s3fs" in reqs


def test_init_creates_both_pools_the_dag_uses():
    from include.resources import MARKET_DATA_POOL, TRAINING_POOL

    init = " ".join(SERVICES["airflow-init"]["command"])
    for pool in (TRAINING_POOL, MARKET_DATA_POOL):
        assert f"airflow pools set {pool} " in init, pool
    dag = (ROOT / "dags" / "weekly_retrain.py").read_text()
    assert "pool=MARKET_DATA_POOL" in dag and "pool=TRAINING_POOL" in dag


def test_helm_values_for_the_official_chart():
    """helm-values.yaml: CeleryExecutor with KEDA, artifacts in the object store, both pools and the
    market group's instances sized for the workers at full scale, each task's core share matching
    the worker's cores."""
    values = yaml.safe_load((ROOT / "helm-values.yaml").read_text())
    assert values["executor"] == "CeleryExecutor" and values["workers"]["keda"]["enabled"] is True
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["RUN_ARTIFACTS_DIR"].startswith("s3://") and env["MODEL_REGISTRY_DIR"].startswith("s3://")
    assert set(env) - {"GX_ANALYTICS_ENABLED"} <= _env_read_by_the_code()
    secrets = {s["envName"] for s in values["secret"]}
    assert {"AIRFLOW_CONN_MARKET_DB", "AIRFLOW_CONN_ARTIFACT_STORE"} <= secrets
    assert values["postgresql"]["enabled"] is False and values["data"]["metadataSecretName"]
    concurrency = int(values["config"]["celery"]["worker_concurrency"])
    cpus = int(values["workers"]["resources"]["limits"]["cpu"])
    assert int(env["TASK_CPUS"]) * concurrency == cpus
    migrate = " ".join(values["migrateDatabaseJob"]["args"])
    assert "exec " not in migrate  # the pools are set after the migration, in the same shell
    slots = dict(re.findall(r"airflow pools set (\w+) (\d+)", migrate))
    assert int(slots["training"]) == values["workers"]["keda"]["maxReplicaCount"] * concurrency
    assert int(slots["market_data"]) == int(env["MARKET_DATA_SLOTS"])
    assert int(env["MARKET_GROUP_INSTANCES"]) == 2 * int(slots["training"])
