"""Content-addressed cache of fitted models and fold evaluations.

A weekly run cross-validates on the calendar weeks before its own, and under the rolling scheme
the fold that tests a given week trains on the same rows in every run that covers it
(:class:`~include.evaluation.WalkForward` with ``test_starts``); the model a run deploys is
fitted on the rows the next run's last fold trains on (:meth:`WalkForward.final_rows`). So
consecutive runs repeat all but one fit per family. The cache recognises a repeat by content:

* a **fit** is keyed by the family, its hyperparameters, seed, early-stopping rounds and split
  gap, the library versions, and the exact bytes of the training rows (feature values, column
  names, bar times, labels);
* a **fold evaluation** (out-of-fold probabilities, permutation importance and the fit's
  boosting rounds) adds the exact bytes of the test rows and the importance seed; when it
  matches, the fold's fitted model is not loaded at all.

A key that matches means the same computation on the same inputs, so a hit returns what the
fit would have returned; any change to a bar, a label, a parameter or a library version is a
miss. Entries are joblib files written atomically under ``<runs_dir>/.fit_cache`` (shared by
the tasks of one worker); a file that cannot be read is discarded and recomputed. Entries not
used for ``max_age_days`` are removed when the cache is opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


@cache
def _library_versions() -> dict[str, str]:
    import lightgbm
    import sklearn
    import xgboost

    return {"numpy": np.__version__, "scikit-learn": sklearn.__version__, "lightgbm": lightgbm.__version__,
            "xgboost": xgboost.__version__}


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
             "train": train_digest}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def evaluation_key(fit: str, test_digest: str, random_state: int, n_repeats: int) -> str:
    """Cache key of one fold evaluation: the fit, the test rows and the importance seed."""
    ident = {"kind": "evaluation", "fit": fit, "test": test_digest, "random_state": random_state,
             "n_repeats": n_repeats}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


class FitCache:
    """A directory of cached fits and fold evaluations (see the module docstring).

    Args:
        root: the cache directory (created on first write).
        max_age_days: entries not read or written for this long are removed on open.
    """

    def __init__(self, root: Path, max_age_days: float = 30.0) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self._prune(max_age_days)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.joblib"

    def _prune(self, max_age_days: float) -> None:
        if not self.root.is_dir():
            return
        cutoff = time.time() - max_age_days * 86_400
        for path in self.root.glob("*/*.joblib"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                pass

    def get(self, key: str) -> Any | None:
        """The entry stored under ``key``, or ``None``; an unreadable entry is removed."""
        import joblib

        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            value = joblib.load(path)
        except Exception as exc:  # a truncated or foreign file: recompute rather than fail the run
            logger.warning("fit cache: discarding unreadable entry %s (%s)", path.name, exc)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        os.utime(path)
        self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` atomically (a reader never sees a partial file)."""
        import joblib

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                joblib.dump(value, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
