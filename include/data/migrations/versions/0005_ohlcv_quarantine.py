"""Candles refused at ingestion, kept apart instead of stored or lost.

A row that fails the row-level checks at ingestion (a missing or non-positive price, negative
volume, high below open/close/low, low above open/close) goes here with the reason and the
source, not into ``ohlcv``; validation fails while the run's window holds any. Re-reading the
window from a corrected source replaces them. Times are ms since the epoch, UTC.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ohlcv_quarantine",
        sa.Column("exchange", sa.String(32), primary_key=True),
        sa.Column("market_type", sa.String(16), primary_key=True),
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timeframe", sa.String(8), primary_key=True),
        sa.Column("ts", sa.BigInteger, primary_key=True, comment="bar open time, ms since epoch UTC"),
        sa.Column("open", sa.Float),
        sa.Column("high", sa.Float),
        sa.Column("low", sa.Float),
        sa.Column("close", sa.Float),
        sa.Column("volume", sa.Float),
        sa.Column("reason", sa.Text, nullable=False, comment="why the row was refused"),
        sa.Column("source", sa.String(256), nullable=False, comment="source the row came from"),
        sa.Column("recorded_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    )


def downgrade() -> None:
    op.drop_table("ohlcv_quarantine")
