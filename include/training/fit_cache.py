"""Content-addressed cache of fitted models and fold evaluations.

A weekly run cross-validates on the calendar weeks before its own, and under the rolling scheme
the fold that tests a given week trains on the same rows in every run that covers it
(:class:`~include.evaluation.WalkForward` with ``test_starts``); the model a run deploys is
fitted on the rows the next run's last fold trains on (:meth:`WalkForward.final_rows`). So
consecutive runs repeat all but one fit per family. The cache recognises a repeat by content:

* a **fit** is keyed by the family, its hyperparameters, seed, early-stopping rounds and split
  gap, the library versions, the training code's own version (a digest of the source of
  ``include/training/`` and ``include/evaluation.py``, :func:`training_code_digest`), and the
  exact bytes of the training rows (feature values, column names, bar times, labels);
* a **fold evaluation** (out-of-fold probabilities, permutation importance and the fit's
  boosting rounds) adds the exact bytes of the test rows and the importance seed; when it
  matches, the fold's fitted model is not loaded at all.

A key that matches means the same computation on the same inputs, so a hit returns what the
fit would have returned; any change to a bar, a label, a parameter or a library version is a
miss. Entries are joblib files written atomically under ``<runs_dir>/.fit_cache``: shared by the
tasks of one machine, or by every worker when ``RUN_ARTIFACTS_DIR`` is an object store
(:mod:`include.storage`). Unpickling runs code, so no file is trusted for being in the folder:
the sha256 of each entry's bytes is stored apart from it, in the market database's
``fit_cache_entry`` table (migration ``0007``), and :meth:`FitCache.get` hashes the very bytes it
then unpickles. A file whose digest does not match, that has no digest, or that cannot be read
is discarded with a warning and recomputed. Entries not used for ``max_age_days`` are removed
when the cache is opened (in an object store: entries written longer ago than that).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from include.data.store import MarketStore
from include.storage import is_remote, read_bytes, remove, write_bytes

metadata = sa.MetaData()

# The table of migration 0007, as the code queries it.
entry_table = sa.Table(
    "fit_cache_entry", metadata,
    sa.Column("key", sa.String(64), primary_key=True, comment="hex sha256 cache key"),
    sa.Column("sha256", sa.String(64), nullable=False, comment="hex sha256 of the entry file's bytes"),
    sa.Column("size", sa.BigInteger, nullable=False, comment="bytes"),
    sa.Column("written_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

#: The code whose behaviour a cached fit or fold evaluation depends on, relative to ``include/``.
TRAINING_CODE = ("training", "evaluation.py")

logger = logging.getLogger(__name__)


@cache
def _library_versions() -> dict[str, str]:
    import lightgbm
    import sklearn
    import xgboost

    return {"numpy": np.__version__, "scikit-learn": sklearn.__version__, "lightgbm": lightgbm.__version__,
            "xgboost": xgboost.__version__}


@cache
def training_code_digest() -> str:
    """SHA-256 of the source files that fit and evaluate models (:data:`TRAINING_CODE`).

    Any change to that code is a new key, so no fit made by other code is reused.
    """
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in TRAINING_CODE:
        path = root / rel
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def rows_digest(X: pd.DataFrame, y: np.ndarray | None = None) -> str:
    """SHA-256 of a table's exact content: column names, bar times, float64 values and labels.

    Args:
        X: feature rows, shape ``(n, k)``, indexed by bar open time.
        y: labels, shape ``(n,)``, or ``None``.
    """
    h = hashlib.sha256()
    h.update("\x1f".join(map(str, X.columns)).encode())
    h.update(np.ascontiguousarray(X.index.asi8 if isinstance(X.index, pd.DatetimeIndex)
                                  else np.asarray(X.index)).tobytes())
    h.update(np.ascontiguousarray(X.to_numpy(dtype="float64")).tobytes())
    if y is not None:
        h.update(np.ascontiguousarray(np.asarray(y, dtype="int64")).tobytes())
    return h.hexdigest()


def fit_key(family: str, params: dict[str, Any], *, random_state: int, early_stopping_rounds: int,
            gap: int, inner_validation_share: float, train_digest: str) -> str:
    """Cache key of one fit: everything that determines the fitted model."""
    ident = {"kind": "fit", "family": family, "params": params, "random_state": random_state,
             "early_stopping_rounds": early_stopping_rounds, "gap": gap,
             "inner_validation_share": inner_validation_share, "libraries": _library_versions(),
             "code": training_code_digest(), "train": train_digest}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def evaluation_key(fit: str, test_digest: str, random_state: int, n_repeats: int) -> str:
    """Cache key of one fold evaluation: the fit, the test rows and the importance seed."""
    ident = {"kind": "evaluation", "fit": fit, "test": test_digest, "random_state": random_state,
             "n_repeats": n_repeats}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


class FitCache:
    """A directory of cached fits and fold evaluations with their digests in a database (see the
    module docstring).

    Args:
        root: the cache directory (created on first write), local or in an object store.
        url: SQLAlchemy URL of the market database, which holds the entries' digests (migrated
            on open).
        max_age_days: entries not read or written for this long are removed on open.

    Raises:
        ConfigError: unsupported database URL (from the store).
    """

    def __init__(self, root: Any, url: str, max_age_days: float = 30.0) -> None:
        self.root = root
        self.engine = MarketStore(url).engine
        self.hits = 0
        self.misses = 0
        self.discarded = 0
        self._prune(max_age_days)

    def dispose(self) -> None:
        """Close pooled database connections."""
        self.engine.dispose()

    def _path(self, key: str) -> Any:
        return self.root / key[:2] / f"{key}.joblib"

    def _prune(self, max_age_days: float) -> None:
        if is_remote(self.root):  # objects keep no access time: age by the recorded write time
            cutoff_ms = int((time.time() - max_age_days * 86_400) * 1000)
            with self.engine.begin() as conn:
                old = list(conn.execute(sa.select(entry_table.c.key).where(entry_table.c.written_at < cutoff_ms))
                           .scalars())
                for key in old:
                    remove(self._path(key))
                if old:
                    conn.execute(entry_table.delete().where(entry_table.c.key.in_(old)))
            return
        if not self.root.is_dir():
            return
        cutoff = time.time() - max_age_days * 86_400
        gone = []
        for path in self.root.glob("*/*.joblib"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    gone.append(path.stem)
            except FileNotFoundError:
                pass
        if gone:
            with self.engine.begin() as conn:
                conn.execute(entry_table.delete().where(entry_table.c.key.in_(gone)))

    def _discard(self, key: str, path: Any, why: str) -> None:
        logger.warning("fit cache: discarding entry %s (%s); it is recomputed", path.name, why)
        remove(path)
        with self.engine.begin() as conn:
            conn.execute(entry_table.delete().where(entry_table.c.key == key))
        self.discarded += 1
        self.misses += 1

    def get(self, key: str) -> Any | None:
        """The entry stored under ``key``, or ``None``.

        The file's bytes are read once, hashed and compared with the digest recorded when the
        entry was written; only matching bytes are unpickled. A file without a recorded digest,
        with another digest, or that fails to unpickle is removed (a warning says why) and
        ``None`` is returned, so the caller recomputes.
        """
        import joblib

        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        with self.engine.connect() as conn:
            expected = conn.execute(sa.select(entry_table.c.sha256).where(entry_table.c.key == key)).scalar()
        if expected is None:
            self._discard(key, path, "no digest recorded for it: not written by this cache")
            return None
        try:
            data = read_bytes(path)
        except OSError as exc:
            self._discard(key, path, f"unreadable: {exc}")
            return None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            self._discard(key, path, f"sha256 {actual[:12]}… differs from the recorded {expected[:12]}…")
            return None
        try:
            value = joblib.load(io.BytesIO(data))
        except Exception as exc:  # verified bytes another library version cannot read
            self._discard(key, path, f"cannot be unpickled: {exc}")
            return None
        if not is_remote(path):
            os.utime(path)
        self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``: the file atomically (a reader never sees a partial
        file), then its digest."""
        import joblib

        buffer = io.BytesIO()
        joblib.dump(value, buffer)
        data = buffer.getvalue()
        write_bytes(self._path(key), data)
        row = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
               "written_at": int(datetime.now(UTC).timestamp() * 1000)}
        with self.engine.begin() as conn:
            conn.execute(entry_table.delete().where(entry_table.c.key == key))
            conn.execute(entry_table.insert().values(**row))
