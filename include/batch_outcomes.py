"""What each market of a batched task came to, kept in the market database while a retry may follow.

A task of the ``market`` group runs its step for every market of its batch
(:func:`include.tasks.each_market`). When one market fails in a way a retry may mend, the task
fails once its batch is done and Airflow retries it; the retry runs only the markets that did
not finish and reuses the others' outcomes. This module keeps those outcomes.

What a retry reuses is trusted as XCom is: a training result names the sha256 that the ensemble
checks its members against before unpickling them, a gate result decides a promotion. So the
outcomes live in the market database (table ``batch_outcome``, migration ``0010``), beside the
registry's records, never in the artifact store, which parties the registry does not trust may
write. And an outcome is reused only when

* it was written by an earlier try of the **same try sequence**: the task instance's
  ``max_tries``, which Airflow raises when a person clears the task, so a cleared task runs all
  its markets again; and
* the market's **inputs** hash the same (:func:`inputs_digest`: its plan and the upstream
  results it was run on), so a market whose configuration or upstream changed runs again.

Tries are fenced (table ``task_try_fence``): each try records its number when it starts, and a
try that finds a higher one recorded (a zombie whose worker lost its heartbeat while Airflow
started the retry) raises :class:`~include.errors.SupersededTryError` instead of running or
writing anything more.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from include.config import Settings
from include.data.store import MarketStore
from include.errors import ConfigError, SupersededTryError

logger = logging.getLogger(__name__)

metadata = sa.MetaData()


def _task_instance_key() -> list[sa.Column]:
    """The columns that name one task instance (a new set per table)."""
    return [sa.Column("dag_id", sa.String(250), primary_key=True),
            sa.Column("run_id", sa.String(250), primary_key=True),
            sa.Column("task_id", sa.String(250), primary_key=True),
            sa.Column("map_index", sa.Integer, primary_key=True)]


# The tables of migration 0010, as the code queries them.
outcome_table = sa.Table(
    "batch_outcome", metadata,
    *_task_instance_key(),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("max_tries", sa.Integer, nullable=False, comment="the task instance's try sequence"),
    sa.Column("try_number", sa.Integer, nullable=False, comment="the try that wrote the outcome"),
    sa.Column("inputs_sha256", sa.String(64), nullable=False, comment="the market's plan and upstream results"),
    sa.Column("outcome", sa.Text, nullable=False, comment="JSON, Airflow's serialiser: result, skipped or failed"),
    sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

fence_table = sa.Table(
    "task_try_fence", metadata,
    *_task_instance_key(),
    sa.Column("try_number", sa.Integer, nullable=False, comment="the highest try that started"),
    sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

#: The longest id Airflow stores for a DAG, run or task (its ``ID_LEN``).
MAX_ID_LENGTH = 250


def check_run_id(run_id: Any) -> str:
    """``run_id`` if it is an id a record may be keyed by: 1..250 printable characters, not ``.``
    or ``..``, and without a path separator.

    Airflow's own run ids (``scheduled__2023-12-24T00:00:00+00:00``, ``manual__…``,
    ``backfill__…``) pass; an id typed into the API or CLI is checked before anything is keyed
    by it.

    Raises:
        ConfigError: names the run id and what is wrong with it.
    """
    text = str(run_id)
    if not 0 < len(text) <= MAX_ID_LENGTH:
        raise ConfigError(f"run id {text[:40]!r}: expected 1 to {MAX_ID_LENGTH} characters, got {len(text)}")
    if text in (".", "..") or any(c in text for c in "/\\") or not text.isprintable():
        raise ConfigError(f"run id {text!r} is not a valid run id: it is '.' or '..', or holds a path separator "
                          "or a control character")
    return text


def inputs_digest(plan: dict[str, Any], upstream: list[Any]) -> str:
    """SHA-256 of what one market's step runs on: its plan and its upstream results (hex, 64).

    Serialised with Airflow's serialiser (as XCom), keys sorted, so equal inputs give equal
    digests across workers and tries.
    """
    from airflow.sdk.serde import serialize

    payload = json.dumps(serialize({"plan": plan, "upstream": upstream}), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


class BatchOutcomes:
    """What each market of a batch came to in this task instance's tries: its result, its skip or
    its permanent failure, kept in the market database while a retry may follow.

    Args:
        context: the task context (``ti``: ``dag_id``, ``run_id``, ``task_id``, ``map_index``,
            ``try_number``, ``max_tries``); ``None``: nothing is kept, nothing reused, no fence.
        engine: engine of the market database; default: opened from ``MARKET_DB_URL``
            (:class:`~include.data.store.MarketStore`, which migrates the schema).

    Attributes:
        earlier: ``{model: (inputs sha256, {"result" | "skipped" | "failed": value})}`` that
            earlier tries of this try sequence left.
        retries_left: whether Airflow retries the task if this try fails.

    Raises:
        ConfigError: the run id is not valid (:func:`check_run_id`).
        SupersededTryError: a later try of this task instance has started (fencing).
    """

    def __init__(self, context: dict[str, Any] | None, engine: Engine | None = None) -> None:
        self.context = context
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.retriable: dict[str, str] = {}
        self.earlier: dict[str, tuple[str, dict[str, Any]]] = {}
        self.retries_left = False
        self.engine: Engine | None = None
        self._own_engine = False
        ti = (context or {}).get("ti")
        self.key: dict[str, Any] | None = None
        if ti is None:
            return
        self.key = {"dag_id": str(ti.dag_id), "run_id": check_run_id(ti.run_id), "task_id": str(ti.task_id),
                    "map_index": int(ti.map_index)}
        self.try_number, self.max_tries = int(ti.try_number), int(ti.max_tries)
        self.retries_left = self.try_number <= self.max_tries
        if engine is None:
            engine, self._own_engine = MarketStore(Settings.from_env().market_db_url).engine, True
        self.engine = engine
        self._claim()
        if self.try_number > 1:
            self.earlier = self._read_earlier()

    # -- fencing ----------------------------------------------------------------------------
    def _where(self, table: sa.Table) -> tuple[Any, ...]:
        assert self.key is not None
        return tuple(table.c[k] == v for k, v in self.key.items())

    @contextmanager
    def _fenced(self) -> Iterator[Connection]:
        """A write transaction that holds this task instance's fence row and raises when a later
        try has started."""
        assert self.engine is not None
        with self.engine.begin() as conn:
            stmt = sa.select(fence_table.c.try_number).where(*self._where(fence_table))
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update()
            latest = conn.execute(stmt).scalar()
            if latest is not None and latest > self.try_number:
                raise SupersededTryError(
                    f"{self.key['task_id']}[{self.key['map_index']}] of run {self.key['run_id']}: try "
                    f"{latest} has started, so this try ({self.try_number}) stops without writing anything")
            yield conn

    def _claim(self) -> None:
        """Record this try as the task instance's latest (a zombie of an earlier try then stops)."""
        for attempt in (1, 2):
            try:
                with self._fenced() as conn:
                    row = {"try_number": self.try_number, "at": _now_ms()}
                    if conn.execute(fence_table.update().where(*self._where(fence_table)).values(**row)).rowcount == 0:
                        conn.execute(fence_table.insert().values(**self.key, **row))
                return
            except sa.exc.IntegrityError:  # two tries inserted the first row at once: read it again
                if attempt == 2:
                    raise

    def check_fence(self) -> None:
        """Raise :class:`~include.errors.SupersededTryError` if a later try has started."""
        if self.engine is not None:
            with self._fenced():
                pass

    # -- outcomes ---------------------------------------------------------------------------
    def _read_earlier(self) -> dict[str, tuple[str, dict[str, Any]]]:
        from airflow.sdk.serde import deserialize

        assert self.engine is not None
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outcome_table).where(
                *self._where(outcome_table), outcome_table.c.max_tries == self.max_tries,
                outcome_table.c.try_number < self.try_number)).all()
        return {r.model: (r.inputs_sha256, deserialize(json.loads(r.outcome))) for r in rows}

    def reuse(self, model: str, inputs_sha256: str, where: str) -> bool:
        """Take ``model``'s outcome from an earlier try of this try sequence, if one left it for the
        same inputs; whether it did."""
        if model not in self.earlier:
            return False
        digest, outcome = self.earlier[model]
        if digest != inputs_sha256:
            logger.info("%s, %s: an earlier try's outcome was for other inputs; run again", where, model)
            return False
        logger.info("%s, %s: %s in an earlier try of this task, not run again", where, model,
                    {"result": "done", "skipped": "skipped", "failed": "failed"}[next(iter(outcome))])
        self.outcomes[model] = outcome  # already recorded
        return True

    def record(self, model: str, inputs_sha256: str, **outcome: Any) -> None:
        """Keep ``model``'s outcome: ``result=``, ``skipped=`` (a reason) or ``failed=`` (an error).

        Written to the database while the task has tries left, under the fence.

        Raises:
            SupersededTryError: a later try has started; nothing is written.
        """
        from airflow.sdk.serde import serialize

        self.outcomes[model] = outcome
        if self.engine is None or not self.retries_left:
            return
        row = {"max_tries": self.max_tries, "try_number": self.try_number, "inputs_sha256": inputs_sha256,
               "outcome": json.dumps(serialize(outcome)), "at": _now_ms()}
        with self._fenced() as conn:
            where = (*self._where(outcome_table), outcome_table.c.model == model)
            conn.execute(outcome_table.delete().where(*where))
            conn.execute(outcome_table.insert().values(**self.key, model=model, **row))

    def forget(self) -> None:
        """Remove this task instance's outcomes (the task ends without a retry)."""
        if self.engine is not None:
            with self._fenced() as conn:
                conn.execute(outcome_table.delete().where(*self._where(outcome_table)))

    def close(self) -> None:
        """Release the database connections this object opened."""
        if self._own_engine and self.engine is not None:
            self.engine.dispose()


def forget_batch_outcomes(dag_id: str, run_id: str, engine: Engine | None = None) -> int:
    """Remove what :class:`BatchOutcomes` kept for a run's tasks, and their fences: a task cleared
    later runs all its markets again. Returns the number of outcomes removed.

    Raises:
        ConfigError: the run id is not valid (:func:`check_run_id`).
    """
    run_id = check_run_id(run_id)
    own = engine is None
    if engine is None:
        engine = MarketStore(Settings.from_env().market_db_url).engine
    try:
        with engine.begin() as conn:
            removed = conn.execute(outcome_table.delete().where(outcome_table.c.dag_id == dag_id,
                                                                outcome_table.c.run_id == run_id)).rowcount
            conn.execute(fence_table.delete().where(fence_table.c.dag_id == dag_id, fence_table.c.run_id == run_id))
    finally:
        if own:
            engine.dispose()
    return int(removed or 0)
