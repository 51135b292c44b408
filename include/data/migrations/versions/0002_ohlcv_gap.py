"""Gaps in the exchange's own candle history, recorded by ingestion instead of being filled.

One row per run of missing bars: ``start_ts`` is the open time of the first missing bar and
``end_ts`` the open time of the next bar the exchange does have (half-open, ms since epoch UTC).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ohlcv_gap",
        sa.Column("exchange", sa.String(32), primary_key=True),
        sa.Column("market_type", sa.String(16), primary_key=True),
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timeframe", sa.String(8), primary_key=True),
        sa.Column("start_ts", sa.BigInteger, primary_key=True,
                  comment="open time of the first missing bar, ms since epoch UTC"),
        sa.Column("end_ts", sa.BigInteger, nullable=False,
                  comment="open time of the next bar present, ms since epoch UTC"),
        sa.Column("missing_bars", sa.Integer, nullable=False),
        sa.Column("source", sa.String(64), nullable=False, comment="source that reported the gap"),
        sa.Column("recorded_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    )


def downgrade() -> None:
    op.drop_table("ohlcv_gap")
