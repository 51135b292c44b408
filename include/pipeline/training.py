"""Training stages: one model family per task, then the soft-voting ensemble registered as a candidate."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.calibration import fit_temperature, temperature, walk_forward_calibration
from include.config import NOT_MODEL_INPUTS, RunConfig, Settings
from include.drift import reference_bins
from include.ensemble import (
    StackingEnsemble,
    WeightedSoftVotingEnsemble,
    combine,
    fit_stacker,
    fit_weights,
    ranked_features,
    select_weights,
    selection_candidates,
    walk_forward_stacking,
    walk_forward_weights,
)
from include.errors import TrainingError
from include.evaluation import (
    WalkForward,
    baseline_oof,
    interval_splits,
    multiclass_log_loss,
    reliability,
    summarise_folds,
)
from include.labels import momentum_forecast
from include.registry import (
    CHALLENGER,
    OOF_FILE,
    ModelRegistry,
    atomic_write_json,
    code_version,
    load_verified,
    sha256_file,
)
from include.resources import available_cpus, model_threads, training_slots
from include.run_folder import RunFolder, timed_step, training_table, write_parquet
from include.trading import trading_inputs
from include.training import class_prior, cross_validate, family_params, fit_family, metrics_with_prior
from include.training.fit_cache import FitCache
from include.training.sets import HyperparameterSets
from include.windows import RunWindow

logger = logging.getLogger(__name__)


def fit_cache(settings: Settings) -> FitCache:
    """The worker's :class:`~include.training.fit_cache.FitCache`: files under the runs folder,
    digests in the market database."""
    return FitCache(settings.runs_dir / ".fit_cache", settings.market_db_url)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's behaviour."""
    import lightgbm
    import sklearn
    import talib
    import xgboost

    return {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__, "lightgbm": lightgbm.__version__,
            "xgboost": xgboost.__version__, "ta-lib": talib.__version__}


def hyperparameter_choice(cfg: RunConfig, settings: Settings | None, family: str,
                          first_test: datetime) -> dict[str, Any]:
    """The hyperparameters one family trains with in a run whose first test fold starts at ``first_test``.

    With ``cfg.hyperparameters == "tuned"`` and ``settings``: the newest set
    ``tune_hyperparameters`` recorded for the registered model and family with an as-of date at
    or before ``first_test`` (:meth:`include.training.sets.HyperparameterSets.valid_set`), so no
    row the tuning scored on is tested on here; otherwise, or without such a set, the family's
    defaults.

    Returns:
        ``{"params": overrides of the defaults, "set": the set's lineage record or None}``.
    """
    if cfg.hyperparameters == "default" or settings is None:
        return {"params": {}, "set": None}
    sets = HyperparameterSets(settings.market_db_url)
    try:
        chosen = sets.valid_set(cfg.model_name, family, first_test)
    finally:
        sets.dispose()
    if chosen is None:
        return {"params": {}, "set": None}
    return {"params": chosen["params"],
            "set": {k: chosen.get(k) for k in ("set_id", "as_of", "study", "n_trials", "best_value", "pbo",
                                                "trial_sharpes")}}


def _replace_dir(tmp: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)


