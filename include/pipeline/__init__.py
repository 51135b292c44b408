"""The weekly retraining pipeline, one function per DAG task, by stage group.

Each function takes plain arguments (a :class:`~include.config.RunConfig` as a dict, the run's
:class:`RunWindow` as a dict, ids and paths) and returns a small JSON-serialisable dict for XCom.
DataFrames and models travel through files under the run's own folder
``<RUN_ARTIFACTS_DIR>/<dag_id>/<registered model>/<interval start>_<interval end>/``, derived
from the registered model and the data interval, so two markets never share a folder and
re-running a run overwrites exactly its own outputs.

Modules: :mod:`~include.pipeline.common` (the run window, run folders),
:mod:`~include.pipeline.data` (ingest, validate, features, labels),
:mod:`~include.pipeline.training` (train, assemble), :mod:`~include.pipeline.decision`
(simulate trading, gate, promote, keep, demote) and :mod:`~include.pipeline.publication` (summaries,
planning a universe run, one run in-process). Everything is importable from here.
"""

from __future__ import annotations

from include.pipeline.common import (
    FUNDING_LOOKBACK,
    SKIPPED_FILE,
    SUMMARY_FILE,
    RunWindow,
    json_safe,
    open_store,
    resolve_window,
    run_dir,
    warmup,
    write_parquet,
)
from include.pipeline.data import feature_frame, features, history_window, ingest, labels, market_source, validate
from include.pipeline.decision import (
    act,
    demote,
    gate,
    keep,
    policy_from_config,
    promote,
    simulate_trading,
    smoke_test,
)
from include.pipeline.publication import (
    plan_universe,
    publish_universe,
    retrain_scope,
    run_once,
    summarise,
    universe_outcomes,
)
from include.pipeline.training import assemble, library_versions, train

__all__ = [
    "FUNDING_LOOKBACK", "SKIPPED_FILE", "SUMMARY_FILE", "RunWindow", "assemble", "feature_frame", "features",
    "act", "demote", "gate", "history_window", "ingest", "json_safe", "keep", "labels", "library_versions",
    "market_source", "open_store", "plan_universe", "policy_from_config", "promote", "publish_universe",
    "resolve_window", "retrain_scope",
    "run_dir", "run_once", "simulate_trading", "smoke_test", "summarise", "train", "universe_outcomes",
    "validate", "warmup", "write_parquet",
]
