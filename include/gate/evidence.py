"""The gate's evidence: what each check of :func:`include.gate.decide` is decided on.

The candidate's out-of-fold record (with the shadow record of earlier candidates of the same
recipe), the champion's comparison on the rows after its training data and its own record, and
the deflated Sharpe ratio over every candidate evaluated for the model. The weekly run's gate
step and the track record's replay both gather it here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import numpy as np
import pandas as pd

from include.backtest import deflated_sharpe_ratio, expected_max_sharpe
from include.config import NOT_MODEL_INPUTS, RunConfig
from include.errors import ConfigError, RegistryError, TrainingError
from include.evaluation import log_loss_rows
from include.gate import GateDecision, GatePolicy, decide, instant
from include.identity import bars_per_year
from include.registry import ModelRegistry
from include.significance import (
    N_RESAMPLES,
    block_length,
    champion_evidence,
    log_loss_skill_test,
    mean_below_zero_test,
    skill_evidence,
)

logger = logging.getLogger(__name__)


def policy_from_config(cfg: RunConfig) -> GatePolicy:
    """The gate policy of a run's parameters."""
    return GatePolicy(alpha=cfg.gate_alpha, min_f1_margin=cfg.gate_min_f1_margin,
                      max_log_loss_ratio=cfg.gate_max_log_loss_ratio, min_sharpe_margin=cfg.gate_min_sharpe_margin,
                      max_drawdown=cfg.gate_max_drawdown, champion_alpha=cfg.gate_champion_alpha,
                      demote=cfg.gate_demote, required=tuple(cfg.gate_required_checks),
                      record_weeks=cfg.gate_record_weeks,
                      min_deflated_sharpe=cfg.gate_min_deflated_sharpe)


def candidate_evidence(policy: GatePolicy, oof: pd.DataFrame, returns: pd.DataFrame | None, *, horizon: int,
                       bar_seconds: int, random_state: int, earlier: pd.DataFrame | None = None) -> dict[str, Any]:
    """The skill tests of a candidate's out-of-fold record under ``policy``'s margins
    (:func:`include.significance.skill_evidence`); the gate and its replay call this alike.

    ``earlier`` (:func:`earlier_record`: the walk-forward forecasts earlier candidates of the same
    recipe recorded before ``oof``'s first row) joins the log-loss test: it runs on ``earlier``
    followed by ``oof``, and its result says how many rows came from each (``record_rows``,
    ``earlier_rows``, ``earlier_from``). The F1 and trading tests use ``oof`` alone.
    """
    evidence = skill_evidence(oof, returns, f1_margin=policy.min_f1_margin, log_loss_ratio=policy.max_log_loss_ratio,
                              sharpe_margin=policy.min_sharpe_margin, horizon=horizon,
                              bars_per_year=bars_per_year(bar_seconds), random_state=random_state,
                              n_resamples=resamples_for(policy.level),
                              # Recorded, not deciding: the default resolution is enough to show them.
                              f1_resamples=None if "beats_baselines_f1" in policy.required else N_RESAMPLES)
    rows = earlier if earlier is not None else oof.iloc[:0]
    if len(rows):
        record = pd.concat([rows[RECORD_COLUMNS], oof[RECORD_COLUMNS]])
        evidence["log_loss"] = log_loss_skill_test(
            record["label"].to_numpy().astype(int), record[RECORD_COLUMNS[1:4]].to_numpy(),
            record[RECORD_COLUMNS[4:]].to_numpy(), ratio=policy.max_log_loss_ratio, horizon=horizon,
            n_resamples=resamples_for(policy.level), random_state=random_state)
    evidence["log_loss"].update({"record_rows": int(len(oof) + len(rows)), "earlier_rows": int(len(rows)),
                                 "earlier_from": rows.index.min().isoformat() if len(rows) else None})
    return evidence


#: The columns of a walk-forward record row: the label, the forecast, the fold's class prior.
RECORD_COLUMNS = ["label", "p_down", "p_range", "p_up", "prior_down", "prior_range", "prior_up"]


