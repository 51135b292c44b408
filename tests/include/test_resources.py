"""The thread budget: cores, training slots and model threads, and that training obeys it."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from include.errors import ConfigError
from include.resources import available_cpus, model_threads, training_slots


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch):
    for name in ("TASK_CPUS", "TRAINING_SLOTS", "TRAINING_THREADS"):
        monkeypatch.delenv(name, raising=False)


def test_cores_come_from_the_affinity_set_not_the_machine(monkeypatch):
    assert available_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # e.g. a container pinned to one core
    assert available_cpus() == 1 and training_slots() == 1 and model_threads() == 1


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 7, 8, 16, 32, 64])
def test_slots_times_threads_uses_every_core_and_never_more(monkeypatch, cpus):
    monkeypatch.setenv("TASK_CPUS", str(cpus))
    slots, threads = training_slots(), model_threads()
    assert slots * threads <= cpus
    assert cpus - slots * threads < slots or threads == 1  # at most a remainder of cores idle
    assert (slots, threads) == (cpus, 1)
    monkeypatch.setenv("TRAINING_THREADS", "4")  # larger data: fewer, wider fits
    slots, threads = training_slots(), model_threads()
    assert slots * threads <= cpus and threads == min(4, cpus)
    assert slots == max(1, cpus // 4)


def test_overrides_and_their_errors(monkeypatch):
    monkeypatch.setenv("TASK_CPUS", "32")
    monkeypatch.setenv("TRAINING_SLOTS", "2")
    assert (training_slots(), model_threads()) == (2, 16)
    monkeypatch.setenv("TRAINING_THREADS", "3")
    assert model_threads() == 3
    monkeypatch.setenv("TRAINING_SLOTS", "zero")
    with pytest.raises(ConfigError, match="TRAINING_SLOTS='zero': expected an integer"):
        training_slots()
    monkeypatch.setenv("TASK_CPUS", "0")
    with pytest.raises(ConfigError, match="TASK_CPUS='0': expected at least 1"):
        available_cpus()


@pytest.mark.parametrize("family", ["lightgbm", "xgboost", "random_forest"])
def test_every_family_fits_with_the_threads_it_is_given(btc_slice, family):
    from include.evaluation import WalkForward
    from include.training import fit_family

    bars = btc_slice["ohlcv"].set_index("timestamp")
    X = pd.DataFrame({"ret": np.log(bars["close"]).diff(), "range": (bars["high"] - bars["low"]) / bars["close"]})
    X = X.dropna().iloc[:1500]
    y = (np.arange(len(X)) % 3).astype(int)
    splits = WalkForward(n_splits=2, test_size=168, purge=4, embargo=24)
    est, _ = fit_family(family, X, y, np.arange(len(X)), splits, random_state=0, n_jobs=3, early_stopping_rounds=5)
    assert est.get_params()["n_jobs"] == 3


def test_the_deployment_executor_preloads_libraries_and_skips_what_is_missing(monkeypatch):
    """The preloading LocalExecutor imports modules before forking; a missing one is logged, not fatal."""
    import sys

    from airflow.executors.local_executor import LocalExecutor

    from include.deployment.executor import PRELOAD_MODULES, PreloadingLocalExecutor, preload

    assert issubclass(PreloadingLocalExecutor, LocalExecutor)
    assert {"great_expectations", "lightgbm", "xgboost", "sklearn.ensemble", "arch.bootstrap",
            "include.pipeline"} <= set(PRELOAD_MODULES)
    from include.deployment import executor

    warnings: list[str] = []
    monkeypatch.setattr(executor.logger, "warning", lambda msg, *args: warnings.append(msg % args))
    took = preload(("colorsys", "no_such_module_for_preload"))
    assert set(took) == {"colorsys"} and "colorsys" in sys.modules
    assert any("could not import no_such_module_for_preload" in w for w in warnings)


def test_the_deployment_executor_prepares_the_task_sdk_before_forking():
    """A forked task process finds airflow.sdk's names resolved and the plugins' listeners
    registered (the run-note listener among them) instead of loading them itself."""
    import airflow.sdk
    from airflow.sdk.listener import get_listener_manager

    from include.deployment.executor import preload_task_sdk

    assert preload_task_sdk() >= 0
    assert {"task_group", "PokeReturnValue", "AssetOrTimeSchedule"} <= set(vars(airflow.sdk))
    assert get_listener_manager.cache_info().currsize == 1
    listeners = {getattr(p, "__name__", type(p).__name__) for p in get_listener_manager().pm.get_plugins()}
    assert any("run_notes" in name for name in listeners), listeners


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_native_thread_pools_are_held_to_the_share_until_the_outer_block_leaves(monkeypatch):
    """BLAS starts a thread per core whatever a fit's n_jobs says: a training block holds it to
    the family's share, in every thread; blocks of families training side by side inside it only
    count, and the limit is released when the outer block leaves."""
    import threading

    from threadpoolctl import threadpool_limits

    from include.resources import native_thread_limit

    monkeypatch.setenv("TASK_CPUS", "2")
    seen: list[set[int]] = []

    def family() -> None:
        with native_thread_limit():
            seen.append(_blas_threads())
        seen.append(_blas_threads())  # this block has left, the outer one holds

    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() == {2}
        with native_thread_limit():
            assert _blas_threads() == {model_threads()} == {1}
            workers = [threading.Thread(target=family) for _ in range(2)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(10)
        assert seen == [{1}] * 4
        assert _blas_threads() == {2}  # what was there before


def test_a_training_step_runs_inside_the_limit(monkeypatch):
    from threadpoolctl import threadpool_limits

    from include.pipeline import routine

    monkeypatch.setenv("TASK_CPUS", "2")
    seen: list[set[int]] = []
    monkeypatch.setattr(routine, "train", lambda *args: seen.append(_blas_threads()) or {"family": args[3]})

    class Run:  # the fields train_step reads
        cfg = type("Cfg", (), {"models": ("logistic",), "model_name": "m"})()
        window = folder = settings = None

    with threadpool_limits(limits=2, user_api="blas"):
        assert routine.train_step(Run(), "logistic") == {"family": "logistic"}
        assert seen == [{1}] and _blas_threads() == {2}
