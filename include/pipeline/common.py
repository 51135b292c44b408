"""Shared pieces of the pipeline's stages: the run window, run folders, store access, JSON for XCom."""

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from include.config import RunConfig, Settings
from include.data.store import MarketStore
from include.features import FeatureSpec
from include.paths import check_name
from include.registry.artifacts import atomic_write_json

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

FUNDING_LOOKBACK = timedelta(days=10)

#: Least history before each calendar month from which that month's features are computed
#: (:func:`include.pipeline.data.feature_frame`); see :func:`feature_pad`.
FEATURE_SEGMENT_PAD = timedelta(days=30)


def month_start(moment: datetime) -> datetime:
    """00:00 UTC on the first day of ``moment``'s month."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def feature_pad(cfg: RunConfig) -> timedelta:
    """History before each calendar month from which its features are computed: 30 days, or four
    times the indicator warm-up in the run's bars if longer (daily bars). With 720 hourly bars
    against a warm-up of 150, an EMA's seed weighs under 0.1 % at the month's first bar."""
    spec = FeatureSpec.default(extra=cfg.extra_features)
    return max(FEATURE_SEGMENT_PAD, 4 * spec.warmup_bars * timedelta(seconds=cfg.bar_seconds))


def feature_read_start(start: datetime, cfg: RunConfig) -> datetime:
    """The first bar :func:`~include.pipeline.data.feature_frame` reads for features from ``start``:
    :func:`feature_pad` before the start of ``start``'s month."""
    return month_start(start) - feature_pad(cfg)

OPEN_INTEREST_MIN_COVERAGE = 0.5

def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``: strict JSON for XCom."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value

# -- the run's window ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunWindow:
    """Time bounds of one run (ISO-8601 UTC strings, half-open intervals).

    Attributes:
        interval_start / interval_end: the data interval (one week); the gate window.
        train_start: first bar of the training window (``interval_end - train_window_days``).
        ingest_start: first bar ingested and validated: the first bar the features of
            ``train_start`` minus the indicator warm-up read (:func:`feature_read_start`).
        run_key: ``<interval_start>_<interval_end>`` as ``YYYYmmddTHHMM``; names the run folder.
        source: how the interval was chosen: ``data_interval``, ``as_of_date`` or ``last_complete_week``.
        requested_train_start: for a market with less history than ``train_window_days``, the
            training start the window asked for (``train_start`` is then later); else ``None``.
    """

    interval_start: str
    interval_end: str
    train_start: str
    ingest_start: str
    run_key: str
    source: str
    requested_train_start: str | None = None

    def ts(self, name: str) -> datetime:
        """One bound as an aware datetime."""
        return datetime.fromisoformat(getattr(self, name))

def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()

#: The weekly schedule's interval: every walk-forward fold but a run's own is one of these weeks.
SCHEDULE_INTERVAL = timedelta(days=7)


def schedule_start(end: datetime) -> datetime:
    """The weekly schedule's last boundary (Sunday 00:00 UTC) strictly before ``end`` (a day's 00:00).

    ``end`` a Sunday gives the week before it; a Wednesday, the Sunday three days before, so a
    run as of a mid-week day has a short interval whose earlier folds are the scheduled weeks'
    (their fits are in the fit cache) and whose champion, trained to that Sunday, is out of
    sample on all of it.
    """
    days = (end.weekday() + 1) % 7 or 7
    return end - timedelta(days=days)


def schedule_end_on_or_after(moment: datetime) -> datetime:
    """The weekly schedule's first boundary (Sunday 00:00 UTC) at or after ``moment``: the end of
    the first data interval that holds it."""
    moment = moment.astimezone(UTC)
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if day < moment:
        day += timedelta(days=1)
    return day + timedelta(days=(6 - day.weekday()) % 7)


