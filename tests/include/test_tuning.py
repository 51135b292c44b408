"""Hyperparameter search: as-of sets, no look-ahead, the overfitting measure, stacking, a killed worker."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.config import RunConfig, Settings
from include.ensemble import walk_forward_stacking
from include.training.sets import HyperparameterSets
from include.tuning.overfitting import probability_of_backtest_overfitting
from tests.builders import PERMISSIVE_SKILL

ROOT = Path(__file__).resolve().parents[2]
AS_OF = "2023-06-30"
#: A small tuning: one family, four weekly folds, a short window.
SMALL = {"markets": ["BTCUSDT"], "as_of_date": AS_OF, "train_window_days": 120, "models": ["lightgbm"],
         "tune_trials": 2, "tune_folds": 4, "tune_timeout_minutes": None, "tune_search_space": None}


def _prepared(settings: Settings, monkeypatch) -> list[dict]:
    from include.tuning.runs import plan_tuning, prepare

    for name, value in (("MARKET_DB_URL", settings.market_db_url), ("MODEL_REGISTRY_DIR", str(settings.registry_dir)),
                        ("RUN_ARTIFACTS_DIR", str(settings.runs_dir))):
        monkeypatch.setenv(name, value)
    plans = plan_tuning(dict(SMALL), data_interval_start=None, data_interval_end=None, run_after=None)
    return [prepare(p) for p in plans]


# -- the overfitting measure ----------------------------------------------------------------------
def test_pbo_is_zero_when_one_configuration_is_best_in_every_fold_and_one_when_the_winner_always_loses():
    rng = np.random.default_rng(0)
    steady = rng.normal(1.0, 0.01, size=(10, 8))
    steady[3] -= 0.1  # lowest log loss everywhere
    assert probability_of_backtest_overfitting(steady)["pbo"] == 0.0
    # Configuration k is good on fold k only: the in-sample winner of any half is bad out of sample.
    alternating = np.ones((8, 8)) + np.eye(8) * -0.5
    result = probability_of_backtest_overfitting(alternating)
    assert result["pbo"] == 1.0 and result["n_splits"] == 70 and result["n_partitions"] == 8


def test_pbo_of_pure_noise_is_near_one_half_and_bad_input_is_named():
    rng = np.random.default_rng(1)
    values = [probability_of_backtest_overfitting(rng.normal(size=(30, 8)))["pbo"] for _ in range(20)]
    assert 0.3 < float(np.mean(values)) < 0.7
    assert probability_of_backtest_overfitting(np.ones((1, 8)))["pbo"] is None  # one configuration
    assert probability_of_backtest_overfitting(np.ones((4, 5)))["n_partitions"] == 4  # odd: earliest left out
    with pytest.raises(ValueError, match="non-finite"):
        probability_of_backtest_overfitting(np.array([[1.0, np.nan], [1.0, 2.0]]))


def test_pbo_over_more_splits_than_the_cap_agrees_with_the_pbo_over_all_splits():
    # 16 folds: C(16, 8) = 12,870 splits, over the cap of 5,000. Configuration 0 is far best on
    # fold 0 and worst elsewhere: it wins every half that holds fold 0 and then ranks last.
    rng = np.random.default_rng(3)
    scores = 1.0 + 0.01 * rng.normal(size=(12, 16))
    scores[0, 0] -= 0.5
    scores[0, 1:] += 0.02
    every = probability_of_backtest_overfitting(scores, max_splits=math.comb(16, 8))
    sampled = probability_of_backtest_overfitting(scores)
    assert 0.6 < every["pbo"] < 0.85
    # A uniform sample of 5,000 of 12,870 splits: standard error 0.005.
    assert sampled["pbo"] == pytest.approx(every["pbo"], abs=0.03)
    assert every["n_splits"] == every["n_possible_splits"] == 12870 and not every["sampled"]
    assert sampled["n_splits"] == 5000 and sampled["sampled"]


def test_sampled_cscv_splits_are_distinct_and_hold_each_fold_in_sample_half_the_time():
    from include.tuning.overfitting import cscv_splits

    splits = cscv_splits(16, 5000, random_state=0)
    assert splits.shape == (5000, 8) and len({tuple(s) for s in splits}) == 5000
    in_sample = np.array([(splits == fold).any(axis=1).mean() for fold in range(16)])
    # Each fold is in half of all splits; a sample of 5,000 (without replacement) has standard error 0.0055.
    assert np.abs(in_sample - 0.5).max() < 0.03, in_sample
    assert len(cscv_splits(8, 5000)) == 70  # all of them, in order
    assert (cscv_splits(16, 5000, random_state=0) == splits).all()


# -- stacking -------------------------------------------------------------------------------------
def test_stacking_fold_k_never_sees_its_own_folds_labels():
    rng = np.random.default_rng(2)
    n, folds = 1200, 4
    times = pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC")
    fold_of = np.repeat(np.arange(folds), n // folds)
    y = rng.integers(0, 3, n)
    probas = {m: rng.dirichlet(np.ones(3), n) for m in ("lightgbm", "xgboost")}
    probas["lightgbm"][np.arange(n), y] += 0.5  # an informative member
    probas["lightgbm"] /= probas["lightgbm"].sum(axis=1, keepdims=True)
    gap = pd.Timedelta(hours=28)
    default = {"lightgbm": 0.5, "xgboost": 0.5}
    base, used = walk_forward_stacking(probas, y, fold_of, times, gap, default)
    assert used == {0: "default weights", 1: "stacker", 2: "stacker", 3: "stacker"}
    for k in range(1, folds):
        changed = y.copy()
        changed[fold_of >= k] = rng.integers(0, 3, int((fold_of >= k).sum()))  # fold k's and later labels
        again, _ = walk_forward_stacking(probas, changed, fold_of, times, gap, default)
        np.testing.assert_array_equal(again[fold_of <= k], base[fold_of <= k])
        earlier = y.copy()
        earlier[fold_of == k - 1] = (earlier[fold_of == k - 1] + 1) % 3  # an earlier fold's labels do matter
        moved, _ = walk_forward_stacking(probas, earlier, fold_of, times, gap, default)
        assert not np.allclose(moved[fold_of == k], base[fold_of == k])
    # The purge: the rows of fold k-1 within the gap of fold k are not among fold k's fitting rows.
    late = y.copy()
    edge = (fold_of == 0) & (times >= times[fold_of == 1].min() - gap)
    late[edge] = (late[edge] + 1) % 3
    purged, _ = walk_forward_stacking(probas, late, fold_of, times, gap, default)
    np.testing.assert_array_equal(purged[fold_of == 1], base[fold_of == 1])


# -- sets with as-of semantics ------------------------------------------------------------------
def _summary(params: dict, n_trials: int = 5) -> dict:
    return {"best_params": params, "best_value": 0.99, "best_trial": 1, "n_trials": n_trials,
            "states": {"complete": n_trials}, "trial_sharpes": [0.01] * n_trials,
            "best_metrics": {"log_loss": 0.99}, "pbo": {"pbo": 0.25, "n_splits": 70}}


def test_the_valid_set_is_the_newest_at_or_before_the_date_and_a_rerun_replaces_its_record(tmp_path):
    sets = HyperparameterSets(f"sqlite:///{tmp_path / 'm.sqlite'}")
    model = "binance-btcusdt-perp-1h-h4"
    early = sets.record(model, "lightgbm", datetime(2023, 6, 1, tzinfo=UTC), _summary({"num_leaves": 7}),
                        study="s1", search_space={}, data_window={})
    late = sets.record(model, "lightgbm", datetime(2023, 9, 1, tzinfo=UTC), _summary({"num_leaves": 31}),
                       study="s2", search_space={}, data_window={})
    assert sets.valid_set(model, "lightgbm", datetime(2023, 5, 31, 23, tzinfo=UTC)) is None
    assert sets.valid_set(model, "lightgbm", datetime(2023, 6, 1, tzinfo=UTC))["set_id"] == early["set_id"]
    assert sets.valid_set(model, "lightgbm", datetime(2023, 8, 31, tzinfo=UTC))["params"] == {"num_leaves": 7}
    assert sets.valid_set(model, "lightgbm", datetime(2023, 12, 1, tzinfo=UTC))["set_id"] == late["set_id"]
    assert sets.valid_set(model, "xgboost", datetime(2023, 12, 1, tzinfo=UTC)) is None
    again = sets.record(model, "lightgbm", datetime(2023, 9, 1, tzinfo=UTC), _summary({"num_leaves": 40}, 9),
                        study="s2", search_space={}, data_window={})
    assert [s["n_trials"] for s in sets.list(model)] == [5, 9] and again["params"] == {"num_leaves": 40}
    sets.dispose()


def test_a_backfill_uses_the_set_valid_at_each_weeks_first_test_fold_and_the_lineage_names_it(tmp_path, data_dir):
    """Sets as of 2023-11-15, 2023-12-05 and 2023-12-15. With three folds the week ending 2023-12-24
    tests from 2023-12-03 and uses the November set; the week ending 2023-12-31 tests from
    2023-12-10 and uses the set of 2023-12-05, not the one of 2023-12-15, which was tuned on rows
    it tests on. The version's lineage names the set, its members' params are the set's, and the
    gate's deflated Sharpe ratio counts the set's trials."""
    from include.pipeline import run_once
    from include.registry import ModelRegistry
    from include.registry.pages import hyperparameter_summary

    settings = Settings.in_folder(tmp_path, data_dir)
    cfg = RunConfig(as_of_date="2023-12-24", train_window_days=120, cv_folds=3, models=("lightgbm",),
                    hyperparameters="tuned", **PERMISSIVE_SKILL)
    sets = HyperparameterSets(settings.market_db_url)
    november = sets.record(cfg.model_name, "lightgbm", datetime(2023, 11, 15, tzinfo=UTC),
                           _summary({"num_leaves": 7, "learning_rate": 0.05}, 12), study="s-nov",
                           search_space={}, data_window={})
    december = sets.record(cfg.model_name, "lightgbm", datetime(2023, 12, 5, tzinfo=UTC),
                           _summary({"num_leaves": 31}, 5), study="s-dec", search_space={}, data_window={})
    sets.record(cfg.model_name, "lightgbm", datetime(2023, 12, 15, tzinfo=UTC), _summary({"num_leaves": 63}),
                study="s-late", search_space={}, data_window={})
    sets.dispose()
    first = run_once(cfg, settings, dag_id="weekly_retrain", run_id="week-1")
    second = run_once(RunConfig(**{**cfg.to_dict(), "as_of_date": "2023-12-31"}), settings,
                      dag_id="weekly_retrain", run_id="week-2")
    registry = ModelRegistry.from_settings(settings)
    meta = registry.metadata(first["assembled"]["version"])
    assert meta["hyperparameter_sets"]["lightgbm"]["set_id"] == november["set_id"]
    assert meta["member_params"]["lightgbm"]["num_leaves"] == 7
    assert meta["member_params"]["lightgbm"]["learning_rate"] == 0.05
    # 12 tuning trials with Sharpe ratios and this candidate: N = 13.
    assert first["decision"]["deflated_sharpe"]["n_trials"] == 13
    later = registry.metadata(second["assembled"]["version"])
    assert later["hyperparameter_sets"]["lightgbm"]["set_id"] == december["set_id"]
    assert later["member_params"]["lightgbm"]["num_leaves"] == 31
    # The earlier week's candidate, the December set's 5 trials and this candidate.
    assert second["decision"]["deflated_sharpe"]["n_trials"] == 7
    default = run_once(RunConfig(**{**cfg.to_dict(), "as_of_date": "2023-12-31", "hyperparameters": "default"}),
                       settings, dag_id="weekly_retrain", run_id="default")
    plain = registry.metadata(default["assembled"]["version"])
    assert plain["hyperparameter_sets"] == {"lightgbm": None} and plain["member_params"]["lightgbm"]["num_leaves"] == 15
    assert default["assembled"]["version"] != second["assembled"]["version"]
    assert hyperparameter_summary(meta) == f"lightgbm: {november['set_id']} (12 trials)"
    assert hyperparameter_summary(plain) == "defaults"
    registry.dispose()


# -- studies on real data -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuning_dataset(tmp_path_factory, data_dir):
    """The tuning table as of 2023-06-30 (BTCUSDT perpetual), built by the weekly run's steps."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("tuning")
    settings = Settings.in_folder(root, data_dir)
    prepared = _prepared(settings, mp)
    yield {"settings": settings, "plan": prepared[0], "monkeypatch": mp}
    mp.undo()