def recipe(lineage: dict[str, Any]) -> str:
    """What makes two versions of a registered model the same recipe, as a sha256: the run
    parameters that shape the model (every field of its configuration but the gate's, the
    trading simulation's, approval and the run's own date and source) and the feature spec."""
    import hashlib

    raw = lineage.get("config") or {}
    # Every field, with its default where the lineage lacks it: a field added to RunConfig is no
    # new recipe. A configuration this code refuses is compared as stored.
    with contextlib.suppress(ConfigError, TypeError):
        raw = RunConfig.from_params(raw).to_dict()
    config = {k: v for k, v in raw.items() if not k.startswith(NOT_MODEL_INPUTS)}
    made_of = {"config": config, "feature_spec": (lineage.get("feature_spec") or {}).get("sha256")}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()


def earlier_record(registry: ModelRegistry, model: str, lineage: dict[str, Any], oof: pd.DataFrame, *,
                   weeks: int) -> pd.DataFrame:
    """The walk-forward forecasts that earlier candidates of the same recipe recorded in the
    ``weeks`` weeks before ``oof``'s first row: the candidate's shadow record.

    A candidate that is not promoted keeps counting: each weekly run registers its candidate with
    its out-of-fold record, each row forecast by a fold model fitted only on rows before it. Read
    backwards from the newest earlier version, each version contributes its rows before the
    earliest row taken so far (its oldest fold, the week before the next version's record
    begins), so the record is a contiguous walk-forward history with no bar twice. With the
    rolling scheme and the fit cache a fold's fit is the one the same rows gave every version
    (with ``selected``, ``fitted`` or ``stacking`` weighting an oldest fold is combined with the
    configured weights). Every row was forecast out of sample, by a model of the same recipe
    (:func:`recipe`); under "no skill" each row's expected log loss is no lower than the
    prior's, so the test on the longer record keeps its level, and where there is an edge its
    power grows week by week, up to ``weeks`` weeks of extra rows.

    Args:
        model: the registered model.
        lineage: the candidate's lineage (its configuration, feature spec and
            ``data_window.trained_until``).
        oof: the candidate's out-of-fold rows.
        weeks: how far back the record reaches before ``oof``'s first row (0: nothing).

    Returns:
        :data:`RECORD_COLUMNS` rows, oldest first, all before ``oof.index.min()``; empty when no
        earlier version of the recipe has rows there. Versions whose artifacts retention removed
        are skipped.
    """
    if weeks <= 0 or not len(oof):
        return pd.DataFrame(columns=RECORD_COLUMNS)
    first = oof.index.min()
    since = first - pd.Timedelta(weeks=weeks)
    trained_until = instant(lineage["data_window"]["trained_until"])
    mine = recipe(lineage)
    parts: list[pd.DataFrame] = []
    earliest = first
    for version in reversed(registry.versions(model)):
        if earliest <= since:
            break
        try:
            meta = registry.metadata(version)
            if (instant(meta["data_window"]["trained_until"]) >= trained_until or recipe(meta) != mine):
                continue
            rows = registry.out_of_fold(version)
        except (RegistryError, KeyError) as exc:
            logger.warning("shadow record of %s: version %s left out: %s", model, version, exc)
            continue
        if rows is None or not len(rows) or not set(RECORD_COLUMNS) <= set(rows.columns):
            logger.info("shadow record of %s: version %s has no out-of-fold record to add", model, version)
            continue
        rows = rows[(rows.index < earliest) & (rows.index >= since)]
        if len(rows):
            parts.append(rows[RECORD_COLUMNS])
            earliest = rows.index.min()
    if not parts:
        return pd.DataFrame(columns=RECORD_COLUMNS)
    return pd.concat(parts[::-1]).sort_index()


