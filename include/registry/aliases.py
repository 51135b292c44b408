"""Aliases and the ledger of :class:`~include.registry.core.ModelRegistry`.

Moves of ``production`` and ``challenger`` with their ledger rows (one transaction each), keep
decisions, alias removal, the rollback chain, and questions about the past (``history``,
``production_on``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from types import EllipsisType
from typing import Any

import sqlalchemy as sa

from include.errors import RegistryError
from include.registry.artifacts import iso, now_ms
from include.registry.schema import (
    PRODUCTION,
    ROLLBACK_EVENTS,
    AliasPointer,
    alias_table,
    event_table,
    smoke_test_table,
    version_table,
)

logger = logging.getLogger(__name__)


class AliasLedger:
    """Alias and ledger operations; a base of :class:`~include.registry.core.ModelRegistry`.

    Uses the registry's ``engine``, ``_transaction(model)`` (a write transaction under the
    model's lock), ``verify``, ``_row``, ``versions``, ``model_of`` and ``load``.
    """

    # -- aliases ------------------------------------------------------------------------------
    def alias(self, model: str, name: str) -> AliasPointer | None:
        """Where alias ``name`` of registered model ``model`` points, or ``None`` if it is not set."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(alias_table).where(alias_table.c.model == model,
                                                            alias_table.c.alias == name)).first()
            if row is None:
                return None
            previous = conn.execute(
                sa.select(event_table.c.from_version)
                .where(event_table.c.model == model, event_table.c.alias == name,
                       event_table.c.to_version == row.version, event_table.c.event != "keep")
                .order_by(event_table.c.id.desc()).limit(1)).scalar()
        return AliasPointer(model, name, row.version, iso(row.since), row.run_id, row.reason, previous)

    def production(self, model: str) -> AliasPointer | None:
        """The production alias of ``model``, or ``None`` (never promoted, or removed)."""
        return self.alias(model, PRODUCTION)

    def load_production(self, model: str) -> tuple[Any, dict[str, Any]] | None:
        """``(model, lineage)`` of the production version of ``model``, or ``None`` if there is none."""
        pointer = self.production(model)
        return None if pointer is None else self.load(pointer.version)

    def aliases(self, model: str | None = None) -> dict[str, dict[str, str]]:
        """model -> {alias -> version} for every alias set (of one model, or all)."""
        stmt = sa.select(alias_table.c.model, alias_table.c.alias, alias_table.c.version)
        if model is not None:
            stmt = stmt.where(alias_table.c.model == model)
        out: dict[str, dict[str, str]] = {}
        with self.engine.connect() as conn:
            for m, a, v in conn.execute(stmt):
                out.setdefault(m, {})[a] = v
        return out

    def version_aliases(self) -> dict[str, list[str]]:
        """version -> the aliases pointing at it now."""
        out: dict[str, list[str]] = {}
        for names in self.aliases().values():
            for alias, version in names.items():
                out.setdefault(version, []).append(alias)
        return out

    def move_alias(self, name: str, version: str, *, event: str, run_id: str, reason: str,
                   dag_id: str | None = None, decision: dict[str, Any] | None = None,
                   expected: str | None | EllipsisType = ..., verify: bool = True) -> AliasPointer:
        """Point alias ``name`` of the version's registered model at ``version``; record it, in one transaction.

        Args:
            event: what the move is (``promote``, ``rollback``, ``auto_rollback``, ``candidate``, ``set``).
            expected: if given (``None`` = "not set"), the version the alias must point at now
                (compare-and-set); a mismatch raises and changes nothing.
            verify: check the artifact hashes first.

        A retry of a move this run already made (the alias points at ``version`` and its last
        ledger entry is this ``event`` to it by ``run_id``) records nothing and returns the
        pointer, whatever ``expected`` says: a task retried after its worker died between the
        move and its next step carries on from there.

        Raises:
            RegistryError: unknown or tampered version, or ``expected`` does not match.
        """
        row = self.verify(version) if verify else self._row(version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        model = row.model
        where = (alias_table.c.model == model, alias_table.c.alias == name)
        with self._transaction(model) as conn:
            # Retention marks versions removed under the same lock: re-read inside it.
            deleted = conn.execute(sa.select(version_table.c.deleted_at)
                                   .where(version_table.c.version == version)).scalar()
            if deleted is not None:
                raise RegistryError(f"version {version}: artifacts were removed by retention at {iso(deleted)}")
            current = conn.execute(sa.select(alias_table.c.version).where(*where)).scalar()
            retried = current == version and self._last_event_is(conn, model, name, event, version, run_id)
            if not retried:
                if expected is not ... and current != expected:
                    raise RegistryError(f"{model}: alias {name} points at {current}, not {expected}: "
                                        "it moved meanwhile")
                now = now_ms()
                values = {"version": version, "since": now, "run_id": run_id, "reason": reason}
                if current is None:
                    conn.execute(alias_table.insert().values(model=model, alias=name, **values))
                elif current != version:
                    conn.execute(alias_table.update().where(*where).values(**values))
                conn.execute(event_table.insert().values(
                    model=model, alias=name, event=event, from_version=current, to_version=version, at=now,
                    dag_id=dag_id, run_id=run_id,
                    reason=reason if current != version else f"{reason} (already {name})", decision=decision))
        if retried:  # a retry of a move this run already made (its worker died after it)
            logger.info("%s: %s %s already at %s by run %s (a retry): nothing to record", event, model, name,
                        version, run_id)
        else:
            logger.info("%s: %s %s %s -> %s (%s)", event, model, name, current, version, reason)
        pointer = self.alias(model, name)
        assert pointer is not None
        return pointer

    @staticmethod
    def _last_event_is(conn: sa.Connection, model: str, alias: str, event: str, to_version: str | None,
                       run_id: str, *, candidate: str | None | EllipsisType = ...) -> bool:
        """Whether the last ledger entry of ``model``'s ``alias`` is ``event`` to ``to_version`` by ``run_id``."""
        last = conn.execute(sa.select(event_table).where(event_table.c.model == model, event_table.c.alias == alias)
                            .order_by(event_table.c.id.desc()).limit(1)).first()
        return (last is not None and last.event == event and last.to_version == to_version
                and last.run_id == run_id and (candidate is ... or last.candidate == candidate))

    def remove_alias(self, model: str, name: str, *, event: str, run_id: str, reason: str,
                     dag_id: str | None = None, expected: str | None | EllipsisType = ...,
                     decision: dict[str, Any] | None = None, candidate: str | None = None) -> None:
        """Unset alias ``name`` of ``model`` and record it (ledger ``to`` is empty), in one transaction.

        A retry of a removal this run already recorded (the alias is unset and its last ledger
        entry is this ``event`` by ``run_id``) records nothing, whatever ``expected`` says.

        Raises:
            RegistryError: ``expected`` is given and the alias points elsewhere.
        """
        where = (alias_table.c.model == model, alias_table.c.alias == name)
        with self._transaction(model) as conn:
            current = conn.execute(sa.select(alias_table.c.version).where(*where)).scalar()
            if current is None and self._last_event_is(conn, model, name, event, None, run_id):
                logger.info("%s: %s %s already removed by run %s (a retry): nothing to record", event, model, name,
                            run_id)
                return
            if expected is not ... and current != expected:
                raise RegistryError(f"{model}: alias {name} points at {current}, not {expected}: it moved meanwhile")
            conn.execute(alias_table.delete().where(*where))
            conn.execute(event_table.insert().values(
                model=model, alias=name, event=event, from_version=current, to_version=None, at=now_ms(),
                candidate=candidate, dag_id=dag_id, run_id=run_id, reason=reason, decision=decision))
        logger.warning("%s: %s %s %s -> none (%s)", event, model, name, current, reason)

    def demote(self, model: str, *, run_id: str, reason: str, decision: dict[str, Any] | None = None,
               dag_id: str | None = None, expected: str | None | EllipsisType = ...) -> None:
        """Take ``model``'s production away: it serves no model (the class-prior forecast, no
        position) until a later promotion or rollback. Ledger event ``demote``, with the decision.

        Raises:
            RegistryError: production moved away from ``expected`` (nothing changed).
        """
        self.remove_alias(model, PRODUCTION, event="demote", run_id=run_id, reason=reason, dag_id=dag_id,
                          expected=expected, decision=decision,
                          candidate=(decision or {}).get("candidate"))

    def no_model_since(self, model: str) -> dict[str, Any] | None:
        """The ledger entry that left ``model`` without production when the last one was a
        demotion (the "no model" state), else ``None`` (it has production, or never had one, or
        lost it to a failed first promotion)."""
        with self.engine.connect() as conn:
            last = conn.execute(sa.select(event_table).where(
                event_table.c.model == model, event_table.c.alias == PRODUCTION, event_table.c.event != "keep")
                .order_by(event_table.c.id.desc()).limit(1)).first()
        if last is None or last.event != "demote" or last.to_version is not None:
            return None
        return {"at": iso(last.at), "from": last.from_version, "run_id": last.run_id, "reason": last.reason,
                "decision": last.decision}

    def promote(self, version: str, *, run_id: str, reason: str, decision: dict[str, Any] | None = None,
                dag_id: str | None = None, expected: str | None | EllipsisType = ...) -> AliasPointer:
        """Make ``version`` the production version of its registered model, with the gate decision.

        Raises:
            RegistryError: the version is missing or fails verification, or production moved
                away from ``expected`` (production unchanged).
        """
        return self.move_alias(PRODUCTION, version, event="promote", run_id=run_id, reason=reason,
                               dag_id=dag_id, decision=decision, expected=expected)

    def record_keep(self, model: str, candidate: str | None, *, run_id: str, reason: str,
                    decision: dict[str, Any] | None = None, dag_id: str | None = None) -> None:
        """Record that a run kept ``model``'s production and did not promote ``candidate``.

        Idempotent per run: a retry whose keep is already the model's last ledger entry records
        nothing.
        """
        with self._transaction(model) as conn:
            current = conn.execute(sa.select(alias_table.c.version).where(
                alias_table.c.model == model, alias_table.c.alias == PRODUCTION)).scalar()
            if self._last_event_is(conn, model, PRODUCTION, "keep", current, run_id, candidate=candidate):
                return  # a retry of a keep this run recorded already
            conn.execute(event_table.insert().values(
                model=model, alias=PRODUCTION, event="keep", from_version=current, to_version=current,
                candidate=candidate, at=now_ms(), dag_id=dag_id, run_id=run_id, reason=reason, decision=decision))

    def rollback_target(self, model: str) -> str | None:
        """The version a rollback of ``model`` restores, or ``None`` if there is none.

        Walks production's ledger backwards from the current holder: the most recent earlier
        holder that is not the current version, was never rolled away from (``rollback`` or
        ``auto_rollback`` out of it), and still has its artifacts. Repeated rollbacks therefore
        walk down the chain (C → B → A) and never return to a version that was rejected.
        """
        history = [e for e in self.history(PRODUCTION, model=model) if e["event"] != "keep"]
        rolled_away = {e["from"] for e in history if e["event"] in ROLLBACK_EVENTS and e["from"]}
        pointer = self.production(model)
        current = pointer.version if pointer else None
        deleted = set(self.versions(model, include_deleted=True)) - set(self.versions(model))
        for event in reversed(history[:-1] if history else []):
            held = event["to"]
            if held and held != current and held not in rolled_away and held not in deleted:
                return held
        return None

    def rollback(self, model: str, version: str | None = None, *, run_id: str, reason: str,
                 event: str = "rollback", dag_id: str | None = None, once_per_run: bool = False) -> AliasPointer:
        """Point ``model``'s production back at ``version`` (default: :meth:`rollback_target`).

        Args:
            once_per_run: a run that has already recorded this ``event`` for ``model`` (a try that
                died after committing the move, then retried or cleared) gets production's
                pointer back without a second move; without it, a cleared ``rollback_model`` run
                would recompute the target from the state its first try left and walk back two
                versions (C → B → A) under one run id. Off for the command line, whose every
                call is a person's new rollback under the same ``cli:<user>`` id.

        Raises:
            RegistryError: nothing to roll back to, ``version`` belongs to another registered
                model, or the target fails verification.
        """
        if once_per_run:
            done = [e for e in self.history(PRODUCTION, model=model) if e["event"] == event and e["run_id"] == run_id]
            if done:
                pointer = self.production(model)
                logger.info("%s: run %s already rolled production back (%s -> %s at %s): not moved again", model,
                            run_id, done[-1]["from"], done[-1]["to"], done[-1]["at"])
                if pointer is None:
                    raise RegistryError(f"{model}: run {run_id} rolled production back already, and it has no "
                                        "production version now")
                return pointer
        target = version or self.rollback_target(model)
        if target is None:
            raise RegistryError(f"{model}: no earlier production version to roll back to "
                                "(every earlier one was rolled away from, or there is none)")
        if self.model_of(target) != model:
            raise RegistryError(f"version {target} belongs to {self.model_of(target)}, not {model}")
        return self.move_alias(PRODUCTION, target, event=event, run_id=run_id, reason=reason, dag_id=dag_id)

    # -- smoke tests --------------------------------------------------------------------------
    def record_smoke_test(self, model: str, version: str, run_id: str, prediction: dict[str, Any]) -> None:
        """Record that ``run_id``'s smoke test of production version ``version`` passed."""
        with self.engine.begin() as conn:
            where = (smoke_test_table.c.model == model, smoke_test_table.c.version == version,
                     smoke_test_table.c.run_id == run_id)
            conn.execute(smoke_test_table.delete().where(*where))
            conn.execute(smoke_test_table.insert().values(model=model, version=version, run_id=run_id,
                                                          prediction=prediction, at=now_ms()))

    def smoke_test_passed(self, model: str, version: str, run_id: str) -> dict[str, Any] | None:
        """The prediction of ``run_id``'s passed smoke test of ``version``, or ``None`` if none is recorded."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(smoke_test_table.c.prediction).where(
                smoke_test_table.c.model == model, smoke_test_table.c.version == version,
                smoke_test_table.c.run_id == run_id)).scalar()

    # -- ledger -------------------------------------------------------------------------------
    def history(self, alias: str | None = None, *, model: str | None = None) -> list[dict[str, Any]]:
        """Ledger entries (of one alias and/or one registered model, or all), oldest first.

        Each entry: ``at``, ``model``, ``alias``, ``event``, ``from``, ``to``, ``candidate``,
        ``dag_id``, ``run_id``, ``reason``, ``decision``.
        """
        stmt = sa.select(event_table).order_by(event_table.c.id)
        if alias is not None:
            stmt = stmt.where(event_table.c.alias == alias)
        if model is not None:
            stmt = stmt.where(event_table.c.model == model)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [{"at": iso(r.at), "model": r.model, "alias": r.alias, "event": r.event, "from": r.from_version,
                 "to": r.to_version, "candidate": r.candidate, "dag_id": r.dag_id, "run_id": r.run_id,
                 "reason": r.reason, "decision": r.decision} for r in rows]

    def ledger(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every decision about production (promote, keep, rollback, removal), oldest first."""
        return self.history(PRODUCTION, model=model)

    def decision_of(self, model: str, version: str) -> dict[str, Any] | None:
        """The gate's record of its latest decision on ``version`` as a candidate (the ledger's
        promote, keep or demote entry naming it), or ``None`` when the gate never decided it."""
        for event in reversed(self.ledger(model)):
            decided = event.get("decision") or {}
            if decided.get("candidate") == version:
                return decided
        return None

    def production_on(self, model: str, when: datetime) -> str | None:
        """The version ``model``'s production pointed at, at time ``when`` (UTC); ``None`` if none."""
        ms = int(when.timestamp() * 1000)
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(event_table.c.to_version)
                .where(event_table.c.model == model, event_table.c.alias == PRODUCTION, event_table.c.at <= ms,
                       event_table.c.event != "keep")
                .order_by(event_table.c.id.desc()).limit(1)).scalar()

