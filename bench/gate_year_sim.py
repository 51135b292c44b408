"""Benchmark: years of weekly gate decisions on simulated out-of-fold records, through the gate's own functions.

Usage (from the repository root, after ``make install``)::

    PYTHONPATH=. .venv/bin/python bench/gate_year_sim.py --years 200 --edges 0.01 0.02 0.04 0.08 --universe 20
    PYTHONPATH=. .venv/bin/python bench/gate_year_sim.py --years 10 --power-years 10 --universe 0   # a quick look

:mod:`bench.gate_year` runs the real pipeline week after week (about 10 s a week), which affords a
few dozen market-years; a yearly false-promotion rate of 0.10 takes hundreds of years to measure.
This benchmark keeps the gate's decision path and replaces training by a simulated forecaster:

- the candidate's skill test is :func:`include.significance.log_loss_skill_test`, called as
  :func:`include.significance.skill_evidence` calls it, with the resamples the gate step uses
  under each policy (read from :func:`include.gate.evidence.candidate_evidence` and checked
  equal to it on one record at the start of every run, :func:`gate_resamples`); with
  ``--all-tests`` every skill test is run through ``candidate_evidence`` (several times slower);
- the champion is judged by :func:`include.gate.evidence.compare_with_champion` (which calls
  :func:`include.significance.champion_evidence` and
  :func:`include.gate.evidence.champion_record_test`), as the gate step does;
- the decision is :func:`include.gate.decide`'s ``action``: ``promote`` makes the candidate's
  deployed model the champion, ``demote`` empties production, ``keep`` leaves it.

**What is simulated.** One stream of hourly rows per market-year, sliced week by week:

- Returns are a random walk: i.i.d. standard normal per bar (the volatility is known, 1). The
  label of a row is the class (down, range, up) of the sum of the next ``h`` returns
  (``label_horizon_bars``, 4) against ``+-k sqrt(h)`` (``label_threshold`` k = 0.43: equal
  thirds), so neighbouring labels overlap as the pipeline's do; the momentum rule's class is that
  of the last ``h`` returns, with the same thresholds; the stratified baseline draws from the
  row's class prior.
- Walk-forward (rolling, with the fit cache): test week ``j`` of the stream is forecast by
  "model ``j``", fitted on the rows before it, whose class prior is the label frequencies of the
  ``cv_rolling_train_days`` (681 days) before it, less the ``h`` rows whose labels reach into the
  week. The candidate of decision week ``w`` holds the out-of-fold rows of test weeks ``w`` to
  ``w + cv_folds - 1`` (6 folds of 168 rows: 1,008 rows); consecutive candidates share 5 of the 6
  folds' rows *and forecasts* (each fold's fit is reused). Its deployed model is model
  ``w + cv_folds``, the next week's last fold model, so the week after a promotion the champion
  and the challenger give the same forecast on the rows after the champion's training (the
  gate's "same model").
- Model ``m``'s forecast on row ``t``: per class, ``prior_m + s (sqrt(c) C_t + sqrt(1 - c) S_mt)``,
  plus ``edge`` on the true class, clipped at 0.01 and renormalised (as the gate tests'
  ``_noise_rows``). ``C`` (shared by every model) and ``S_m`` (model ``m``'s own) are
  unit-variance AR(1) series in row time with coefficient ``persistence`` (0.9: a LightGBM fitted
  to a random walk makes errors that persist over hours), independent across classes; ``s``
  (``--noise``, 0.03) sets the forecast's spread around the prior, ``c`` (``--model-corr``, 0.8)
  how much two weekly fits agree. ``edge`` 0 is a market with nothing to predict: every
  promotion is false. With ``edge`` > 0 every model knows the true class that much on every row,
  live rows included.
- Production starts empty. The champion's record is its candidate's out-of-fold rows followed by
  its forecasts on the rows after its training; its training ends where its candidate's last
  fold ends. Every test uses the random state of :class:`include.config.RunConfig` (42) each
  week, as the pipeline does, so weeks share the bootstrap's draws.
- Not simulated: the macro-F1 and trading tests (run, with ``--all-tests``, but required by
  neither policy), the drawdown and deflated-Sharpe limits, approval, smoke-test failures,
  retrains that monitoring requests mid-week, volatility clustering, and dependence between markets
  (the universe's markets are independent).

**Policies.** ``default`` is :class:`include.gate.GatePolicy` as it stands (yearly ``alpha`` 0.10,
each week at 0.10 / 52 = 0.0019); ``weekly_0.10`` is ``GatePolicy(alpha=0.10 * 52)``, each week at
0.10, for comparison. Both see the same candidates.

**Runs.** ``--years`` no-skill market-years of ``--weeks`` decisions under each policy (state
kept all year): the share of years with at least one false promotion (Clopper-Pearson 95 %
interval), promotions and demotions per year, the weekly pass rate of the skill test. The same
for ``--boundary-years`` at the least favourable null (:func:`boundary_edge`: the edge at which
the forecast's expected log loss equals the prior's; at edge 0 the forecast's spread makes it
worse than the prior, an easier null). ``--power-years`` market-years per ``--edges`` value, each
policy's year ending at its first
promotion (before it production is empty, so nothing else decides): the share of years promoted
within 4 weeks and the median weeks to the first promotion, beside the edge's expected log loss
minus the prior's (:func:`log_loss_excess`). Seeds are shared across edges, so
every edge sees the same returns and forecast errors. ``--universe N``: ``--universe-reps``
replications of N no-skill markets for ``--universe-weeks`` weeks with state kept, promotions per
week across the universe against the gate's stated bound ``N x alpha / 52``.

**Speed.** A week's decision is the log-loss test on 1,008 rows, plus, while a champion is in
production, the comparison (with :func:`include.significance.champion_evidence`'s metrics) and the
record test (10,400 resamples at the default level). Bootstrap row indices drawn through
``include.significance._resample_indices`` are memoised (:class:`ResampleCache`): they depend only
on their arguments, and the random state is the same every week. On 2 shared cores at nice 10
(load 3 to 5) a no-skill year under both policies took about 0.8 s, a year at the least
favourable null 1.5 s (a champion in production for two fifths of the weekly policy's weeks), a
year of the power curve under 0.2 s (it ends at the first promotion), a universe market's 8
weeks 0.14 s: 400 + 200 + 4 x 200 years and 100 universes of 20 markets in 16 minutes.

Output: ``--out`` with ``.md`` (tables) and ``.json`` (settings, the gate modules' digests, every
market-year, the tables' numbers, runtimes); default ``var/artifacts/gate_year_sim``.
``--resummarise`` rewrites both from the market-years already in the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import lfilter
from scipy.stats import beta, chi2

import include.significance as significance
from include.config import PROJECT_ROOT, RunConfig
from include.gate import DECISIONS_PER_YEAR, SKILL_CHECKS, GatePolicy, decide
from include.gate.evidence import candidate_evidence, compare_with_champion

#: The two policies compared: the gate's default (yearly level) and each week at 0.10.
POLICIES: dict[str, GatePolicy] = {"default": GatePolicy(), "weekly_0.10": GatePolicy(alpha=0.10 * DECISIONS_PER_YEAR)}
#: Weeks within which a promotion counts as prompt in the power curve.
PROMPT_WEEKS = 4
DEFAULT_OUT = PROJECT_ROOT / "var" / "artifacts" / "gate_year_sim"
PROBA = ["p_down", "p_range", "p_up"]
PRIOR = ["prior_down", "prior_range", "prior_up"]
#: First row's time; only differences of times matter to the gate.
START = pd.Timestamp("2024-01-07", tz="UTC")


@dataclass(frozen=True)
class SimSpec:
    """The simulated market and forecaster (see the module docstring).

    Attributes:
        weeks: decisions per market-year.
        folds: walk-forward test folds of one week each (``cv_folds``).
        week_rows: hourly rows per week.
        horizon: label horizon in bars (``label_horizon_bars``).
        threshold: ``k`` of the labels' thresholds ``+-k sqrt(horizon)`` (returns of unit
            volatility; ``label_threshold``).
        train_rows: rows of a fold model's training window, for its class prior
            (``cv_rolling_train_days`` x 24).
        noise: standard deviation of the forecast's deviation from the prior, per class
            (probability).
        persistence: AR(1) coefficient of forecast errors from one hourly row to the next.
        model_corr: share of forecast-error variance common to every weekly fit.
        floor: smallest probability before renormalising.
        random_state: seed of every bootstrap (``random_state``, the same every week).
    """

    weeks: int = DECISIONS_PER_YEAR
    folds: int = 6
    week_rows: int = 168
    horizon: int = 4
    threshold: float = 0.43
    train_rows: int = 681 * 24
    noise: float = 0.03
    persistence: float = 0.9
    model_corr: float = 0.8
    floor: float = 0.01
    random_state: int = 42

    @classmethod
    def from_config(cls, cfg: RunConfig | None = None, **overrides: Any) -> SimSpec:
        """The pipeline's defaults for folds, horizon, threshold, training window and seed."""
        cfg = cfg or RunConfig()
        return cls(**{"folds": cfg.cv_folds, "horizon": cfg.label_horizon_bars, "threshold": cfg.label_threshold,
                      "train_rows": cfg.rolling_train_days * 86_400 // cfg.bar_seconds,
                      "random_state": cfg.random_state, **overrides})


