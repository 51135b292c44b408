"""Computed features, one calendar month of one series per row, so that each bar's features are
computed once per feature spec.

The features step (:func:`include.feature_store.feature_frame`) computes a month of features
from that month's bars and the padding before it; it stores the result here (a Parquet file's
bytes) keyed by the series, the month, and ``inputs``: a digest of the feature spec, the
feature code and the exact input rows (:func:`include.feature_store.feature_inputs_digest`).
A later run with the same key reads the month back instead of computing it: the same values,
bit for bit. A month whose bars, funding or open interest changed, or another spec or feature
code, has another key. Times are ms since the epoch, UTC.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feature_month",
        sa.Column("exchange", sa.String(32), primary_key=True),
        sa.Column("market_type", sa.String(16), primary_key=True),
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timeframe", sa.String(8), primary_key=True),
        sa.Column("spec_sha", sa.String(64), primary_key=True, comment="sha256 of the feature spec"),
        sa.Column("month_ts", sa.BigInteger, primary_key=True, comment="month start, ms since epoch UTC"),
        sa.Column("inputs", sa.String(64), nullable=False, comment="sha256 of spec, feature code and input rows"),
        sa.Column("frame", sa.LargeBinary, nullable=False, comment="the month's features as Parquet bytes"),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("written_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    )


def downgrade() -> None:
    op.drop_table("feature_month")