def compare_with_champion(oof: pd.DataFrame, champion: Any, meta: dict[str, Any], version: str,
                          features: pd.DataFrame, *, horizon: int, random_state: int,
                          window_start: str, own_oof: pd.DataFrame | None = None,
                          level: float | None = None, record_rows: int | None = None) -> dict[str, Any]:
    """Score the champion on the challenger's out-of-fold rows where both are out of sample.

    The rows are every out-of-fold row (all walk-forward folds, not only the gate window) at or
    after the end of the champion's training data (``data_window.trained_until``): the
    challenger's fold models never saw them by construction, the champion was fitted before
    them. With a champion several weeks old they span several weeks.

    Args:
        oof: the challenger's out-of-fold rows.
        champion: the champion model.
        meta: its lineage.
        version: its version id.
        features: feature rows covering ``oof``'s index, with the champion's feature columns.
        window_start: the run's data interval start (ISO), for the record.
        own_oof: the champion's registered out-of-fold record, for :func:`champion_record_test`.
        level: the gate's weekly level; ``None`` leaves the record test out (``record`` ``None``).
        record_rows: the challenger's row budget for the record test (the rows of its log-loss
            test, :func:`candidate_evidence`); ``None``: ``len(oof)``.

    Returns:
        The ``champion`` input of :func:`include.gate.decide`: ``{"version", "trained_until",
        "window_start", "compared_from", "rows_out_of_sample", "comparison", "live",
        "metrics", "challenger_metrics", "last_training_row", "record"}``.
    """
    trained_until = meta["data_window"]["trained_until"]
    compared_from = instant(trained_until).astimezone(UTC)
    rows = oof[oof.index >= pd.Timestamp(compared_from)]
    result: dict[str, Any] = {"version": version, "trained_until": trained_until, "window_start": window_start,
                              "compared_from": compared_from.isoformat(), "rows_out_of_sample": int(len(rows)),
                              "comparison": None, "live": None, "metrics": None, "record": None,
                              "last_training_row": (meta["data_window"].get("last_training_row")
                                                    or meta["data_window"].get("last_labelled_bar"))}
    proba = (champion.predict_proba(features.loc[rows.index, list(meta["feature_spec"]["names"])]) if len(rows)
             else np.empty((0, 3)))
    if level is not None:
        result["record"] = champion_record_test(own_oof, rows, proba, np.asarray(champion.class_prior_),
                                                n=record_rows or len(oof),
                                                horizon=horizon, level=level, random_state=random_state)
    if len(rows):
        result.update(champion_evidence(rows, proba, np.asarray(champion.class_prior_), horizon=horizon,
                                        random_state=random_state))
    return result


def own_record(registry: ModelRegistry, model: str, version: str, lineage: dict[str, Any], *,
               weeks: int) -> pd.DataFrame | None:
    """A registered version's own walk-forward record: its shadow record (:func:`earlier_record`)
    followed by its out-of-fold rows; what :func:`champion_record_test` judges a champion on, so
    that it has as many rows as the challenger it meets. ``None`` for a version registered without
    an out-of-fold record."""
    oof = registry.out_of_fold(version)
    if oof is None or not len(oof):
        return oof
    earlier = earlier_record(registry, model, lineage, oof, weeks=weeks)
    return pd.concat([earlier, oof[RECORD_COLUMNS]]) if len(earlier) else oof


def champion_record_test(own_oof: pd.DataFrame | None, live: pd.DataFrame, live_proba: np.ndarray,
                         prior: np.ndarray, *, n: int, horizon: int, level: float,
                         random_state: int) -> dict[str, Any] | None:
    """Test H1 "the champion's mean log loss is above the class prior's" on its record, with the
    challenger's row budget (check 8 of :mod:`include.gate`).

    The champion's record is its own walk-forward record (its shadow record and out-of-fold rows
    from the run that registered it, rows before its live ones, :func:`own_record`) followed by
    its live rows (forecasts on rows after its training data); the test uses the most recent
    ``n`` of them, ``n`` being the rows of the challenger's log-loss test, so that the champion is
    judged on as many rows, by the same block bootstrap, at the
    same level as a challenger is, and not, as a test on its few live rows would, declared
    without skill for want of rows.

    Args:
        own_oof: the champion's own walk-forward record (:func:`own_record`: ``label``, ``p_*``,
            ``prior_*`` columns), or ``None`` when it was registered without one.
        live: the challenger's out-of-fold rows after the champion's training data (``label``).
        live_proba: ``(len(live), 3)`` the champion's forecasts on them.
        prior: ``(3,)`` the champion's training class frequencies, its reference on live rows.
        n: the row budget (the rows of the challenger's log-loss test, its shadow record included).
        horizon: label horizon in bars (shortest bootstrap block).
        level: the gate's weekly level (sets the number of resamples, :func:`resamples_for`).

    Returns:
        :func:`include.significance.mean_below_zero_test` of prior-minus-champion per-row log
        loss, with ``log_loss``, ``reference_log_loss``, ``n`` and ``live_rows``; ``None`` when
        the record is too short to test.
    """
    cols, priors = ["p_down", "p_range", "p_up"], ["prior_down", "prior_range", "prior_up"]
    y_parts, own_parts, ref_parts = [], [], []
    if own_oof is not None and len(own_oof):
        older = own_oof[own_oof.index < live.index.min()] if len(live) else own_oof
        y = older["label"].to_numpy().astype(int)
        y_parts.append(y)
        own_parts.append(log_loss_rows(y, older[cols].to_numpy()))
        ref_parts.append(log_loss_rows(y, older[priors].to_numpy()))
    if len(live):
        y = live["label"].to_numpy().astype(int)
        y_parts.append(y)
        own_parts.append(log_loss_rows(y, live_proba))
        ref_parts.append(log_loss_rows(y, np.tile(prior, (len(live), 1))))
    if not y_parts:
        return None
    own, ref = np.concatenate(own_parts)[-n:], np.concatenate(ref_parts)[-n:]
    diff = ref - own  # below zero when the champion loses more than the prior
    try:
        test = mean_below_zero_test(diff, block=block_length(diff, horizon), n_resamples=resamples_for(level),
                                    random_state=random_state)
    except TrainingError:
        return None
    return {**test, "log_loss": float(own.mean()), "reference_log_loss": float(ref.mean()),
            "live_rows": int(min(len(live), len(own)))}


