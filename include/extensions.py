"""Bring your own: model families and features from installed packages, by entry point.

A team adds a model family or a feature without editing the pipeline: its package declares an
entry point (Python packaging's plug-in mechanism, read with :func:`importlib.metadata.entry_points`)
in one of two groups, and every weekly run, tuning run and DAG of the deployment where the package
is installed sees it.

``weekly_retrain.model_families``
    ``name = "package.module"``: a module like :mod:`include.training.lightgbm`, with
    ``DEFAULT_PARAMS`` (a dict) and ``build(random_state, n_jobs, **overrides)`` returning an
    unfitted scikit-learn classifier with ``predict_proba`` over the classes 0, 1, 2; optionally
    ``best_n_estimators`` (early stopping, as the boosting families) and ``SEARCH_SPACE`` (its
    hyperparameter space for ``tune_hyperparameters``, in :mod:`include.tuning.spaces`' format).
    The family is then a value of the ``models`` run parameter, gets its own ``train_<name>`` task
    and a weight in the ensemble.

``weekly_retrain.features``
    ``name = "package.module:function"``: ``function(bars)`` takes the candles (a DataFrame
    indexed by bar open time, sorted, with ``open, high, low, close, volume``) and returns one
    value per bar (array-like of the same length) computed **from that bar and earlier ones
    only**; the function may carry a ``warmup_bars`` attribute (bars before its first defined
    value, 0 if absent). The feature is then a value of the ``extra_features`` run parameter,
    appended to the default feature spec; the spec records the plug-in's distribution and
    version, so a version trained with it is served with it, and a changed plug-in is a changed
    spec.

A plug-in family named like a built-in one is not used (the built-in one is); a run naming a
built-in feature in ``extra_features`` is refused; a name that is not a Python identifier is left
out. Names are read without importing the plug-ins; a plug-in is imported when first used.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from include.errors import ConfigError

FAMILY_GROUP = "weekly_retrain.model_families"
FEATURE_GROUP = "weekly_retrain.features"


@functools.cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    """The group's entry points by name; a name that is not a Python identifier (it becomes a task
    id and a column name) is left out."""
    return {ep.name: ep for ep in entry_points(group=group) if ep.name.isidentifier()}


def family_names() -> tuple[str, ...]:
    """Names of the model families installed packages declare, sorted."""
    return tuple(sorted(_entry_points(FAMILY_GROUP)))


def feature_names() -> tuple[str, ...]:
    """Names of the features installed packages declare, sorted."""
    return tuple(sorted(_entry_points(FEATURE_GROUP)))


def _where(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{ep.value!r}" + (f" of {dist.name} {dist.version}" if dist is not None else "")


def provenance(group: str, name: str) -> str:
    """``"<distribution> <version> <object>"`` of a plug-in, recorded with what it made.

    Raises:
        ConfigError: no plug-in of that name in ``group``.
    """
    ep = _entry_points(group).get(name)
    if ep is None:
        raise ConfigError(f"no plug-in {name!r} in entry-point group {group}")
    dist = ep.dist
    return f"{dist.name if dist else '?'} {dist.version if dist else '?'} {ep.value}"


def _load(group: str, name: str, kind: str) -> tuple[Any, EntryPoint]:
    """The object entry point ``name`` of ``group`` names, and the entry point.

    Raises:
        ConfigError: no such plug-in, or it fails to import (the message names ``kind``, the
            plug-in and its package).
    """
    ep = _entry_points(group).get(name)
    if ep is None:
        raise ConfigError(f"unknown {kind} {name!r}: no built-in {kind} and no plug-in of that name")
    try:
        return ep.load(), ep
    except Exception as exc:  # noqa: BLE001 - any import error of a third-party package
        raise ConfigError(f"{kind} plug-in {name} ({_where(ep)}) failed to import: {exc}") from exc


@functools.cache
def load_family(name: str) -> ModuleType:
    """The module of plug-in model family ``name``.

    Raises:
        ConfigError: no such plug-in, it fails to import, or it lacks ``DEFAULT_PARAMS`` or
            ``build`` (the message names the plug-in and its package).
    """
    module, ep = _load(FAMILY_GROUP, name, "model family")
    if not isinstance(getattr(module, "DEFAULT_PARAMS", None), dict) or not callable(getattr(module, "build", None)):
        raise ConfigError(f"model family plug-in {name} ({_where(ep)}) must define DEFAULT_PARAMS (a dict) "
                          "and build(random_state, n_jobs, **overrides)")
    return module


@functools.cache
def load_feature(name: str) -> Any:
    """The function of plug-in feature ``name``.

    Raises:
        ConfigError: no such plug-in, it fails to import, or it is not callable.
    """
    function, ep = _load(FEATURE_GROUP, name, "feature")
    if not callable(function):
        raise ConfigError(f"feature plug-in {name} ({_where(ep)}) is not a function of the candles")
    return function
