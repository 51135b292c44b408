"""Hyperparameter sets: a study's result per (registered model, family), valid from its as-of date.

A set is recorded in the registry's database (table ``hyperparameter_set``, migration 0009) with
its study, trial count, best value, search space, data window and code version. A weekly run
uses, per family, the newest set whose as-of date is at or before the start of the run's first
walk-forward test fold (:func:`valid_set`): no row the tuning scored on is a row the run tests
on, and a backfill over past weeks uses only what was tunable then. Without such a set, or with
``hyperparameters="default"``, a family trains with its fixed defaults.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from include.data.store import MarketStore
from include.errors import ConfigError
from include.registry import code_version

metadata = sa.MetaData()

set_table = sa.Table(
    "hyperparameter_set", metadata,
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


def _ms(moment: datetime) -> int:
    return int(pd.Timestamp(moment).tz_convert("UTC").timestamp() * 1000) if pd.Timestamp(moment).tzinfo \
        else int(pd.Timestamp(moment, tz="UTC").timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class HyperparameterSets:
    """The ``hyperparameter_set`` table of the database at ``url`` (migrated on open).

    Raises:
        ConfigError: unsupported database URL.
    """

    def __init__(self, url: str) -> None:
        self.engine = MarketStore(url).engine

    def dispose(self) -> None:
        """Close pooled database connections."""
        self.engine.dispose()

    def record(self, model: str, family: str, as_of: datetime, summary: dict[str, Any], *,
               study: str, search_space: dict[str, Any], data_window: dict[str, Any]) -> dict[str, Any]:
        """Store the study's result as the set of (``model``, ``family``) valid from ``as_of``,
        replacing an earlier record of the same triple (a resumed study records again).

        Args:
            summary: :func:`include.tuning.summarise_study`'s result.

        Returns:
            The stored set (:meth:`get`'s form).
        """
        as_of_ms = _ms(as_of)
        params = dict(summary["best_params"])
        digest = hashlib.sha256(json.dumps([model, family, as_of_ms, params], sort_keys=True,
                                           default=str).encode()).hexdigest()[:10]
        set_id = f"hp-{family}-{datetime.fromtimestamp(as_of_ms / 1000, UTC):%Y%m%dT%H%M}-{digest}"
        record = {"search_space": search_space, "data_window": data_window, "code_version": code_version(),
                  "states": summary["states"], "best_trial": summary["best_trial"],
                  "best_metrics": summary["best_metrics"], "trial_sharpes": summary["trial_sharpes"],
                  "pbo": {k: v for k, v in (summary.get("pbo") or {}).items() if k != "logits"} or None}
        with self.engine.begin() as conn:
            conn.execute(set_table.delete().where(set_table.c.model == model, set_table.c.family == family,
                                                  set_table.c.as_of == as_of_ms))
            conn.execute(set_table.insert().values(
                set_id=set_id, model=model, family=family, as_of=as_of_ms,
                created_at=int(datetime.now(UTC).timestamp() * 1000), study=study,
                n_trials=int(summary["n_trials"]), best_value=float(summary["best_value"]), params=params,
                record=record))
        return self.get(set_id)

    @staticmethod
    def _row(row: sa.Row) -> dict[str, Any]:
        return {"set_id": row.set_id, "model": row.model, "family": row.family, "as_of": _iso(row.as_of),
                "created_at": _iso(row.created_at), "study": row.study, "n_trials": row.n_trials,
                "best_value": row.best_value, "params": dict(row.params), **dict(row.record)}

    def get(self, set_id: str) -> dict[str, Any]:
        """One set by id.

        Raises:
            ConfigError: no such set.
        """
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(set_table).where(set_table.c.set_id == set_id)).first()
        if row is None:
            raise ConfigError(f"no hyperparameter set {set_id!r}")
        return self._row(row)

    def list(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every set (of ``model``), oldest as-of date first."""
        query = sa.select(set_table).order_by(set_table.c.as_of, set_table.c.family)
        if model is not None:
            query = query.where(set_table.c.model == model)
        with self.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query)]

    def valid_set(self, model: str, family: str, at: datetime) -> dict[str, Any] | None:
        """The newest set of (``model``, ``family``) whose as-of date is at or before ``at``, or ``None``."""
        query = (sa.select(set_table).where(set_table.c.model == model, set_table.c.family == family,
                                            set_table.c.as_of <= _ms(at))
                 .order_by(set_table.c.as_of.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return self._row(row) if row is not None else None
