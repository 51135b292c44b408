"""Bars that passed the expectation suites, by UTC day, so that each bar is validated once.

The validate step (:func:`include.pipeline.data.validate`) records here, after a window passes,
each UTC day of each series it validated: the suite version (the sha256 of the suite's row
checks, :func:`include.quality.suites.suite_versions`) and a digest of that day's stored rows
(:func:`include.quality.ledger.day_digests`). A later window runs the row checks only on days
without a record of the same suite version and digest: a new day, a changed row or a changed
suite is validated again. Times are ms since the epoch, UTC.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bar_validation",
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


def downgrade() -> None:
    op.drop_table("bar_validation")
