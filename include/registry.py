"""Versioned model registry: immutable artifacts on disk, state and history in the database.

MLflow-style aliases with a history MLflow does not keep. Artifacts live under the registry root
(``models/`` by default; a path that could be an object store)::

    versions/<version_id>/   immutable: model.joblib, metadata.json (lineage), manifest.json

Every version belongs to one **registered model** (as in MLflow): one market and one target,
named like ``binance-btcusdt-perp-1h-h4`` (see :class:`RegisteredModel`). Aliases belong to a
registered model, so each market has its own ``production`` and ``challenger``.

State lives in the market store's database (SQLite by default, PostgreSQL when configured;
tables from migrations ``0003`` and ``0004``):

* ``registered_model`` — every registered model: exchange, symbol, market type, timeframe,
  label horizon and threshold rule.
* ``model_version`` — every version: its registered model, each file's sha256, the artifact
  path, the lineage.
* ``model_alias`` — where each alias of each registered model points: ``production`` (the
  champion) and ``challenger`` (the latest candidate the gate looked at).
* ``model_alias_event`` — append-only ledger: every alias move (model, from, to, when, DAG run,
  reason, gate decision), every "keep" decision and every removal of an alias.

A version id is ``v<interval end yyyymmddTHHMM>-<sha256 prefix>`` of its file hashes: the same
artifact always gets the same id. Moving an alias is one database transaction (alias row and
ledger row together) under a per-model lock (PostgreSQL advisory lock, plus a file lock on the
registry root), so a crash at any point leaves the previous version in place, two runs promoting
one model are applied one after the other, and two models never wait for each other. Before
unpickling, :meth:`ModelRegistry.load` hashes the very bytes it then unpickles and compares them
with the sha256 in the database (joblib files execute code when loaded).

**Rollback** goes to the version that held production before the current one and was not itself
rolled away from, so repeated rollbacks walk down the chain and never toggle between two
versions (:meth:`ModelRegistry.rollback_target`).

Command line: ``python -m include.registry --help`` (models, list, show, diff, promote,
rollback, history, verify, cleanup).
"""


from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import EllipsisType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from include.errors import IntegrityError, RegistryError

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


def load_verified(path: Path, expected_sha256: str, what: str) -> Any:
    """Unpickle a joblib file after checking the sha256 of the very bytes that are unpickled.

    Reading the file once and hashing those bytes closes the window in which a file checked on
    disk could be swapped before it is opened again.

    Args:
        path: the joblib file.
        expected_sha256: hex digest recorded by a trusted party (the registry database, or the
            XCom of the task that wrote the file).
        what: what the file is, for the error message.

    Raises:
        IntegrityError: the file is missing or its bytes do not hash to ``expected_sha256``.
    """
    import joblib

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{what}: {path} is missing") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise IntegrityError(
            f"{what}: {Path(path).name} sha256 {actual[:12]}… does not match the recorded {expected_sha256[:12]}…; "
            "refusing to load a modified artifact")
    return joblib.load(io.BytesIO(data))


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
#: Ledger events that moved production away from a version on purpose.
ROLLBACK_EVENTS = ("rollback", "auto_rollback")