def resamples_for(level: float) -> int:
    """Bootstrap resamples enough to resolve p-values at ``level``: at least 20 / level (so that a
    p-value at the level rests on about 20 resamples beyond it), and never fewer than the
    default (:data:`include.significance.N_RESAMPLES`)."""
    return max(N_RESAMPLES, math.ceil(20 / level))


def deflated_sharpe_record(registry: ModelRegistry, model: str, candidate: str,
                           strategy: dict[str, Any], bar_seconds: int,
                           tuning_sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """The candidate's deflated Sharpe ratio, counting every candidate evaluated for ``model``.

    The trials are the distinct candidates of the model's earlier gate decisions (the ledger's
    promote and keep entries, with their out-of-fold trading record), this one, and every trial
    of the hyperparameter studies whose sets the candidate's members use (their completed
    trials' per-bar Sharpe ratios join the variance): N of them, ``V`` the variance of their
    per-bar Sharpe ratios (Bailey & López de Prado 2014; see
    :func:`include.backtest.deflated_sharpe_ratio`).

    Args:
        strategy: the candidate's out-of-fold ``ensemble`` trading metrics (``sharpe_per_bar``,
            ``bars``, ``skew``, ``kurtosis``).
        tuning_sets: the candidate's ``hyperparameter_sets`` lineage (family -> set record with
            ``n_trials`` and ``trial_sharpes``, or ``None`` for defaults).

    Returns:
        ``{"value", "n_trials", "trials_variance", "expected_max_sharpe", "sharpe_per_bar"}``
        (per-bar units); ``value`` is NaN when the strategy's returns have no variance.
    """
    import math

    per_year = 365.25 * 86_400 / bar_seconds
    trials: dict[str, float] = {}
    for event in registry.ledger(model):
        decided = event.get("decision") or {}
        version = decided.get("candidate")
        ens = ((decided.get("trading") or {}).get("out_of_fold") or {}).get("ensemble") or {}
        if version and version != candidate and ens.get("sharpe") is not None:
            trials[version] = ens.get("sharpe_per_bar", ens["sharpe"] / math.sqrt(per_year))
    earlier, unscored = list(trials.values()), 0
    for used in (tuning_sets or {}).values():
        if used:
            sharpes = [float(v) for v in used.get("trial_sharpes") or []]
            earlier += sharpes
            unscored += max(int(used.get("n_trials") or 0) - len(sharpes), 0)
    return deflated_sharpe_of(strategy, earlier, bar_seconds, unscored_trials=unscored)


def deflated_sharpe_of(strategy: dict[str, Any], earlier: list[float], bar_seconds: int,
                       unscored_trials: int = 0) -> dict[str, Any]:
    """The deflated Sharpe ratio of ``strategy`` among ``earlier`` trials' per-bar Sharpe ratios
    and its own (Bailey & López de Prado 2014; :func:`include.backtest.deflated_sharpe_ratio`).
    ``unscored_trials`` (pruned or failed tuning trials, with no Sharpe ratio) add to N only.

    Returns:
        ``{"value", "n_trials", "trials_variance", "expected_max_sharpe", "sharpe_per_bar"}``
        (per-bar units); ``value`` is NaN when the strategy's returns have no variance.
    """
    import math

    per_year = 365.25 * 86_400 / bar_seconds
    sharpe = float(strategy.get("sharpe_per_bar", strategy.get("sharpe", 0.0) / math.sqrt(per_year)))
    values = [*earlier, sharpe]
    variance = float(np.var(values, ddof=1)) if len(values) > 1 else 0.0
    skew, kurt = strategy.get("skew"), strategy.get("kurtosis")
    n_trials = len(values) + unscored_trials
    value = (deflated_sharpe_ratio(sharpe, int(strategy.get("bars", 0)), skew, kurt, n_trials, variance)
             if skew is not None and kurt is not None and skew == skew and kurt == kurt else float("nan"))
    return {"value": value, "n_trials": n_trials, "trials_variance": variance,
            "expected_max_sharpe": expected_max_sharpe(n_trials, variance), "sharpe_per_bar": sharpe}


@dataclass(frozen=True)
class Judgement:
    """The gate's decision on one candidate and what it was decided on.

    Attributes:
        decision: the verdict (:class:`include.gate.GateDecision`).
        evidence: :func:`candidate_evidence`'s skill tests.
        champion: the champion's comparison (:func:`compare_with_champion`), ``None`` without one.
        deflated: :func:`deflated_sharpe_record`, ``None`` without a trading record.
    """

    decision: GateDecision
    evidence: dict[str, Any]
    champion: dict[str, Any] | None
    deflated: dict[str, Any] | None


def judge(policy: GatePolicy, cfg: RunConfig, *, registry: ModelRegistry, ledger: Any, version: str,
          lineage: dict[str, Any], oof: pd.DataFrame, returns: pd.DataFrame | None,
          trading: dict[str, Any] | None, champion: Callable[[int], dict[str, Any] | None]) -> Judgement:
    """Decide one candidate: the one sequence of the gate's evidence and decision that the weekly
    run's gate step and the track record's replay share.

    The shadow record (:func:`earlier_record`), the skill tests (:func:`candidate_evidence`), the
    champion's comparison on as many rows as the log-loss test used, the deflated Sharpe ratio
    over every candidate evaluated before (:func:`deflated_sharpe_record`), then
    :func:`include.gate.decide`.

    Args:
        policy: the gate policy.
        cfg: the candidate's run configuration (model, horizon, bar length, seed).
        registry: the registry the shadow record reads earlier candidates from.
        ledger: what the deflated Sharpe ratio counts earlier candidates in: the registry itself
            (a live decision), or the ledger as it stood when the replayed decision was taken.
        version: the candidate's version id.
        lineage: the candidate's lineage.
        oof: ``(n_rows, …)`` the candidate's out-of-fold record.
        returns: per-bar net returns of the strategy and the momentum rule (the trading test);
            ``None`` without a trading simulation.
        trading: the out-of-fold strategies' metrics by name (at least ``ensemble``); ``None``
            without a trading simulation.
        champion: given the log-loss test's row count, the champion's comparison, or ``None``
            without a production version.
    """
    earlier = earlier_record(registry, cfg.model_name, lineage, oof, weeks=policy.record_weeks)
    evidence = candidate_evidence(policy, oof, returns, horizon=max(cfg.label_horizon_bars, 1),
                                  bar_seconds=cfg.bar_seconds, random_state=cfg.random_state, earlier=earlier)
    compared = champion(evidence["log_loss"]["record_rows"])
    deflated = (deflated_sharpe_record(ledger, cfg.model_name, version, trading["ensemble"], cfg.bar_seconds,
                                       lineage.get("hyperparameter_sets"))
                if trading else None)
    decision = decide(policy, candidate_version=version, evidence=evidence, champion=compared, trading=trading,
                      deflated=deflated)
    return Judgement(decision, evidence, compared, deflated)
