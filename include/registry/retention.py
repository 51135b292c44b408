"""Retention of a :class:`~include.registry.core.ModelRegistry`: which versions' artifacts go."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from include.registry.artifacts import now_ms
from include.registry.schema import PRODUCTION, alias_table, event_table, version_table
from include.storage import is_remote, remove

logger = logging.getLogger(__name__)


class Retention:
    """Retention; a base of :class:`~include.registry.core.ModelRegistry`.

    Uses the registry's ``engine``, ``root``, ``versions_dir``, ``lock(model)``,
    ``_transaction(model)`` and ``model_names``.
    """

    # -- retention ----------------------------------------------------------------------------
    def cleanup(self, keep_last: int, *, dry_run: bool = False, model: str | None = None) -> list[str]:
        """Remove the artifacts of versions outside the retention set; their rows stay, marked.

        Kept, per registered model: the ``keep_last`` most recently registered versions, every
        version that ever held ``production``, and every version an alias points at now.
        ``model`` limits the cleanup to one registered model. Each model's retention set is read
        and its versions are marked removed inside one transaction under the model's lock, so a
        concurrent promotion or alias move cannot point at a version being removed.

        Returns:
            The versions removed (or that would be, with ``dry_run``).

        Raises:
            ValueError: ``keep_last`` is negative.
        """
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        names = [model] if model is not None else self.model_names()
        removed: list[str] = []
        for name in names:
            if dry_run:
                with self.engine.connect() as conn:
                    removed += [v for v, _ in self._doomed(conn, name, keep_last)]
                continue
            with self.lock(name):  # held until the files are gone: no registration restores one meanwhile
                with self._transaction(name, lock=False) as conn:
                    doomed = self._doomed(conn, name, keep_last)
                    if doomed:
                        conn.execute(version_table.update()
                                     .where(version_table.c.version.in_([v for v, _ in doomed]))
                                     .values(deleted_at=now_ms()))
                # Rows are marked first: a crash before the files go leaves unreferenced files,
                # never a live row without its artifacts; they are removed here, now or next time.
                with self.engine.connect() as conn:
                    gone = conn.execute(sa.select(version_table.c.version, version_table.c.artifact_path).where(
                        version_table.c.model == name, version_table.c.deleted_at.is_not(None))).all()
                for version, path in gone:
                    if (self.root / path).exists():
                        _remove_tree(self.root / path)
                        logger.info("retention: removed the artifacts of %s (%s)", version, name)
                if not is_remote(self.root):
                    for aside in (self.versions_dir / name).glob(".removing.*"):
                        shutil.rmtree(aside, ignore_errors=True)
            removed += [v for v, _ in doomed]
        return removed

    @staticmethod
    def _doomed(conn: Connection, model: str, keep_last: int) -> list[tuple[str, str]]:
        """``(version, artifact path)`` of ``model``'s live versions outside its retention set."""
        live = conn.execute(
            sa.select(version_table.c.version, version_table.c.artifact_path)
            .where(version_table.c.deleted_at.is_(None), version_table.c.model == model)
            .order_by(version_table.c.registered_at.desc(), version_table.c.version.desc())).all()
        ever = {v for (v,) in conn.execute(sa.select(event_table.c.to_version).where(
            event_table.c.model == model, event_table.c.alias == PRODUCTION, event_table.c.event != "keep")) if v}
        pointed = {v for (v,) in conn.execute(sa.select(alias_table.c.version).where(alias_table.c.model == model))}
        protected = {v for v, _ in live[:keep_last]} | ever | pointed
        return [(v, path) for v, path in live if v not in protected]


def _remove_tree(path: Any) -> None:
    """Remove a version folder: renamed aside first, so no reader sees a half-removed folder
    (in an object store, whose rows are marked removed first, the objects are deleted)."""
    if is_remote(path):
        remove(path)
        return
    if not path.exists():
        return
    aside = path.with_name(f".removing.{path.name}.{os.getpid()}")
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)