def _trial_values(settings: Settings, study: str) -> list[float]:
    import optuna

    from include.tuning import open_storage

    loaded = optuna.load_study(study_name=study, storage=open_storage(settings.market_db_url))
    return [t.value for t in loaded.trials]


def test_no_trial_reads_a_row_at_or_after_the_as_of_date(tmp_path, tuning_dataset, data_dir, monkeypatch):
    """The same study on a store that also holds planted bars after the as-of date (prices x 10)
    gives the same table and the same trial scores."""
    from include.data.store import MarketStore
    from include.tuning.runs import studies, tune_and_record

    clean = tuning_dataset["settings"]
    first = tune_and_record(studies([tuning_dataset["plan"]])[0])
    assert first["n_trials"] == 2 and first["as_of"].startswith(AS_OF)

    planted = Settings.in_folder(tmp_path, data_dir)
    store = MarketStore(planted.market_db_url)
    future = pd.date_range(AS_OF, periods=72, freq="h", tz="UTC")
    bars = pd.DataFrame({"timestamp": future, "open": 3e5, "high": 3.1e5, "low": 2.9e5, "close": 3e5,
                         "volume": 1e6})
    store.upsert_ohlcv(bars, exchange="binance", symbol="BTCUSDT", market_type="perp", timeframe="1h")
    store.dispose()
    plan = _prepared(planted, monkeypatch)[0]
    second = tune_and_record(studies([plan])[0])
    a = pd.read_parquet(Path(first["run_folder"]) / "dataset.parquet")
    b = pd.read_parquet(Path(second["run_folder"]) / "dataset.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert a.index.max() < pd.Timestamp(AS_OF, tz="UTC")
    assert _trial_values(clean, first["study"]) == _trial_values(planted, second["study"])
    assert first["params"] == second["params"]


def test_the_study_survives_a_worker_killed_mid_trial(tuning_dataset):
    """A worker killed (SIGKILL) while its trial runs leaves a RUNNING trial; the next worker marks it
    failed after the heartbeat's grace period and the study goes on to its trial count."""
    import optuna

    from include.tuning import open_storage, tune_family
    from include.tuning.runs import _unpack, studies

    settings, job = tuning_dataset["settings"], {**studies([tuning_dataset["plan"]])[0], "family": "xgboost"}
    script = (
        "import json, sys\n"
        "from include.tuning import tune_family\n"
        "from include.tuning.runs import _unpack\n"
        "job = json.loads(sys.argv[1])\n"
        "cfg, win, settings, out = _unpack(job, job['window'])\n"
        "tune_family(cfg, win, settings, out, 'xgboost', n_trials=50, heartbeat_seconds=1)\n")
    worker = subprocess.Popen([sys.executable, "-c", script, json.dumps(job)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    storage = open_storage(settings.market_db_url, heartbeat_seconds=1)
    cfg, win, _, out = _unpack(job, job["window"])
    from include.tuning import study_name

    name = study_name(cfg.model_name, "xgboost", win.ts("interval_end"))
    deadline = time.monotonic() + 300
    running = []
    while time.monotonic() < deadline and not running:
        time.sleep(0.5)
        try:
            running = optuna.load_study(study_name=name, storage=storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            continue
    assert running, "the worker never started a trial"
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(30)
    killed = running[0].number
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    before = len(optuna.load_study(study_name=name, storage=storage).get_trials(states=finished))
    time.sleep(3)  # past the grace period (2 heartbeats)
    done = tune_family(cfg, win, settings, out, "xgboost", n_trials=before + 1, heartbeat_seconds=1)
    study = optuna.load_study(study_name=name, storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert states[killed] == optuna.trial.TrialState.FAIL
    assert len(study.get_trials(states=finished)) == before + 1 and done["trials_run"] == 1


def test_a_stacked_candidate_registers_loads_and_serves_its_stackers_probabilities(tmp_path, data_dir):
    from include.ensemble import StackingEnsemble
    from include.pipeline import run_once
    from include.registry import ModelRegistry
    from include.serving import FastPredictor

    settings = Settings.in_folder(tmp_path, data_dir)
    cfg = RunConfig(as_of_date="2023-12-24", train_window_days=120, cv_folds=3, models=("lightgbm", "random_forest"),
                    ensemble_weighting="stacking", **PERMISSIVE_SKILL)
    run = run_once(cfg, settings, dag_id="weekly_retrain", run_id="stacked")
    registry = ModelRegistry.from_settings(settings)
    model, meta = registry.load(run["assembled"]["version"])
    registry.dispose()
    assert isinstance(model, StackingEnsemble) and meta["kind"] == "stacking_ensemble"
    X = pd.read_parquet(settings.runs_dir / "weekly_retrain" / cfg.model_name / "20231217T0000_20231224T0000"
                        / "dataset.parquet")[meta["feature_spec"]["names"]].tail(50)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # Not the weighted mean of its members: the stacker's own combination.
    members = [m.predict_proba(X) for _, m in model.estimators_]
    assert not np.allclose(proba, sum(w * p for w, p in zip(model._check(), members, strict=True)))
    fast = FastPredictor(model, X.head(5))
    assert fast.native
    np.testing.assert_allclose(fast.predict_proba(X.to_numpy()), proba, atol=1e-9)


def _open_together(url: str, barrier, results) -> None:
    from include.tuning import open_storage

    barrier.wait()
    try:
        open_storage(url)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(repr(exc))


def test_workers_opening_the_study_storage_together_on_a_fresh_database_all_succeed(tmp_path):
    """Optuna creates its tables on first open; four workers released together race to do so (its
    own RDBStorage fails in some of them: 'table studies already exists'), and every one opens."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(2):
        url = f"sqlite:///{tmp_path / f'fresh-{round_}.sqlite'}"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        workers = [ctx.Process(target=_open_together, args=(url, barrier, results)) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert [results.get(timeout=5) for _ in workers] == ["ok"] * 4


def test_a_failing_tuning_task_names_its_market_in_the_alert():
    from types import SimpleNamespace

    from include.notify import market_of

    task = SimpleNamespace(op_kwargs={"job": {"model": "binance-btcusdt-perp-1h-h4", "family": "xgboost"}})
    assert market_of({"task": task}) == "binance-btcusdt-perp-1h-h4"


def test_the_tuning_runs_note_fits_airflows_1000_characters_and_counts_what_it_leaves_out():
    from include.tuning.runs import run_note

    sets = [{"model": f"binance-m{i:03d}usdt-perp-1h-h4", "family": "lightgbm", "as_of": "2023-06-30T00:00:00+00:00",
             "n_trials": 20, "best_value": 1.01, "pbo": {"pbo": 0.25}} for i in range(200)]
    note = run_note(sets)
    assert len(note) <= 1000 and note.startswith("Tuned 200 hyperparameter set(s) as of 2023-06-30")
    shown = note.count("trials, log loss")
    assert 0 < shown < 200 and f"and {200 - shown} more" in note
    assert run_note(sets[:2]).endswith("PBO 0.25.") and run_note([None]) == "Tuning recorded no hyperparameter set."


def test_a_scheduled_tuning_run_tunes_as_of_its_data_intervals_end_on_weekly_folds():
    from include.tuning.runs import plan_tuning

    params = {**SMALL, "as_of_date": None}
    plans = plan_tuning(params, data_interval_start=datetime(2023, 6, 1, tzinfo=UTC),
                        data_interval_end=datetime(2023, 7, 1, tzinfo=UTC), run_after=None)
    window = plans[0]["window"]
    assert window["interval_end"] == "2023-07-01T00:00:00+00:00" and window["source"] == "as_of_date"
    assert window["interval_start"] == "2023-06-25T00:00:00+00:00"  # the last Sunday: weekly folds before it
    assert plans[0]["config"]["cv_folds"] == SMALL["tune_folds"]
    with pytest.raises(Exception, match="tune_trials"):
        plan_tuning({**SMALL, "tune_trials": 0}, data_interval_start=None, data_interval_end=None, run_after=None)
