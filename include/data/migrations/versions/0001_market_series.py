"""Market series: OHLCV candles, funding rates and open interest.

Timestamps are integer milliseconds since the Unix epoch, UTC. Tables are created only when
absent, so a store created before migrations existed is adopted as-is.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _key(*names: str) -> list[sa.Column]:
    sizes = {"exchange": 32, "market_type": 16, "symbol": 32, "timeframe": 8}
    return [sa.Column(n, sa.String(sizes[n]), primary_key=True) for n in names]


def upgrade() -> None:
    bind = op.get_bind()
    meta = sa.MetaData()
    sa.Table(
        "ohlcv", meta,
        *_key("exchange", "market_type", "symbol", "timeframe"),
        sa.Column("ts", sa.BigInteger, primary_key=True, comment="bar open time, ms since epoch UTC"),
        *(sa.Column(c, sa.Float) for c in ("open", "high", "low", "close", "volume")),
    )
    sa.Table(
        "funding_rate", meta,
        *_key("exchange", "symbol"),
        sa.Column("ts", sa.BigInteger, primary_key=True, comment="settlement time, ms since epoch UTC"),
        sa.Column("funding_rate", sa.Float, comment="fraction paid per settlement interval"),
    )
    sa.Table(
        "open_interest", meta,
        *_key("exchange", "symbol"),
        sa.Column("ts", sa.BigInteger, primary_key=True, comment="UTC day start, ms since epoch"),
        sa.Column("open_interest", sa.Float, comment="USD notional, daily close"),
    )
    meta.create_all(bind, checkfirst=True)


def downgrade() -> None:
    for name in ("open_interest", "funding_rate", "ohlcv"):
        op.drop_table(name)
