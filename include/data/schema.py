"""The market database's schema: the tables the store reads and writes, and their migrations.

Tables (created by the Alembic migrations under ``include/data/migrations``; times are ms since
the epoch, UTC): ``ohlcv``, ``funding_rate``, ``open_interest``, ``ohlcv_quarantine`` (candles
refused at ingestion), ``ohlcv_gap``, ``bar_validation`` (days that passed the expectation
suites, :mod:`include.quality.ledger`) and ``feature_month`` (computed features by month,
:func:`include.feature_store.feature_frame`). The model registry's tables live in the same database
(:mod:`include.registry.schema`). :func:`migrate` brings a database to the latest revision.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.data.sources import OHLCV_COLUMNS
from include.locks import transaction_lock

metadata = sa.MetaData()


def _candle_series_key() -> list[sa.Column]:
    """Primary-key columns naming one candle series (new objects: a column belongs to one table)."""
    return [sa.Column("exchange", sa.String(32), primary_key=True),
            sa.Column("market_type", sa.String(16), primary_key=True),
            sa.Column("symbol", sa.String(32), primary_key=True),
            sa.Column("timeframe", sa.String(8), primary_key=True)]


ohlcv_table = sa.Table(
    "ohlcv",
    metadata,
    *_candle_series_key(),
    sa.Column("ts", sa.BigInteger, primary_key=True, comment="bar open time, ms since epoch UTC"),
    *(sa.Column(c, sa.Float) for c in OHLCV_COLUMNS),
)

funding_table = sa.Table(
    "funding_rate",
    metadata,
    sa.Column("exchange", sa.String(32), primary_key=True),
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True, comment="settlement time, ms since epoch UTC"),
    sa.Column("funding_rate", sa.Float, comment="fraction paid per settlement interval"),
)

open_interest_table = sa.Table(
    "open_interest",
    metadata,
    sa.Column("exchange", sa.String(32), primary_key=True),
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True, comment="UTC day start, ms since epoch"),
    sa.Column("open_interest", sa.Float, comment="USD notional, daily close"),
)

ohlcv_quarantine_table = sa.Table(
    "ohlcv_quarantine",
    metadata,
    *_candle_series_key(),
    sa.Column("ts", sa.BigInteger, primary_key=True, comment="bar open time, ms since epoch UTC"),
    *(sa.Column(c, sa.Float) for c in OHLCV_COLUMNS),
    sa.Column("reason", sa.Text, nullable=False, comment="why the row was refused"),
    sa.Column("source", sa.String(256), nullable=False, comment="source the row came from"),
    sa.Column("recorded_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

ohlcv_gap_table = sa.Table(
    "ohlcv_gap",
    metadata,
    *_candle_series_key(),
    sa.Column("start_ts", sa.BigInteger, primary_key=True,
              comment="open time of the first missing bar, ms since epoch UTC"),
    sa.Column("end_ts", sa.BigInteger, nullable=False,
              comment="open time of the next bar present, ms since epoch UTC"),
    sa.Column("missing_bars", sa.Integer, nullable=False),
    sa.Column("source", sa.String(256), nullable=False, comment="source that reported the gap"),
    sa.Column("recorded_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

bar_validation_table = sa.Table(
    "bar_validation",
    metadata,
    sa.Column("series", sa.String(16), primary_key=True, comment="ohlcv, funding_rate or open_interest"),
    sa.Column("exchange", sa.String(32), primary_key=True),
    sa.Column("market_type", sa.String(16), primary_key=True, comment="'' for funding and open interest"),
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("timeframe", sa.String(8), primary_key=True, comment="'' for funding and open interest"),
    sa.Column("suite_sha", sa.String(64), primary_key=True, comment="sha256 of the suite's row checks"),
    sa.Column("day_ts", sa.BigInteger, primary_key=True, comment="UTC day start, ms since epoch"),
    sa.Column("digest", sa.String(64), primary_key=True, comment="sha256 of the day's validated rows"),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("run_key", sa.String(64), nullable=False, comment="data interval of the run that validated it"),
    sa.Column("validated_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

feature_month_table = sa.Table(
    "feature_month",
    metadata,
    *_candle_series_key(),
    sa.Column("spec_sha", sa.String(64), primary_key=True, comment="sha256 of the feature spec"),
    sa.Column("month_ts", sa.BigInteger, primary_key=True, comment="month start, ms since epoch UTC"),
    sa.Column("inputs", sa.String(64), nullable=False, comment="sha256 of spec, feature code and input rows"),
    sa.Column("frame", sa.LargeBinary, nullable=False, comment="the month's features as Parquet bytes"),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("written_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

#: Alembic version table of the market schema (distinct from Airflow's ``alembic_version``).
SCHEMA_VERSION_TABLE = "market_schema_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The advisory lock that serialises concurrent migrations of one PostgreSQL database.
MIGRATION_LOCK = "market_schema_migration"


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic logs two INFO lines per context; on every store open that is noise."""
    log = logging.getLogger("alembic.runtime.migration")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def migrate(engine: Engine, revision: str = "head") -> str:
    """Bring the market schema to ``revision`` with the project's Alembic migrations.

    Safe to call from several processes at once: on PostgreSQL an advisory lock serialises them
    and the schema changes of one step commit together (transactional DDL).

    Args:
        engine: engine of the market database.
        revision: target revision id (``"head"``: the latest).

    Returns:
        The schema revision after the upgrade.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database refused a migration step; nothing of that
            step is applied on PostgreSQL.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    with _quiet_alembic(), engine.connect() as conn:
        current = MigrationContext.configure(
            conn, opts={"version_table": SCHEMA_VERSION_TABLE}).get_current_revision()
    if revision == "head" and current == head:
        return str(current)
    with engine.begin() as conn:
        transaction_lock(conn, MIGRATION_LOCK)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        current = MigrationContext.configure(
            conn, opts={"version_table": SCHEMA_VERSION_TABLE}).get_current_revision()
    return str(current)
