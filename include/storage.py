"""Where artifacts live: a local folder, or an S3-compatible object store through Airflow's
:class:`~airflow.sdk.ObjectStoragePath` (fsspec).

``RUN_ARTIFACTS_DIR`` and ``MODEL_REGISTRY_DIR`` take a local path (the default: nothing here
changes a one-machine deployment) or a URI such as ``s3://bucket/prefix``. A URI is opened with
the Airflow connection ``ARTIFACT_STORE_CONN_ID`` (default ``artifact_store``, an ``aws``
connection whose extra may name an ``endpoint_url`` for MinIO, Ceph or a local test server);
the scheme's filesystem comes from its provider (``s3``: ``apache-airflow-providers-amazon``).

Writes never leave half an artifact where a reader expects a whole one: a local file is written
to a temporary name and renamed over the target (``os.replace``), an object is uploaded in one
request that the store makes visible only when it completes (S3's PUT and multipart-complete
are atomic). A registry version and a fit-cache entry are in addition published by a database
row that records each file's sha256, which readers check against the bytes they load.

A task works on a local copy of its run folder (:func:`staged`): the pipeline's steps read and
write local files with pandas, joblib and Great Expectations, as on one machine. The folder is
copied from the store before the step (through the worker's cache of object versions) and the
step's changes are uploaded after it, so tasks of one run may run on workers that share nothing
but the store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: A local folder or an object-store location; both support ``/``, ``name``, ``parent``,
#: ``exists``, ``is_file``, ``read_bytes``, ``read_text``, ``iterdir`` and ``glob``.
Location = Any


def conn_id() -> str | None:
    """The Airflow connection of the object store (``ARTIFACT_STORE_CONN_ID``; default
    ``artifact_store``; empty: the filesystem's own credentials chain)."""
    value = os.environ.get("ARTIFACT_STORE_CONN_ID", "artifact_store")
    return value or None


def location(value: str | os.PathLike[str]) -> Location:
    """The artifact location a setting names.

    Args:
        value: a local path (``~`` expanded, made absolute), ``file://`` plus a path, or a URI of
            an object store (``s3://bucket/prefix``, any scheme a provider registers).

    Returns:
        ``pathlib.Path`` for a local path, else ``ObjectStoragePath`` bound to :func:`conn_id`.
    """
    text = os.fspath(value)
    if "://" in text and not text.startswith("file://"):
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(text.rstrip("/"), conn_id=conn_id())
    return Path(text.removeprefix("file://")).expanduser().resolve()


def is_remote(path: Location) -> bool:
    """Whether ``path`` is in an object store (an ``ObjectStoragePath`` of a remote protocol)
    rather than on this machine's filesystem (a ``str`` or ``pathlib`` path)."""
    return getattr(path, "protocol", None) not in (None, "", "file", "local")


def read_bytes(path: Location) -> bytes:
    """The whole content of ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist (locally or in the store).
    """
    if not is_remote(path):
        return Path(path).read_bytes()
    if not path.is_file():
        raise FileNotFoundError(str(path))
    return path.read_bytes()


def write_bytes(path: Location, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old content or all of ``data``.

    Locally through a flushed temporary file in the same folder and ``os.replace``; in an object
    store in one upload (visible only once complete).
    """
    if is_remote(path):
        path.write_bytes(data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Location, payload: Any) -> None:
    """:func:`write_bytes` of ``payload`` as indented JSON (keys sorted; ``str`` for other types)."""
    write_bytes(path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def remove(path: Location) -> None:
    """Remove a file or a whole folder (prefix); nothing if it does not exist."""
    if not is_remote(path):
        path = Path(path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    fs, key = path.fs, path.path
    if fs.exists(key):
        fs.rm(key, recursive=True)


def _remote_files(root: Location) -> dict[str, dict[str, Any]]:
    """``{relative path: info}`` of every object under ``root`` (empty if there is none)."""
    fs, base = root.fs, root.path.rstrip("/")
    fs.invalidate_cache(base)  # another worker may have written since this process listed it
    try:
        found = fs.find(base, detail=True)
    except FileNotFoundError:
        return {}
    return {name[len(base) + 1:]: info for name, info in found.items()
            if info.get("type") != "directory" and name.startswith(base + "/")}


def _download(source: Location, target: Path) -> None:
    """Stream one object to a local file, published by ``os.replace`` once complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        source.fs.get_file(source.path, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _identity(info: dict[str, Any]) -> str:
    return f"{info.get('ETag') or info.get('etag') or info.get('LastModified')}:{info.get('size')}"


def _local_files(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime ns)}`` of the files under ``root``, leaving out temporary
    files and folders (a name starting with ``.``)."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            stat = path.stat()
            out[rel.as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return out


def scratch_root() -> Path:
    """This worker's folder for step copies of remote run folders and its object cache
    (``ARTIFACT_SCRATCH_DIR``; default ``<temporary directory>/market-artifacts``)."""
    value = os.environ.get("ARTIFACT_SCRATCH_DIR")
    return Path(value).expanduser().resolve() if value else Path(tempfile.gettempdir()) / "market-artifacts"


#: Cached objects not used for this long, and step copies left this long by a step that was
#: killed before it could remove its own, are removed from a worker's scratch folder (seconds).
OBJECT_CACHE_MAX_AGE_S = 86_400

#: Cached objects used this recently are kept whatever the cache's size: a step running beside
#: the one that prunes may be copying them (seconds).
OBJECT_CACHE_IN_USE_S = 900


def object_cache_max_bytes() -> int:
    """The most a worker's object cache may hold (``ARTIFACT_CACHE_MAX_MB``; default 5,120 MiB).

    Raises:
        ConfigError: the setting is not a positive number.
    """
    from include.errors import ConfigError

    text = os.environ.get("ARTIFACT_CACHE_MAX_MB", "5120")
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(f"ARTIFACT_CACHE_MAX_MB={text!r}: expected a positive number of MiB")
    return int(value * 2**20)


def _cached(source: Location, identity: str) -> Path:
    """The worker's local copy of one version of an object (downloaded on first use).

    Keyed by the object's path and identity (ETag and size): another version of the object is
    another entry, so a stale copy is never returned.
    """
    import hashlib

    digest = hashlib.sha256(f"{source}\0{identity}".encode()).hexdigest()
    path = scratch_root() / ".objects" / digest[:2] / digest
    if path.is_file():
        os.utime(path)
    else:
        _download(source, path)
    return path


def _prune_scratch() -> None:
    """Remove what a worker's scratch folder no longer needs: cached objects unused for
    :data:`OBJECT_CACHE_MAX_AGE_S`, then the least recently used ones until the cache holds at
    most :func:`object_cache_max_bytes` (but for those used in the last
    :data:`OBJECT_CACHE_IN_USE_S`), and step copies a killed step left."""
    now = time.time()
    cached = []
    for path in (scratch_root() / ".objects").glob("*/*"):
        try:
            stat = path.stat()
            if stat.st_mtime < now - OBJECT_CACHE_MAX_AGE_S:
                path.unlink()
            else:
                cached.append((stat.st_mtime, stat.st_size, path))
        except FileNotFoundError:
            pass
    excess = sum(size for _, size, _ in cached) - object_cache_max_bytes()
    for used, size, path in sorted(cached):
        if excess <= 0 or used > now - OBJECT_CACHE_IN_USE_S:
            break
        path.unlink(missing_ok=True)
        excess -= size
    cutoff = now - OBJECT_CACHE_MAX_AGE_S
    for path in (scratch_root() / "steps").iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            pass


def mirror(remote: Location, local: Path) -> dict[str, str]:
    """Copy every object under the folder ``remote`` into the empty folder ``local``.

    Objects come from the worker's object cache (:func:`_cached`): an object version a task on
    this worker already read is not downloaded again.

    Returns:
        ``{relative path: object identity}`` of the files copied.
    """
    identities = {}
    for rel, info in _remote_files(remote).items():
        identities[rel] = _identity(info)
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_cached(remote / rel, identities[rel]), target)
    logger.debug("mirrored %s: %d file(s)", remote, len(identities))
    return identities


@contextmanager
def staged(folder: Location, *, name: str) -> Iterator[Path]:
    """A local folder holding ``folder``'s files for the duration of a step.

    A local ``folder`` is yielded as it is (created). A remote one is copied into a folder of the
    step's own under ``scratch_root()`` (:func:`mirror`), so steps running at once on one worker
    never share a copy; when the step ends, successfully or not, the files it created or changed
    are uploaded and those it removed are deleted from the store (a failed validation's report
    is kept too), and the copy is removed. Files and folders whose name starts with ``.`` are
    temporary and stay local.

    Args:
        folder: the run folder, local or in the store.
        name: a readable prefix of the step's folder (e.g. ``<dag>/<model>/<run key>``).
    """
    if not is_remote(folder):
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    steps = scratch_root() / "steps"
    steps.mkdir(parents=True, exist_ok=True)
    _prune_scratch()
    local = Path(tempfile.mkdtemp(prefix=name.replace("/", "_") + ".", dir=steps))
    try:
        mirror(folder, local)
        before = _local_files(local)
        try:
            yield local
        finally:
            after = _local_files(local)
            changed = [rel for rel, stat in after.items() if before.get(rel) != stat]
            for rel in changed:  # streamed from the file; the object appears once the upload completes
                target = folder / rel
                target.fs.put_file(str(local / rel), target.path)
            removed = set(before) - set(after)
            for rel in removed:
                remove(folder / rel)
            logger.info("run folder %s: %d file(s) uploaded, %d removed", folder, len(changed), len(removed))
    finally:
        shutil.rmtree(local, ignore_errors=True)