def ar1(rng: np.random.Generator, shape: tuple[int, ...], phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) series along axis -2 of ``shape``: ``x_t = phi x_{t-1} +
    sqrt(1 - phi^2) e_t`` with ``x_0`` drawn from the stationary law."""
    start = rng.standard_normal(shape[:-2] + (1,) + shape[-1:])
    innovations = rng.standard_normal(shape)
    return lfilter([math.sqrt(1 - phi * phi)], [1.0, -phi], innovations, axis=-2, zi=phi * start)[0]


class MarketYear:
    """One simulated market-year: labels, priors and every weekly model's forecasts.

    Rows are indexed locally from the first test week's first row; ``features`` (one column,
    ``row``) is what a :class:`SimulatedModel` predicts from.

    Args:
        spec: the simulation's parameters.
        seed: seed of the returns and forecast errors (the same for every ``edge``).
        edge: extra probability on the true class in every model's forecast (negative: taken
            from it, a model worse than the class prior).
    """

    def __init__(self, spec: SimSpec, seed: int, edge: float = 0.0) -> None:
        self.spec, self.seed, self.edge = spec, seed, edge
        rng = np.random.default_rng(seed)
        h, wk = spec.horizon, spec.week_rows
        self.test_weeks = spec.weeks + spec.folds - 1
        self.n_models = self.test_weeks + 1
        n = self.test_weeks * wk
        first = spec.train_rows + h  # model 0's training labels start at row 0
        returns = rng.standard_normal(first + n + h + 1)
        cum = np.concatenate([[0.0], np.cumsum(returns)])
        rows = np.arange(first + n)
        cut = [-spec.threshold * math.sqrt(h), spec.threshold * math.sqrt(h)]
        labels = np.digitize(cum[rows + h + 1] - cum[rows + 1], cut)
        # A row's momentum looks at its last h returns; rows before h - 1 are never test rows.
        momentum = np.digitize(cum[rows + 1] - cum[np.maximum(rows - h + 1, 0)], cut)
        counts = np.concatenate([np.zeros((1, 3)), np.cumsum(np.eye(3)[labels], axis=0)])
        ends = first + wk * np.arange(self.n_models) - h  # labels reaching into the test week are purged
        self.prior = (counts[ends] - counts[ends - spec.train_rows]) / spec.train_rows  # (n_models, 3)
        self.y, self.momentum = labels[first:], momentum[first:]
        self.common = ar1(rng, (n, 3), spec.persistence)
        self.own = ar1(rng, (self.n_models, n, 3), spec.persistence)
        self.fold_of = np.repeat(np.arange(self.test_weeks), wk)  # the model forecasting each row out of fold
        fold_prior = self.prior[self.fold_of]
        draw = rng.random(n)
        self.stratified = (draw[:, None] > np.cumsum(fold_prior, axis=1)[:, :2]).sum(axis=1)
        self.index = pd.date_range(START, periods=n, freq="h")
        self.features = pd.DataFrame({"row": np.arange(n)}, index=self.index)
        self.fold_proba = self._proba(self.fold_of, np.arange(n))

    def _proba(self, models: np.ndarray, rows: np.ndarray) -> np.ndarray:
        s, c = self.spec.noise, self.spec.model_corr
        p = (self.prior[models] + s * math.sqrt(c) * self.common[rows]
             + s * math.sqrt(1 - c) * self.own[models, rows])
        p[np.arange(len(rows)), self.y[rows]] += self.edge
        p = np.clip(p, self.spec.floor, None)
        return p / p.sum(axis=1, keepdims=True)

    def forecast(self, model: int, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), 3)`` model ``model``'s class probabilities on the local ``rows``."""
        rows = np.asarray(rows, dtype=int)
        return self._proba(np.full(len(rows), model), rows)

    def trained_until(self, model: int) -> pd.Timestamp:
        """End of model ``model``'s training data: the first row of test week ``model``."""
        return START + pd.Timedelta(hours=model * self.spec.week_rows)

    def oof(self, week: int) -> pd.DataFrame:
        """The out-of-fold rows of decision week ``week``'s candidate (0-based), as
        ``ensemble_oof.parquet`` holds them: test weeks ``week`` to ``week + folds - 1``."""
        wk = self.spec.week_rows
        rows = slice(week * wk, (week + self.spec.folds) * wk)
        frame = pd.DataFrame(self.fold_proba[rows], columns=PROBA, index=self.index[rows])
        frame[PRIOR] = self.prior[self.fold_of[rows]]
        frame["label"], frame["fold"] = self.y[rows], self.fold_of[rows] - week
        frame["momentum"], frame["pred_stratified"] = self.momentum[rows], self.stratified[rows]
        return frame


