"""Registry tables (migrations 0003, 0004 and 0011) and the value types: registered model, alias pointer."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

PRODUCTION, CHALLENGER = "production", "challenger"

#: Ledger events that moved production away from a version on purpose.
ROLLBACK_EVENTS = ("rollback", "auto_rollback")

metadata = sa.MetaData()

model_table = sa.Table(
    "registered_model", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("exchange", sa.String(32), nullable=False),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("market_type", sa.String(8), nullable=False),
    sa.Column("timeframe", sa.String(8), nullable=False),
    sa.Column("label_horizon_bars", sa.Integer, nullable=False),
    sa.Column("label_rule", sa.JSON, nullable=False, comment="label threshold rule: mode, threshold, vol_window_bars"),
    sa.Column("created_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

version_table = sa.Table(
    "model_version", metadata,
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), sa.ForeignKey("registered_model.name", name="fk_model_version_model"),
              nullable=False, index=True),
    sa.Column("interval_end", sa.BigInteger, nullable=False, comment="end of the training data, ms UTC"),
    sa.Column("registered_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("files", sa.JSON, nullable=False, comment="file name -> sha256"),
    sa.Column("artifact_path", sa.String(512), nullable=False, comment="relative to the registry root"),
    sa.Column("lineage", sa.JSON, nullable=False, comment="the version's metadata.json"),
    sa.Column("deleted_at", sa.BigInteger, nullable=True, comment="artifacts removed by retention"),
)

alias_table = sa.Table(
    "model_alias", metadata,
    sa.Column("model", sa.String(128), sa.ForeignKey("registered_model.name"), primary_key=True),
    sa.Column("alias", sa.String(32), primary_key=True),
    sa.Column("version", sa.String(64), sa.ForeignKey("model_version.version"), nullable=False),
    sa.Column("since", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

event_table = sa.Table(
    "model_alias_event", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("alias", sa.String(32), nullable=False, index=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("from_version", sa.String(64), nullable=True),
    sa.Column("to_version", sa.String(64), nullable=True),
    sa.Column("candidate", sa.String(64), nullable=True),
    sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decision", sa.JSON, nullable=True, comment="the gate decision record"),
)

smoke_test_table = sa.Table(
    "smoke_test", metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("prediction", sa.JSON, nullable=False, comment="what the smoke test's prediction returned"),
    sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)


@dataclass(frozen=True)
class AliasPointer:
    """Where an alias of a registered model points.

    Attributes:
        model: registered model name.
        alias: ``production``, ``challenger``, …
        version: the version id.
        since: ISO time of the move.
        run_id: DAG run (or ``cli:<user>``) that moved it.
        reason: why.
        previous: the version it pointed at before the last move, if any.
    """

    model: str
    alias: str
    version: str
    since: str
    run_id: str
    reason: str
    previous: str | None
