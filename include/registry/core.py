"""The :class:`ModelRegistry`: registered models, versions, aliases, ledger, rollback, retention."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from include.errors import ConfigError, IntegrityError, RegistryError
from include.identity import RegisteredModel
from include.locks import session_lock, transaction_lock
from include.registry.aliases import AliasLedger
from include.registry.artifacts import (
    MANIFEST_FILE,
    METADATA_FILE,
    MODEL_FILE,
    OOF_FILE,
    atomic_write_json,
    iso,
    load_verified,
    now_ms,
    sha256_file,
)
from include.registry.retention import Retention, _remove_tree
from include.registry.schema import (
    PRODUCTION,
    alias_table,
    event_table,
    model_table,
    version_table,
)
from include.storage import is_remote, remove, write_json

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


def _lock_key(model: str) -> str:
    """The advisory lock of one registered model's writes (:mod:`include.locks`)."""
    return f"model_registry:{model}"


class ModelRegistry(AliasLedger, Retention):
    """Model registry over artifacts under ``root`` and state in the database at ``url``.

    Registered models, versions, locking and retention are here; aliases and the ledger come
    from :class:`~include.registry.aliases.AliasLedger`.

    Args:
        root: artifact folder (created if missing), local or in an object store
            (:mod:`include.storage`).
        url: SQLAlchemy URL of the database (the market store's); migrated on open. PostgreSQL
            when ``root`` is in an object store: its advisory locks are what serialise writers
            on different machines.

    Raises:
        ConfigError: unsupported database URL (from the store's migration), or ``root`` in an
            object store with a database other than PostgreSQL (checked before anything is
            written).
    """

    def __init__(self, root: Any, url: str) -> None:
        from include.data.store import MarketStore

        if is_remote(root):
            _require_shared_lock(root, url)
        self.root = root if is_remote(root) else Path(root)
        self.versions_dir = self.root / "versions"
        if not is_remote(root):
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
    def lock(self, model: str, blocking: bool = True) -> Iterator[bool]:
        """Exclusive lock over one registered model's writes: an advisory file lock on this host
        for a local registry; a PostgreSQL session advisory lock, held on its own connection,
        for artifacts in an object store (writers on several machines; the constructor refuses
        any other database there).

        Yields:
            Whether the lock was acquired (always ``True`` when ``blocking``).
        """
        if is_remote(self.root):
            with session_lock(self.engine, _lock_key(model), blocking=blocking) as held:
                yield held
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / f".lock-{model}", "a+")  # noqa: SIM115 - held for the context's lifetime
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            fh.close()

    def is_locked(self, model: str) -> bool:
        """True while another process holds the write lock of ``model``."""
        with self.lock(model, blocking=False) as acquired:
            return not acquired

    @contextmanager
    def _transaction(self, model: str, *, lock: bool = True) -> Iterator[Connection]:
        """A write transaction serialised with every other writer of the same registered model
        (``lock=False``: the caller holds :meth:`lock` already).

        With artifacts in an object store, :meth:`lock` (a session lock) serialises every writer;
        with a local registry it is a file lock on this host, and the transaction also takes the
        model's advisory lock, for processes on other hosts that write the same database.
        """
        with self.lock(model) if lock else nullcontext(), self.engine.begin() as conn:
            if not is_remote(self.root):
                transaction_lock(conn, _lock_key(model))
            yield conn

    # -- registered models ----------------------------------------------------------------------
    def ensure_model(self, model: RegisteredModel) -> str:
        """Create the registered model if it does not exist yet; return its name.

        Raises:
            RegistryError: a registered model of that name exists with another definition.
        """
        name = model.name
        row = self._model_row(name)
        if row is None:
            with self._transaction(name) as conn:
                if conn.execute(sa.select(model_table.c.name).where(model_table.c.name == name)).first() is None:
                    conn.execute(model_table.insert().values(
                        name=name, exchange=model.exchange, symbol=model.symbol, market_type=model.market_type,
                        timeframe=model.timeframe, label_horizon_bars=model.label_horizon_bars,
                        label_rule={"mode": model.label_threshold_mode, "threshold": model.label_threshold,
                                    "vol_window_bars": model.label_vol_window_bars},
                        created_at=now_ms()))
                    logger.info("registered model %s created", name)
            return name
        if self._model_from_row(row) != model:
            raise RegistryError(f"registered model {name} exists with another definition: "
                                f"{self._model_from_row(row)} != {model}")
        return name

    def _model_row(self, name: str) -> sa.Row | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(model_table).where(model_table.c.name == name)).first()

    @staticmethod
    def _model_from_row(row: sa.Row) -> RegisteredModel:
        rule = row.label_rule
        return RegisteredModel(row.exchange, row.symbol, row.market_type, row.timeframe, int(row.label_horizon_bars),
                               rule["mode"], float(rule["threshold"]), int(rule["vol_window_bars"]))

    def model(self, name: str) -> RegisteredModel:
        """The definition of registered model ``name``.

        Raises:
            RegistryError: no such registered model.
        """
        row = self._model_row(name)
        if row is None:
            raise RegistryError(f"no registered model {name!r}; known: {', '.join(self.model_names()) or 'none'}")
        return self._model_from_row(row)

    def model_names(self) -> list[str]:
        """Names of every registered model, sorted."""
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(model_table.c.name).order_by(model_table.c.name))]

    def models(self) -> list[dict[str, Any]]:
        """Every registered model with its definition, production version and version count."""
        with self.engine.connect() as conn:
            counts = dict(conn.execute(sa.select(version_table.c.model, sa.func.count())
                                       .where(version_table.c.deleted_at.is_(None)).group_by(version_table.c.model)).all())
            aliases: dict[str, dict[str, str]] = {}
            for m, a, v in conn.execute(sa.select(alias_table.c.model, alias_table.c.alias, alias_table.c.version)):
                aliases.setdefault(m, {})[a] = v
        return [{**self.model(n).to_dict(), "production": aliases.get(n, {}).get(PRODUCTION),
                 "aliases": aliases.get(n, {}), "versions": counts.get(n, 0)} for n in self.model_names()]

    def resolve_model(self, name: str | None = None, *, symbol: str | None = None, market_type: str | None = None,
                      timeframe: str | None = None) -> str:
        """The one registered model a caller means: by name, or by symbol (+ market type, timeframe).

        Raises:
            RegistryError: no registered model matches, or several do (the message lists them).
        """
        if name:
            self.model(name)
            return name
        if not symbol:
            raise RegistryError("name a registered model, or give a symbol (and market type, timeframe)")
        matches = [m["name"] for m in self.models()
                   if m["symbol"] == symbol.upper() and market_type in (None, m["market_type"])
                   and timeframe in (None, m["timeframe"])]
        wanted = "/".join(x for x in (symbol.upper(), market_type, timeframe) if x)
        if not matches:
            raise RegistryError(f"no registered model forecasts {wanted}; known: {', '.join(self.model_names())}")
        if len(matches) > 1:
            raise RegistryError(f"{wanted} matches {len(matches)} registered models ({', '.join(matches)}): "
                                "name one, or add market_type / timeframe")
        return matches[0]

    # -- versions -----------------------------------------------------------------------------
    def register(self, candidate_dir: str | Path, interval_end: datetime, *, identity: str | None = None) -> str:
        """Copy a candidate folder into an immutable version of its registered model; return its id.

        The candidate folder must hold ``model.joblib`` and ``metadata.json`` (the lineage, which
        names the market and the label, hence the registered model; created if new). A manifest
        with each file's sha256 is added.

        The id is ``v<interval end>-<10 hex>``: the hex is ``identity`` when given (a digest of
        what the version was made from: inputs, code and configuration), else the digest of the
        files. Registering the same identity (or identical files) again returns the existing
        version, whose artifacts stay as first registered; if retention removed them, the
        candidate's files restore the version (same identity: the same inputs, code and
        configuration), with their own hashes.

        Crash safety: under the model's lock, the folder is staged under a temporary name, renamed
        into place and its row inserted in one transaction. A crash between the rename and the
        commit leaves a folder without a row, which the next registration replaces; a crash
        before the rename leaves a staging folder, which the next registration removes. In an
        object store each attempt uploads under a prefix of its own, which its row records
        (:meth:`_register_remote`).

        Args:
            identity: hex digest naming the version, e.g. from ``include.pipeline`` (the training
                data, feature spec, configuration, code and library versions).

        Raises:
            RegistryError: the candidate lacks a required file, or its lineage does not name a
                market and label.
        """
        src = Path(candidate_dir)
        files = _candidate_files(src)
        digest = hashlib.sha256(json.dumps({"files": files}, sort_keys=True).encode()).hexdigest()
        version = f"v{interval_end.strftime('%Y%m%dT%H%M')}-{(identity or digest)[:10]}"
        row = self._row(version)
        if row is not None and row.deleted_at is None:
            self.verify(version)
            return version
        lineage = json.loads((src / METADATA_FILE).read_text())
        model = self.ensure_model(RegisteredModel.from_lineage(lineage))
        if is_remote(self.root):
            return self._register_remote(src, files, digest, version, model, lineage, interval_end)
        restored = self._register_local(src, files, digest, version, model, lineage, interval_end)
        if restored:
            logger.warning("registered version %s of %s again from %s: retention had removed its artifacts",
                           version, model, src)
        else:
            logger.info("registered version %s of %s from %s", version, model, src)
        self.verify(version)
        return version

    def _register_local(self, src: Path, files: dict[str, str], digest: str, version: str, model: str,
                        lineage: dict[str, Any], interval_end: datetime) -> bool:
        """:meth:`register` into a local folder, ``versions/<model>/<version>``; returns whether it
        restored a version whose artifacts retention had removed (``False`` also when another run
        registered the version meanwhile, whose artifacts then stay).
        """
        relative = f"versions/{model}/{version}"
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        # Under the model's lock: stage the folder, publish it, insert (or restore) its row. Only
        # a lock holder stages, so a staging folder found here is a dead process's, and a folder
        # without a row is the orphan of a crash between publishing and committing: both are
        # never referenced by anyone, and are removed or replaced here.
        tmp: Path | None = None
        try:
            with self._transaction(model) as conn:
                for stale in target.parent.glob(f".{version}.*"):
                    logger.warning("register %s: removing %s, left by an interrupted registration", version, stale)
                    shutil.rmtree(stale, ignore_errors=True)
                current = conn.execute(sa.select(version_table).where(version_table.c.version == version)).first()
                if current is not None and current.deleted_at is None:
                    restored = False  # registered meanwhile by another run: its artifacts stay
                else:
                    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
                    for name in files:
                        shutil.copy2(src / name, tmp / name)
                    atomic_write_json(tmp / MANIFEST_FILE, {"files": files, "version": version, "model": model})
                    restored = current is not None
                    if target.exists():
                        logger.warning("register %s: replacing %s, a folder with no live registry row "
                                       "(left by an interrupted registration or retention)", version, target)
                        _remove_tree(target)
                    os.rename(tmp, target)
                    _write_version_row(conn, version, model, restored,
                                       interval_end=int(interval_end.timestamp() * 1000),
                                       registered_at=now_ms(), manifest_sha256=digest, files=files,
                                       artifact_path=relative, lineage=lineage)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return restored

    def _register_remote(self, src: Path, files: dict[str, str], digest: str, version: str, model: str,
                         lineage: dict[str, Any], interval_end: datetime) -> str:
        """:meth:`register` into an object store.

        Each attempt uploads under a prefix of its own, ``versions/<model>/<version>/<attempt>/``
        (an object appears whole or not at all), and the row it commits names that prefix. So a
        writer that finds no row but loses the race to commit one (the lock rules this out; the
        layout keeps the winner's objects whole should the lock ever fail) writes beside the
        winner's objects, never over them, and removes its own. Once its row is committed, an
        attempt removes, still under the lock, what other attempts left under the version's
        prefix without a row (a crash before their commit).
        """
        folder = self.root / "versions" / model / version
        relative = f"versions/{model}/{version}/{uuid.uuid4().hex}"
        target = self.root / relative
        uploaded = published = False
        try:
            with self.lock(model):
                try:
                    with self._transaction(model, lock=False) as conn:
                        current = conn.execute(
                            sa.select(version_table).where(version_table.c.version == version)).first()
                        restored = current is not None and current.deleted_at is not None
                        wrote = False
                        if current is None or restored:
                            uploaded = True
                            for name in files:
                                target.fs.put_file(str(src / name), (target / name).path)
                            write_json(target / MANIFEST_FILE, {"files": files, "version": version, "model": model})
                            wrote = _write_version_row(conn, version, model, restored,
                                                       interval_end=int(interval_end.timestamp() * 1000),
                                                       registered_at=now_ms(), manifest_sha256=digest, files=files,
                                                       artifact_path=relative, lineage=lineage)
                    published = wrote
                except sa.exc.IntegrityError:
                    # Another writer inserted the row after this one looked: a live row is theirs.
                    row = self._row(version)
                    if row is None or row.deleted_at is not None:
                        raise
                if published:
                    _remove_other_attempts(folder, target)
        finally:
            if uploaded and not published:
                remove(target)
        if published:
            logger.info("registered version %s of %s from %s in %s", version, model, src, target)
        elif uploaded:
            logger.warning("register %s: another writer registered it first; its artifacts stay and this "
                           "attempt's upload (%s) was removed", version, target)
        self.verify(version)
        return version

    def _row(self, version: str) -> sa.Row | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(version_table).where(version_table.c.version == version)).first()

    def model_of(self, version: str) -> str:
        """The registered model a version belongs to.

        Raises:
            RegistryError: no such version.
        """
        row = self._row(version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        return row.model

    def versions(self, model: str | None = None, include_deleted: bool = False) -> list[str]:
        """Version ids (of one registered model, or all), oldest training window first."""
        stmt = sa.select(version_table.c.version).order_by(version_table.c.interval_end,
                                                           version_table.c.registered_at)
        if model is not None:
            stmt = stmt.where(version_table.c.model == model)
        if not include_deleted:
            stmt = stmt.where(version_table.c.deleted_at.is_(None))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(stmt)]

    def describe(self, version: str) -> dict[str, Any]:
        """Everything the registry knows of a version: model, files, lineage, aliases now and ever held.

        Raises:
            RegistryError: no such version.
        """
        row = self._row(version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        with self.engine.connect() as conn:
            aliases = [a for (a,) in conn.execute(
                sa.select(alias_table.c.alias).where(alias_table.c.version == version))]
            held = sorted({a for (a,) in conn.execute(sa.select(event_table.c.alias).where(
                event_table.c.to_version == version, event_table.c.event != "keep"))})
        return {"version": version, "model": row.model, "interval_end": iso(row.interval_end),
                "registered_at": iso(row.registered_at), "manifest_sha256": row.manifest_sha256, "files": row.files,
                "artifact_path": row.artifact_path, "deleted_at": iso(row.deleted_at), "aliases": aliases,
                "aliases_ever": held, "lineage": row.lineage}

    def metadata(self, version: str) -> dict[str, Any]:
        """The version's lineage (its ``metadata.json`` as registered).

        Raises:
            RegistryError: no such version.
        """
        return self.describe(version)["lineage"]

    def _live_row(self, version: str) -> sa.Row:
        row = self._row(version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        if row.deleted_at is not None:
            raise RegistryError(f"version {version}: artifacts were removed by retention at {iso(row.deleted_at)}")
        return row

    def verify(self, version: str) -> sa.Row:
        """Check every artifact file of ``version`` against the sha256 the registry recorded.

        Returns:
            The version's registry row (model, files, artifact path, lineage).

        Raises:
            RegistryError: the version or a file is missing, or a hash differs
                (:class:`~include.errors.IntegrityError`).
        """
        row = self._live_row(version)
        vdir = self.root / row.artifact_path
        for name, expected in row.files.items():
            path = vdir / name
            if not path.is_file():
                raise IntegrityError(f"version {version}: file {name} is missing from {vdir}")
            actual = sha256_file(path)
            if actual != expected:
                raise IntegrityError(
                    f"version {version}: {name} sha256 {actual[:12]}… does not match the registry "
                    f"({expected[:12]}…); refusing to load a modified artifact")
        return row

    def load(self, version: str) -> tuple[Any, dict[str, Any]]:
        """Unpickle a version's model from bytes whose sha256 matches the registry; ``(model, lineage)``.

        Raises:
            RegistryError: no such version, or its artifacts were removed.
            IntegrityError: the model file is missing or its bytes differ from the registered hash.
        """
        row = self._live_row(version)
        model = load_verified(self.root / row.artifact_path / MODEL_FILE, row.files[MODEL_FILE],
                              f"version {version}")
        return model, row.lineage

    def out_of_fold(self, version: str) -> pd.DataFrame | None:
        """The version's out-of-fold record (:data:`OOF_FILE`), checked against its manifest hash.

        Returns:
            One row per out-of-fold bar (forecast, priors, label, fold, baselines), or ``None``
            for a version registered without one.

        Raises:
            RegistryError: no such version, or its artifacts were removed.
            IntegrityError: the file's bytes differ from the registered hash.
        """
        import io

        import pandas as pd

        row = self._live_row(version)
        if OOF_FILE not in row.files:
            return None
        path = self.root / row.artifact_path / OOF_FILE
        data = path.read_bytes() if path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != row.files[OOF_FILE]:
            raise IntegrityError(f"version {version}: {OOF_FILE} is missing or differs from its registered sha256")
        return pd.read_parquet(io.BytesIO(data))


def _candidate_files(src: Path) -> dict[str, str]:
    """The sha256 of each file in candidate folder ``src`` by name, its manifest left out.

    Raises:
        RegistryError: the candidate lacks ``model.joblib`` or ``metadata.json``.
    """
    for name in (MODEL_FILE, METADATA_FILE):
        if not (src / name).is_file():
            raise RegistryError(f"candidate {src} lacks {name}")
    return {p.name: sha256_file(p) for p in sorted(src.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}


def _write_version_row(conn: Connection, version: str, model: str, restored: bool, **values: Any) -> bool:
    """Insert a version's row, or bring back the row retention marked removed (``restored``).

    Returns:
        Whether the row was written: ``False`` when the row to restore is live again (another
        writer restored it first).

    Raises:
        sqlalchemy.exc.IntegrityError: the row to insert exists (another writer inserted it).
    """
    if restored:
        return conn.execute(version_table.update()
                            .where(version_table.c.version == version, version_table.c.deleted_at.is_not(None))
                            .values(deleted_at=None, **values)).rowcount == 1
    conn.execute(version_table.insert().values(version=version, model=model, **values))
    return True


def _remove_other_attempts(folder: Any, keep: Any) -> None:
    """Remove everything under a version's prefix ``folder`` in the object store except the
    attempt ``keep`` whose row is committed: uploads of attempts that never committed."""
    fs = folder.fs
    fs.invalidate_cache(folder.path)  # a listing cached earlier would not show the others' uploads
    try:
        entries = fs.ls(folder.path, detail=False)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.strip("/") != keep.path.strip("/"):
            logger.warning("register: removing %s, an upload of a registration that never committed", entry)
            fs.rm(entry, recursive=True)


def _require_shared_lock(root: Any, url: str) -> None:
    """Refuse a registry in an object store over a database without advisory locks.

    Writers on different machines are serialised by a PostgreSQL advisory lock; with SQLite each
    machine (or each worker with its own temporary folder) would only lock a file of its own, and
    two writers could register one version at once.

    Raises:
        ConfigError: ``url`` is not a PostgreSQL URL.
    """
    backend = sa.engine.make_url(url).get_backend_name()
    if backend != "postgresql":
        raise ConfigError(
            f"MODEL_REGISTRY_DIR={root} is in an object store, whose writers on different machines take a "
            "PostgreSQL advisory lock; the market database (MARKET_DB_URL, or the market_db connection) is "
            f"{backend}, which has no lock that another machine sees. Set MARKET_DB_URL to a PostgreSQL URL "
            "(postgresql+psycopg2://…), or keep MODEL_REGISTRY_DIR on a local path")