def log_loss_excess(spec: SimSpec, rows: int = 400_000, seed: int = 12345) -> Callable[[float], float]:
    """The simulated forecast's expected log loss minus the class prior's (nats per row), as a
    function of the edge: negative where the forecast has skill.

    Estimated on one large sample of labels and forecast deviations, common to every edge asked
    for (so the estimate is monotone in the edge); the deviations' persistence does not change
    their mean, so the sample's rows are independent.

    Args:
        spec: the simulation's parameters (``noise``, ``threshold``, ``floor``).
        rows: sample size.
        seed: seed of the sample.
    """
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    low_class = float(norm.cdf(-spec.threshold))
    prior = np.array([low_class, 1 - 2 * low_class, low_class])
    y = rng.choice(3, rows, p=prior)
    base = prior + spec.noise * rng.standard_normal((rows, 3))
    reference = -np.log(prior[y])

    def excess(edge: float) -> float:
        p = base.copy()
        p[np.arange(rows), y] += edge
        p = np.clip(p, spec.floor, None)
        p /= p.sum(axis=1, keepdims=True)
        return float(np.mean(-np.log(p[np.arange(rows), y]) - reference))

    return excess


def boundary_edge(spec: SimSpec, rows: int = 400_000, seed: int = 12345) -> float:
    """The edge at which the simulated forecast's expected log loss equals the class prior's: the
    boundary of the skill test's null hypothesis, where a test holding its level passes in a
    share ``level`` of weeks (with edge 0 the forecast's spread makes it worse than the prior).
    Found by bisection on :func:`log_loss_excess` (``rows``, ``seed`` as there)."""
    excess = log_loss_excess(spec, rows, seed)
    low, high = 0.0, 0.1
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if excess(middle) > 0 else (low, middle)
    return (low + high) / 2


class SimulatedModel:
    """A deployed model of the simulation, as :func:`compare_with_champion` uses one:
    ``predict_proba`` over the feature frame's ``row`` column and ``class_prior_``."""

    def __init__(self, market: MarketYear, model: int) -> None:
        self.market, self.model = market, model
        self.class_prior_ = market.prior[model]

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """``(n, 3)`` the model's forecasts on the rows ``features["row"]`` names."""
        return self.market.forecast(self.model, features["row"].to_numpy())