@timed_step("train", part="family")
def train(cfg: RunConfig, window: RunWindow, out_dir: Path, family: str,
          settings: Settings | None = None) -> dict[str, Any]:
    """Cross-validate one family with purged walk-forward folds (one per data interval), then
    fit the model to deploy on :meth:`~include.evaluation.WalkForward.final_rows`.

    With ``settings``, fits and fold evaluations an earlier run already computed on the same
    rows are reused (:func:`fit_cache`); the metadata counts them.

    The family's hyperparameters are its defaults or a tuned set (:func:`hyperparameter_choice`);
    the metadata names the set.

    Writes ``candidates/<family>/`` with ``model.joblib`` (final fit), ``oof.parquet``
    (out-of-fold probabilities with fold and training prior per row) and ``metadata.json``.

    Returns:
        ``{"family", "path", "sha256", "overall", "summary", "seconds"}`` with out-of-fold
        metrics; ``sha256`` is the final model file's, which :func:`assemble` checks before
        unpickling it.
    """
    import joblib

    t0 = time.perf_counter()
    X, y, test_size, names = training_table(out_dir, window)
    splits = interval_splits(cfg, X.index, window, test_size)
    first_test = X.index[next(iter(splits.split(len(X))))[2][0]].to_pydatetime()
    chosen = hyperparameter_choice(cfg, settings, family, first_test)
    n_jobs = model_threads()
    logger.info("%s: training with %d thread(s) (thread budget: %d core(s), %d training slot(s)); "
                "hyperparameters: %s", family, n_jobs, available_cpus(), training_slots(),
                f"set {chosen['set']['set_id']} (as of {chosen['set']['as_of']})" if chosen["set"] else "defaults")
    cache = fit_cache(settings) if settings is not None else None
    cv = cross_validate(family, X, y, splits=splits, random_state=cfg.random_state, n_jobs=n_jobs,
                        early_stopping_rounds=cfg.early_stopping_rounds, cache=cache, params=chosen["params"])
    final_rows = splits.final_rows(len(X))
    final, final_rounds = fit_family(family, X, y, final_rows, splits, random_state=cfg.random_state,
                                     n_jobs=n_jobs, early_stopping_rounds=cfg.early_stopping_rounds, cache=cache,
                                     params=chosen["params"])
    if cache is not None:
        logger.info("%s: reused %d of %d cached fits and evaluations from earlier runs", family, cache.hits,
                    cache.hits + cache.misses)
        cache.dispose()
    cand_root = RunFolder(out_dir).candidates
    cand_root.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{family}.", dir=cand_root))
    oof = pd.DataFrame(cv.oof_proba, columns=["p_down", "p_range", "p_up"],
                       index=X.index[cv.oof_positions])
    oof["fold"] = cv.oof_fold
    oof[["prior_down", "prior_range", "prior_up"]] = cv.oof_prior
    oof["label"] = y[cv.oof_positions]
    oof.to_parquet(tmp / "oof.parquet")
    joblib.dump(final, tmp / "model.joblib")
    seconds = round(time.perf_counter() - t0, 2)
    meta = {
        "family": family,
        "params": {**family_params(family), **chosen["params"], **getattr(final, "chosen_params_", {})},
        "hyperparameter_set": chosen["set"], "random_state": cfg.random_state,
        "feature_names": names, "train_rows": int(len(final_rows)),
        "train_start": X.index[final_rows[0]].isoformat(), "train_end": X.index[final_rows[-1]].isoformat(),
        "class_prior": class_prior(y[final_rows]).tolist(),
        "cache": {"hits": cache.hits, "misses": cache.misses} if cache is not None else None,
        "final_n_estimators": final_rounds, "n_jobs": n_jobs,
        "cv": {"folds": cv.folds, "summary": cv.summary, "overall": cv.overall, "importance": cv.importance,
               "test_size": test_size, "purge_bars": splits.purge, "embargo_bars": splits.embargo,
               "scheme": splits.scheme, "max_train_size": splits.max_train_size},
        "window": asdict(window), "libraries": library_versions(), "seconds": seconds,
        "files": {p.name: sha256_file(p) for p in tmp.iterdir()},
    }
    atomic_write_json(tmp / "metadata.json", meta)
    target = cand_root / family
    _replace_dir(tmp, target)
    logger.info("%s: out-of-fold %s in %.1fs", family, cv.overall, seconds)
    return {"family": family, "path": str(target), "sha256": meta["files"]["model.joblib"],
            "hyperparameter_set": chosen["set"]["set_id"] if chosen["set"] else None,
            "overall": cv.overall, "summary": cv.summary,
            "importance_stability": {k: cv.importance[k]["rank_stability"] for k in ("gain", "permutation")},
            "n_jobs": n_jobs, "seconds": seconds}


def _validation_summary(out_dir: Path) -> dict[str, Any] | None:
    """The expectation-suite result of the run, for the version's lineage."""
    path = RunFolder(out_dir).validation
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {"success": report.get("success"), "window": report.get("window"),
            "suites": [{"suite": r.get("suite"), "rows": r.get("rows"), "expectations": r.get("evaluated"),
                        "failed": len(r.get("failed", []))} for r in report.get("suites", [])]}