def closed_bars_end(as_of: datetime, bar: timedelta) -> datetime:
    """The exclusive open-time bound of the bars that closed by ``as_of``: a bar opening at ``t``
    is complete when ``t + bar <= as_of``."""
    return ((pd.Timestamp(as_of) - bar).floor(bar) + bar).to_pydatetime()


def resolve_window(cfg: RunConfig, *, data_interval_start: Any, data_interval_end: Any,
                   run_after: Any) -> RunWindow:
    """Choose the run's data interval and training window.

    Precedence: the ``as_of_date`` param (data up to that date's 00:00 UTC; the interval starts
    at the weekly schedule's last boundary before it, so a Sunday gives the week ending then and
    a mid-week date, such as a retrain monitoring requested, the days since the last Sunday: see
    :func:`schedule_start`), then the run's data interval, then, for a run triggered without a
    logical date (no data interval), the last complete Sunday-to-Sunday week before ``run_after``.

    Raises:
        ConfigError: ``as_of_date`` does not parse.
    """
    from include.errors import ConfigError

    start, end = _utc(data_interval_start), _utc(data_interval_end)
    if cfg.as_of_date:
        try:
            end = _utc(pd.Timestamp(cfg.as_of_date).normalize())
        except ValueError as exc:
            raise ConfigError(f"invalid run parameter as_of_date={cfg.as_of_date!r}: {exc}") from exc
        assert end is not None
        start, source = schedule_start(end), "as_of_date"
    elif start is not None and end is not None and end > start:
        source = "data_interval"
    else:
        now = _utc(run_after) or datetime.now(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = midnight - timedelta(days=(midnight.weekday() + 1) % 7)  # last Sunday 00:00
        start, source = end - timedelta(days=7), "last_complete_week"
    assert start is not None and end is not None
    train_start = end - timedelta(days=cfg.train_window_days)
    # Everything the features read is ingested and validated by this run, whatever the store held.
    ingest_start = feature_read_start(train_start - warmup(cfg), cfg)
    key = run_key(start, end)
    window = RunWindow(start.isoformat(), end.isoformat(), train_start.isoformat(),
                       ingest_start.isoformat(), key, source)
    logger.info("run window (%s): interval [%s, %s), training from %s", source, start, end, train_start)
    return window

def warmup(cfg: RunConfig) -> timedelta:
    """Bars before the training window that features and labels need: indicator warm-up or the
    label's volatility window, whichever is longer."""
    spec = FeatureSpec.default(extra=cfg.extra_features)
    return max(spec.warmup_bars, cfg.label_vol_window_bars) * timedelta(seconds=cfg.bar_seconds)

def run_key(start: datetime, end: datetime) -> str:
    """The folder name of a data interval ``[start, end)``: ``20231224T0000_20231231T0000``."""
    return f"{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"

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
    from include.errors import ConfigError
    from include.storage import is_remote

    path = run_location(settings, dag_id, model, window)
    if is_remote(path):
        raise ConfigError(f"RUN_ARTIFACTS_DIR is an object store ({settings.runs_dir}): a step works on "
                          "a staged local copy of its run folder (include.pipeline.common.staged_run_dir)")
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
    from include.storage import staged

    folder = run_location(settings, dag_id, model, window)
    with staged(folder, name=f"{dag_id}/{model}/{window.run_key}") as path:
        yield path

def open_store(settings: Settings) -> MarketStore:
    """The deployment's market store (dispose it after use)."""
    return MarketStore(settings.market_db_url)

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
    atomic_write_json(folder / f"{label}.json", {"step": label, "started": round(started, 3),
                                                 "wall_s": round(wall_s, 4), "cpu_s": round(cpu_s, 4), "ok": ok})


def step_times(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The step timings a run recorded (:func:`timed_step`), by step, in the order they ran."""
    folder = Path(out_dir) / STEP_TIMES_DIR
    if not folder.is_dir():
        return {}
    records = sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda r: r["started"])
    return {r["step"]: {k: r[k] for k in ("wall_s", "cpu_s", "ok")} for r in records}