class ResampleCache:
    """Memoises :mod:`include.significance`'s circular-bootstrap row indices while installed.

    The indices are a pure function of their arguments (rows, block length, resamples, random
    state) and the pipeline passes the same random state every week, so a simulation asks for
    the same index sets over and over, each a ``(resamples, rows)`` array whose drawing can cost
    more than the test that uses it. The cache returns the very arrays the function returned
    (read-only), so every p-value is the one the gate computes; tests that draw their resamples
    otherwise are not affected. Least recently used arrays are dropped beyond ``max_bytes``.

    Args:
        max_bytes: memory the cached index arrays may hold.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._cache: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._original: Callable[..., np.ndarray] | None = None

    def _cached(self, *args: Any, **kwargs: Any) -> np.ndarray:
        key = (args, tuple(sorted(kwargs.items())))
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return found
        assert self._original is not None
        found = self._original(*args, **kwargs)
        found.setflags(write=False)
        self.misses += 1
        self._cache[key] = found
        self.bytes += found.nbytes
        while self.bytes > self.max_bytes and len(self._cache) > 1:
            self.bytes -= self._cache.popitem(last=False)[1].nbytes
        return found

    def install(self) -> bool:
        """Route the module's index draws through the cache; ``False`` when the module has no
        such function (then every test draws its own, slower)."""
        original = getattr(significance, "_resample_indices", None)
        if original is None:
            print("include.significance has no _resample_indices: bootstrap indices are not cached", file=sys.stderr)
            return False
        self._original = original
        significance._resample_indices = self._cached
        return True

    def uninstall(self) -> None:
        """Restore the module's own function."""
        if self._original is not None:
            significance._resample_indices = self._original
            self._original = None

    @contextmanager
    def installed(self) -> Iterator[ResampleCache]:
        """The cache installed within the block."""
        self.install()
        try:
            yield self
        finally:
            self.uninstall()


def not_run_f1() -> dict[str, dict[str, Any]]:
    """The macro-F1 evidence of a run that does not test it: no p-value (the check fails, and
    :func:`gate_resamples` refuses a policy that requires it)."""
    return {"not_run": {"p_value": None, "macro_f1": float("nan"), "reference_macro_f1": float("nan")}}


def fast_evidence(policy: GatePolicy, oof: pd.DataFrame, spec: SimSpec,
                  n_resamples: int | None = None) -> dict[str, Any]:
    """The log-loss skill test of a candidate's record, called as :func:`skill_evidence` calls it
    with ``n_resamples`` (``None``: the test's default; :func:`gate_resamples` finds the gate
    step's); the macro-F1 tests are not run and no trading evidence is given."""
    extra = {} if n_resamples is None else {"n_resamples": n_resamples}
    log_loss = significance.log_loss_skill_test(
        oof["label"].to_numpy().astype(int), oof[PROBA].to_numpy(), oof[PRIOR].to_numpy(),
        ratio=policy.max_log_loss_ratio, horizon=spec.horizon, random_state=spec.random_state, **extra)
    return {"f1": not_run_f1(), "log_loss": log_loss, "trading": None}


def full_evidence(policy: GatePolicy, oof: pd.DataFrame, spec: SimSpec,
                  n_resamples: int | None = None) -> dict[str, Any]:
    """Every skill test the gate step runs on a record without trading returns (the gate step
    chooses the resamples; ``n_resamples`` is accepted for :func:`fast_evidence`'s signature)."""
    return candidate_evidence(policy, oof, None, horizon=spec.horizon, bar_seconds=3600,
                              random_state=spec.random_state)


def gate_resamples(policies: dict[str, GatePolicy], spec: SimSpec) -> dict[str, int]:
    """The bootstrap resamples of the gate step's log-loss test under each policy, checked: on one
    record, :func:`fast_evidence` with them gives exactly :func:`candidate_evidence`'s test.

    The count is read from the gate step's own result rather than assumed, since it may depend
    on the policy's level.

    Returns:
        Policy name to resamples.

    Raises:
        ValueError: a policy requires a skill test other than the log-loss test, or the two
            log-loss tests differ (the gate step calls it otherwise): run with ``--all-tests``.
    """
    for name, policy in policies.items():
        if set(policy.required) & set(SKILL_CHECKS) - {"beats_prior_log_loss"}:
            raise ValueError(f"policy {name} requires {policy.required}: only beats_prior_log_loss is simulated "
                             "without --all-tests")
    oof = MarketYear(spec, seed=0).oof(0)
    found: dict[str, int] = {}
    for name, policy in policies.items():
        full = full_evidence(policy, oof, spec)["log_loss"]
        # The simulation has no registry, so no shadow record: the candidate's own rows only
        # (bench/gate_year.py runs the gate with it).
        full = {k: v for k, v in full.items() if k not in ("record_rows", "earlier_rows", "earlier_from")}
        found[name] = int(full["n_resamples"])
        fast = fast_evidence(policy, oof, spec, found[name])["log_loss"]
        if fast != full:
            raise ValueError(f"policy {name}: the simulated log-loss test {fast} differs from the gate step's {full}; "
                             "run with --all-tests")
    return found


@dataclass
class Champion:
    """Production of one policy's path: the deployed model, its id and registered record."""

    model: SimulatedModel
    version: str
    own_oof: pd.DataFrame
    meta: dict[str, Any]


def promoted(market: MarketYear, week: int, version: str) -> Champion:
    """Production after decision week ``week``'s candidate is promoted: its deployed model (the
    next week's last fold model, trained until the end of the candidate's last fold) with the
    candidate's out-of-fold rows as its registered record."""
    model = week + market.spec.folds
    trained_until = market.trained_until(model).isoformat()
    return Champion(SimulatedModel(market, model), version, market.oof(week),
                    {"data_window": {"trained_until": trained_until, "last_training_row": trained_until},
                     "feature_spec": {"names": ["row"]}})


def champion_input(market: MarketYear, champion: Champion, oof: pd.DataFrame, policy: GatePolicy,
                   window_start: str) -> dict[str, Any]:
    """The ``champion`` argument of :func:`decide`, computed as the gate step computes it
    (``include.pipeline.decision._champion_evaluation``): the comparison on the rows after the
    champion's training, then the test of its record."""
    spec = market.spec
    return compare_with_champion(oof, champion.model, champion.meta, champion.version, market.features,
                                 horizon=spec.horizon, random_state=spec.random_state, window_start=window_start,
                                 own_oof=champion.own_oof, level=policy.level)