def _load_members(cfg: RunConfig, out_dir: Path, trained: list[dict[str, Any]]
                  ) -> tuple[list[str], list[tuple[str, Any]], dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """The trained families in ``cfg.models`` order, with their verified fitted models
    (``(family, model)`` pairs), out-of-fold frames and metadata, by family.

    Raises:
        IntegrityError: a member's model file does not hash to what its training task reported.
    """
    trained = [t for t in trained if t]
    families = [t["family"] for t in sorted(trained, key=lambda t: cfg.models.index(t["family"]))]
    hashes = {t["family"]: t["sha256"] for t in trained}
    members, oofs, member_meta = [], {}, {}
    for fam in families:
        cdir = RunFolder(out_dir).member(fam)
        # The hash comes from the training task's XCom, not from a file beside the model.
        members.append((fam, load_verified(cdir / "model.joblib", hashes[fam], f"{cfg.model_name} member {fam}")))
        oofs[fam] = pd.read_parquet(cdir / "oof.parquet")
        member_meta[fam] = json.loads((cdir / "metadata.json").read_text())
    return families, members, oofs, member_meta


def _shared_oof_rows(families: list[str], oofs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The first family's out-of-fold frame, once every family's is checked to hold the same rows.

    Raises:
        TrainingError: families disagree on out-of-fold rows.
    """
    ref = oofs[families[0]]
    for fam in families[1:]:
        if not oofs[fam].index.equals(ref.index):
            raise TrainingError(f"out-of-fold rows of {fam} differ from {families[0]}")
    return ref


def _soft_vote(cfg: RunConfig, families: list[str], probas: dict[str, np.ndarray], ref: pd.DataFrame,
               splits: WalkForward, weights: dict[str, float]
               ) -> tuple[np.ndarray, dict[str, float], Any, dict[str, Any]]:
    """Combine the members' out-of-fold probabilities as ``cfg.ensemble_weighting`` says.

    Args:
        probas: each family's out-of-fold probabilities, shape ``(n_oof, 3)``.
        ref: the out-of-fold rows (label and fold per row), see :func:`_shared_oof_rows`.
        weights: the configured member weights, summing to 1.

    Returns:
        ``(ensemble out-of-fold probabilities (n_oof, 3), the registered model's weights, its
        stacker or None, the weighting's record)``: ``{"mode"}``, with 'fitted' and 'selected'
        the weights each fold was combined with (``"folds"``), with 'selected' each candidate's
        weights and out-of-fold log loss over every row (``"candidates"``).
    """
    y_oof = ref["label"].to_numpy()
    fold_of = ref["fold"].to_numpy()
    stacker = None
    record: dict[str, Any] = {"mode": cfg.ensemble_weighting}
    if cfg.ensemble_weighting in ("fitted", "selected"):
        # Walk-forward weights: fold k is scored with weights fitted (or selected) on earlier
        # folds' rows, purged at its boundary (fold 0 with the configured weights), so no row is
        # scored by weights that saw it. The registered model's weights see every out-of-fold row.
        candidates = selection_candidates(weights)
        fit = fit_weights if cfg.ensemble_weighting == "fitted" else partial(select_weights, candidates=candidates)
        ens_oof, used = walk_forward_weights(probas, y_oof, fold_of, ref.index,
                                             splits.gap * pd.Timedelta(seconds=cfg.bar_seconds), weights, fit)
        record["folds"] = {str(k): {f: round(w, 4) for f, w in ws.items()} for k, ws in used.items()}
        weights = fit(probas, y_oof)
        if cfg.ensemble_weighting == "selected":
            record["candidates"] = [{"weights": c, "log_loss": multiclass_log_loss(y_oof, combine(probas, c))}
                                    for c in candidates]
        logger.info("%s ensemble weights %s; per fold %s; candidates %s", cfg.ensemble_weighting, weights,
                    record["folds"], record.get("candidates"))
    elif cfg.ensemble_weighting == "stacking":
        # Fold k is scored by a stacker fitted on earlier folds' rows, purged at its boundary (fold
        # 0 with the configured weights); the registered model's stacker sees every out-of-fold row.
        ens_oof, _ = walk_forward_stacking(probas, y_oof, fold_of, ref.index,
                                           splits.gap * pd.Timedelta(seconds=cfg.bar_seconds), weights,
                                           cfg.random_state)
        stacker = fit_stacker([probas[f] for f in families], y_oof, cfg.random_state)
    else:
        ens_oof = combine(probas, weights)
    return ens_oof, weights, stacker, record


def _calibrated(cfg: RunConfig, proba: np.ndarray, ref: pd.DataFrame,
                splits: WalkForward) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """``proba`` (out-of-fold, ``(n_oof, 3)``) calibrated walk-forward
    (:func:`include.calibration.walk_forward_calibration`), the calibrator to register (fitted on
    every out-of-fold row) and the record of the temperatures: ``{"folds": {fold: T or None},
    "deployed": T}``."""
    y_oof, fold_of = ref["label"].to_numpy().astype(int), ref["fold"].to_numpy()
    out, used = walk_forward_calibration(proba, y_oof, fold_of, ref.index,
                                         splits.gap * pd.Timedelta(seconds=cfg.bar_seconds))
    calibrator = fit_temperature(proba, y_oof)
    return out, calibrator, {"folds": used, "deployed": temperature(calibrator)}


def _calibrate(cfg: RunConfig, families: list[str], probas: dict[str, np.ndarray], ref: pd.DataFrame,
               splits: WalkForward, weights: dict[str, float]
               ) -> tuple[np.ndarray, dict[str, float], Any, dict[str, Any], dict[str, Any]]:
    """:func:`_soft_vote` with ``cfg.calibration``: each member's out-of-fold probabilities
    calibrated before they are combined ('members_and_ensemble'), the combination after
    ('ensemble' and 'members_and_ensemble').

    Returns:
        ``(ensemble out-of-fold probabilities (n_oof, 3), weights, stacker or None, the weighting's
        record (see :func:`_soft_vote`), calibration)``; ``calibration`` holds the calibrators to
        register (``"members"``: one per family or ``None``; ``"ensemble"``) and the temperatures
        (``"record"``) for the version's metadata.
    """
    members: dict[str, Any] = dict.fromkeys(families)
    record: dict[str, Any] = {"mode": cfg.calibration}
    # The weights (or stacker) and the ensemble's calibrator are fitted on members calibrated fold
    # by fold (folds without enough earlier rows as they came); the registered members' calibrators
    # are fitted on every row, so a served forecast is scaled as the latest folds were.
    if cfg.calibration == "members_and_ensemble":
        record["members"] = {}
        for fam in families:
            probas[fam], members[fam], record["members"][fam] = _calibrated(cfg, probas[fam], ref, splits)
    ens_oof, weights, stacker, weighting = _soft_vote(cfg, families, probas, ref, splits, weights)
    ensemble = None
    if cfg.calibration != "none":
        ens_oof, ensemble, record["ensemble"] = _calibrated(cfg, ens_oof, ref, splits)
        logger.info("calibration %s: ensemble temperature per fold %s, registered %s", cfg.calibration,
                    record["ensemble"]["folds"], record["ensemble"]["deployed"])
    return ens_oof, weights, stacker, weighting, {"members": [members[f] for f in families],
                                                  "ensemble": ensemble, "record": record}


@dataclass
class _EnsembleOutOfFold:
    """The ensemble's out-of-fold record: what the gate tests and the version's metadata reports.

    Attributes:
        frame: one row per out-of-fold bar: ensemble probabilities, the fold's training prior,
            label, fold, momentum forecast, the stratified baseline's draw and the trading
            decision's inputs (``ensemble_oof.parquet``).
        proba: ensemble out-of-fold probabilities, shape ``(n_oof, 3)``.
        labels: out-of-fold labels in {0, 1, 2}, shape ``(n_oof,)``.
        metrics: ensemble metrics over all out-of-fold rows.
        per_fold: ensemble metrics of each fold.
        gate_window: ensemble metrics on the last fold (this run's data interval), its bounds and
            the last row its model was fitted on.
        gate_rows: out-of-fold rows in the last fold.
        baselines: out-of-fold metrics of the baseline forecasts on the same folds.
        final_trading: the trading decision's inputs of the deployed model's training rows
            (:func:`include.trading.trading_inputs`: class moves and scale reference).
    """

    frame: pd.DataFrame
    proba: np.ndarray
    labels: np.ndarray
    metrics: dict[str, float]
    per_fold: list[dict[str, Any]]
    gate_window: dict[str, Any]
    gate_rows: int
    baselines: dict[str, dict[str, Any]]
    final_trading: dict[str, Any]


def _out_of_fold_record(cfg: RunConfig, out_dir: Path, ref: pd.DataFrame, ens_oof: np.ndarray, X: pd.DataFrame,
                        y: np.ndarray, splits: WalkForward, final_rows: np.ndarray) -> _EnsembleOutOfFold:
    """Score the ensemble out-of-fold, with the baselines on the same folds, and write its rows
    to ``ensemble_oof.parquet``.

    Args:
        ref: the out-of-fold rows (label, fold and training prior per row), see :func:`_shared_oof_rows`.
        ens_oof: ensemble out-of-fold probabilities, shape ``(n_oof, 3)``.
        X: the labelled training rows' features, ``(n_rows, n_features)``; ``y`` their labels.
        final_rows: positions of the deployed model's training rows.

    Returns:
        The ensemble's out-of-fold record.
    """
    y_oof = ref["label"].to_numpy()
    prior_rows = ref[["prior_down", "prior_range", "prior_up"]].to_numpy()
    fold_of = ref["fold"].to_numpy()
    last = ref["fold"].to_numpy() == ref["fold"].max()
    ensemble_metrics = metrics_with_prior(y_oof, ens_oof, prior_rows)
    gate_window = metrics_with_prior(y_oof[last], ens_oof[last], prior_rows[last])
    gate_window.update({"start": ref.index[last][0].isoformat(), "end": ref.index[last][-1].isoformat()})

    folds = [(tr, te) for _, tr, te in splits.split(len(X))]
    # What the gate compares: the last fold's model was fitted on rows up to this one.
    gate_window["last_training_row"] = X.index[folds[-1][0][-1]].isoformat()
    table = pd.read_parquet(RunFolder(out_dir).dataset)
    momentum = momentum_forecast(table["close"], horizon=cfg.label_horizon_bars, mode=cfg.label_threshold_mode,
                                 threshold=cfg.label_threshold, vol_window=cfg.label_vol_window_bars)
    momentum = momentum.reindex(X.index).fillna(1.0).to_numpy()  # warm-up rows: no view (range)
    draws: list[np.ndarray] = []
    baselines = baseline_oof(y, folds, cfg.random_state, momentum=momentum, draws=draws)
    oof_frame = pd.DataFrame(ens_oof, columns=["p_down", "p_range", "p_up"], index=ref.index)
    oof_frame[["prior_down", "prior_range", "prior_up"]] = prior_rows
    oof_frame["label"], oof_frame["fold"] = y_oof, fold_of
    oof_frame["momentum"] = pd.Series(momentum, index=X.index).reindex(ref.index).to_numpy()
    # The stratified baseline's draws, row by row, for the gate's F1 test (same folds, same rows).
    oof_frame["pred_stratified"] = pd.Series(np.concatenate(draws), index=X.index[np.concatenate(
        [te for _, te in folds])]).reindex(ref.index).to_numpy()
    final_trading = trading_inputs(cfg, out_dir, oof_frame, X.index, y, folds, final_rows)
    write_parquet(oof_frame, RunFolder(out_dir).ensemble_oof)
    per_fold = [
        {"fold": int(k), **metrics_with_prior(y_oof[ref["fold"] == k], ens_oof[ref["fold"] == k],
                                              prior_rows[ref["fold"] == k])}
        for k in sorted(ref["fold"].unique())
    ]
    return _EnsembleOutOfFold(frame=oof_frame, proba=ens_oof, labels=y_oof, metrics=ensemble_metrics,
                              per_fold=per_fold, gate_window=gate_window, gate_rows=int(last.sum()),
                              baselines=baselines, final_trading=final_trading)


def _ensemble_model(cfg: RunConfig, families: list[str], members: list[tuple[str, Any]], weights: dict[str, float],
                    stacker: Any, prior: np.ndarray, names: list[str],
                    calibration: dict[str, Any]) -> WeightedSoftVotingEnsemble:
    """The model to register: the fitted members soft-voted with ``weights`` or, with
    ``cfg.ensemble_weighting == "stacking"``, combined by ``stacker``, with the calibrators of
    :func:`_calibrate`; ``prior`` is the training class prior ``(3,)``."""
    if cfg.ensemble_weighting == "stacking":
        model = StackingEnsemble.from_fitted(members, [weights[f] for f in families], prior,
                                             feature_names=names, stacker=stacker)
    else:
        model = WeightedSoftVotingEnsemble.from_fitted(members, [weights[f] for f in families],
                                                       prior, feature_names=names)
    if cfg.calibration != "none":
        model.member_calibrators, model.calibrator = calibration["members"], calibration["ensemble"]
    return model


def _candidate_metadata(cfg: RunConfig, window: RunWindow, out_dir: Path, spec: dict[str, Any], families: list[str],
                        weights: dict[str, float], member_meta: dict[str, dict[str, Any]], X: pd.DataFrame,
                        y: np.ndarray, names: list[str], final_rows: np.ndarray, record: _EnsembleOutOfFold, *,
                        dag_id: str, run_id: str, logical_date: str | None) -> dict[str, Any]:
    """The candidate's lineage: what it is, the data window and rows it was trained on, its
    out-of-fold metrics, monitoring's references and the run that made it.

    Returns:
        The version's ``metadata.json`` content, before its file hashes and identity.
    """
    return {
        "kind": "stacking_ensemble" if cfg.ensemble_weighting == "stacking" else "weighted_soft_voting_ensemble",
        "members": families, "weights": weights,
        "registered_model": cfg.model_name,
        "symbol": cfg.symbol, "exchange": cfg.exchange, "market_type": cfg.market_type,
        "timeframe": cfg.timeframe, "config": cfg.to_dict(), "feature_spec": spec,
        "data_window": {"train_start": window.train_start, "interval_start": window.interval_start,
                        "requested_train_start": window.requested_train_start or window.train_start,
                        "short_history": window.requested_train_start is not None,
                        "interval_end": window.interval_end, "trained_until": window.interval_end,
                        "first_bar": X.index[final_rows[0]].isoformat(),
                        "last_training_row": X.index[final_rows[-1]].isoformat(),
                        "last_labelled_bar": X.index.max().isoformat(),
                        # End of the last bar any label read: the proof of no data past interval_end.
                        "last_bar_read_end": (X.index.max() + (cfg.label_horizon_bars + 1)
                                              * pd.Timedelta(seconds=cfg.bar_seconds)).isoformat()},
        "rows": {"train": int(len(final_rows)), "out_of_fold": int(len(record.labels)),
                 "gate_window": record.gate_rows},
        "class_prior": class_prior(y[final_rows]).tolist(),
        # The trading decision's class moves and volatility-scale reference
        # (include.backtest.TradingDecision), from the same rows.
        "trading": {"class_moves": record.final_trading["class_moves"].tolist(),
                    "scale_reference": record.final_trading["scale_reference"]},
        "metrics": {"ensemble": record.metrics, "ensemble_per_fold": record.per_fold,
                    "ensemble_per_fold_summary": summarise_folds(record.per_fold),
                    "gate_window": record.gate_window,
                    "reliability": reliability(record.labels, record.proba),
                    "members": {f: member_meta[f]["cv"]["overall"] for f in families},
                    "members_summary": {f: member_meta[f]["cv"]["summary"] for f in families},
                    "baselines": record.baselines},
        "member_params": {f: member_meta[f]["params"] for f in families},
        # The tuned sets the members used (None: the family's defaults); the gate counts their trials.
        "hyperparameter_sets": {f: member_meta[f].get("hyperparameter_set") for f in families},
        # Monitoring's references: the training distribution of every feature, and the features
        # ranked by permutation importance (mean over the families the ensemble weighs).
        "drift_reference": reference_bins(X.iloc[final_rows]),
        "top_features": ranked_features(member_meta, [f for f in families if weights[f] > 0], names),
        "libraries": library_versions(), "code_version": code_version(),
        "dag_id": dag_id, "run_id": run_id, "logical_date": logical_date,
        "validation": _validation_summary(out_dir),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _version_identity(cfg: RunConfig, X: pd.DataFrame, y: np.ndarray, spec: dict[str, Any], families: list[str],
                      metadata: dict[str, Any]) -> str:
    """The sha256 of what the version was made from: training rows, feature spec, data window,
    model-shaping configuration (not :data:`NOT_MODEL_INPUTS`), members and their
    hyperparameters, libraries and code."""
    # The version is named by what it was made from, not by when: re-running the same inputs,
    # code and configuration finds the same version instead of registering a new one.
    made_from = {"training_rows": hashlib.sha256(pd.util.hash_pandas_object(X, index=True).to_numpy().tobytes()
                                                 + y.tobytes()).hexdigest(),
                 "feature_spec": spec.get("sha256"), "data_window": metadata["data_window"],
                 "config": {k: v for k, v in cfg.to_dict().items() if not k.startswith(NOT_MODEL_INPUTS)},
                 "members": families, "member_params": metadata["member_params"],
                 "hyperparameter_sets": {f: (s or {}).get("set_id") for f, s in
                                         metadata["hyperparameter_sets"].items()},
                 "libraries": metadata["libraries"], "code_version": metadata["code_version"]}
    return hashlib.sha256(json.dumps(made_from, sort_keys=True, default=str).encode()).hexdigest()


def _register_candidate(cfg: RunConfig, settings: Settings, window: RunWindow, cand: Path, identity: str, *,
                        dag_id: str, run_id: str) -> str:
    """Register the candidate folder ``cand`` (or find the version of the same ``identity``) and
    move the challenger alias to it.

    Returns:
        The version.

    Raises:
        TrainingError: the version is registered under another model.
    """
    registry = ModelRegistry.from_settings(settings)
    version = registry.register(cand, window.ts("interval_end"), identity=identity)
    if registry.model_of(version) != cfg.model_name:
        raise TrainingError(f"candidate {version} registered under {registry.model_of(version)}, not {cfg.model_name}")
    registry.move_alias(CHALLENGER, version, event="candidate", run_id=run_id, dag_id=dag_id,
                        reason=f"candidate of {window.run_key}")
    registry.dispose()
    return version


@timed_step("assemble")
def assemble(cfg: RunConfig, window: RunWindow, settings: Settings, out_dir: Path,
             trained: list[dict[str, Any]], *, dag_id: str, run_id: str,
             logical_date: str | None = None) -> dict[str, Any]:
    """Soft-vote the trained families, score the ensemble out-of-fold, register the candidate.

    Returns:
        ``{"version", "weights", "ensemble", "members", "baselines", "gate_window"}``: metrics
        are out-of-fold over all folds; ``gate_window`` holds the ensemble's metrics on the last
        fold (this run's data interval).

    Raises:
        TrainingError: families disagree on out-of-fold rows.
        IntegrityError: a member's model file does not hash to what its training task reported.
    """
    import joblib

    families, members, oofs, member_meta = _load_members(cfg, out_dir, trained)
    ref = _shared_oof_rows(families, oofs)
    probas = {f: oofs[f][["p_down", "p_range", "p_up"]].to_numpy() for f in families}
    raw = cfg.member_weights(families)
    weights = {f: w / sum(raw.values()) for f, w in raw.items()}
    X, y, test_size, names = training_table(out_dir, window)
    splits = interval_splits(cfg, X.index, window, test_size)
    ens_oof, weights, stacker, weighting, calibration = _calibrate(cfg, families, probas, ref, splits, weights)
    final_rows = splits.final_rows(len(X))
    record = _out_of_fold_record(cfg, out_dir, ref, ens_oof, X, y, splits, final_rows)
    model = _ensemble_model(cfg, families, members, weights, stacker, class_prior(y[final_rows]), names,
                            calibration)
    spec = json.loads(RunFolder(out_dir).feature_spec.read_text())
    cand = RunFolder(out_dir).member("ensemble")
    tmp = Path(tempfile.mkdtemp(prefix=".ensemble.", dir=RunFolder(out_dir).candidates))
    joblib.dump(model, tmp / "model.joblib")
    # The out-of-fold record travels with the version: a replay of the gate re-tests it.
    record.frame.to_parquet(tmp / OOF_FILE)
    metadata = _candidate_metadata(cfg, window, out_dir, spec, families, weights, member_meta, X, y, names,
                                   final_rows, record, dag_id=dag_id, run_id=run_id, logical_date=logical_date)
    metadata["calibration"] = calibration["record"]
    metadata["weighting"] = weighting
    metadata["files"] = {"model.joblib": sha256_file(tmp / "model.joblib")}
    metadata["identity_sha256"] = _version_identity(cfg, X, y, spec, families, metadata)
    atomic_write_json(tmp / "metadata.json", metadata)
    _replace_dir(tmp, cand)
    version = _register_candidate(cfg, settings, window, cand, metadata["identity_sha256"], dag_id=dag_id,
                                  run_id=run_id)
    logger.info("ensemble %s weights %s: out-of-fold %s; baselines %s", version, weights,
                record.metrics, record.baselines)
    return {"version": version, "model": cfg.model_name, "weights": weights, "ensemble": record.metrics,
            "members": metadata["metrics"]["members"], "baselines": record.baselines,
            "gate_window": record.gate_window}
