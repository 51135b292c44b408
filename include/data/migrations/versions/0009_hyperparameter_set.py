"""Hyperparameter sets: a tuning study's result per registered model and family, as of a date.

``hyperparameter_set`` holds, per (registered model, model family, as-of date), the best
hyperparameters of the study that tuned them on data before that date, with the study's name,
trial count, best out-of-fold log loss and a record (search space, data window, code version,
trial states and Sharpe ratios, probability of backtest overfitting). See
:mod:`include.training.sets`. Times are ms since the epoch, UTC.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hyperparameter_set",
        sa.Column("set_id", sa.String(96), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False, index=True),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("as_of", sa.BigInteger, nullable=False, comment="tuning data ends before this, ms UTC"),
        sa.Column("created_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
        sa.Column("study", sa.String(250), nullable=False),
        sa.Column("n_trials", sa.Integer, nullable=False),
        sa.Column("best_value", sa.Float, nullable=False, comment="out-of-fold log loss, nats"),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("record", sa.JSON, nullable=False,
                  comment="search space, data window, code version, trial states and Sharpe ratios, PBO"),
        sa.UniqueConstraint("model", "family", "as_of", name="uq_hyperparameter_set_model_family_as_of"),
    )


def downgrade() -> None:
    op.drop_table("hyperparameter_set")