def simulate_year(spec: SimSpec, seed: int, edge: float, policies: dict[str, GatePolicy], *, weeks: int | None = None,
                  until_promoted: bool = False, all_tests: bool = False,
                  resamples: dict[str, int] | None = None) -> dict[str, Any]:
    """Weekly gate decisions on one simulated market-year under each policy, state kept per policy.

    Args:
        spec: the simulation's parameters.
        seed: the market-year's seed.
        edge: extra probability on the true class.
        policies: name to policy; each has a production of its own, all see the same candidates.
        weeks: decisions (at most ``spec.weeks``; default all).
        until_promoted: end each policy's year at its first promotion.
        all_tests: every skill test through :func:`candidate_evidence` instead of :func:`fast_evidence`.
        resamples: policy name to the log-loss test's resamples in :func:`fast_evidence`
            (:func:`gate_resamples`; a policy not named: the test's default).

    Returns:
        ``{"seed", "edge", "weeks", "seconds", "policies": {name: {"promotions", "demotions",
        "refused"`` (weeks a candidate passed its skill test and lost on a champion check)``,
        "weeks_with_model", "weeks_run", "first_promotion", "log_loss_p"`` (the candidates'
        log-loss p-values, week by week)``}}}``; weeks are 1-based.
    """
    started = time.perf_counter()
    weeks = spec.weeks if weeks is None else min(weeks, spec.weeks)
    market = MarketYear(spec, seed, edge)
    evidence_of = full_evidence if all_tests else fast_evidence
    production: dict[str, Champion | None] = dict.fromkeys(policies)
    paths: dict[str, dict[str, Any]] = {
        name: {"promotions": [], "demotions": [], "refused": 0, "weeks_with_model": 0, "weeks_run": 0,
               "first_promotion": None, "log_loss_p": []} for name in policies}
    for week in range(weeks):
        running = [name for name in policies if not (until_promoted and paths[name]["promotions"])]
        if not running:
            break
        oof = market.oof(week)
        window_start = market.index[(week + spec.folds - 1) * spec.week_rows].isoformat()
        evidence: dict[tuple[float, ...], dict[str, Any]] = {}  # policies with the same test share it
        for name in running:
            policy, path, champion = policies[name], paths[name], production[name]
            n_resamples = (resamples or {}).get(name)
            margins = (policy.min_f1_margin, policy.max_log_loss_ratio, policy.min_sharpe_margin, n_resamples or 0)
            if margins not in evidence:
                evidence[margins] = evidence_of(policy, oof, spec, n_resamples)
            found = champion_input(market, champion, oof, policy, window_start) if champion else None
            decision = decide(policy, candidate_version=f"s{seed}-w{week + 1:02d}", evidence=evidence[margins],
                              champion=found)
            path["weeks_run"] += 1
            path["log_loss_p"].append(evidence[margins]["log_loss"]["p_value"])
            if decision.action == "promote":
                production[name] = promoted(market, week, decision.candidate or "")
                path["promotions"].append(week + 1)
                path["first_promotion"] = path["first_promotion"] or week + 1
            elif decision.action == "demote":
                production[name] = None
                path["demotions"].append(week + 1)
            ll = next(c for c in decision.checks if c.name == "beats_prior_log_loss")
            if champion is not None and ll.passed and not decision.passed:
                path["refused"] += 1
            path["weeks_with_model"] += production[name] is not None
    return {"seed": seed, "edge": edge, "weeks": weeks, "seconds": time.perf_counter() - started,
            "policies": paths}


# -- the runs -----------------------------------------------------------------------------------
_WORKER_CACHE: ResampleCache | None = None


def _worker_init(max_bytes: int) -> None:
    global _WORKER_CACHE
    _WORKER_CACHE = ResampleCache(max_bytes)
    _WORKER_CACHE.install()


def _run_task(task: dict[str, Any]) -> dict[str, Any]:
    kind, rep = task.pop("kind"), task.pop("rep", None)
    return {"kind": kind, "rep": rep, **simulate_year(**task)}


def run_tasks(tasks: list[dict[str, Any]], jobs: int, cache_bytes: int) -> Iterator[dict[str, Any]]:
    """Each task's :func:`simulate_year` result (with its ``kind``), in order, in ``jobs`` processes."""
    if jobs <= 1:
        with ResampleCache(cache_bytes).installed():
            for task in tasks:
                yield _run_task(dict(task))
        return
    with ProcessPoolExecutor(jobs, initializer=_worker_init, initargs=(cache_bytes,)) as pool:
        yield from pool.map(_run_task, [dict(t) for t in tasks], chunksize=4)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes in ``n`` trials (Clopper & Pearson 1934)."""
    tail = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95 % interval over independent non-negative ``values``
    (the lower end at least 0)."""
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, max(mean - half, 0.0), mean + half


#: Kinds of run whose years are decided in full with nothing to predict.
NULL_KINDS = {"no_skill": "edge 0", "boundary": "least favourable null"}


def null_summary(years: list[dict[str, Any]], name: str, policy: GatePolicy) -> dict[str, Any]:
    """False promotions of one policy over full market-years without skill."""
    paths = [r["policies"][name] for r in years]
    hit = sum(bool(p["promotions"]) for p in paths)
    weeks = sum(p["weeks_run"] for p in paths)
    tested = [p for path in paths for p in path["log_loss_p"]]
    passes = sum(p is not None and p <= policy.level for p in tested)
    return {"years": len(years), "edge": years[0]["edge"], "weeks_per_year": years[0]["weeks"],
            "weekly_level": policy.level, "stated_yearly_bound": min(policy.level * years[0]["weeks"], 1.0),
            "years_with_false_promotion": hit, "share": hit / len(years),
            "share_interval": clopper_pearson(hit, len(years)),
            "promotions_per_year": mean_interval([len(p["promotions"]) for p in paths]),
            "demotions_per_year": mean_interval([len(p["demotions"]) for p in paths]),
            "first_week_promotions": sum(p["first_promotion"] == 1 for p in paths),
            "share_of_weeks_with_model": sum(p["weeks_with_model"] for p in paths) / weeks,
            "refused_by_champion": sum(p["refused"] for p in paths),
            "weekly_pass_rate": passes / len(tested), "weekly_pass_interval": clopper_pearson(passes, len(tested)),
            "median_log_loss_p": statistics.median(p for p in tested if p is not None)}


