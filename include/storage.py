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
but the store. The copies and the cache sit in a scratch folder private to the worker's user
(:func:`scratch_root`), and a cached copy is used only while its bytes still match the store's
ETag (:func:`_copy_object`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from include.errors import ConfigError, IntegrityError

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


def _file_md5(path: str | os.PathLike[str]) -> str:
    """The hex MD5 of a local file's bytes (what a single-part upload's ETag holds)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _download(source: Location, target: Path, md5: str | None = None) -> None:
    """Stream one object to a local file, published by ``os.replace`` once complete.

    Args:
        source: the object in the store.
        target: the local file; replaced only by bytes that passed the check.
        md5: the hex MD5 the object's bytes must have (its ETag); ``None``: not checked.

    Raises:
        IntegrityError: the downloaded bytes do not hash to ``md5``; ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        source.fs.get_file(source.path, tmp)
        if md5 is not None and (got := _file_md5(tmp)) != md5:
            raise IntegrityError(f"object {source}: the downloaded bytes have MD5 {got}, "
                                 f"the store's ETag says {md5}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _identity(info: dict[str, Any]) -> str:
    return f"{info.get('ETag') or info.get('etag') or info.get('LastModified')}:{info.get('size')}"


def _etag_md5(info: dict[str, Any]) -> str | None:
    """The hex MD5 of an object's bytes as its listing's ETag gives it, or ``None`` when the ETag is
    not one: a multipart upload's ETag is ``<MD5 of the parts' MD5s>-<number of parts>``
    (Amazon S3 documentation, "Checking object integrity"; MinIO, Ceph and moto do the same)."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
    return etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None


def _local_files(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime ns)}`` of the files under ``root``, leaving out temporary
    files and folders (a name starting with ``.``)."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            info = path.stat()
            out[rel.as_posix()] = (info.st_size, info.st_mtime_ns)
    return out


def scratch_root() -> Path:
    """This worker's folder for step copies of remote run folders and its object cache, private to
    the worker's user.

    ``ARTIFACT_SCRATCH_DIR``, by default ``<temporary directory>/market-artifacts-<uid>``: one per
    user, since every user of the machine shares the temporary directory. A missing folder is
    created with mode ``0700``. What the folder holds is read into tasks as the store's objects,
    so a folder that someone else owns or may enter is refused, not used.

    Returns:
        The folder: absolute, existing, owned by this process's (effective) user, mode ``0700``
        or stricter.

    Raises:
        ConfigError: the folder is not a directory (a symbolic link at the default path counts as
            one that is not), is owned by another user, or gives its group or others any access.
    """
    value = os.environ.get("ARTIFACT_SCRATCH_DIR")
    uid = os.geteuid()
    if value:
        root = Path(value).expanduser().resolve()
    else:
        root = Path(tempfile.gettempdir()).resolve() / f"market-artifacts-{uid}"
    with suppress(FileExistsError):  # a file or a link where the folder should be: refused below
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.lstat()
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != uid:
        problem = f"is owned by uid {info.st_uid}, not by this worker's user (uid {uid})"
    elif mode & 0o077:
        problem = f"has mode {mode:#o}, which lets its group or others in (expected 0o700)"
    else:
        return root
    setting = f"ARTIFACT_SCRATCH_DIR={value!r}" if value else "ARTIFACT_SCRATCH_DIR (unset, so its default)"
    raise ConfigError(f"{setting}: the scratch folder {root} {problem}; it must be a folder of this user's "
                      "that no one else can enter: fix its owner or mode (chmod 700), or name another one")


#: Cached objects not used for this long, and step copies left this long by a step that was
#: killed before it could remove its own, are removed from a worker's scratch folder (seconds).
OBJECT_CACHE_MAX_AGE_S = 86_400

#: Cached objects used this recently are kept whatever the cache's size: the run's next steps on
#: the worker are likely to read them again (seconds). An object a step is copying at the moment
#: is kept in any case, by the lock the step holds (:func:`_copy_object`).
OBJECT_CACHE_IN_USE_S = 900


def object_cache_max_bytes() -> int:
    """The most a worker's object cache may hold (``ARTIFACT_CACHE_MAX_MB``; default 5,120 MiB).

    Raises:
        ConfigError: the setting is not a positive number.
    """
    text = os.environ.get("ARTIFACT_CACHE_MAX_MB", "5120")
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(f"ARTIFACT_CACHE_MAX_MB={text!r}: expected a positive number of MiB")
    return int(value * 2**20)


def _copy_hashing(source: BinaryIO, target: Path) -> str:
    """Copy the rest of an open file to ``target`` (replacing it); the hex MD5 of the bytes copied."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(target, "wb") as out:
        while chunk := source.read(2**20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _copy_object(source: Location, info: dict[str, Any], target: Path) -> None:
    """Copy one object of the store to the local file ``target``, through the worker's object cache.

    The cache holds one file per object version, keyed by the object's path and identity (ETag
    and size), so another version of the object is another entry. A cached copy is used only if
    its bytes, as they are copied, hash to the MD5 the store's ETag holds: one that does not (a
    damaged disk, a planted file) is discarded with a warning and the object downloaded again. A
    download is checked the same way before it replaces anything. An object whose ETag is no MD5
    (a multipart upload) has nothing to check a cached copy by, so it is downloaded for each use
    and not cached.

    While it touches and copies a cached file the step holds a shared ``flock`` on it, which
    :func:`_prune_scratch` respects: the pruner cannot remove an object a step is copying.

    Args:
        source: the object in the store.
        info: its entry in the store's listing (``ETag``, ``size``).
        target: the local file to write.

    Raises:
        IntegrityError: the store's bytes, downloaded, do not hash to its ETag.
    """
    md5 = _etag_md5(info)
    if md5 is None:
        _download(source, target)
        return
    digest = hashlib.sha256(f"{source}\0{_identity(info)}".encode()).hexdigest()
    cached = scratch_root() / ".objects" / digest[:2] / digest
    try:
        fh = open(cached, "rb")  # noqa: SIM115 - closed below, after the lock and the copy
    except FileNotFoundError:
        fh = None
    if fh is not None:
        with fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            os.utime(fh.fileno())  # the pruner's record of use, read again under its lock
            if _copy_hashing(fh, target) == md5:
                return
            logger.warning("object cache: the cached copy %s of %s does not match the store's ETag; "
                           "discarded, downloading the object again", cached, source)
            target.unlink()
            if _same_file(fh, cached):
                cached.unlink()
    _download(source, target, md5)
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Kept through a temporary name, so a step copying the entry at once reads a whole file.
    fd, tmp = tempfile.mkstemp(prefix=f".{cached.name}.", dir=cached.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(target, "rb") as fresh:
            shutil.copyfileobj(fresh, out)
        os.replace(tmp, cached)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _same_file(fh: BinaryIO, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fh`` (not removed, nor replaced by another)."""
    try:
        return os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
    except FileNotFoundError:
        return False


def _evict(path: Path, listed_mtime_ns: int) -> bool:
    """Remove the cached object ``path`` unless a step holds it or used it after it was listed.

    The pruner chose ``path`` by the timestamp it listed; a step may have touched it since. Under
    an exclusive ``flock``, taken without waiting, the timestamp is read again and the object is
    removed only if it is unchanged.

    Returns:
        Whether the object was removed.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after the lock
    except FileNotFoundError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a step is copying it
            return False
        if os.fstat(fh.fileno()).st_mtime_ns > listed_mtime_ns or not _same_file(fh, path):
            return False
        path.unlink()
        return True


def _prune_scratch() -> None:
    """Remove what a worker's scratch folder no longer needs: cached objects unused for
    :data:`OBJECT_CACHE_MAX_AGE_S`, then the least recently used ones until the cache holds at
    most :func:`object_cache_max_bytes` (but for those used in the last
    :data:`OBJECT_CACHE_IN_USE_S`), and step copies a killed step left. A cached object a step is
    copying, or used since it was listed, is kept (:func:`_evict`)."""
    now = time.time()
    root = scratch_root()
    cached = []
    for path in (root / ".objects").glob("*/*"):
        try:
            listed = path.stat()
        except FileNotFoundError:
            continue
        if not (listed.st_mtime < now - OBJECT_CACHE_MAX_AGE_S and _evict(path, listed.st_mtime_ns)):
            cached.append((listed.st_mtime_ns, listed.st_size, path))
    excess = sum(size for _, size, _ in cached) - object_cache_max_bytes()
    for used_ns, size, path in sorted(cached):
        if excess <= 0 or used_ns > (now - OBJECT_CACHE_IN_USE_S) * 1e9:
            break
        if _evict(path, used_ns):
            excess -= size
    cutoff = now - OBJECT_CACHE_MAX_AGE_S
    for path in (root / "steps").iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            pass


def mirror(remote: Location, local: Path) -> dict[str, str]:
    """Copy every object under the folder ``remote`` into the empty folder ``local``.

    Objects come from the worker's object cache (:func:`_copy_object`): an object version a task
    on this worker already read is not downloaded again, as long as the cached copy still matches
    the store's ETag.

    Returns:
        ``{relative path: object identity}`` of the files copied.

    Raises:
        IntegrityError: an object's bytes, downloaded, do not hash to its ETag.
    """
    identities = {}
    for rel, info in _remote_files(remote).items():
        identities[rel] = _identity(info)
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_object(remote / rel, info, target)
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
