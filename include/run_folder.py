"""A run's folder: where a market's weekly run keeps its artifacts, and what it writes there.

``<RUN_ARTIFACTS_DIR>/<dag_id>/<registered model>/<interval start>_<interval end>/``, derived
from the registered model and the data interval, so two markets never share a folder and
re-running a run overwrites exactly its own outputs; local, or staged from an object store.
Also the files every step leaves in it: the summary, the skip marker, the step timings, and
Parquet and JSON written through a temporary file and a rename.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from include.config import Settings
from include.errors import ConfigError
from include.paths import check_name
from include.storage import is_remote, staged, write_json
from include.windows import RunWindow, run_key

logger = logging.getLogger(__name__)


F = TypeVar("F", bound=Callable[..., Any])


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``: strict JSON for XCom."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def version_run_dir(settings: Settings, model: str, lineage: dict[str, Any]) -> Any:
    """The run folder that made a registered version, from its lineage (it may have been cleaned);
    local or in the object store, as ``settings.runs_dir``."""
    window = lineage["data_window"]
    start, end = (datetime.fromisoformat(window[k]) for k in ("interval_start", "interval_end"))
    dag_id = check_name(lineage.get("dag_id") or "weekly_retrain", "DAG id")
    return settings.runs_dir / dag_id / check_name(model, "registered model name") / run_key(start, end)


def run_location(settings: Settings, dag_id: str, model: str, window: RunWindow) -> Any:
    """Where one registered model's run over one data interval keeps its artifacts: a folder
    under ``settings.runs_dir``, local or in the object store (not created).

    Raises:
        ConfigError: ``dag_id`` or ``model`` is not a safe path component.
    """
    return (settings.runs_dir / check_name(dag_id, "DAG id") / check_name(model, "registered model name")
            / window.run_key)


def run_dir(settings: Settings, dag_id: str, model: str, window: RunWindow) -> Path:
    """The local artifact folder of one registered model's run over one data interval (created).

    Raises:
        ConfigError: ``dag_id`` or ``model`` is not a safe path component, or the run artifacts
            are in an object store: then use :func:`staged_run_dir`.
    """

    path = run_location(settings, dag_id, model, window)
    if is_remote(path):
        raise ConfigError(f"RUN_ARTIFACTS_DIR is an object store ({settings.runs_dir}): a step works on "
                          "a staged local copy of its run folder (include.run_folder.staged_run_dir)")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def staged_run_dir(settings: Settings, dag_id: str, model: str, window: RunWindow) -> Iterator[Path]:
    """A local folder with the run's artifacts for one step (:func:`include.storage.staged`):
    the run folder itself when local; a mirror of it whose changes are uploaded after the step
    when ``RUN_ARTIFACTS_DIR`` is an object store.

    Raises:
        ConfigError: ``dag_id`` or ``model`` is not a safe path component.
    """

    folder = run_location(settings, dag_id, model, window)
    with staged(folder, name=f"{dag_id}/{model}/{window.run_key}") as path:
        yield path


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` through a temporary file and a rename: never half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        frame.to_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: Files a market's run leaves for the universe summary; removed when the run starts again.
SUMMARY_FILE, SKIPPED_FILE = "summary.json", "skipped.json"


@dataclass(frozen=True)
class RunFolder:
    """The files of one market's run folder, each named once: what the steps write, and what the
    report, the pages, the benchmarks and the next steps read.

    Attributes:
        path: the folder (local, or staged from the object store: :func:`staged_run_dir`).
    """

    path: Path

    @property
    def validation(self) -> Path:
        """The validate step's report (JSON: per suite, rows, failures, Data Docs)."""
        return self.path / "validation.json"

    @property
    def features(self) -> Path:
        """The features step's rows (Parquet, ``(n_bars, n_features)`` plus ``close``)."""
        return self.path / "features.parquet"

    @property
    def feature_spec(self) -> Path:
        """The feature spec the features were computed with (JSON, with its sha256)."""
        return self.path / "feature_spec.json"

    @property
    def dataset(self) -> Path:
        """The modelling table: features and their labels (Parquet)."""
        return self.path / "dataset.parquet"

    @property
    def candidates(self) -> Path:
        """The trained members' folders (:meth:`member`) and the assembled ``ensemble``'s."""
        return self.path / "candidates"

    def member(self, family: str) -> Path:
        """A trained family's folder (``ensemble`` for the assembled candidate): ``model.joblib``,
        ``oof.parquet`` (its out-of-fold forecasts), ``metadata.json``."""
        return self.candidates / family

    @property
    def ensemble_oof(self) -> Path:
        """The ensemble's out-of-fold record with the trading decision's inputs (Parquet)."""
        return self.path / "ensemble_oof.parquet"

    @property
    def trading(self) -> Path:
        """The trading step's simulations (JSON)."""
        return self.path / "trading.json"

    @property
    def trading_returns(self) -> Path:
        """Per-bar net returns of the out-of-fold strategy and the momentum rule (Parquet; the
        gate's trading tests)."""
        return self.path / "trading_returns.parquet"

    @property
    def gate_decision(self) -> Path:
        """The gate's record (JSON: every check, its evidence, the decision)."""
        return self.path / "gate_decision.json"

    @property
    def report(self) -> Path:
        """The run report (HTML)."""
        return self.path / "report.html"

    @property
    def summary(self) -> Path:
        """The market's summary (JSON) for the universe summary."""
        return self.path / SUMMARY_FILE


