"""Test environment: an isolated Airflow home, market store, registry and run folder per session.

Airflow reads its configuration when first imported, so the environment is set here, before any
test module imports it. The metadata database is migrated once per session.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_TMP = Path(tempfile.mkdtemp(prefix="retrain-tests-"))

os.environ.update({
    "AIRFLOW_HOME": str(_TMP / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_TMP / 'airflow' / 'airflow.db'}",
    "MARKET_DB_URL": f"sqlite:///{_TMP / 'market.sqlite'}",
    "MODEL_REGISTRY_DIR": str(_TMP / "models"),
    "RUN_ARTIFACTS_DIR": str(_TMP / "runs"),
    "GX_ANALYTICS_ENABLED": "false",
    # Tests write their market files and universe files under the system's temporary folder.
    "MARKET_INPUT_ROOTS": os.pathsep.join([str(ROOT / "data"), tempfile.gettempdir()]),
})
(_TMP / "airflow").mkdir(parents=True, exist_ok=True)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA_DIR = ROOT / "data" / "binance"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The bundled real Binance data."""
    return DATA_DIR


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate the Airflow metadata database once per session."""
    from airflow.utils import db

    db.initdb()


@pytest.fixture(scope="session")
def btc_slice():
    """Real BTCUSDT perpetual candles, funding and open interest, 2023-06-01 .. 2023-09-01."""
    from include.data.sources import FileSource

    src = FileSource(DATA_DIR)
    start, end = datetime(2023, 6, 1, tzinfo=UTC), datetime(2023, 9, 1, tzinfo=UTC)
    return {
        "ohlcv": src.fetch_ohlcv("BTCUSDT", "perp", "1h", start, end),
        "funding": src.fetch_funding_rates("BTCUSDT", start, end),
        "open_interest": src.fetch_open_interest("BTCUSDT", start, end),
        "start": start,
        "end": end,
    }


PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def create_pg_database(prefix: str) -> str:
    """Create a fresh PostgreSQL database on the test server; returns its SQLAlchemy URL."""
    import uuid

    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required by this test (bash .ci/run starts it): {exc}")
    finally:
        admin.dispose()
    return sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    """Drop a database made by :func:`create_pg_database`, closing its sessions first."""
    import sqlalchemy as sa

    name = sa.engine.make_url(url).database
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3-compatible object store (moto's server, :class:`tests.cluster.S3Server`), one per module."""
    from tests.cluster import S3Server

    with S3Server(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        yield server


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    url = create_pg_database("retrain_test")
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory, data_dir):
    """A real registry: pipeline runs (short window) on the bundled data, two registered models.

    Runs the same ``include.pipeline`` functions the DAG's tasks call: BTCUSDT for the weeks
    ending 2023-12-24 and 2023-12-31 and ETHUSDT for the week ending 2023-12-31, with a
    permissive gate so that each promotes. Returns the ``Settings`` (own SQLite store, registry
    and run folders), the two BTC versions oldest first, and the ETH version.
    """
    from include.config import RunConfig, Settings
    from include.pipeline import run_once
    from tests.builders import PERMISSIVE_GATE

    root = tmp_path_factory.mktemp("trained-registry")
    settings = Settings.in_folder(root, data_dir)
    versions = []
    for symbol, day in (("BTCUSDT", "2023-12-24"), ("BTCUSDT", "2023-12-31"), ("ETHUSDT", "2023-12-31")):
        cfg = RunConfig(symbol=symbol, as_of_date=day, train_window_days=120, cv_folds=3, **PERMISSIVE_GATE)
        run = run_once(cfg, settings, dag_id="weekly_retrain", run_id=f"fixture__{symbol}__{day}")
        assert run["decision"]["passed"], run["decision"]["summary"]
        versions.append(run["assembled"]["version"])
    return {"settings": settings, "versions": versions[:2], "eth_version": versions[2]}


@pytest.fixture
def reg(tmp_path):
    """An empty model registry: SQLite records and artifacts under the test's own folder."""
    from include.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models", f"sqlite:///{tmp_path / 'registry.sqlite'}")
    yield registry
    registry.dispose()


#: Test modules of whole runs: the pipeline over several weeks, Airflow (``dag.test``, the CLI,
#: the local deployment, a Celery cluster), the api-server in a browser. Their tests are marked
#: ``integration``, as is any test that uses :func:`trained_registry`; every other test is
#: ``unit`` unless it is marked itself. ``pytest -m unit`` runs in about two minutes on 2 cores;
#: ``make test`` runs both.
INTEGRATION_MODULES = frozenset({
    "tests/dags/test_deployment.py", "tests/dags/test_distributed.py", "tests/dags/test_weekly_retrain_e2e.py",
    "tests/dags/test_tune_hyperparameters.py", "tests/plugins/test_model_registry_plugin.py",
    "tests/include/test_demo.py", "tests/include/test_extensions.py", "tests/include/test_fault_injection.py",
    "tests/include/test_incremental.py", "tests/include/test_monitoring.py", "tests/include/test_rerun.py",
    "tests/include/test_serving.py", "tests/include/test_spot.py", "tests/include/test_storage.py",
    "tests/include/test_track_record.py", "tests/include/test_tuning.py", "tests/include/test_equivalence.py",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test ``unit`` or ``integration`` (see :data:`INTEGRATION_MODULES`)."""
    for item in items:
        if item.get_closest_marker("unit") or item.get_closest_marker("integration"):
            continue
        module = item.nodeid.split("::")[0]
        whole = module in INTEGRATION_MODULES or "trained_registry" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.integration if whole else pytest.mark.unit)
