"""Production monitoring: the prediction log and the monitoring reports.

``prediction_log`` holds every prediction the platform made: one row per registered model,
version and bar (the open time of the bar whose features were used), append-only; the first
prediction of a (model, version, bar) is kept, so re-scoring a bar is a no-op. ``source`` says
who asked (``api``, ``smoke_test``, ``monitor``).

``monitor_report`` holds one row per monitoring run and model: the live metrics, drift,
freshness, the thresholds that tripped and the action (``ok``, ``alert``,
``retrain_requested``, ``cooldown``), with the full report as JSON. Times are ms since the
epoch, UTC.

``ohlcv_gap.source`` widens from 64 to 256 characters, as ``ohlcv_quarantine.source``: a file
source's name holds its directory (PostgreSQL refused such rows).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ohlcv_gap") as batch:  # SQLite: copy and move; PostgreSQL: ALTER
        batch.alter_column("source", type_=sa.String(256), existing_type=sa.String(64), existing_nullable=False)
    op.create_table(
        "prediction_log",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("bar", sa.BigInteger, primary_key=True, comment="open time of the bar the features are of, ms UTC"),
        sa.Column("p_down", sa.Float, nullable=False),
        sa.Column("p_range", sa.Float, nullable=False),
        sa.Column("p_up", sa.Float, nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("source", sa.String(16), nullable=False, comment="api, smoke_test or monitor"),
        sa.Column("made_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    )
    op.create_table(
        "monitor_report",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False, index=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("as_of", sa.BigInteger, nullable=False, comment="end of the monitored span, ms UTC"),
        sa.Column("made_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
        sa.Column("action", sa.String(24), nullable=False, comment="ok, alert, retrain_requested or cooldown"),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("monitor_report")
    op.drop_table("prediction_log")
    with op.batch_alter_table("ohlcv_gap") as batch:
        batch.alter_column("source", type_=sa.String(64), existing_type=sa.String(256), existing_nullable=False)
