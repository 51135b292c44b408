"""Champion/challenger quality gate: skill tests at a stated level, risk limits, the champion.

Every **skill check** is a one-sided hypothesis test whose null is "no skill", passed when its
p-value is at most ``alpha`` (0.10 by default; :mod:`include.significance`: block bootstrap over
the serially dependent out-of-fold rows, or the probabilistic Sharpe ratio). On a market with
nothing to predict each passes in at most a share ``alpha`` of weeks:

1. ``beats_baselines_f1``: the candidate's out-of-fold macro F1 over all walk-forward folds
   exceeds each naive baseline's (majority class, stratified random, momentum rule; same rows)
   by ``min_f1_margin``: one test per baseline, all must reject (an intersection-union test,
   level ``alpha`` without correction; Berger 1982).
2. ``beats_prior_log_loss``: its out-of-fold log loss is below ``max_log_loss_ratio`` times that
   of forecasting the training class frequencies (paired, per row): its probabilities carry
   information.
3. ``beats_trading_baselines``: the simulated strategy (after fees, slippage and funding;
   :mod:`include.backtest`) over all out-of-fold bars has a probabilistic Sharpe ratio against
   ``min_sharpe_margin`` (annualised; flat is Sharpe 0) of at least ``1 - alpha``, and so has its
   per-bar return minus the momentum rule's (both must hold). Buy-and-hold is shown in the report
   but is not a baseline: over a few weeks its Sharpe measures the market's direction.

``required`` names the skill tests that decide; the others are run and recorded, not required.
The default (the log-loss test alone, at level 0.10) was chosen on the gate's forward track
record (:mod:`include.track_record`, ``bench/track_record_run.py``): over 2023 it did at least as
well on forward log loss as deploying every newest candidate and as never retraining, for BTC and
ETH, where requiring the F1 and trading tests too left both markets without a model most weeks.

A **risk limit** is a limit, not a test:

4. ``max_drawdown``: the out-of-fold maximum drawdown is at most ``max_drawdown``.
5. ``deflated_sharpe`` (only when ``min_deflated_sharpe`` is set; 0.95 is the paper's level): the
   deflated Sharpe ratio (Bailey & López de Prado 2014) of the out-of-fold strategy, with N every
   candidate the gate has evaluated for this registered model, this one included
   (:func:`include.pipeline.decision.deflated_sharpe_record`); recorded whenever trading
   results are given.

Against the **champion** (the production version of the same registered model):

6. ``champion_out_of_sample``: the comparison uses every out-of-fold row (all walk-forward
   folds, so several weeks when the champion is older) at or after the end of the champion's
   training data, where both models are out of sample; at least ``min_window_rows`` of them.
   Fewer keeps production, with the count as the reason.
7. ``not_worse_than_champion``: a paired block-bootstrap test on those rows of H1 "the
   champion's mean log loss is lower than the challenger's"; the challenger is refused when its
   p-value is below ``champion_alpha`` (the champion is significantly better). Without
   evidence either way the challenger, trained on more recent data, is not held back by the
   champion. When both give the same forecast on every row (the week after a promotion, the
   challenger's last fold model *is* the champion's fit) the check passes as "same model".
8. ``champion_live_skill`` (informational): the champion's own live record, the log-loss skill
   test of its forecasts on those rows against the class-prior forecast's. A champion that has
   not shown skill there (``lapse_rule`` ``no_skill_shown``: the test does not reject at
   ``alpha``; ``above_prior``: its live log loss is at or above the prior's) has no better claim
   to production than the challenger: with ``replace_lapsed_champion`` the challenger replaces
   it when it passes the risk limits and check 7, even if its own skill tests did not reject
   (they are recorded as waived). Production thus goes to the model with evidence of skill,
   and between two without it, to the one trained on more recent data.

Any failed check that is not waived keeps production as it is. Times are compared as instants
(timezone-aware datetimes), never as strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from include.errors import GateError

#: The skill tests (checks 1-3); a lapsed champion waives them, limits and the comparison stay.
SKILL_CHECKS = ("beats_baselines_f1", "beats_prior_log_loss", "beats_trading_baselines")


@dataclass(frozen=True)
class GatePolicy:
    """Levels and limits of the gate (see module docstring).

    Attributes:
        alpha: level of each skill test (checks 1-3): the largest share of no-skill candidates
            it lets through.
        min_f1_margin: macro-F1 lead over each naive baseline in the F1 test's H1.
        max_log_loss_ratio: multiple of the class-prior forecast's log loss to beat.
        min_sharpe_margin: annualised Sharpe ratio to beat (flat is 0), also over momentum.
        max_drawdown: largest allowed out-of-fold maximum drawdown (fraction of equity).
        min_window_rows: fewest rows where both models are out of sample for a comparison.
        champion_alpha: level at which a significantly better champion refuses the
            challenger (refused when p < it); 0 never refuses (the test is still reported).
        replace_lapsed_champion: let a challenger within the limits replace a lapsed champion.
        lapse_rule: when a champion has lapsed: ``no_skill_shown``, its live log-loss skill
            test (against the class prior, on the rows since its training) does not reject at
            ``alpha``; ``above_prior``, its live log loss is at or above the prior's.
        min_deflated_sharpe: required deflated Sharpe ratio; ``None`` leaves the check out.
        required: the skill tests that decide; the others are run and recorded, not required.
    """

    alpha: float = 0.10
    min_f1_margin: float = 0.0
    max_log_loss_ratio: float = 1.0
    min_sharpe_margin: float = 0.0
    max_drawdown: float = 0.2
    min_window_rows: int = 24
    champion_alpha: float = 0.05
    replace_lapsed_champion: bool = True
    lapse_rule: Literal["no_skill_shown", "above_prior"] = "no_skill_shown"
    min_deflated_sharpe: float | None = None
    required: tuple[str, ...] = ("beats_prior_log_loss",)


def instant(value: str | datetime) -> datetime:
    """A timezone-aware datetime from an ISO 8601 string (``Z`` or any offset) or a datetime.

    Naive values are taken as UTC, the project's only clock.

    Raises:
        GateError: the value is not an ISO 8601 date-time.
    """
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise GateError(f"not an ISO 8601 date-time: {value!r}") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass
class Check:
    """One gate rule's outcome: ``value`` compared with ``threshold``.

    ``waived`` checks (a lapsed champion's replacement) and checks the policy does not require
    are recorded but do not decide.
    """

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str
    waived: bool = False
    required: bool = True


@dataclass
class GateDecision:
    """The gate's verdict and every number behind it."""

    passed: bool
    checks: list[Check] = field(default_factory=list)
    candidate: str | None = None
    champion: str | None = None

    @property
    def reasons(self) -> list[str]:
        """Details of the failed checks that decided (empty when passed)."""
        return [c.detail for c in self.checks if not c.passed and not c.waived and c.required]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record."""
        out = asdict(self)
        out["reasons"] = self.reasons
        out["summary"] = self.summary()
        return out

    def summary(self) -> str:
        """One line: PASS/FAIL and each check."""
        parts = [f"{c.name}={'ok' if c.passed else 'waived' if c.waived else 'FAIL' if c.required else 'no'}"
                 for c in self.checks]
        return f"{'PASS' if self.passed else 'FAIL'}: " + ", ".join(parts)


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def decide(policy: GatePolicy, *, candidate_version: str, evidence: dict[str, Any],
           champion: dict[str, Any] | None, trading: dict[str, dict[str, Any]] | None = None,
           deflated: dict[str, Any] | None = None) -> GateDecision:
    """Apply the policy.

    Args:
        policy: levels and limits.
        candidate_version: registry id of the challenger.
        evidence: :func:`include.significance.skill_evidence`'s tests of the candidate's
            out-of-fold record: ``{"f1": {baseline: test}, "log_loss": test, "trading": {"flat":
            test, "momentum": test} or None}``.
        champion: ``None`` without a production model; else ``{"version", "trained_until",
            "window_start", "compared_from", "rows_out_of_sample", "comparison"`` (paired test
            of H1 "the champion's log loss is lower", ``None`` without rows) ``, "live"``
            (``{"log_loss", "prior_log_loss"}`` of the champion on those rows, or ``None``)``}``.
        trading: out-of-fold trading metrics per strategy (``ensemble`` with ``max_drawdown``
            and ``trades``); ``None`` skips checks 3-5.
        deflated: ``{"value", "n_trials", ...}`` of the candidate's deflated Sharpe ratio.

    Returns:
        The decision with every check.

    Raises:
        GateError: a required test or metric is missing.
    """
    alpha = policy.alpha
    try:
        f1_tests, ll = evidence["f1"], evidence["log_loss"]
    except KeyError as exc:
        raise GateError(f"gate evidence lacks {exc}") from exc
    if not f1_tests:
        raise GateError("gate evidence holds no baseline to test macro F1 against")
    f1_p = [t["p_value"] for t in f1_tests.values()]
    f1_ok = all(p is not None and p <= alpha for p in f1_p)
    worst = max(f1_tests, key=lambda n: 1.0 if f1_tests[n]["p_value"] is None else f1_tests[n]["p_value"])
    first = next(iter(f1_tests.values()))
    checks = [
        Check("beats_baselines_f1", f1_ok, None if any(p is None for p in f1_p) else max(f1_p), alpha,
              f"out-of-fold macro F1 {first['macro_f1']:.4f} vs "
              + ", ".join(f"{n} {t['reference_macro_f1']:.4f} (p = {_p(t['p_value'])})" for n, t in f1_tests.items())
              + f"; H1 lead > {policy.min_f1_margin} over each, at level {alpha} (weakest: {worst})"),
        Check("beats_prior_log_loss", ll["p_value"] is not None and ll["p_value"] <= alpha, ll["p_value"], alpha,
              f"out-of-fold log loss {ll['log_loss']:.4f} vs class-prior forecast {ll['reference_log_loss']:.4f}"
              f" x {policy.max_log_loss_ratio}: p = {_p(ll['p_value'])} at level {alpha} "
              f"({ll['n']} rows, blocks of {ll['block']})"),
    ]
    if trading is not None:
        tests = evidence.get("trading")
        try:
            strat = trading["ensemble"]
            flat, mom = tests["flat"], tests["momentum"]
        except (KeyError, TypeError) as exc:
            raise GateError(f"gate trading input lacks {exc}") from exc
        ps = [flat["p_value"], mom["p_value"]]
        ok = all(p is not None and p <= alpha for p in ps)
        checks.append(Check(
            "beats_trading_baselines", ok, None if None in ps else max(ps), alpha,
            f"out-of-fold Sharpe {flat['sharpe']:.2f} after costs ({strat.get('trades', 0)} trades): "
            f"P(Sharpe > {policy.min_sharpe_margin}) = {_p(flat['probabilistic_sharpe'])}; over momentum "
            f"(return difference, Sharpe {mom['sharpe']:.2f}): {_p(mom['probabilistic_sharpe'])}; "
            f"each needs >= {1 - alpha:.2f}"
            + ("" if None not in ps else " (a strategy without return variance has nothing to test)")))
        checks.append(Check(
            "max_drawdown", strat["max_drawdown"] <= policy.max_drawdown, strat["max_drawdown"],
            policy.max_drawdown,
            f"out-of-fold max drawdown {strat['max_drawdown']:.2%} vs limit {policy.max_drawdown:.2%}"))
        if policy.min_deflated_sharpe is not None:
            dsr = (deflated or {}).get("value")
            known = dsr is not None and dsr == dsr
            checks.append(Check(
                "deflated_sharpe", known and dsr >= policy.min_deflated_sharpe, dsr if known else None,
                policy.min_deflated_sharpe,
                (f"deflated Sharpe ratio {dsr:.3f} vs {policy.min_deflated_sharpe}: P(true Sharpe > expected maximum "
                 f"of {deflated['n_trials']} unskilled trials)" if known else
                 f"deflated Sharpe ratio undefined (the strategy made {strat.get('trades', 0)} trades) vs "
                 f"{policy.min_deflated_sharpe}")))
    champion_version = None
    if champion is not None:
        champion_version = champion["version"]
        n_oos = int(champion.get("rows_out_of_sample") or 0)
        fair = n_oos >= policy.min_window_rows
        checks.append(Check(
            "champion_out_of_sample", fair, float(n_oos), float(policy.min_window_rows),
            f"{n_oos} out-of-fold rows where both models are out of sample, from {champion['compared_from']} "
            f"(champion {champion_version} trained until {champion['trained_until']}; min {policy.min_window_rows})"
            + ("" if fair else ": too few to compare, production kept")))
        comparison = champion.get("comparison") or {}
        if fair and comparison:
            p = comparison.get("p_value")
            same = p is None
            refused = not same and p < policy.champion_alpha
            level = "not used" if policy.champion_alpha == 0 else f"refused at p < {policy.champion_alpha}"
            checks.append(Check(
                "not_worse_than_champion", not refused, p, policy.champion_alpha,
                (f"same model: the challenger's fold model gives the champion's forecast on all {comparison['n']} "
                 "rows (the champion is the fit that fold trains), nothing to test") if same else
                (f"log loss on the same {comparison['n']} rows: challenger {comparison['challenger_log_loss']:.4f}, "
                 f"champion {comparison['champion_log_loss']:.4f}; H1 champion better: p = {p:.3f} ({level}; "
                 f"blocks of {comparison['block']})")))
            live = champion.get("live")
            if live:
                live_p = live.get("p_value")
                if policy.lapse_rule == "above_prior":
                    lapsed = live["log_loss"] >= live["prior_log_loss"]
                    verdict = "lapsed (no better than the prior)" if lapsed else "better than the prior"
                else:
                    lapsed = live_p is None or live_p > alpha
                    verdict = (f"live skill test p = {_p(live_p)}: "
                               + ("no skill shown (lapsed)" if lapsed else f"skill shown at level {alpha}"))
                checks.append(Check(
                    "champion_live_skill", True, live_p, alpha,
                    f"champion's live log loss {live['log_loss']:.4f} vs class-prior forecast "
                    f"{live['prior_log_loss']:.4f} on {comparison['n']} rows since its training: " + verdict
                    + ("; a lapsed champion does not hold back a challenger within the limits"
                       if lapsed and policy.replace_lapsed_champion else "")))
                if lapsed and policy.replace_lapsed_champion:
                    for check in checks:
                        if check.name in policy.required and not check.passed:
                            check.waived = True
    for check in checks:
        if check.name in SKILL_CHECKS and check.name not in policy.required:
            check.required = False
    return GateDecision(passed=all(c.passed or c.waived or not c.required for c in checks), checks=checks,
                        candidate=candidate_version, champion=champion_version)
