"""Versioned model registry on disk: immutable versions, a production pointer, an archive, a ledger.

Layout under the registry root (``models/`` by default)::

    versions/<version_id>/      immutable: model.joblib, metadata.json, manifest.json
    production.json             the pointer: which version serves, since when, and why
    archive/<version_id>.json   one record per version that left production
    ledger.jsonl                append-only: every promote / keep / rollback decision
    .lock                       advisory lock serialising writers (fcntl)

A version id is ``v<interval end yyyymmddTHHMM>-<sha256 prefix>`` of its manifest, so the same
artifact always gets the same id and a changed one a new id. Versions are written to a
temporary folder and renamed into place; the pointer is replaced with ``os.replace`` after the
new content is flushed to disk. A crash at any point leaves either the old or the new pointer,
each naming a complete version. Before unpickling, :meth:`ModelRegistry.load` checks every file's
sha256 against the manifest (joblib files execute code when loaded).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ProductionPointer:
    """Contents of ``production.json``.

    Attributes:
        version: serving version id.
        since: ISO time of the promotion.
        run_id: DAG run (or ``manual``) that moved the pointer.
        reason: why.
        previous: the version it replaced, if any.
    """

    version: str
    since: str
    run_id: str
    reason: str
    previous: str | None


class ModelRegistry:
    """File-system model registry (see module docstring for the layout).

    Args:
        root: registry folder; created if missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.archive_dir = self.root / "archive"
        self.pointer_path = self.root / "production.json"
        self.ledger_path = self.root / "ledger.jsonl"
        for d in (self.versions_dir, self.archive_dir):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # -- locking ------------------------------------------------------------------------------
    @contextmanager
    def lock(self, blocking: bool = True) -> Iterator[bool]:
        """Exclusive advisory lock over registry writes; yields whether it was acquired."""
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

    # -- versions -----------------------------------------------------------------------------
    def register(self, candidate_dir: str | Path, interval_end: datetime) -> str:
        """Copy a candidate folder into an immutable version; return its id.

        The candidate folder must hold ``model.joblib`` and ``metadata.json``. A manifest with
        each file's sha256 is added. Registering identical content twice returns the same id.

        Raises:
            RegistryError: the candidate lacks a required file.
        """
        src = Path(candidate_dir)
        for name in (MODEL_FILE, METADATA_FILE):
            if not (src / name).is_file():
                raise RegistryError(f"candidate {src} lacks {name}")
        files = {p.name: sha256_file(p) for p in sorted(src.iterdir()) if p.is_file()}
        manifest = {"files": files}
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        version = f"v{interval_end.strftime('%Y%m%dT%H%M')}-{digest[:10]}"
        target = self.versions_dir / version
        if target.exists():
            self.verify(version)
            return version
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
        try:
            for name in files:
                shutil.copy2(src / name, tmp / name)
            atomic_write_json(tmp / MANIFEST_FILE, {**manifest, "version": version, "registered_at": _now()})
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("registered version %s from %s", version, src)
        return version

    def versions(self) -> list[str]:
        """All complete version ids, oldest interval first."""
        return sorted(p.name for p in self.versions_dir.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file())

    def metadata(self, version: str) -> dict[str, Any]:
        """The version's ``metadata.json``.

        Raises:
            RegistryError: no such version.
        """
        path = self.versions_dir / version / METADATA_FILE
        if not path.is_file():
            raise RegistryError(f"no model version {version!r} in {self.versions_dir}")
        return json.loads(path.read_text())

    def verify(self, version: str) -> None:
        """Check every file of ``version`` against its manifest's sha256.

        Raises:
            RegistryError: the version or a file is missing, or a hash differs.
        """
        vdir = self.versions_dir / version
        manifest_path = vdir / MANIFEST_FILE
        if not manifest_path.is_file():
            raise RegistryError(f"no model version {version!r} in {self.versions_dir}")
        manifest = json.loads(manifest_path.read_text())
        for name, expected in manifest["files"].items():
            path = vdir / name
            if not path.is_file():
                raise RegistryError(f"version {version}: file {name} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise RegistryError(
                    f"version {version}: {name} sha256 {actual[:12]}… does not match the manifest "
                    f"({expected[:12]}…); refusing to load a modified artifact")

    def load(self, version: str) -> tuple[Any, dict[str, Any]]:
        """Verify, then unpickle a version's model; returns ``(model, metadata)``.

        Raises:
            RegistryError: see :meth:`verify`.
        """
        import joblib

        self.verify(version)
        return joblib.load(self.versions_dir / version / MODEL_FILE), self.metadata(version)

    # -- production pointer -------------------------------------------------------------------
    def production(self) -> ProductionPointer | None:
        """The current pointer, or ``None`` before the first promotion."""
        if not self.pointer_path.is_file():
            return None
        return ProductionPointer(**json.loads(self.pointer_path.read_text()))

    def load_production(self) -> tuple[Any, dict[str, Any]] | None:
        """``(model, metadata)`` of the production version, or ``None`` if there is none."""
        pointer = self.production()
        return None if pointer is None else self.load(pointer.version)

    def _move_pointer(self, version: str, *, event: str, run_id: str, reason: str,
                      details: dict[str, Any] | None = None) -> ProductionPointer:
        with self.lock():
            self.verify(version)
            old = self.production()
            if old is not None and old.version == version:
                self._append_ledger({"event": event, "from": version, "to": version, "run_id": run_id,
                                     "reason": f"{reason} (already production)", **(details or {})})
                return old
            pointer = ProductionPointer(version=version, since=_now(), run_id=run_id, reason=reason,
                                        previous=old.version if old else None)
            if old is not None:
                atomic_write_json(self.archive_dir / f"{old.version}.json", {
                    "version": old.version, "production_since": old.since, "archived_at": pointer.since,
                    "replaced_by": version, "run_id": run_id, "event": event})
            atomic_write_json(self.pointer_path, pointer.__dict__)
            self._append_ledger({"event": event, "from": pointer.previous, "to": version,
                                 "run_id": run_id, "reason": reason, **(details or {})})
        logger.info("%s: production %s -> %s (%s)", event, pointer.previous, version, reason)
        return pointer

    def promote(self, version: str, *, run_id: str, reason: str,
                decision: dict[str, Any] | None = None) -> ProductionPointer:
        """Make ``version`` production; archive the previous one; record it in the ledger.

        Raises:
            RegistryError: the version is missing or fails verification (production unchanged).
        """
        return self._move_pointer(version, event="promote", run_id=run_id, reason=reason,
                                  details={"decision": decision} if decision else None)

    def record_keep(self, candidate: str | None, *, run_id: str, reason: str,
                    decision: dict[str, Any] | None = None) -> None:
        """Record that a run kept production and did not promote ``candidate``."""
        with self.lock():
            pointer = self.production()
            self._append_ledger({"event": "keep", "from": pointer.version if pointer else None,
                                 "to": pointer.version if pointer else None, "candidate": candidate,
                                 "run_id": run_id, "reason": reason,
                                 **({"decision": decision} if decision else {})})

    def previous_production(self) -> str | None:
        """The version production held before the current one, from the ledger."""
        pointer = self.production()
        return pointer.previous if pointer else None

    def rollback(self, version: str | None = None, *, run_id: str, reason: str) -> ProductionPointer:
        """Point production back at ``version`` (default: the previous production version).

        Raises:
            RegistryError: nothing to roll back to, or the target fails verification.
        """
        target = version or self.previous_production()
        if target is None:
            raise RegistryError("no previous production version to roll back to")
        return self._move_pointer(target, event="rollback", run_id=run_id, reason=reason)

    # -- ledger -------------------------------------------------------------------------------
    def _append_ledger(self, entry: dict[str, Any]) -> None:
        line = json.dumps({"at": _now(), **entry}, sort_keys=True, default=str)
        with open(self.ledger_path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def ledger(self) -> list[dict[str, Any]]:
        """Every ledger entry, oldest first."""
        if not self.ledger_path.is_file():
            return []
        return [json.loads(line) for line in self.ledger_path.read_text().splitlines() if line.strip()]
