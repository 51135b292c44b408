"""Versioned model registry: immutable artifacts on disk, state and history in the database.

MLflow-style aliases with a history MLflow does not keep. Artifacts live under the registry root
(``models/`` by default; a path that could be an object store)::

    versions/<version_id>/   immutable: model.joblib, metadata.json (lineage), manifest.json

State lives in the market store's database (SQLite by default, PostgreSQL when configured;
tables from migration ``0003``):

* ``model_version`` — every version: each file's sha256, the artifact path, the lineage.
* ``model_alias`` — where each alias points: ``production`` (the champion) and ``challenger``
  (the latest candidate the gate looked at).
* ``model_alias_event`` — append-only ledger: every alias move (from, to, when, DAG run, reason,
  gate decision) and every "keep" decision.

A version id is ``v<interval end yyyymmddTHHMM>-<sha256 prefix>`` of its file hashes: the same
artifact always gets the same id. Moving an alias is one database transaction (alias row and
ledger row together) under a lock (PostgreSQL advisory lock, plus a file lock on the registry
root), so a crash at any point leaves the previous version in place and two runs promoting at
once are applied one after the other. Before unpickling, :meth:`ModelRegistry.load` checks every
file's sha256 against the database (joblib files execute code when loaded).

Command line: ``python -m include.registry --help`` (list, show, diff, promote, rollback,
history, verify, cleanup).
"""


