"""Versioned model registry: immutable artifacts on disk, state and history in the database.

MLflow-style aliases with a history MLflow does not keep. Artifacts live under the registry root
(``models/`` by default; a path that could be an object store)::

    versions/<model>/<version_id>/   immutable: model.joblib, metadata.json (lineage), manifest.json

(in an object store, under ``<version_id>/<attempt>/``: each registration uploads under a prefix
of its own, which the version's row records).

Every version belongs to one **registered model** (as in MLflow): one market and one target,
named like ``binance-btcusdt-perp-1h-h4`` (see :class:`RegisteredModel`). Aliases belong to a
registered model, so each market has its own ``production`` and ``challenger``.

State lives in the market store's database (SQLite by default, PostgreSQL when configured;
tables from migrations ``0003`` and ``0004``):

* ``registered_model`` — every registered model: exchange, symbol, market type, timeframe,
  label horizon and threshold rule.
* ``model_version`` — every version: its registered model, each file's sha256, the artifact
  path, the lineage.
* ``model_alias`` — where each alias of each registered model points: ``production`` (the
  champion) and ``challenger`` (the latest candidate the gate looked at).
* ``model_alias_event`` — append-only ledger: every alias move (model, from, to, when, DAG run,
  reason, gate decision), every "keep" decision and every removal of an alias.

A version id is ``v<interval end yyyymmddTHHMM>-<sha256 prefix>`` of its file hashes: the same
artifact always gets the same id. Moving an alias is one database transaction (alias row and
ledger row together) under a per-model lock (a file lock on the registry root; a PostgreSQL
advisory lock when the root is in an object store, which is why such a registry needs
PostgreSQL), so a crash at any point leaves the previous version in place, two runs promoting
one model are applied one after the other, and two models never wait for each other. Before
unpickling, :meth:`ModelRegistry.load` hashes the very bytes it then unpickles and compares them
with the sha256 in the database (joblib files execute code when loaded).

**Rollback** goes to the version that held production before the current one and was not itself
rolled away from, so repeated rollbacks walk down the chain and never toggle between two
versions (:meth:`ModelRegistry.rollback_target`).

Command line: ``python -m include.registry --help`` (models, list, show, diff, promote,
rollback, history, verify, cleanup).
"""

from __future__ import annotations

from include.identity import DEFAULT_LABEL_RULE, RegisteredModel
from include.registry.artifacts import (
    MANIFEST_FILE,
    METADATA_FILE,
    MODEL_FILE,
    OOF_FILE,
    atomic_write_json,
    code_version,
    load_verified,
    sha256_file,
)
from include.registry.core import ModelRegistry
from include.registry.schema import (
    CHALLENGER,
    PRODUCTION,
    ROLLBACK_EVENTS,
    AliasPointer,
    alias_table,
    event_table,
    metadata,
    model_table,
    version_table,
)

__all__ = [
    "CHALLENGER", "DEFAULT_LABEL_RULE", "MANIFEST_FILE", "METADATA_FILE", "MODEL_FILE", "OOF_FILE", "PRODUCTION",
    "ROLLBACK_EVENTS", "AliasPointer", "ModelRegistry", "RegisteredModel", "alias_table", "atomic_write_json",
    "code_version", "event_table", "load_verified", "metadata", "model_table", "sha256_file",
    "version_table",
]
