"""Model registry state: versions, aliases, and the append-only alias ledger.

Artifacts stay on disk under the registry root; these tables say which versions exist (with
each file's sha256 and the version's lineage), which version each alias (``production``,
``challenger``) points at, and every move of an alias. Times are ms since the epoch, UTC.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_version",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("interval_end", sa.BigInteger, nullable=False, comment="end of the training data, ms UTC"),
        sa.Column("registered_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("files", sa.JSON, nullable=False, comment="file name -> sha256"),
        sa.Column("artifact_path", sa.String(512), nullable=False, comment="relative to the registry root"),
        sa.Column("lineage", sa.JSON, nullable=False, comment="the version's metadata.json"),
        sa.Column("deleted_at", sa.BigInteger, nullable=True, comment="artifacts removed by retention"),
    )
    op.create_table(
        "model_alias",
        sa.Column("alias", sa.String(32), primary_key=True),
        sa.Column("version", sa.String(64), sa.ForeignKey("model_version.version"), nullable=False),
        sa.Column("since", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "model_alias_event",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
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


def downgrade() -> None:
    for name in ("model_alias_event", "model_alias", "model_version"):
        op.drop_table(name)