_meta = sa.MetaData()
model_table = sa.Table(
    "registered_model", _meta,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("exchange", sa.String(32), nullable=False),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("market_type", sa.String(8), nullable=False),
    sa.Column("timeframe", sa.String(8), nullable=False),
    sa.Column("label_horizon_bars", sa.Integer, nullable=False),
    sa.Column("label_rule", sa.JSON, nullable=False, comment="label threshold rule: mode, threshold, vol_window_bars"),
    sa.Column("created_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)
version_table = sa.Table(
    "model_version", _meta,
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), sa.ForeignKey("registered_model.name", name="fk_model_version_model"),
              nullable=False, index=True),
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
    sa.Column("model", sa.String(128), sa.ForeignKey("registered_model.name"), primary_key=True),
    sa.Column("alias", sa.String(32), primary_key=True),
    sa.Column("version", sa.String(64), sa.ForeignKey("model_version.version"), nullable=False),
    sa.Column("since", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)
event_table = sa.Table(
    "model_alias_event", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False, index=True),
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


#: The label threshold rule that registered-model names leave out (the configuration default).
DEFAULT_LABEL_RULE = ("volatility", 0.43, 168)


@dataclass(frozen=True)
class RegisteredModel:
    """One market and one target: what a registered model forecasts. Its versions compete only
    with each other.

    Attributes:
        exchange: ccxt exchange id, e.g. ``binance``.
        symbol: instrument without separator, upper case, e.g. ``BTCUSDT``.
        market_type: ``perp`` or ``spot``.
        timeframe: bar length in ccxt notation, e.g. ``1h``.
        label_horizon_bars: forward-return horizon of the label, in bars.
        label_threshold_mode: ``volatility`` or ``fixed`` (see :mod:`include.labels`).
        label_threshold: k for volatility labels, or the log-return threshold for fixed ones.
        label_vol_window_bars: trailing window of the volatility estimate, in bars.
    """

    exchange: str
    symbol: str
    market_type: str
    timeframe: str
    label_horizon_bars: int
    label_threshold_mode: str = "volatility"
    label_threshold: float = 0.43
    label_vol_window_bars: int = 168

    @property
    def name(self) -> str:
        """Readable unique name: ``<exchange>-<symbol>-<market type>-<timeframe>-h<horizon>``.

        A label threshold rule other than the default (volatility, k = 0.43, 168 bars) is
        appended (``-fixed0.005``, ``-vol0.5w336``), so two targets never share a name.
        """
        name = (f"{self.exchange.lower()}-{self.symbol.lower()}-{self.market_type}-{self.timeframe}"
                f"-h{self.label_horizon_bars}")
        rule = (self.label_threshold_mode, float(self.label_threshold), int(self.label_vol_window_bars))
        if rule != DEFAULT_LABEL_RULE:
            if self.label_threshold_mode == "fixed":
                name += f"-fixed{self.label_threshold:g}"
            else:
                name += f"-vol{self.label_threshold:g}w{self.label_vol_window_bars}"
        return name

    @classmethod
    def from_lineage(cls, lineage: dict[str, Any]) -> RegisteredModel:
        """The registered model a version's lineage (``metadata.json``) describes.

        Raises:
            RegistryError: the lineage lacks the market or label fields.
        """
        config = lineage.get("config") or {}
        try:
            return cls(exchange=str(lineage["exchange"]).lower(), symbol=str(lineage["symbol"]).upper(),
                       market_type=lineage["market_type"], timeframe=lineage["timeframe"],
                       label_horizon_bars=int(config["label_horizon_bars"]),
                       label_threshold_mode=config.get("label_threshold_mode", "volatility"),
                       label_threshold=float(config.get("label_threshold", 0.43)),
                       label_vol_window_bars=int(config.get("label_vol_window_bars", 168)))
        except KeyError as exc:
            raise RegistryError(f"lineage lacks {exc.args[0]!r}: cannot tell which registered model it belongs to") \
                from None

    def to_dict(self) -> dict[str, Any]:
        """JSON view with the name."""
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class AliasPointer:
    """Where an alias of a registered model points.

    Attributes:
        model: registered model name.
        alias: ``production``, ``challenger``, …
        version: the version id.
        since: ISO time of the move.
        run_id: DAG run (or ``cli:<user>``) that moved it.
        reason: why.
        previous: the version it pointed at before the last move, if any.
    """

    model: str
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
    def lock(self, model: str, blocking: bool = True) -> Iterator[bool]:
        """Exclusive advisory file lock over one registered model's writes on this host.

        Yields:
            Whether the lock was acquired (always ``True`` when ``blocking``).
        """
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
    def _transaction(self, model: str) -> Iterator[Connection]:
        """A write transaction serialised with every other writer of the same registered model."""
        with self.lock(model), self.engine.begin() as conn:
            if self.backend == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                             {"key": f"model_registry:{model}"})
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
                        created_at=_now_ms()))
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
    def register(self, candidate_dir: str | Path, interval_end: datetime) -> str:
        """Copy a candidate folder into an immutable version of its registered model; return its id.

        The candidate folder must hold ``model.joblib`` and ``metadata.json`` (the lineage, which
        names the market and the label, hence the registered model; created if new). A manifest
        with each file's sha256 is added. Registering identical content twice returns the same id.

        Raises:
            RegistryError: the candidate lacks a required file, or its lineage does not name a
                market and label.
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
        lineage = json.loads((src / METADATA_FILE).read_text())
        model = self.ensure_model(RegisteredModel.from_lineage(lineage))
        relative = f"versions/{model}/{version}"
        target = self.root / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
            try:
                for name in files:
                    shutil.copy2(src / name, tmp / name)
                atomic_write_json(tmp / MANIFEST_FILE, {"files": files, "version": version, "model": model})
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        with self._transaction(model) as conn:
            if conn.execute(sa.select(version_table.c.version).where(version_table.c.version == version)).first() is None:
                conn.execute(version_table.insert().values(
                    version=version, model=model, interval_end=int(interval_end.timestamp() * 1000),
                    registered_at=_now_ms(), manifest_sha256=digest, files=files,
                    artifact_path=relative, lineage=lineage))
        logger.info("registered version %s of %s from %s", version, model, src)
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
            aliases = [a for (a,) in conn.execute(sa.select(alias_table.c.alias).where(alias_table.c.version == version))]
            held = sorted({a for (a,) in conn.execute(sa.select(event_table.c.alias).where(
                event_table.c.to_version == version, event_table.c.event != "keep"))})
        return {"version": version, "model": row.model, "interval_end": _iso(row.interval_end),
                "registered_at": _iso(row.registered_at), "manifest_sha256": row.manifest_sha256, "files": row.files,
                "artifact_path": row.artifact_path, "deleted_at": _iso(row.deleted_at), "aliases": aliases,
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
            raise RegistryError(f"version {version}: artifacts were removed by retention at {_iso(row.deleted_at)}")
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
        return AliasPointer(model, name, row.version, _iso(row.since), row.run_id, row.reason, previous)

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

        Raises:
            RegistryError: unknown or tampered version, or ``expected`` does not match.
        """
        row = self.verify(version) if verify else self._row(version)
        if row is None:
            raise RegistryError(f"no model version {version!r} in the registry")
        model = row.model
        where = (alias_table.c.model == model, alias_table.c.alias == name)
        with self._transaction(model) as conn:
            current = conn.execute(sa.select(alias_table.c.version).where(*where)).scalar()
            if expected is not ... and current != expected:
                raise RegistryError(f"{model}: alias {name} points at {current}, not {expected}: it moved meanwhile")
            now = _now_ms()
            values = {"version": version, "since": now, "run_id": run_id, "reason": reason}
            if current is None:
                conn.execute(alias_table.insert().values(model=model, alias=name, **values))
            elif current != version:
                conn.execute(alias_table.update().where(*where).values(**values))
            conn.execute(event_table.insert().values(
                model=model, alias=name, event=event, from_version=current, to_version=version, at=now,
                dag_id=dag_id, run_id=run_id, reason=reason if current != version else f"{reason} (already {name})",
                decision=decision))
        logger.info("%s: %s %s %s -> %s (%s)", event, model, name, current, version, reason)
        pointer = self.alias(model, name)
        assert pointer is not None
        return pointer

    def remove_alias(self, model: str, name: str, *, event: str, run_id: str, reason: str,
                     dag_id: str | None = None, expected: str | None | EllipsisType = ...) -> None:
        """Unset alias ``name`` of ``model`` and record it (ledger ``to`` is empty), in one transaction.

        Raises:
            RegistryError: ``expected`` is given and the alias points elsewhere.
        """
        where = (alias_table.c.model == model, alias_table.c.alias == name)
        with self._transaction(model) as conn:
            current = conn.execute(sa.select(alias_table.c.version).where(*where)).scalar()
            if expected is not ... and current != expected:
                raise RegistryError(f"{model}: alias {name} points at {current}, not {expected}: it moved meanwhile")
            conn.execute(alias_table.delete().where(*where))
            conn.execute(event_table.insert().values(
                model=model, alias=name, event=event, from_version=current, to_version=None, at=_now_ms(),
                dag_id=dag_id, run_id=run_id, reason=reason))
        logger.warning("%s: %s %s %s -> none (%s)", event, model, name, current, reason)

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
        """Record that a run kept ``model``'s production and did not promote ``candidate``."""
        with self._transaction(model) as conn:
            current = conn.execute(sa.select(alias_table.c.version).where(
                alias_table.c.model == model, alias_table.c.alias == PRODUCTION)).scalar()
            conn.execute(event_table.insert().values(
                model=model, alias=PRODUCTION, event="keep", from_version=current, to_version=current,
                candidate=candidate, at=_now_ms(), dag_id=dag_id, run_id=run_id, reason=reason, decision=decision))

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

    def previous_production(self, model: str) -> str | None:
        """The version a rollback of ``model`` restores (see :meth:`rollback_target`)."""
        return self.rollback_target(model)

    def rollback(self, model: str, version: str | None = None, *, run_id: str, reason: str,
                 event: str = "rollback", dag_id: str | None = None) -> AliasPointer:
        """Point ``model``'s production back at ``version`` (default: :meth:`rollback_target`).

        Raises:
            RegistryError: nothing to roll back to, ``version`` belongs to another registered
                model, or the target fails verification.
        """
        target = version or self.rollback_target(model)
        if target is None:
            raise RegistryError(f"{model}: no earlier production version to roll back to "
                                "(every earlier one was rolled away from, or there is none)")
        if self.model_of(target) != model:
            raise RegistryError(f"version {target} belongs to {self.model_of(target)}, not {model}")
        return self.move_alias(PRODUCTION, target, event=event, run_id=run_id, reason=reason, dag_id=dag_id)

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
        return [{"at": _iso(r.at), "model": r.model, "alias": r.alias, "event": r.event, "from": r.from_version,
                 "to": r.to_version, "candidate": r.candidate, "dag_id": r.dag_id, "run_id": r.run_id,
                 "reason": r.reason, "decision": r.decision} for r in rows]

    def ledger(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every decision about production (promote, keep, rollback, removal), oldest first."""
        return self.history(PRODUCTION, model=model)

    def production_on(self, model: str, when: datetime) -> str | None:
        """The version ``model``'s production pointed at, at time ``when`` (UTC); ``None`` if none."""
        ms = int(when.timestamp() * 1000)
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(event_table.c.to_version)
                .where(event_table.c.model == model, event_table.c.alias == PRODUCTION, event_table.c.at <= ms,
                       event_table.c.event != "keep")
                .order_by(event_table.c.id.desc()).limit(1)).scalar()

    # -- retention ----------------------------------------------------------------------------
    def cleanup(self, keep_last: int, *, dry_run: bool = False) -> list[str]:
        """Remove the artifacts of versions outside the retention set; their rows stay, marked.

        Kept, per registered model: the ``keep_last`` most recently registered versions, every
        version that ever held ``production``, and every version an alias points at now.

        Returns:
            The versions removed (or that would be, with ``dry_run``).
        """
        with self.engine.connect() as conn:
            live = conn.execute(
                sa.select(version_table.c.version, version_table.c.model, version_table.c.artifact_path)
                .where(version_table.c.deleted_at.is_(None))
                .order_by(version_table.c.registered_at.desc(), version_table.c.version.desc())).all()
            ever = {v for (v,) in conn.execute(sa.select(event_table.c.to_version).where(
                event_table.c.alias == PRODUCTION, event_table.c.event != "keep")) if v}
        recent: set[str] = set()
        seen: dict[str, int] = {}
        for version, model, _ in live:
            seen[model] = seen.get(model, 0) + 1
            if seen[model] <= keep_last:
                recent.add(version)
        protected = recent | ever | set(self.version_aliases())
        doomed = [(v, m, path) for v, m, path in live if v not in protected]
        if dry_run:
            return [v for v, _, _ in doomed]
        for version, model, path in doomed:
            with self._transaction(model) as conn:
                conn.execute(version_table.update().where(version_table.c.version == version)
                             .values(deleted_at=_now_ms()))
            shutil.rmtree(self.root / path, ignore_errors=True)
            logger.info("retention: removed the artifacts of %s (%s)", version, model)
        return [v for v, _, _ in doomed]


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
    sub.add_parser("models", help="registered models with their production version")
    sub.add_parser("list", help="versions with aliases and key metrics").add_argument(
        "--model", help="only this registered model")
    sub.add_parser("show", help="one version: model, files, lineage, aliases").add_argument("version")
    diff = sub.add_parser("diff", help="lineage and metric differences between two versions")
    diff.add_argument("a")
    diff.add_argument("b")
    promote = sub.add_parser("promote", help="make a version its model's production (verifies it first)")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True)
    rollback = sub.add_parser("rollback", help="roll a model's production back (verifies the target first)")
    rollback.add_argument("version", nargs="?", help="default: the previous production version not rolled away from")
    rollback.add_argument("--model", required=True, help="registered model name")
    rollback.add_argument("--reason", required=True)
    history = sub.add_parser("history", help="the ledger of an alias")
    history.add_argument("alias", nargs="?", default=PRODUCTION)
    history.add_argument("--model", help="only this registered model")
    sub.add_parser("verify", help="check artifact hashes").add_argument("version", nargs="*")
    clean = sub.add_parser("cleanup", help="apply retention (per registered model)")
    clean.add_argument("--keep", type=int, default=10)
    clean.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    registry = ModelRegistry.from_settings(Settings.from_env())
    actor = f"cli:{os.environ.get('USER', 'unknown')}"
    try:
        if getattr(args, "model", None):
            registry.model(args.model)  # an unknown name fails here, with the known ones listed
        if args.command == "models":
            _print(registry.models())
        elif args.command == "list":
            aliases = registry.version_aliases()
            rows = []
            for v in registry.versions(args.model):
                info = registry.describe(v)
                metrics = info["lineage"].get("metrics", {}).get("ensemble", {})
                rows.append({"version": v, "model": info["model"], "aliases": aliases.get(v, []),
                             "macro_f1": metrics.get("macro_f1"), "log_loss": metrics.get("log_loss")})
            _print(rows)
        elif args.command == "show":
            _print(registry.describe(args.version))
        elif args.command == "diff":
            a, b = (_flatten(registry.describe(v)) for v in (args.a, args.b))
            _print({k: {"a": a.get(k), "b": b.get(k)} for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k) and not k.startswith(("files.", "registered_at"))})
        elif args.command == "promote":
            _print(asdict(registry.promote(args.version, run_id=actor, reason=args.reason)))
        elif args.command == "rollback":
            _print(asdict(registry.rollback(args.model, args.version, run_id=actor, reason=args.reason)))
        elif args.command == "history":
            _print(registry.history(args.alias, model=args.model))
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