#: Folder of a run's step timings, one JSON file per step (:func:`timed_step`).
STEP_TIMES_DIR = "step_times"


def timed_step(name: str, *, part: str | None = None) -> Callable[[F], F]:
    """Record the wall and CPU seconds of a pipeline step in its run folder.

    The decorated function must take an ``out_dir`` argument (the run folder). Each call writes
    ``<out_dir>/step_times/<name>[.<part>].json``: ``{"step", "started", "wall_s", "cpu_s", "ok"}``
    (``started`` in seconds since the epoch), where
    ``cpu_s`` is this process's CPU time over the step (all its threads: steps that run side by
    side in one process, as ``run_once`` trains the families, count each other's) and ``ok`` is
    false when the step raised.
    One file per step, so the DAG's parallel tasks (one per model family) never write the same
    file; :func:`step_times` collects them for the run's summary and report.

    Args:
        name: the step's name in the summary (``validate``, ``train``, ...).
        part: name of an argument whose value qualifies the step (``family`` for ``train``).
    """
    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            label = name if part is None else f"{name}.{bound.arguments[part]}"
            started, wall, cpu, ok = time.time(), time.perf_counter(), time.process_time(), False
            try:
                result = fn(*args, **kwargs)
                ok = True
                return result
            finally:
                if bound.arguments.get("out_dir") is not None:
                    try:
                        _record_step_time(Path(bound.arguments["out_dir"]), label, started,
                                          time.perf_counter() - wall, time.process_time() - cpu, ok)
                    except OSError as exc:  # a timing never fails a step, nor hides its error
                        logger.warning("%s: could not record the step's time in %s: %s", label,
                                       bound.arguments["out_dir"], exc)
        return timed  # type: ignore[return-value]
    return wrap


def _record_step_time(out_dir: Path, label: str, started: float, wall_s: float, cpu_s: float, ok: bool) -> None:
    folder = out_dir / STEP_TIMES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{label}.json", {"step": label, "started": round(started, 3),
                                                 "wall_s": round(wall_s, 4), "cpu_s": round(cpu_s, 4), "ok": ok})


def step_times(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The step timings a run recorded (:func:`timed_step`), by step, in the order they ran."""
    folder = Path(out_dir) / STEP_TIMES_DIR
    if not folder.is_dir():
        return {}
    records = sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda r: r["started"])
    return {r["step"]: {k: r[k] for k in ("wall_s", "cpu_s", "ok")} for r in records}


# -- 5. train --------------------------------------------------------------------------------
def training_table(out_dir: Path, window: RunWindow) -> tuple[pd.DataFrame, np.ndarray, int, list[str]]:
    """The labelled rows of a run folder's modelling table (``dataset.parquet``, features in the
    order of ``feature_spec.json``).

    Returns:
        ``(X, y, test_size, names)``: ``X`` ``(n_rows, n_features)``, ``y`` ``(n_rows,)`` class
        ids, ``test_size`` the labelled rows of the run's own data interval (its last fold),
        ``names`` the feature names.
    """
    spec = json.loads(RunFolder(out_dir).feature_spec.read_text())
    table = pd.read_parquet(RunFolder(out_dir).dataset)
    table = table[table["label"].notna()]
    names = list(spec["names"])
    test_size = int((table.index >= pd.Timestamp(window.interval_start)).sum())
    return table[names], table["label"].astype(int).to_numpy(), test_size, names
