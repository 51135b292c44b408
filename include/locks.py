"""Advisory locks in the market database: how writers that must take turns do so.

PostgreSQL's advisory locks, keyed by text (``hashtextextended``): a transaction lock, released
when the transaction ends, for writers of one series, one registered model or the schema; and a
session lock, held on a connection of its own for as long as a context lasts, for a registry whose
artifacts are in an object store (writers on several machines, each writing files outside any
transaction). On SQLite there is no second writer to wait for: a write transaction locks the
whole database file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

_XACT = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_SESSION = sa.text("SELECT pg_advisory_lock(hashtextextended(:key, 0))")
_TRY_SESSION = sa.text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))")


def transaction_lock(conn: Connection, key: str) -> None:
    """Wait for, then hold until ``conn``'s transaction ends, the advisory lock ``key`` (PostgreSQL;
    nothing on another database)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_XACT, {"key": key})


@contextmanager
def session_lock(engine: Engine, key: str, *, blocking: bool = True) -> Iterator[bool]:
    """The advisory lock ``key`` (PostgreSQL), held on a connection of its own for the context.

    Args:
        blocking: wait for the lock; ``False``: yield ``False`` at once when another session holds it.

    Yields:
        Whether the lock is held (always ``True`` when ``blocking``).
    """
    with engine.connect() as conn:
        if blocking:
            conn.execute(_SESSION, {"key": key})
        elif not conn.execute(_TRY_SESSION, {"key": key}).scalar():
            yield False
            return
        try:
            yield True
        finally:
            conn.execute(_UNLOCK, {"key": key})
