"""The fit cache's digests, kept apart from its files.

``fit_cache_entry`` holds, for every file of the fit cache (:mod:`include.training.fit_cache`),
the sha256 of its bytes as the task that wrote it computed them. A cache file is unpickled only
after its bytes hash to this digest, so a file planted or altered in the cache folder is never
loaded: the cache is only as writable as the market database. Times are ms since the epoch, UTC.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fit_cache_entry",
        sa.Column("key", sa.String(64), primary_key=True, comment="hex sha256 cache key"),
        sa.Column("sha256", sa.String(64), nullable=False, comment="hex sha256 of the entry file's bytes"),
        sa.Column("size", sa.BigInteger, nullable=False, comment="bytes"),
        sa.Column("written_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    )


def downgrade() -> None:
    op.drop_table("fit_cache_entry")
