"""The weekly routine: one market's week, its steps defined once.

Every workflow that runs a market's week runs these steps, in this order, with these inputs:

1. :func:`ingest_step`: OHLCV candles, funding rates and open interest into the market store;
   settles the run's window (shorter for a market younger than ``train_window_days``).
2. :func:`validate_step`: Great Expectations on the window; bad data stops the market.
3. :func:`build_step`: features, then their labels.
4. :func:`train_step`: one model family, purged walk-forward cross-validation and the deployed fit.
5. :func:`candidate_step`: the soft-voting ensemble registered as a candidate version, and its
   out-of-fold trading simulation.
6. :func:`gate_step`: the quality gate's decision.
7. :func:`act_step`: promote, demote or keep, as the decision (and an approval) says.
8. :func:`report_step`: the market's summary and HTML report, after the decision.

The callers: the weekly DAG's tasks run one step each (:mod:`include.tasks`), with Airflow's
retries, approval, alerts and batches around them; :func:`run_routine` runs every step in one
process (``run_once``: benchmarks, the gate's year benchmarks, tests); tuning's dataset
preparation runs the steps up to the labels (``until="build"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from include.config import RunConfig, Settings
from include.pipeline.data import features, ingest, labels, validate
from include.pipeline.decision import act, gate, simulate_trading
from include.pipeline.publication import summarise
from include.pipeline.training import assemble, train
from include.resources import native_thread_limit, training_slots
from include.run_folder import staged_run_dir
from include.windows import RunWindow, resolve_window

logger = logging.getLogger(__name__)

#: The routine's steps, in order (the names :func:`run_routine`'s ``until`` takes).
STEPS = ("ingest", "validate", "build", "train", "candidate", "gate", "act", "report")
#: The step results a market's summary holds (:func:`report_step`).
REPORT_PARTS = ("ingested", "validation", "features", "labels", "ensemble", "trading", "gate", "action")


@dataclass(frozen=True)
class MarketRun:
    """One market's run over one data interval: what every step reads.

    Attributes:
        cfg: the market's run configuration.
        window: the run's window (after :func:`ingest_step`, the one ingestion settled on).
        settings: the deployment's settings.
        out_dir: the run folder (local; staged from the object store when the artifacts live
            there); ``None`` for a run opened only to move production (:func:`act_step` reads and
            writes no file there), so that nothing is staged for it.
        dag_id: the workflow's id (names the run folder's parent and the lineage).
        run_id: the run's id (the lineage, the ledger); ``None`` for a run of the steps before
            the candidate only (tuning's preparation), which register nothing.
        logical_date: the DAG run's logical date (ISO), recorded in the lineage; ``None`` outside one.
    """

    cfg: RunConfig
    window: RunWindow
    settings: Settings
    out_dir: Path | None
    dag_id: str
    run_id: str | None
    logical_date: str | None = None

    @property
    def folder(self) -> Path:
        """The run folder.

        Raises:
            ValueError: the run was opened without one (``out_dir`` is ``None``).
        """
        if self.out_dir is None:
            raise ValueError(f"{self.cfg.model_name}: this step needs the run folder, and the run has none")
        return self.out_dir

    def settled(self, ingested: dict[str, Any]) -> MarketRun:
        """The same run on the window :func:`ingest_step` settled on."""
        return replace(self, window=RunWindow(**ingested["window"]))


def ingest_step(run: MarketRun) -> dict[str, Any]:
    """Step 1: :func:`include.pipeline.data.ingest`.

    Raises:
        MarketNotReadyError: the market has less history than ``min_history_days``.
    """
    return ingest(run.cfg, run.window, run.settings, run.folder)


def validate_step(run: MarketRun) -> dict[str, Any]:
    """Step 2: :func:`include.pipeline.data.validate`.

    Raises:
        DataQualityError: the window fails validation; the message holds the report.
    """
    return validate(run.cfg, run.window, run.settings, run.folder)


def build_step(run: MarketRun) -> dict[str, Any]:
    """Step 3: the modelling table, ``{"features": …, "labels": …}``
    (:func:`include.pipeline.data.features`, then :func:`~include.pipeline.data.labels`)."""
    return {"features": features(run.cfg, run.window, run.settings, run.folder),
            "labels": labels(run.cfg, run.window, run.folder)}


def train_step(run: MarketRun, family: str) -> dict[str, Any] | None:
    """Step 4, one family: :func:`include.pipeline.training.train`, with the process's native
    thread pools held to the family's share of the cores
    (:func:`include.resources.native_thread_limit`); ``None`` (and a log line) for a family the
    market's ``models`` leaves out."""
    if family not in run.cfg.models:
        logger.info("%s: %s is not in its models %s: nothing to train", run.cfg.model_name, family,
                    list(run.cfg.models))
        return None
    with native_thread_limit():
        return train(run.cfg, run.window, run.folder, family, run.settings)


def candidate_step(run: MarketRun, trained: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Step 5: the candidate, ``{"ensemble": …, "trading": …}``: the trained members soft-voted
    and registered (:func:`include.pipeline.training.assemble`), then its out-of-fold trading
    (:func:`include.pipeline.decision.simulate_trading`).

    Args:
        trained: :func:`train_step`'s results, one per family; ``None`` entries are left out.
    """
    if run.run_id is None:
        raise ValueError("a candidate is registered under its run's id: MarketRun.run_id is None")
    members = [t for t in trained if t is not None]
    assembled = assemble(run.cfg, run.window, run.settings, run.folder, members, dag_id=run.dag_id,
                         run_id=run.run_id, logical_date=run.logical_date)
    return {"ensemble": assembled, "trading": simulate_trading(run.cfg, run.window, run.settings, run.folder)}


def gate_step(run: MarketRun, candidate: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
    """Step 6: :func:`include.pipeline.decision.gate` on :func:`candidate_step`'s result.

    Args:
        request: the retrain monitoring asked for, recorded with the decision.
    """
    return gate(run.cfg, run.window, run.settings, run.folder, candidate["ensemble"], candidate["trading"],
                request=request)


def act_step(run: MarketRun, decision: dict[str, Any], approval: dict[str, Any] | None = None) -> dict[str, Any]:
    """Step 7: :func:`include.pipeline.decision.act`, the decision applied to production (the
    promotion's smoke test predicts from the interval's last bar).

    Args:
        approval: a person's answer, when one was asked (``require_approval``); ``None`` otherwise.
    """
    if run.run_id is None:
        raise ValueError("a move is recorded under its run's id: MarketRun.run_id is None")
    return act(run.settings, decision, run_id=run.run_id, dag_id=run.dag_id,
               as_of=datetime.fromisoformat(run.window.interval_end), approval=approval)


def report_step(run: MarketRun, parts: dict[str, Any]) -> dict[str, Any]:
    """Step 8: :func:`include.pipeline.publication.summarise`, after the decision.

    Args:
        parts: every step's result: ``ingested``, ``validation``, ``features``, ``labels``,
            ``ensemble``, ``trading``, ``gate``, ``action``.
    """
    return summarise(run.settings, run.cfg, run.folder, run.window, parts, dag_id=run.dag_id)


def train_families(run: MarketRun) -> list[dict[str, Any] | None]:
    """Step 4 for every family of ``cfg.models``, side by side, as many at a time as the DAG's
    training pool runs (:func:`include.resources.training_slots`): each fit uses its share of
    the cores, and the process's native thread pools are held to that share from this thread
    (:func:`include.resources.native_thread_limit`)."""
    with (native_thread_limit(),
          ThreadPoolExecutor(max_workers=max(1, min(len(run.cfg.models), training_slots()))) as pool):
        return list(pool.map(lambda family: train_step(run, family), run.cfg.models))


def run_routine(run: MarketRun, *, until: str = "report", request: dict[str, Any] | None = None,
                approval: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every step of the routine in order, in this process, up to and including ``until``.

    Args:
        run: the market's run (its window is replaced by the one ingestion settles on).
        until: the last step to run, one of :data:`STEPS`.
        request: passed to :func:`gate_step`.
        approval: passed to :func:`act_step`.

    Returns:
        The steps' results by name: ``run`` (the settled :class:`MarketRun`), ``ingested``,
        ``validation``, ``features``, ``labels``, ``trained``, ``ensemble``, ``trading``,
        ``gate``, ``action``, ``summary``, as far as the routine ran.

    Raises:
        ValueError: ``until`` is not a step.
        PipelineError: from any step.
    """
    if until not in STEPS:
        raise ValueError(f"until={until!r}: expected one of {STEPS}")
    last = STEPS.index(until)
    results: dict[str, Any] = {"ingested": ingest_step(run)}
    run = results["run"] = run.settled(results["ingested"])
    if last >= STEPS.index("validate"):
        results["validation"] = validate_step(run)
    if last >= STEPS.index("build"):
        results.update(build_step(run))
    if last >= STEPS.index("train"):
        results["trained"] = train_families(run)
    if last >= STEPS.index("candidate"):
        results.update(candidate_step(run, results["trained"]))
    if last >= STEPS.index("gate"):
        results["gate"] = gate_step(run, {"ensemble": results["ensemble"], "trading": results["trading"]},
                                    request=request)
    if last >= STEPS.index("act"):
        results["action"] = act_step(run, results["gate"], approval=approval)
    if last >= STEPS.index("report"):
        results["summary"] = report_step(run, {k: results[k] for k in REPORT_PARTS})
    return results


def run_once(cfg: RunConfig, settings: Settings, *, dag_id: str, run_id: str,
             data_interval_start: Any = None, data_interval_end: Any = None) -> dict[str, Any]:
    """One market's weekly run, every step of the routine, in this process, without a scheduler.

    For benchmarks, the gate's multi-week record and tests that need a real registry. (The DAG
    adds what only Airflow gives: retries, alerts, the approval step, the wait for earlier runs,
    markets in parallel.)

    Args:
        data_interval_start: the data interval's start; ``None`` for the run configuration's
            ``as_of_date`` or the last complete week (:func:`include.windows.resolve_window`).
        data_interval_end: the data interval's end; ``None`` as for the start.

    Returns:
        ``{"window", "assembled", "trading", "decision", "action", "summary"}``.

    Raises:
        PipelineError: from any step, as in the DAG.
    """
    window = resolve_window(cfg, data_interval_start=data_interval_start, data_interval_end=data_interval_end,
                            run_after=None)
    with staged_run_dir(settings, dag_id, cfg.model_name, window) as out:
        results = run_routine(MarketRun(cfg, window, settings, out, dag_id, run_id))
    return {"window": results["run"].window, "assembled": results["ensemble"], "trading": results["trading"],
            "decision": results["gate"], "action": results["action"], "summary": results["summary"]}
