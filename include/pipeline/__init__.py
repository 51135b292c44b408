"""The weekly run's orchestration: the routine's steps, one function per DAG task, by stage group.

Each function takes plain arguments (a :class:`~include.config.RunConfig`, the run's
:class:`~include.windows.RunWindow`, ids and paths) and returns a small JSON-serialisable dict
for XCom. DataFrames and models travel through files in the run's folder
(:mod:`include.run_folder`), so two markets never share a folder and re-running a run
overwrites exactly its own outputs.

Modules: :mod:`~include.pipeline.routine` (the routine: the steps in order, and one run in
process), :mod:`~include.pipeline.data` (ingest, validate, features, labels),
:mod:`~include.pipeline.training` (train, assemble), :mod:`~include.pipeline.decision`
(simulate trading, gate, promote, keep, demote) and :mod:`~include.pipeline.publication`
(summaries, planning a universe run). The library they call lives below them (the calendar in
:mod:`include.windows`, the run folder, the market store, the features, the gate, the registry);
nothing below imports from here.
"""

from __future__ import annotations

from include.data.ingest import market_source
from include.gate.evidence import policy_from_config
from include.pipeline.data import features, history_window, ingest, labels, validate
from include.pipeline.decision import act, demote, gate, keep, promote, simulate_trading, smoke_test
from include.pipeline.publication import (
    plan_universe,
    publish_universe,
    retrain_scope,
    summarise,
    universe_outcomes,
)
from include.pipeline.routine import MarketRun, run_once, run_routine
from include.pipeline.training import assemble, library_versions, train

__all__ = [
    "MarketRun", "act", "assemble", "demote", "features", "gate", "history_window", "ingest", "keep", "labels",
    "library_versions", "market_source", "plan_universe", "policy_from_config", "promote", "publish_universe",
    "retrain_scope", "run_once", "run_routine", "simulate_trading", "smoke_test", "summarise", "train",
    "universe_outcomes", "validate",
]
