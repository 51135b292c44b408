"""The prediction log: every prediction the platform made, append-only (migration 0006).

One row per (registered model, version, bar); the first prediction of a bar is kept, so writing
the same bar again (a retried task, a second API call for the same bar) changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pandas as pd
import sqlalchemy as sa

from include.errors import PipelineError

metadata = sa.MetaData()

# The tables of migrations 0006 and 0008, as the code queries them.
prediction_table = sa.Table(
    "prediction_log", metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("bar", sa.BigInteger, primary_key=True, comment="open time of the bar the features are of, ms UTC"),
    sa.Column("p_down", sa.Float, nullable=False),
    sa.Column("p_range", sa.Float, nullable=False),
    sa.Column("p_up", sa.Float, nullable=False),
    sa.Column("decision", sa.String(8), nullable=False),
    sa.Column("source", sa.String(16), nullable=False, comment="api, smoke_test or monitor"),
    sa.Column("made_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

report_table = sa.Table(
    "monitor_report", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("as_of", sa.BigInteger, nullable=False, comment="end of the monitored span, ms UTC"),
    sa.Column("made_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("action", sa.String(24), nullable=False, comment="ok, alert, retrain_requested or cooldown"),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("report", sa.JSON, nullable=False),
    sa.Column("requested_at", sa.BigInteger, nullable=True, comment="when request_retrain emitted the request, ms UTC"),
)

SOURCES = ("api", "smoke_test", "monitor")


def _ms(ts: Any) -> int:
    stamp = pd.Timestamp(ts)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000)


def log_predictions(engine: sa.Engine, model: str, version: str, rows: Iterable[dict[str, Any]],
                    source: str) -> int:
    """Append predictions; bars this version already predicted are left as they are.

    Args:
        engine: the market database.
        model / version: who predicted.
        rows: ``{"bar" (timestamp of the bar's open), "p_down", "p_range", "p_up", "decision"}``.
        source: ``api``, ``smoke_test`` or ``monitor``.

    Returns:
        Rows written (new bars).

    Raises:
        PipelineError: unknown source, or probabilities that are not finite.
    """
    if source not in SOURCES:
        raise PipelineError(f"prediction source {source!r}: expected one of {SOURCES}")
    now = int(time.time() * 1000)
    records = [{"model": model, "version": version, "bar": _ms(r["bar"]), "p_down": float(r["p_down"]),
                "p_range": float(r["p_range"]), "p_up": float(r["p_up"]), "decision": r["decision"],
                "source": source, "made_at": now} for r in rows]
    if not records:
        return 0
    if not all(pd.notna([r["p_down"], r["p_range"], r["p_up"]]).all() for r in records):
        raise PipelineError(f"{model} {version}: refusing to log non-finite probabilities")
    t = prediction_table
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        result = conn.execute(insert(t).on_conflict_do_nothing(index_elements=["model", "version", "bar"]), records)
    return int(result.rowcount or 0) if result.rowcount is not None and result.rowcount >= 0 else len(records)


def load_predictions(engine: sa.Engine, model: str, version: str | None = None, *, start: Any = None,
                     end: Any = None) -> pd.DataFrame:
    """Logged predictions of ``model`` (one version, or all), bars in ``[start, end)``.

    Returns:
        Frame indexed by bar open time (UTC) with version, p_down, p_range, p_up, decision,
        source and made_at (UTC), sorted by bar.
    """
    t = prediction_table
    query = sa.select(t).where(t.c.model == model)
    if version is not None:
        query = query.where(t.c.version == version)
    if start is not None:
        query = query.where(t.c.bar >= _ms(start))
    if end is not None:
        query = query.where(t.c.bar < _ms(end))
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query.order_by(t.c.bar)).mappings().all(),
                             columns=[c.name for c in t.columns])
    frame["bar"] = pd.to_datetime(frame["bar"].astype("int64"), unit="ms", utc=True)
    frame["made_at"] = pd.to_datetime(frame["made_at"].astype("int64"), unit="ms", utc=True)
    return frame.set_index("bar").drop(columns="model")


def last_scored_bar(engine: sa.Engine, model: str, version: str) -> pd.Timestamp | None:
    """Open time of the newest bar ``version`` of ``model`` has a logged prediction for."""
    t = prediction_table
    with engine.connect() as conn:
        value = conn.execute(sa.select(sa.func.max(t.c.bar)).where(t.c.model == model, t.c.version == version)).scalar()
    return None if value is None else pd.Timestamp(int(value), unit="ms", tz="UTC")