def power_summary(years: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Weeks to one policy's first promotion over market-years with an edge."""
    firsts = [r["policies"][name]["first_promotion"] for r in years]
    weeks = years[0]["weeks"]
    prompt = sum(f is not None and f <= PROMPT_WEEKS for f in firsts)
    ranked = sorted(f if f is not None else math.inf for f in firsts)

    def rank(q: float) -> float | None:  # the lower empirical quantile; None: not promoted within the year
        value = ranked[max(math.ceil(q * len(ranked)) - 1, 0)]
        return None if math.isinf(value) else value

    return {"years": len(years), "edge": years[0]["edge"], "weeks": weeks, "promoted_within_4": prompt,
            "share_within_4": prompt / len(years),
            "share_within_4_interval": clopper_pearson(prompt, len(years)),
            "promoted_within_year": sum(f is not None for f in firsts),
            "median_weeks_to_first": rank(0.5), "quartiles": [rank(0.25), rank(0.75)]}


def universe_summary(reps: list[dict[str, Any]], name: str, policy: GatePolicy, markets: int) -> dict[str, Any]:
    """Promotions per week of one policy across each replication's universe of no-skill markets."""
    weeks = reps[0]["weeks"]
    counts: dict[int, list[int]] = {}
    for r in reps:
        per_week = counts.setdefault(r["rep"], [0] * weeks)
        for week in r["policies"][name]["promotions"]:
            per_week[week - 1] += 1
    per_rep = [sum(c) / weeks for c in counts.values()]
    total = sum(sum(c) for c in counts.values())
    mean, low, high = mean_interval(per_rep)
    if total < 10:
        # Too few events for a normal interval: the exact Poisson interval of the count (Garwood
        # 1936) over every universe-week, rare promotions being nearly independent.
        low, high = (chi2.ppf(0.025, 2 * total) / 2 if total else 0.0), chi2.ppf(0.975, 2 * total + 2) / 2
        low, high = float(low) / (len(per_rep) * weeks), float(high) / (len(per_rep) * weeks)
    return {"markets": markets, "weeks": weeks, "replications": len(per_rep), "promotions": total,
            "per_week": mean, "per_week_interval": (low, high), "bound_per_week": markets * policy.level,
            "weeks_with_any": sum(n > 0 for c in counts.values() for n in c) / (len(counts) * weeks),
            "most_in_a_week": max(n for c in counts.values() for n in c)}


def summarise(results: list[dict[str, Any]], policies: dict[str, GatePolicy], markets: int) -> dict[str, Any]:
    """The tables' numbers from every task's result.

    Returns:
        ``{"null": {kind: {policy: null_summary}}, "power": {policy: {edge: power_summary}},
        "universe": {policy: universe_summary}}``; the power curve's edge 0 and least favourable
        edge are the full null years.
    """
    out: dict[str, Any] = {"null": {}, "power": {}, "universe": {}}
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r)
    for name, policy in policies.items():
        for kind in NULL_KINDS:
            if by_kind.get(kind):
                out["null"].setdefault(kind, {})[name] = null_summary(by_kind[kind], name, policy)
        curve = [*(by_kind.get(k, []) for k in NULL_KINDS)]
        by_edge: dict[float, list[dict[str, Any]]] = {}
        for r in by_kind.get("power", []):
            by_edge.setdefault(r["edge"], []).append(r)
        curve += list(by_edge.values())
        chosen = sorted((years for years in curve if years), key=lambda years: years[0]["edge"])
        out["power"][name] = {f"{years[0]['edge']:.6g}": power_summary(years, name) for years in chosen}
        if by_kind.get("universe"):
            out["universe"][name] = universe_summary(by_kind["universe"], name, policy, markets)
    return out


def _fmt_interval(pair: tuple[float, float] | list[float], digits: int = 3) -> str:
    return f"[{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


def _weeks_text(value: float | None, weeks: int) -> str:
    return f"> {weeks}" if value is None else f"{value:g}"


