"""Hyperparameter search: Optuna studies scored by the purged walk-forward service, as of a date.

A study tunes one model family of one registered model on data strictly before its as-of date:
the tuning run's window ends there, so every label it reads ends before it
(:func:`include.windows.resolve_window`, :func:`include.pipeline.labels`). Each trial samples
the family's search space (:mod:`include.tuning.spaces`) with Optuna's TPE sampler, fits the
walk-forward folds of the last ``cv_folds`` weeks before the as-of date and is scored by its
out-of-fold multi-class log loss (a proper scoring rule); after each fold the running mean is
reported, so Optuna's median pruner stops configurations that are already worse than most
(https://optuna.readthedocs.io). Macro F1 and the after-cost trading record of each completed
trial are kept beside it as user attributes.

Trials live in Optuna's RDB storage on the market database (``optuna.storages.RDBStorage``), so
workers on several machines share one study, a re-run resumes it, and a worker killed
mid-trial leaves a trial that the next worker marks failed (Optuna's heartbeat) while the study
goes on. The study's result is a hyperparameter set with as-of semantics
(:mod:`include.training.sets`); its search is measured for overfitting
(:mod:`include.tuning.overfitting`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from include.backtest import simulate
from include.config import RunConfig, Settings
from include.errors import ConfigError, TrainingError
from include.evaluation import interval_splits
from include.resources import model_threads
from include.run_folder import training_table
from include.trading import decided_positions, market_frames, trading_decision, trading_inputs
from include.training import cross_validate, family_params
from include.tuning.overfitting import probability_of_backtest_overfitting
from include.tuning.spaces import search_space, suggest

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

#: Seconds between a running trial's heartbeats in the study's storage; a trial silent for
#: twice as long (its worker died) is marked failed by the next worker of the study.
HEARTBEAT_SECONDS = 60


def study_name(model: str, family: str, as_of: datetime) -> str:
    """Name of the study tuning ``family`` of registered model ``model`` as of ``as_of`` (UTC):
    ``<model>/<family>/as-of-<YYYY-MM-DDTHHMM>``. One study per triple: a re-run resumes it."""
    return f"{model}/{family}/as-of-{as_of:%Y-%m-%dT%H%M}"


def open_storage(url: str, *, heartbeat_seconds: int = HEARTBEAT_SECONDS) -> Any:
    """Optuna's RDB storage on the database at SQLAlchemy ``url`` (the market database), with
    heartbeats so a dead worker's trial is failed rather than left running forever. Opening it
    creates Optuna's tables when missing; workers that race to do so on a fresh database retry.

    Raises:
        ConfigError: ``heartbeat_seconds`` below 1.
        sqlalchemy.exc.DBAPIError: the database refused three attempts.
    """
    import optuna

    if heartbeat_seconds < 1:
        raise ConfigError(f"heartbeat_seconds={heartbeat_seconds}: expected at least 1")
    import sqlalchemy as sa

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # workers of one study write the same file
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_seconds,
                                                  grace_period=2 * heartbeat_seconds)
        except sa.exc.DBAPIError:
            # Workers starting together on a fresh database race to create Optuna's tables; the
            # loser's CREATE TABLE fails, and on the next attempt the tables are there.
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _trial_trading(cfg: RunConfig, proba: np.ndarray, prior: np.ndarray, fold: np.ndarray, inputs: pd.DataFrame,
                   bars: pd.DataFrame, funding: pd.DataFrame | None) -> dict[str, float]:
    """After-cost trading record of a trial's out-of-fold forecasts under the weekly run's trading
    decision (:func:`include.trading.decided_positions`: each fold at the margin, and with
    meta-labeling the meta-label model, chosen on earlier folds), so that its Sharpe ratio is a
    trial of the same strategy the gate's deflated Sharpe ratio judges.

    Args:
        proba, prior: ``(n, 3)`` the trial's out-of-fold forecasts and their folds' class priors.
        fold: ``(n,)`` fold of each row.
        inputs: ``(n, ...)`` the rows' decision inputs (:data:`include.trading.DECISION_COLUMNS`),
            indexed by bar.
    """
    frame = inputs.assign(p_down=proba[:, 0], p_range=proba[:, 1], p_up=proba[:, 2], prior_down=prior[:, 0],
                          prior_range=prior[:, 1], prior_up=prior[:, 2], fold=fold)
    signal = pd.Series(decided_positions(frame, cfg, bars, funding)[0], index=frame.index)
    metrics = simulate(signal, bars, funding, trading_decision(cfg).costs, cfg.bar_seconds)
    return {k: float(metrics[k]) for k in ("sharpe", "sharpe_per_bar", "total_return", "max_drawdown")}


class _TuningTable(NamedTuple):
    """A tuning run's modelling table, its folds and what its trials' trading simulation reads.

    Attributes:
        X: ``(n, n_features)`` the labelled rows' features, indexed by bar open time.
        y: ``(n,)`` their class labels.
        splits: the walk-forward split service (:func:`include.evaluation.interval_splits`).
        bars: the market's OHLCV bars from the first row to the as-of date.
        funding: funding rates over the same span (perpetuals), else ``None``.
        inputs: the trading decision's inputs of every test row, indexed by bar.
    """

    X: pd.DataFrame
    y: np.ndarray
    splits: Any
    bars: pd.DataFrame
    funding: pd.DataFrame | None
    inputs: pd.DataFrame


def _tuning_table(cfg: RunConfig, window: Any, settings: Settings, out_dir: Path) -> _TuningTable:
    """The tuning run's table in ``out_dir``, its weekly folds, the market frames and the test rows'
    decision inputs.

    Raises:
        TrainingError: the table is too short for the folds.
    """
    X, y, test_size, _ = training_table(out_dir, window)
    splits = interval_splits(cfg, X.index, window, test_size)
    bars, funding = market_frames(cfg, settings, X.index.min().to_pydatetime(), window.ts("interval_end"))
    # The trading decision's inputs of every test row, as the weekly run records them.
    folds = [(train, test) for _, train, test in splits.split(len(X))]
    inputs = pd.DataFrame(index=X.index[np.concatenate([test for _, test in folds])])
    trading_inputs(cfg, out_dir, inputs, X.index, y, folds, splits.final_rows(len(X)))
    return _TuningTable(X, y, splits, bars, funding, inputs)


def _open_study(cfg: RunConfig, window: Any, settings: Settings, family: str, space: dict[str, dict[str, Any]],
                splits: Any, *, worker: int, heartbeat_seconds: int) -> tuple[str, optuna.Study]:
    """The study's name and the study, created (or loaded) in the market database's storage; a new
    study gets the family's defaults as its first trial and records its search space and data window.
    """
    import optuna

    name = study_name(cfg.model_name, family, window.ts("interval_end"))
    sampler = optuna.samplers.TPESampler(seed=cfg.random_state + 1000 * worker, n_startup_trials=5)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    study = optuna.create_study(study_name=name, storage=open_storage(settings.market_db_url,
                                                                      heartbeat_seconds=heartbeat_seconds),
                                direction="minimize", sampler=sampler, pruner=pruner, load_if_exists=True)
    if not study.trials:
        defaults = family_params(family)
        study.enqueue_trial({k: defaults[k] for k in space if k in defaults}, skip_if_exists=True)
        study.set_user_attr("search_space", space)
        study.set_user_attr("data_window", {"train_start": window.train_start, "as_of": window.interval_end,
                                            "folds": cfg.cv_folds, "purge_bars": splits.purge,
                                            "embargo_bars": splits.embargo})
    return name, study


def _study_objective(cfg: RunConfig, family: str, space: dict[str, dict[str, Any]], table: _TuningTable,
                     n_jobs: int) -> Callable[[optuna.Trial], float]:
    """The trial objective: the out-of-fold log loss of one sampled configuration, reported after
    each fold for pruning, with its fold losses, macro F1 and trading record as user attributes."""
    import optuna

    X, y, splits = table.X, table.y, table.splits
    host = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", host)  # which worker ran it, when several share the study
        params = suggest(trial, space)
        fold_losses: list[float] = []

        def on_fold(fold: int, metrics: dict[str, Any]) -> None:
            fold_losses.append(float(metrics["log_loss"]))
            trial.report(float(np.mean(fold_losses)), step=fold)
            if trial.should_prune():
                raise optuna.TrialPruned(f"running log loss {np.mean(fold_losses):.5f} after fold {fold}")

        cv = cross_validate(family, X, y, splits=splits, random_state=cfg.random_state, n_jobs=n_jobs,
                            early_stopping_rounds=cfg.early_stopping_rounds, params=params,
                            importance=False, on_fold=on_fold)
        trial.set_user_attr("fold_log_loss", fold_losses)
        trial.set_user_attr("macro_f1", float(cv.overall["macro_f1"]))
        trial.set_user_attr("trading", _trial_trading(cfg, cv.oof_proba, cv.oof_prior, cv.oof_fold,
                                                      table.inputs.loc[X.index[cv.oof_positions]], table.bars,
                                                      table.funding))
        return float(cv.overall["log_loss"])

    return objective


def _run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
                timeout_s: float | None) -> tuple[int, float]:
    """``(trials finished here, seconds spent)``: runs ``objective`` until the study holds
    ``n_trials`` finished (complete or pruned) trials or ``timeout_s`` passes."""
    import optuna

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    before = len(study.get_trials(deepcopy=False, states=finished))
    t0 = time.perf_counter()
    if before < n_trials:
        study.optimize(objective, timeout=timeout_s, catch=(TrainingError,), gc_after_trial=True,
                       callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=finished)])
    seconds = time.perf_counter() - t0
    ran = len(study.get_trials(deepcopy=False, states=finished)) - before
    return ran, seconds


def tune_family(cfg: RunConfig, window: Any, settings: Settings, out_dir: Path, family: str, *,
                n_trials: int, timeout_s: float | None = None, space_overrides: dict[str, Any] | None = None,
                worker: int = 0, heartbeat_seconds: int = HEARTBEAT_SECONDS) -> dict[str, Any]:
    """Run (or resume) the study of ``family`` until it holds ``n_trials`` finished trials.

    The modelling table is the tuning run's ``dataset.parquet`` in ``out_dir`` (written by
    :func:`include.pipeline.features` and :func:`include.pipeline.labels` for a window ending at
    the as-of date). Folds: :func:`include.evaluation.interval_splits` with
    ``cfg.cv_folds`` weekly test folds, the purge and embargo of the weekly runs. The family's
    defaults are enqueued as the study's first trial, so the search starts from them.

    Args:
        cfg: the market's run configuration; ``cv_folds`` is the tuning's fold count.
        window: the tuning run's :class:`~include.windows.RunWindow` (``interval_end`` = as-of).
        n_trials: finished (complete or pruned) trials the study should hold; trials other
            workers finish count too.
        timeout_s: stop starting trials after this many seconds (``None``: no limit).
        space_overrides: per-hyperparameter overrides of the family's search space.
        worker: index of this worker among the study's (seeds its sampler).
        heartbeat_seconds: see :func:`open_storage`.

    Returns:
        ``{"study", "family", "as_of", "trials_run", "seconds", "seconds_per_trial"}``.

    Raises:
        ConfigError: bad search space or trial count.
        TrainingError: the table is too short for the folds.
    """
    if n_trials < 1:
        raise ConfigError(f"n_trials={n_trials}: expected at least 1")
    space = search_space(family, space_overrides)
    table = _tuning_table(cfg, window, settings, out_dir)
    n_jobs = model_threads()
    name, study = _open_study(cfg, window, settings, family, space, table.splits, worker=worker,
                              heartbeat_seconds=heartbeat_seconds)
    ran, seconds = _run_trials(study, _study_objective(cfg, family, space, table, n_jobs), n_trials, timeout_s)
    logger.info("study %s: %d trial(s) here in %.1f s; best log loss %.5f", name, ran, seconds,
                study.best_value if study.best_trials else float("nan"))
    return {"study": name, "family": family, "as_of": window.interval_end, "trials_run": ran,
            "seconds": round(seconds, 2), "seconds_per_trial": round(seconds / ran, 2) if ran else None}


def summarise_study(study: Any) -> dict[str, Any]:
    """What a hyperparameter set records of its study.

    Returns:
        ``{"best_params", "best_value", "best_trial", "n_trials", "states", "trial_sharpes",
        "best_metrics", "pbo"}``: ``n_trials`` counts every trial that was scored or pruned or
        failed (each is a configuration tried); ``trial_sharpes`` the per-bar Sharpe ratio of
        every completed trial's out-of-fold strategy (for the deflated Sharpe ratio's variance);
        ``pbo`` the probability of backtest overfitting over the completed trials' per-fold log
        losses (pruned trials are not in it, so it understates the search's overfitting: see
        :mod:`include.tuning.overfitting`).

    Raises:
        TrainingError: the study has no completed trial.
    """
    import optuna

    state = optuna.trial.TrialState
    complete = study.get_trials(deepcopy=False, states=(state.COMPLETE,))
    if not complete:
        raise TrainingError(f"study {study.study_name} has no completed trial")
    counted = study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.FAIL))
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    best = study.best_trial
    folds = [t.user_attrs.get("fold_log_loss") for t in complete]
    width = max(len(f) for f in folds if f)
    matrix = np.asarray([f for f in folds if f and len(f) == width])
    return {"best_params": dict(best.params), "best_value": float(best.value), "best_trial": best.number,
            "n_trials": len(counted), "states": states,
            "trial_sharpes": [float(t.user_attrs["trading"]["sharpe_per_bar"]) for t in complete
                              if "trading" in t.user_attrs],
            "best_metrics": {"log_loss": float(best.value), "macro_f1": best.user_attrs.get("macro_f1"),
                             "trading": best.user_attrs.get("trading"),
                             "fold_log_loss": best.user_attrs.get("fold_log_loss")},
            "pbo": probability_of_backtest_overfitting(matrix) if len(matrix) else None}