from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import EllipsisType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from include.errors import RegistryError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` via a flushed temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def code_version() -> str | None:
    """The project's git commit (``CODE_VERSION`` if set), or ``None`` outside a checkout."""
    if os.environ.get("CODE_VERSION"):
        return os.environ["CODE_VERSION"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


PRODUCTION, CHALLENGER = "production", "challenger"

_meta = sa.MetaData()
version_table = sa.Table(
    "model_version", _meta,
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("interval_end", sa.BigInteger, nullable=False, comment="end of the training data, ms UTC"),
    sa.Column("registered_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("files", sa.JSON, nullable=False, comment="file name -> sha256"),
    sa.Column("artifact_path", sa.String(512), nullable=False, comment="relative to the registry root"),
    sa.Column("lineage", sa.JSON, nullable=False, comment="the version's metadata.json"),
    sa.Column("deleted_at", sa.BigInteger, nullable=True, comment="artifacts removed by retention"),
)
alias_table = sa.Table(
    "model_alias", _meta,
    sa.Column("alias", sa.String(32), primary_key=True),
    sa.Column("version", sa.String(64), sa.ForeignKey("model_version.version"), nullable=False),
    sa.Column("since", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)
event_table = sa.Table(
    "model_alias_event", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alias", sa.String(32), nullable=False, index=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("from_version", sa.String(64), nullable=True),
    sa.Column("to_version", sa.String(64), nullable=True),
    sa.Column("candidate", sa.String(64), nullable=True),
    sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decision", sa.JSON, nullable=True, comment="the gate decision record"),
)


@dataclass(frozen=True)
class AliasPointer:
    """Where an alias points.

    Attributes:
        alias: ``production``, ``challenger``, …
        version: the version id.
        since: ISO time of the move.
        run_id: DAG run (or ``cli:<user>``) that moved it.
        reason: why.
        previous: the version it pointed at before, if any.
    """

    alias: str
    version: str
    since: str
    run_id: str
    reason: str
    previous: str | None


class ModelRegistry:
    """Model registry over artifacts under ``root`` and state in the database at ``url``.

    Args:
        root: artifact folder; created if missing.
        url: SQLAlchemy URL of the database (the market store's); migrated on open.

    Raises:
        ConfigError: unsupported database URL (from the store's migration).
    """

    def __init__(self, root: str | Path, url: str) -> None:
        from include.data.store import MarketStore

        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        store = MarketStore(url)  # validates the URL and applies the migrations
        self.engine: Engine = store.engine
        self.backend = store.backend

    @classmethod
    def from_settings(cls, settings: Any) -> ModelRegistry:
        """The registry of a deployment: ``settings.registry_dir`` and ``settings.market_db_url``."""
        return cls(settings.registry_dir, settings.market_db_url)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r}, {self.engine.url.render_as_string(hide_password=True)!r})"

    def dispose(self) -> None:
        """Close pooled database connections."""
        self.engine.dispose()

    # -- locking ------------------------------------------------------------------------------
    @contextmanager
    def lock(self, blocking: bool = True) -> Iterator[bool]:
        """Exclusive advisory file lock over registry writes on this host; yields whether acquired."""
        fh = open(self.root / ".lock", "a+")  # noqa: SIM115 - held for the context's lifetime
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            fh.close()

    def is_locked(self) -> bool:
        """True while another process holds the write lock."""
        with self.lock(blocking=False) as acquired:
            return not acquired

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A write transaction serialised with every other registry writer."""
        with self.lock(), self.engine.begin() as conn:
            if self.backend == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended('model_registry', 0))"))
            yield conn

    # -- versions -----------------------------------------------------------------------------
    def register(self, candidate_dir: str | Path, interval_end: datetime) -> str:
        """Copy a candidate folder into an immutable version and record it; return its id.

        The candidate folder must hold ``model.joblib`` and ``metadata.json`` (the lineage). A
        manifest with each file's sha256 is added. Registering identical content twice returns
        the same id.

        Raises:
            RegistryError: the candidate lacks a required file.
        """
        src = Path(candidate_dir)
        for name in (MODEL_FILE, METADATA_FILE):
            if not (src / name).is_file():
                raise RegistryError(f"candidate {src} lacks {name}")
        files = {p.name: sha256_file(p) for p in sorted(src.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
        digest = hashlib.sha256(json.dumps({"files": files}, sort_keys=True).encode()).hexdigest()
        version = f"v{interval_end.strftime('%Y%m%dT%H%M')}-{digest[:10]}"
        if self._row(version) is not None:
            self.verify(version)
            return version
        target = self.versions_dir / version
        if not target.exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
            try:
                for name in files:
                    shutil.copy2(src / name, tmp / name)
                atomic_write_json(tmp / MANIFEST_FILE, {"files": files, "version": version})
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        lineage = json.loads((target / METADATA_FILE).read_text())
        with self._transaction() as conn:
            if conn.execute(sa.select(version_table.c.version).where(version_table.c.version == version)).first() is None:
                conn.execute(version_table.insert().values(
                    version=version, interval_end=int(interval_end.timestamp() * 1000),
                    registered_at=_now_ms(), manifest_sha256=digest, files=files,
                    artifact_path=f"versions/{version}", lineage=lineage))
        logger.info("registered version %s from %s", version, src)
        return version

    def _row(self, version: str) -> sa.Row | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(version_table).where(version_table.c.version == version)).first()

    def versions(self, include_deleted: bool = False) -> list[str]:
        """Version ids, oldest training window first."""
        stmt = sa.select(version_table.c.version).order_by(version_table.c.interval_end,
                                                           version_table.c.registered_at)
        if not include_deleted:
            stmt = stmt.where(version_table.c.deleted_at.is_(None))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(stmt)]

    def describe(self, version: str) -> dict[str, Any]:
        """Everything the registry knows of a version: files, lineage, aliases now and ever held.

        Raises:
            RegistryError: no such version.
        """
        row = self._row(version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        with self.engine.connect() as conn:
            aliases = [a for (a,) in conn.execute(sa.select(alias_table.c.alias).where(alias_table.c.version == version))]
            held = sorted({a for (a,) in conn.execute(sa.select(event_table.c.alias).where(
                event_table.c.to_version == version, event_table.c.event != "keep"))})
        return {"version": version, "interval_end": _iso(row.interval_end), "registered_at": _iso(row.registered_at),
                "manifest_sha256": row.manifest_sha256, "files": row.files, "artifact_path": row.artifact_path,
                "deleted_at": _iso(row.deleted_at), "aliases": aliases, "aliases_ever": held,
                "lineage": row.lineage}

    def metadata(self, version: str) -> dict[str, Any]:
        """The version's lineage (its ``metadata.json`` as registered).

        Raises:
            RegistryError: no such version.
        """
        return self.describe(version)["lineage"]

    def verify(self, version: str) -> sa.Row:
        """Check every artifact file of ``version`` against the sha256 the registry recorded.

        Returns:
            The version's registry row (files, artifact path, lineage).

        Raises:
            RegistryError: the version or a file is missing, or a hash differs.
        """
        row = self._row(version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        if row.deleted_at is not None:
            raise RegistryError(f"version {version}: artifacts were removed by retention at {_iso(row.deleted_at)}")
        vdir = self.root / row.artifact_path
        for name, expected in row.files.items():
            path = vdir / name
            if not path.is_file():
                raise RegistryError(f"version {version}: file {name} is missing from {vdir}")
            actual = sha256_file(path)
            if actual != expected:
                raise RegistryError(
                    f"version {version}: {name} sha256 {actual[:12]}… does not match the registry "
                    f"({expected[:12]}…); refusing to load a modified artifact")
        return row

    def load(self, version: str) -> tuple[Any, dict[str, Any]]:
        """Verify, then unpickle a version's model; returns ``(model, lineage)``.

        Raises:
            RegistryError: see :meth:`verify`.
        """
        import joblib

        row = self.verify(version)
        return joblib.load(self.root / row.artifact_path / MODEL_FILE), row.lineage

    # -- aliases ------------------------------------------------------------------------------
    def alias(self, name: str) -> AliasPointer | None:
        """Where alias ``name`` points, or ``None`` if it was never set."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(alias_table).where(alias_table.c.alias == name)).first()
            if row is None:
                return None
            previous = conn.execute(
                sa.select(event_table.c.from_version)
                .where(event_table.c.alias == name, event_table.c.to_version == row.version,
                       event_table.c.event != "keep")
                .order_by(event_table.c.id.desc()).limit(1)).scalar()
        return AliasPointer(name, row.version, _iso(row.since), row.run_id, row.reason, previous)

    def production(self) -> AliasPointer | None:
        """The production alias, or ``None`` before the first promotion."""
        return self.alias(PRODUCTION)

    def load_production(self) -> tuple[Any, dict[str, Any]] | None:
        """``(model, lineage)`` of the production version, or ``None`` if there is none."""
        pointer = self.production()
        return None if pointer is None else self.load(pointer.version)

    def aliases(self) -> dict[str, str]:
        """alias -> version for every alias set."""
        with self.engine.connect() as conn:
            return {a: v for a, v in conn.execute(sa.select(alias_table.c.alias, alias_table.c.version))}

    def move_alias(self, name: str, version: str, *, event: str, run_id: str, reason: str,
                   dag_id: str | None = None, decision: dict[str, Any] | None = None,
                   expected: str | None | EllipsisType = ..., verify: bool = True) -> AliasPointer:
        """Point alias ``name`` at ``version`` and record the move, in one transaction.

        Args:
            event: what the move is (``promote``, ``rollback``, ``auto_rollback``, ``candidate``, ``set``).
            expected: if given (``None`` = "not set yet"), the version the alias must point at
                now (compare-and-set); a mismatch raises and changes nothing.
            verify: check the artifact hashes first.

        Raises:
            RegistryError: unknown or tampered version, or ``expected`` does not match.
        """
        if verify:
            self.verify(version)
        elif self._row(version) is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        with self._transaction() as conn:
            current = conn.execute(sa.select(alias_table.c.version).where(alias_table.c.alias == name)).scalar()
            if expected is not ... and current != expected:
                raise RegistryError(f"alias {name} points at {current}, not {expected}: it moved meanwhile")
            now = _now_ms()
            values = {"version": version, "since": now, "run_id": run_id, "reason": reason}
            if current is None:
                conn.execute(alias_table.insert().values(alias=name, **values))
            elif current != version:
                conn.execute(alias_table.update().where(alias_table.c.alias == name).values(**values))
            conn.execute(event_table.insert().values(
                alias=name, event=event, from_version=current, to_version=version, at=now, dag_id=dag_id,
                run_id=run_id, reason=reason if current != version else f"{reason} (already {name})",
                decision=decision))
        logger.info("%s: %s %s -> %s (%s)", event, name, current, version, reason)
        return self.alias(name)

    def promote(self, version: str, *, run_id: str, reason: str, decision: dict[str, Any] | None = None,
                dag_id: str | None = None, expected: str | None | EllipsisType = ...) -> AliasPointer:
        """Make ``version`` production, recording the gate decision with it.

        Raises:
            RegistryError: the version is missing or fails verification, or production moved
                away from ``expected`` (production unchanged).
        """
        return self.move_alias(PRODUCTION, version, event="promote", run_id=run_id, reason=reason,
                               dag_id=dag_id, decision=decision, expected=expected)

    def record_keep(self, candidate: str | None, *, run_id: str, reason: str,
                    decision: dict[str, Any] | None = None, dag_id: str | None = None) -> None:
        """Record that a run kept production and did not promote ``candidate``."""
        with self._transaction() as conn:
            current = conn.execute(sa.select(alias_table.c.version).where(alias_table.c.alias == PRODUCTION)).scalar()
            conn.execute(event_table.insert().values(
                alias=PRODUCTION, event="keep", from_version=current, to_version=current, candidate=candidate,
                at=_now_ms(), dag_id=dag_id, run_id=run_id, reason=reason, decision=decision))

    def previous_production(self) -> str | None:
        """The version production held before the current one."""
        pointer = self.production()
        return pointer.previous if pointer else None

    def rollback(self, version: str | None = None, *, run_id: str, reason: str, event: str = "rollback",
                 dag_id: str | None = None) -> AliasPointer:
        """Point production back at ``version`` (default: the previous production version).

        Raises:
            RegistryError: nothing to roll back to, or the target fails verification.
        """
        target = version or self.previous_production()
        if target is None:
            raise RegistryError("no previous production version to roll back to")
        return self.move_alias(PRODUCTION, target, event=event, run_id=run_id, reason=reason, dag_id=dag_id)

    # -- ledger -------------------------------------------------------------------------------
    def history(self, alias: str | None = None) -> list[dict[str, Any]]:
        """Ledger entries (of one alias, or all), oldest first.

        Each entry: ``at``, ``alias``, ``event``, ``from``, ``to``, ``candidate``, ``dag_id``,
        ``run_id``, ``reason``, ``decision``.
        """
        stmt = sa.select(event_table).order_by(event_table.c.id)
        if alias is not None:
            stmt = stmt.where(event_table.c.alias == alias)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [{"at": _iso(r.at), "alias": r.alias, "event": r.event, "from": r.from_version, "to": r.to_version,
                 "candidate": r.candidate, "dag_id": r.dag_id, "run_id": r.run_id, "reason": r.reason,
                 "decision": r.decision} for r in rows]

    def ledger(self) -> list[dict[str, Any]]:
        """Every decision about production (promote, keep, rollback), oldest first."""
        return self.history(PRODUCTION)

    def production_on(self, when: datetime) -> str | None:
        """The version production pointed at, at time ``when`` (UTC)."""
        ms = int(when.timestamp() * 1000)
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(event_table.c.to_version)
                .where(event_table.c.alias == PRODUCTION, event_table.c.at <= ms, event_table.c.event != "keep")
                .order_by(event_table.c.id.desc()).limit(1)).scalar()

    # -- retention ----------------------------------------------------------------------------
    def cleanup(self, keep_last: int, *, dry_run: bool = False) -> list[str]:
        """Remove the artifacts of versions outside the retention set; their rows stay, marked.

        Kept: the ``keep_last`` most recently registered versions, every version that ever held
        ``production``, and every version an alias points at now.

        Returns:
            The versions removed (or that would be, with ``dry_run``).
        """
        with self.engine.connect() as conn:
            live = [r[0] for r in conn.execute(
                sa.select(version_table.c.version).where(version_table.c.deleted_at.is_(None))
                .order_by(version_table.c.registered_at.desc(), version_table.c.version.desc()))]
            ever = {v for (v,) in conn.execute(sa.select(event_table.c.to_version).where(
                event_table.c.alias == PRODUCTION, event_table.c.event != "keep")) if v}
        protected = set(live[:keep_last]) | ever | set(self.aliases().values())
        doomed = [v for v in live if v not in protected]
        if dry_run:
            return doomed
        for version in doomed:
            with self._transaction() as conn:
                conn.execute(version_table.update().where(version_table.c.version == version)
                             .values(deleted_at=_now_ms()))
            shutil.rmtree(self.versions_dir / version, ignore_errors=True)
            logger.info("retention: removed the artifacts of %s", version)
        return doomed


# -- command line ---------------------------------------------------------------------------------
def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def main(argv: list[str] | None = None) -> int:
    """``python -m include.registry``: inspect and operate the registry of this deployment."""
    from include.config import Settings

    parser = argparse.ArgumentParser(prog="python -m include.registry", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="versions with aliases and key metrics")
    sub.add_parser("show", help="one version: files, lineage, aliases").add_argument("version")
    diff = sub.add_parser("diff", help="lineage and metric differences between two versions")
    diff.add_argument("a")
    diff.add_argument("b")
    for name in ("promote", "rollback"):
        cmd = sub.add_parser(name, help=f"{name} production (verifies the artifacts first)")
        cmd.add_argument("version", nargs="?" if name == "rollback" else None)
        cmd.add_argument("--reason", required=True)
    sub.add_parser("history", help="the ledger of an alias").add_argument("alias", nargs="?", default=PRODUCTION)
    sub.add_parser("verify", help="check artifact hashes").add_argument("version", nargs="*")
    clean = sub.add_parser("cleanup", help="apply retention")
    clean.add_argument("--keep", type=int, default=10)
    clean.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    registry = ModelRegistry.from_settings(Settings.from_env())
    actor = f"cli:{os.environ.get('USER', 'unknown')}"
    try:
        if args.command == "list":
            aliases: dict[str, list[str]] = {}
            for alias, version in registry.aliases().items():
                aliases.setdefault(version, []).append(alias)
            rows = []
            for v in registry.versions():
                metrics = registry.metadata(v).get("metrics", {}).get("ensemble", {})
                rows.append({"version": v, "aliases": aliases.get(v, []),
                             "macro_f1": metrics.get("macro_f1"), "log_loss": metrics.get("log_loss")})
            _print(rows)
        elif args.command == "show":
            _print(registry.describe(args.version))
        elif args.command == "diff":
            a, b = (_flatten(registry.describe(v)) for v in (args.a, args.b))
            _print({k: {"a": a.get(k), "b": b.get(k)} for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k) and not k.startswith(("files.", "registered_at"))})
        elif args.command == "promote":
            _print(registry.promote(args.version, run_id=actor, reason=args.reason).__dict__)
        elif args.command == "rollback":
            _print(registry.rollback(args.version, run_id=actor, reason=args.reason).__dict__)
        elif args.command == "history":
            _print(registry.history(args.alias))
        elif args.command == "verify":
            for v in args.version or registry.versions():
                registry.verify(v)
                print(f"{v}: ok")
        elif args.command == "cleanup":
            _print({"removed" if not args.dry_run else "would_remove": registry.cleanup(args.keep, dry_run=args.dry_run)})
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
