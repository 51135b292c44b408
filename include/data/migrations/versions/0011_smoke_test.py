"""Post-promotion smoke tests, one row per run and version that passed one.

``promote_or_keep`` records here that the production version it moved to loaded and predicted
(:func:`include.pipeline.decision.smoke_test`). A retried promotion that finds production
already at its candidate returns without a second move only when this run's smoke test of that
version is recorded; otherwise it smoke-tests (and rolls back on failure) as the first try
would have. Times are ms since the epoch, UTC.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "smoke_test",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("prediction", sa.JSON, nullable=False, comment="what the smoke test's prediction returned"),
        sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    )


def downgrade() -> None:
    op.drop_table("smoke_test")
