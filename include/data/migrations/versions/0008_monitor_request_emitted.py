"""When a monitoring report's retrain request was handed to Airflow.

``monitor_report.requested_at`` is set by ``monitor_production``'s ``request_retrain`` task for
the reports whose ``retrain_requested`` it turns into the ``retrain_request`` asset event, as its
last step. The cooldown between requests counts only those: a request that never became an event
(the task failed, or another model's failure stopped it) does not silence the next day's.
Times are ms since the epoch, UTC.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("monitor_report") as batch:
        batch.add_column(sa.Column("requested_at", sa.BigInteger, nullable=True,
                                   comment="when request_retrain emitted the request, ms UTC"))


def downgrade() -> None:
    with op.batch_alter_table("monitor_report") as batch:
        batch.drop_column("requested_at")
