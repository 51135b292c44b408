"""Registry artifacts on disk: hashing, verified unpickling, atomic JSON, the code version."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.errors import IntegrityError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"

METADATA_FILE = "metadata.json"

#: The candidate's out-of-fold record (ensemble forecasts, priors, labels, baselines per row).
OOF_FILE = "oof.parquet"

MANIFEST_FILE = "manifest.json"


def sha256_file(path: Any) -> str:
    """Hex sha256 of a file's bytes, local or in the object store (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with (Path(path) if isinstance(path, str) else path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_verified(path: Any, expected_sha256: str, what: str) -> Any:
    """Unpickle a joblib file after checking the sha256 of the very bytes that are unpickled.

    Reading the file once and hashing those bytes closes the window in which a file checked on
    disk could be swapped before it is opened again.

    Args:
        path: the joblib file, local or in the object store.
        expected_sha256: hex digest recorded by a trusted party (the registry database, or the
            XCom of the task that wrote the file).
        what: what the file is, for the error message.

    Raises:
        IntegrityError: the file is missing or its bytes do not hash to ``expected_sha256``.
    """
    import joblib

    from include.storage import read_bytes

    path = Path(path) if isinstance(path, str) else path
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise IntegrityError(f"{what}: {path} is missing") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise IntegrityError(
            f"{what}: {path.name} sha256 {actual[:12]}… does not match the recorded {expected_sha256[:12]}…; "
            "refusing to load a modified artifact")
    return joblib.load(io.BytesIO(data))


def atomic_write_json(path: Any, payload: Any) -> None:
    """Write JSON to ``path``, local or in the object store, atomically
    (:func:`include.storage.write_json`)."""
    from include.storage import write_json

    write_json(path, payload)


def now_ms() -> int:
    """Now, in ms since the epoch (UTC): the registry's time unit."""
    return int(datetime.now(UTC).timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    """ISO-8601 UTC text of a ms timestamp (seconds precision); ``None`` stays ``None``."""
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
