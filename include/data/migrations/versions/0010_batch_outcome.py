"""What each market of a batched task came to, and which try of the task may write.

``batch_outcome`` keeps, while Airflow may retry a task of the ``market`` group, each market's
outcome in that task instance (its result, skip or permanent failure), with the try sequence
(the task instance's ``max_tries``, which a clear raises) and the sha256 of the inputs the market
was run on. A later try of the same sequence reuses an outcome only when its inputs hash the
same, so a clear or changed inputs run the market again. It lives in the market database, beside
the registry's records, because a reused result is trusted as XCom is: member-model hashes and
gate decisions travel in it, and the artifact store is writable by parties the registry does not
trust.

``task_try_fence`` holds, per task instance, the highest try that has started; a try that finds a
higher one recorded is a zombie and writes nothing more. Times are ms since the epoch, UTC.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_outcome",
        sa.Column("dag_id", sa.String(250), primary_key=True),
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("task_id", sa.String(250), primary_key=True),
        sa.Column("map_index", sa.Integer, primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("max_tries", sa.Integer, nullable=False, comment="the task instance's try sequence"),
        sa.Column("try_number", sa.Integer, nullable=False, comment="the try that wrote the outcome"),
        sa.Column("inputs_sha256", sa.String(64), nullable=False, comment="the market's plan and upstream results"),
        sa.Column("outcome", sa.Text, nullable=False, comment="JSON, Airflow's serialiser: result, skipped or failed"),
        sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    )
    op.create_table(
        "task_try_fence",
        sa.Column("dag_id", sa.String(250), primary_key=True),
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("task_id", sa.String(250), primary_key=True),
        sa.Column("map_index", sa.Integer, primary_key=True),
        sa.Column("try_number", sa.Integer, nullable=False, comment="the highest try that started"),
        sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    )


def downgrade() -> None:
    op.drop_table("task_try_fence")
    op.drop_table("batch_outcome")