def markdown(summary: dict[str, Any], settings: dict[str, Any], runtime: dict[str, Any]) -> str:
    """The report: one table per run, then the runtime."""
    spec = settings["spec"]
    lines = ["# Gate over simulated years (bench/gate_year_sim.py)", "",
             f"Simulated out-of-fold records ({spec['folds']} weekly folds of {spec['week_rows']} rows, consecutive "
             f"candidates sharing {spec['folds'] - 1}, labels of overlapping {spec['horizon']}-bar returns of a random "
             f"walk); forecast errors AR(1) {spec['persistence']} with spread {spec['noise']}, weekly fits sharing "
             f"{spec['model_corr']:.0%} of their error variance; "
             f"{'every skill test' if settings['all_tests'] else 'the log-loss skill test (the one required)'}; "
             f"the champion's comparison and record tests; seed {settings['seed']}; commit {settings['commit']}"
             + (" with uncommitted changes in include/" if settings["include_dirty"] else "") + " ("
             + ", ".join(f"{m} {h}" for m, h in settings["sha256"].items()) + "). "
             f"Least favourable null: edge {settings['boundary_edge']:.5f}, where the forecast's expected log loss "
             "equals the class prior's.", ""]
    if summary["null"]:
        lines += ["## Without skill: false promotions per market-year", "",
                  "| policy | market | weekly level | years | years with >= 1 promotion | share [95 % CI] | "
                  "stated bound | promotions / year [95 % CI] | demotions / year | first-week promotions | "
                  "weeks with a model | weekly pass rate [95 % CI] | median p |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for kind, by_policy in summary["null"].items():
            for name, s in by_policy.items():
                ppy, dpy = s["promotions_per_year"], s["demotions_per_year"]
                lines.append(
                    f"| {name} | {NULL_KINDS[kind]} ({s['edge']:.4g}) | {s['weekly_level']:.4f} | {s['years']} x "
                    f"{s['weeks_per_year']} wk | {s['years_with_false_promotion']} | {s['share']:.3f} "
                    f"{_fmt_interval(s['share_interval'])} | {s['stated_yearly_bound']:.2f} | {ppy[0]:.3f} "
                    f"{_fmt_interval(ppy[1:])} | {dpy[0]:.3f} | {s['first_week_promotions']} | "
                    f"{s['share_of_weeks_with_model']:.1%} | {s['weekly_pass_rate']:.4f} "
                    f"{_fmt_interval(s['weekly_pass_interval'], 4)} | {s['median_log_loss_p']:.3f} |")
    if summary["power"]:
        lines += ["", "## Power: weeks to the first promotion by planted edge", "",
                  "Edge: extra probability on the true class before renormalising; 0 and the least favourable "
                  "edge are the full years above, the others end at the policy's first promotion.",
                  "", "| policy | edge | log loss - prior's (nats/row) | years | promoted within 4 weeks | "
                  "share [95 % CI] | promoted within the year | median weeks to first | quartiles |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, by_edge in summary["power"].items():
            for edge, s in by_edge.items():
                lines.append(
                    f"| {name} | {float(edge):.4g} | {s.get('log_loss_excess', float('nan')):+.4f} | {s['years']} | "
                    f"{s['promoted_within_4']} | "
                    f"{s['share_within_4']:.3f} {_fmt_interval(s['share_within_4_interval'])} | "
                    f"{s['promoted_within_year']} | {_weeks_text(s['median_weeks_to_first'], s['weeks'])} | "
                    f"{_weeks_text(s['quartiles'][0], s['weeks'])} - {_weeks_text(s['quartiles'][1], s['weeks'])} |")
    if summary["universe"]:
        lines += ["", "## Universe: promotions per week across no-skill markets (edge 0, state kept)", "",
                  "| policy | markets | weeks | replications | promotions | per week [95 % CI] "
                  "| bound N x alpha / 52 | "
                  "weeks with any promotion | most in a week |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, s in summary["universe"].items():
            lines.append(
                f"| {name} | {s['markets']} | {s['weeks']} | {s['replications']} | {s['promotions']} | "
                f"{s['per_week']:.4f} {_fmt_interval(s['per_week_interval'], 4)} | {s['bound_per_week']:.4f} | "
                f"{s['weeks_with_any']:.3f} | {s['most_in_a_week']} |")
    lines += ["", "## Runtime", "", "| run | market-years | weeks decided | seconds (sum) | seconds per year |",
              "| --- | --- | --- | --- | --- |"]
    for kind, r in runtime["by_kind"].items():
        lines.append(f"| {kind} | {r['years']} | {r['weeks']} | {r['seconds']:.0f} | {r['per_year']:.2f} |")
    lines += ["", f"Wall time {runtime['wall_seconds']:.0f} s with {settings['jobs']} process(es) at nice "
                  f"{settings['nice']}; both policies decided in every year's time."]
    return "\n".join(lines) + "\n"


#: The modules whose code decides what this benchmark measures.
GATE_MODULES = ("include/gate/__init__.py", "include/gate/evidence.py", "include/significance.py",
                "include/evaluation.py")


def _code_state() -> dict[str, Any]:
    """The commit, whether ``include/`` has uncommitted changes, and a digest of each gate module
    as it was read (the results hold for that code only)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "include_dirty": bool(git("status", "--porcelain", "--", "include")),
            "sha256": {m: hashlib.sha256((PROJECT_ROOT / m).read_bytes()).hexdigest()[:12] for m in GATE_MODULES}}


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)


def write_outputs(out: Path, settings: dict[str, Any], results: list[dict[str, Any]],
                  runtime: dict[str, Any]) -> str:
    """Summarise ``results``, add each power-curve edge's expected log loss minus the prior's,
    write ``out`` with ``.json`` and ``.md``; return the markdown."""
    summary = summarise(results, POLICIES, settings["universe"])
    excess = log_loss_excess(SimSpec(**settings["spec"]))
    for by_edge in summary["power"].values():
        for entry in by_edge.values():
            entry["log_loss_excess"] = excess(entry["edge"])
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out.with_suffix(".json"), json.dumps({"settings": settings, "summary": summary, "runtime": runtime,
                                                 "results": results}, indent=1, default=str))
    report = markdown(summary, settings, runtime)
    _write(out.with_suffix(".md"), report)
    return report


def build_tasks(spec: SimSpec, *, years: int, boundary_years: int, boundary: float, power_years: int,
                edges: list[float], seed: int, universe: int, universe_weeks: int, universe_reps: int,
                all_tests: bool, resamples: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Every market-year to simulate: full years at edge 0 and at the least favourable edge
    ``boundary``, years per positive edge ending at the first promotion (the same seeds: the same
    returns and forecast errors at every edge), universe markets (seeds of their own)."""
    common = {"spec": spec, "policies": POLICIES, "all_tests": all_tests, "resamples": resamples}
    tasks = [{"kind": "no_skill", "seed": seed + i, "edge": 0.0, **common} for i in range(years)]
    tasks += [{"kind": "boundary", "seed": seed + i, "edge": boundary, **common} for i in range(boundary_years)]
    tasks += [{"kind": "power", "seed": seed + i, "edge": edge, "until_promoted": True, **common}
              for edge in edges if edge > 0 for i in range(power_years)]
    base = seed + 1_000_000
    for rep in range(universe_reps if universe else 0):
        tasks += [{"kind": "universe", "seed": base + rep * universe + m, "edge": 0.0, "weeks": universe_weeks,
                   "rep": rep, **common} for m in range(universe)]
    return tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--years", type=int, default=200, help="no-skill market-years (default 200)")
    parser.add_argument("--boundary-years", type=int, default=None,
                        help="market-years at the least favourable null (default --years)")
    parser.add_argument("--power-years", type=int, default=None, help="market-years per edge (default --years)")
    parser.add_argument("--edges", type=float, nargs="*", default=[0.01, 0.02, 0.04, 0.08],
                        help="planted edges of the power curve (default 0.01 0.02 0.04 0.08)")
    parser.add_argument("--seed", type=int, default=0, help="first market-year's seed (default 0)")
    parser.add_argument("--weeks", type=int, default=DECISIONS_PER_YEAR, help="decisions per year (default 52)")
    parser.add_argument("--universe", type=int, default=20, metavar="N", help="markets of the universe (0: none)")
    parser.add_argument("--universe-weeks", type=int, default=8, help="weeks of the universe run (default 8)")
    parser.add_argument("--universe-reps", type=int, default=50, help="universe replications (default 50)")
    parser.add_argument("--noise", type=float, default=SimSpec.noise, help="forecast spread (default 0.03)")
    parser.add_argument("--persistence", type=float, default=SimSpec.persistence,
                        help="AR(1) coefficient of forecast errors (default 0.9)")
    parser.add_argument("--model-corr", type=float, default=SimSpec.model_corr,
                        help="error variance shared by the weekly fits (default 0.8)")
    parser.add_argument("--all-tests", action="store_true", help="run every skill test (about ten times slower)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--cache-mb", type=int, default=768, help="bootstrap-index cache per process (default 768)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output stem (default {DEFAULT_OUT})")
    parser.add_argument("--resummarise", action="store_true",
                        help="rewrite the tables from the market-years in --out's JSON; simulate nothing")
    args = parser.parse_args(argv)
    if args.resummarise:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        print(write_outputs(args.out, saved["settings"], saved["results"], saved["runtime"]))
        return
    counts = (args.years, args.boundary_years or 0, args.power_years or 0, args.universe, args.universe_reps)
    if min(counts) < 0 or args.jobs < 1 or args.universe_weeks < 1:
        parser.error("--years, --boundary-years, --power-years, --universe, --universe-reps: expected >= 0; "
                     "--jobs, --universe-weeks: >= 1")
    if not 0 <= args.persistence < 1 or not 0 <= args.model_corr <= 1 or args.noise < 0:
        parser.error("--persistence in [0, 1), --model-corr in [0, 1], --noise >= 0")
    if not 1 <= args.weeks <= 4 * DECISIONS_PER_YEAR or args.universe_weeks > args.weeks:
        parser.error("--weeks: expected 1 to 208, and at least --universe-weeks")
    if any(e < 0 for e in args.edges):
        parser.error("--edges: expected edges >= 0")
    spec = SimSpec.from_config(weeks=args.weeks, noise=args.noise, persistence=args.persistence,
                               model_corr=args.model_corr)
    resamples = None if args.all_tests else gate_resamples(POLICIES, spec)
    boundary = boundary_edge(spec)
    tasks = build_tasks(spec, years=args.years, boundary=boundary,
                        boundary_years=args.years if args.boundary_years is None else args.boundary_years,
                        power_years=args.years if args.power_years is None else args.power_years,
                        edges=sorted(set(args.edges)), seed=args.seed, universe=args.universe,
                        universe_weeks=args.universe_weeks, universe_reps=args.universe_reps,
                        all_tests=args.all_tests, resamples=resamples)
    code = _code_state()
    print(f"{len(tasks)} market-year(s) to simulate, {args.jobs} process(es); least favourable edge {boundary:.5f}",
          file=sys.stderr, flush=True)
    started, results = time.perf_counter(), []
    for i, result in enumerate(run_tasks(tasks, args.jobs, args.cache_mb << 20), 1):
        results.append(result)
        if i % 50 == 0 or i == len(tasks):
            print(f"{i}/{len(tasks)} done, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    runtime: dict[str, Any] = {"wall_seconds": time.perf_counter() - started, "by_kind": {}}
    for kind in (*NULL_KINDS, "power", "universe"):
        chosen = [r for r in results if r["kind"] == kind]
        if chosen:
            seconds = sum(r["seconds"] for r in chosen)
            weeks = sum(max(p["weeks_run"] for p in r["policies"].values()) for r in chosen)
            runtime["by_kind"][kind] = {"years": len(chosen), "weeks": weeks,
                                        "seconds": seconds, "per_year": seconds / len(chosen)}
    settings = {"spec": asdict(spec), "policies": {n: asdict(p) | {"level": p.level} for n, p in POLICIES.items()},
                "years": args.years, "boundary_years": args.boundary_years, "boundary_edge": boundary,
                "power_years": args.power_years, "edges": args.edges, "seed": args.seed, "universe": args.universe,
                "universe_weeks": args.universe_weeks, "universe_reps": args.universe_reps,
                "all_tests": args.all_tests, "log_loss_resamples": resamples, "jobs": args.jobs,
                "nice": os.nice(0), **code}
    print(write_outputs(args.out, settings, results, runtime))


if __name__ == "__main__":
    main()
