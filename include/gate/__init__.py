"""Champion/challenger quality gate: skill tests at a stated yearly level, risk limits, the champion.

**The error rate is stated per year.** A registered model is decided 52 times a year, and the
weeks are not independent (consecutive candidates share five of six folds), so a level per week
says little about a year. ``alpha`` (0.10 by default) is the largest probability that a market
with nothing to predict gets *any* false promotion in a year: each week's skill tests run at
``alpha / DECISIONS_PER_YEAR`` (the Bonferroni bound, which holds whatever the dependence between
weeks: P(any false promotion in 52 weeks) <= 52 x alpha / 52). Across a universe of N markets the
expected number of false promotions per week is then at most ``N x alpha / 52`` (0.04 for 20
markets), a bound that needs no correction across the week's markets (Benjamini–Hochberg would
control a rate, not a count, and is weaker than this). A retrain that monitoring requests mid-week
is one more decision: a market retrained that way k extra times spends (52 + k) / 52 x alpha.

Every **skill check** is a one-sided hypothesis test whose null is "no skill", passed when its
p-value is at most the weekly level (:mod:`include.significance`: block bootstrap over the
serially dependent out-of-fold rows, or the probabilistic Sharpe ratio):

1. ``beats_baselines_f1``: the candidate's out-of-fold macro F1 over all walk-forward folds
   exceeds each naive baseline's (same rows) by ``min_f1_margin``: one test per baseline, all
   must reject (an intersection-union test, level held without correction; Berger 1982).
2. ``beats_prior_log_loss``: its out-of-fold log loss is below ``max_log_loss_ratio`` times that
   of forecasting the training class frequencies (paired, per row): its probabilities carry
   information. The rows are the candidate's out-of-fold rows preceded by its **shadow record**:
   the walk-forward forecasts that earlier candidates of the same recipe, promoted or not,
   recorded in the ``record_weeks`` weeks before them (each bar once, each forecast by a model
   fitted before it; :func:`include.gate.evidence.earlier_record`). A candidate refused one
   week keeps counting: the evidence for a steady edge grows week by week, while on a market
   with nothing to predict every row is still a forecast without skill, so the level holds.
3. ``beats_trading_baselines``: the simulated strategy (after fees, slippage and funding;
   :mod:`include.backtest`) over all out-of-fold bars has a probabilistic Sharpe ratio against
   ``min_sharpe_margin`` (annualised; flat is Sharpe 0) of at least ``1 - level``, and so has its
   per-bar return minus the momentum rule's (both must hold). Buy-and-hold is shown in the report
   but is not a baseline: over a few weeks its Sharpe measures the market's direction.

``required`` names the skill tests that decide; the others are run and recorded, not required.
**A challenger that fails a required test is never promoted**: nothing waives it.

A **risk limit** is a limit, not a test:

4. ``max_drawdown``: the out-of-fold maximum drawdown is at most ``max_drawdown``.
5. ``deflated_sharpe`` (only when ``min_deflated_sharpe`` is set; 0.95 is the paper's level): the
   deflated Sharpe ratio (Bailey & López de Prado 2014) of the out-of-fold strategy, with N every
   candidate the gate has evaluated for this registered model, this one included
   (:func:`include.gate.evidence.deflated_sharpe_record`); recorded whenever trading
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
8. ``champion_worse_than_prior`` (decides a demotion, never a promotion): the champion's own
   record, judged as the challenger is, on as many rows (its out-of-fold rows from its own
   training run followed by every live row since, the most recent ``n`` where ``n`` is the
   challenger's row count), with the same test at the same weekly level, of H1 "the champion's
   log loss is above the class prior's". When it rejects and the challenger is not promoted, the
   champion is **demoted to "no model"**: production serves the class-prior forecast and no
   position until a candidate passes (:data:`ACTIONS`).

Any failed required check keeps production as it is (or demotes it, by check 8). Times are
compared as instants (timezone-aware datetimes), never as strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from include.config import SKILL_CHECKS
from include.errors import GateError

#: Decisions a registered model gets in a year on the weekly schedule: the yearly level is spent
#: evenly over them.
DECISIONS_PER_YEAR = 52
#: What a decision does to production: move it to the candidate, leave it, or take it away (the
#: champion's own record is worse than the class prior's; production then serves no model).
ACTIONS = ("promote", "keep", "demote")


@dataclass(frozen=True)
class GatePolicy:
    """Levels and limits of the gate (see module docstring).

    Attributes:
        alpha: the yearly false-promotion rate per registered model: the largest probability
            that a model without skill is promoted in any of a year's decisions. Each week's
            skill tests run at :attr:`level` (``alpha / DECISIONS_PER_YEAR``).
        min_f1_margin: macro-F1 lead over each naive baseline in the F1 test's H1.
        max_log_loss_ratio: multiple of the class-prior forecast's log loss to beat.
        min_sharpe_margin: annualised Sharpe ratio to beat (flat is 0), also over momentum.
        max_drawdown: largest allowed out-of-fold maximum drawdown (fraction of equity).
        min_window_rows: fewest rows where both models are out of sample for a comparison.
        champion_alpha: level at which a significantly better champion refuses the
            challenger (refused when p < it); 0 never refuses (the test is still reported).
        demote: demote a champion whose record is significantly worse than the class prior's
            (check 8) when the challenger is not promoted; ``False`` only records the test.
        min_deflated_sharpe: required deflated Sharpe ratio; ``None`` leaves the check out.
        required: the skill tests that decide; the others are run and recorded, not required.
        record_weeks: weeks of earlier candidates' walk-forward forecasts (of the same recipe,
            before the candidate's out-of-fold rows) that join the log-loss test (its shadow
            record, :func:`include.gate.evidence.earlier_record`); 0: its own rows only.
    """

    alpha: float = 0.10
    min_f1_margin: float = 0.0
    max_log_loss_ratio: float = 1.0
    min_sharpe_margin: float = 0.0
    max_drawdown: float = 0.2
    min_window_rows: int = 24
    champion_alpha: float = 0.05
    demote: bool = True
    min_deflated_sharpe: float | None = None
    required: tuple[str, ...] = ("beats_prior_log_loss",)
    record_weeks: int = 20

    @property
    def level(self) -> float:
        """The level of each week's skill tests: ``alpha / DECISIONS_PER_YEAR`` (Bonferroni)."""
        return self.alpha / DECISIONS_PER_YEAR


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

    Checks the policy does not require are recorded but do not decide.
    """

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str
    required: bool = True

    @property
    def outcome(self) -> Outcome:
        """What the check did to the decision (:data:`OUTCOMES`)."""
        return "passed" if self.passed else "failed" if self.required else "not required"


#: A check's outcome, as the gate writes it into its record (``outcome``): it passed; it failed
#: and, being required, decided; or it failed and is recorded only (a skill test the policy does
#: not require). The log, the run note, the report, the Models page and the plugin read it.
Outcome = Literal["passed", "failed", "not required"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "not required")


def check_outcome(check: dict[str, Any]) -> Outcome:
    """A recorded check's outcome (:data:`OUTCOMES`): the one the gate wrote, or for a record
    written before the gate wrote it, the one its ``passed`` and ``required`` give."""
    if check.get("outcome") in OUTCOMES:
        return check["outcome"]
    return "passed" if check.get("passed") else "failed" if check.get("required", True) else "not required"


@dataclass
class GateDecision:
    """The gate's verdict and every number behind it.

    Attributes:
        passed: whether the candidate may replace production.
        checks: every check, in order.
        candidate, champion: the versions compared (``champion`` ``None`` without production).
        action: what the decision does to production (:data:`ACTIONS`): ``promote`` when
            passed; ``demote`` when not passed and the champion's record is significantly worse
            than the class prior's; else ``keep``.
    """

    passed: bool
    checks: list[Check] = field(default_factory=list)
    candidate: str | None = None
    champion: str | None = None
    action: Literal["promote", "keep", "demote"] = "keep"

    @property
    def reasons(self) -> list[str]:
        """Details of the failed required checks that decided (empty when passed), then the
        demotion's reason when the champion is demoted."""
        out = [c.detail for c in self.checks if c.outcome == "failed"]
        if self.action == "demote":
            out += [c.detail for c in self.checks if c.name == "champion_worse_than_prior"]
        return out

    @property
    def deciding(self) -> str:
        """In words, which required test decided: the first failed required check, the demotion,
        or that every required check passed."""
        failed = [c for c in self.checks if c.outcome == "failed"]
        if self.action == "demote":
            return (f"demoted to no model: {CHECK_WORDS['champion_worse_than_prior']}"
                    + (f"; and the challenger failed {CHECK_WORDS.get(failed[0].name, failed[0].name)}"
                       if failed else ""))
        if failed:
            return f"kept: the challenger failed {CHECK_WORDS.get(failed[0].name, failed[0].name)}"
        required = [CHECK_WORDS.get(c.name, c.name) for c in self.checks if c.required]
        return "promoted: it passed " + ", ".join(required)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (with ``reasons``, ``summary`` and ``deciding``)."""
        out = asdict(self)
        for check, record in zip(self.checks, out["checks"], strict=True):
            record["outcome"] = check.outcome
        out["reasons"] = self.reasons
        out["summary"] = self.summary()
        out["deciding"] = self.deciding
        return out

    def summary(self) -> str:
        """One line: PASS/FAIL (and a demotion) and each check."""
        word = {"passed": "ok", "failed": "FAIL", "not required": "no"}
        parts = [f"{c.name}={word[c.outcome]}" for c in self.checks]
        head = "PASS" if self.passed else "FAIL, DEMOTE" if self.action == "demote" else "FAIL"
        return f"{head}: " + ", ".join(parts)


#: What each check asks, in the words the Models page and the run note use.
CHECK_WORDS = {
    "beats_baselines_f1": "the macro-F1 test against every naive baseline",
    "beats_prior_log_loss": "the log-loss test against the class-prior forecast",
    "beats_trading_baselines": "the after-cost trading test against flat and momentum",
    "max_drawdown": "the drawdown limit",
    "deflated_sharpe": "the deflated Sharpe ratio limit",
    "champion_out_of_sample": "enough rows where both models are out of sample",
    "not_worse_than_champion": "the comparison with the champion (refused when the champion is significantly better)",
    "champion_worse_than_prior": "the champion's own record is significantly worse than the class prior's",
}


def _shadow_words(test: dict[str, Any]) -> str:
    """How many of the log-loss test's rows are the candidate's own and how many its shadow record's."""
    earlier = int(test.get("earlier_rows") or 0)
    if not earlier:
        return ""
    return (f": {test['n'] - earlier} its own out-of-fold, {earlier} from earlier candidates' walk-forward "
            f"forecasts since {str(test.get('earlier_from'))[:10]}")


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}" if value < 0.01 else f"{value:.3f}"


def _f1_check(policy: GatePolicy, f1_tests: dict[str, dict[str, Any]]) -> Check:
    """Check 1, ``beats_baselines_f1``: every baseline's macro-F1 test rejects at the weekly level."""
    alpha = policy.level
    f1_p = [t["p_value"] for t in f1_tests.values()]
    f1_ok = all(p is not None and p <= alpha for p in f1_p)
    worst = max(f1_tests, key=lambda n: 1.0 if f1_tests[n]["p_value"] is None else f1_tests[n]["p_value"])
    first = next(iter(f1_tests.values()))
    return Check("beats_baselines_f1", f1_ok, None if any(p is None for p in f1_p) else max(f1_p), alpha,
                 f"out-of-fold macro F1 {first['macro_f1']:.4f} vs "
                 + ", ".join(f"{n} {t['reference_macro_f1']:.4f} (p = {_p(t['p_value'])})"
                             for n, t in f1_tests.items())
                 + f"; H1 lead > {policy.min_f1_margin} over each, at level {alpha:.4f} (weakest: {worst})")


def _log_loss_check(policy: GatePolicy, ll: dict[str, Any]) -> Check:
    """Check 2, ``beats_prior_log_loss``: the log-loss test against the class-prior forecast rejects."""
    alpha = policy.level
    return Check("beats_prior_log_loss", ll["p_value"] is not None and ll["p_value"] <= alpha, ll["p_value"], alpha,
                 f"out-of-fold log loss {ll['log_loss']:.4f} vs class-prior forecast {ll['reference_log_loss']:.4f}"
                 f" x {policy.max_log_loss_ratio}: p = {_p(ll['p_value'])} at level {alpha:.4f} "
                 f"({ll['n']} rows, blocks of {ll['block']}" + _shadow_words(ll) + ")")


def _trading_inputs(evidence: dict[str, Any], trading: dict[str, dict[str, Any]]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(strategy metrics, test against flat, test against momentum)`` for checks 3-5.

    Raises:
        GateError: the ensemble's metrics or either trading test is missing.
    """
    tests = evidence.get("trading")
    try:
        strat = trading["ensemble"]
        flat, mom = tests["flat"], tests["momentum"]
    except (KeyError, TypeError) as exc:
        raise GateError(f"gate trading input lacks {exc}") from exc
    return strat, flat, mom


def _trading_check(policy: GatePolicy, strat: dict[str, Any], flat: dict[str, Any], mom: dict[str, Any]) -> Check:
    """Check 3, ``beats_trading_baselines``: the after-cost Sharpe tests against flat and momentum both pass."""
    alpha = policy.level
    ps = [flat["p_value"], mom["p_value"]]
    ok = all(p is not None and p <= alpha for p in ps)
    return Check(
        "beats_trading_baselines", ok, None if None in ps else max(ps), alpha,
        f"out-of-fold Sharpe {flat['sharpe']:.2f} after costs ({strat.get('trades', 0)} trades): "
        f"P(Sharpe > {policy.min_sharpe_margin}) = {_p(flat['probabilistic_sharpe'])}; over momentum "
        f"(return difference, Sharpe {mom['sharpe']:.2f}): {_p(mom['probabilistic_sharpe'])}; "
        f"each needs >= {1 - alpha:.4f}"
        + ("" if None not in ps else " (a strategy without return variance has nothing to test)"))


def _drawdown_check(policy: GatePolicy, strat: dict[str, Any]) -> Check:
    """Check 4, ``max_drawdown``: the out-of-fold maximum drawdown is within the limit."""
    return Check(
        "max_drawdown", strat["max_drawdown"] <= policy.max_drawdown, strat["max_drawdown"],
        policy.max_drawdown,
        f"out-of-fold max drawdown {strat['max_drawdown']:.2%} vs limit {policy.max_drawdown:.2%}")


def _deflated_sharpe_check(minimum: float, strat: dict[str, Any], deflated: dict[str, Any] | None) -> Check:
    """Check 5, ``deflated_sharpe``: the deflated Sharpe ratio is known and at least ``minimum``."""
    dsr = (deflated or {}).get("value")
    known = dsr is not None and dsr == dsr
    return Check(
        "deflated_sharpe", known and dsr >= minimum, dsr if known else None,
        minimum,
        (f"deflated Sharpe ratio {dsr:.3f} vs {minimum}: P(true Sharpe > expected maximum "
         f"of {deflated['n_trials']} unskilled trials)" if known else
         f"deflated Sharpe ratio undefined (the strategy made {strat.get('trades', 0)} trades) vs "
         f"{minimum}"))


def _champion_out_of_sample_check(policy: GatePolicy, champion: dict[str, Any]) -> Check:
    """Check 6, ``champion_out_of_sample``: enough rows where both models are out of sample."""
    champion_version = champion["version"]
    n_oos = int(champion.get("rows_out_of_sample") or 0)
    fair = n_oos >= policy.min_window_rows
    return Check(
        "champion_out_of_sample", fair, float(n_oos), float(policy.min_window_rows),
        f"{n_oos} out-of-fold rows where both models are out of sample, from {champion['compared_from']} "
        f"(champion {champion_version} trained until {champion['trained_until']}; min {policy.min_window_rows})"
        + ("" if fair else ": too few to compare, production kept"))


def _champion_comparison_check(policy: GatePolicy, comparison: dict[str, Any]) -> Check:
    """Check 7, ``not_worse_than_champion``: the champion is not significantly better (or is the same model)."""
    p = comparison.get("p_value")
    same = p is None
    refused = not same and p < policy.champion_alpha
    level = "not used" if policy.champion_alpha == 0 else f"refused at p < {policy.champion_alpha}"
    return Check(
        "not_worse_than_champion", not refused, p, policy.champion_alpha,
        (f"same model: the challenger's fold model gives the champion's forecast on all {comparison['n']} "
         "rows (the champion is the fit that fold trains), nothing to test") if same else
        (f"log loss on the same {comparison['n']} rows: challenger {comparison['challenger_log_loss']:.4f}, "
         f"champion {comparison['champion_log_loss']:.4f}; H1 champion better: p = {p:.3f} ({level}; "
         f"blocks of {comparison['block']})"))


def _champion_record_check(policy: GatePolicy, record: dict[str, Any]) -> Check:
    """Check 8, ``champion_worse_than_prior`` (not required): the champion's record is not shown worse than
    the class prior's."""
    alpha = policy.level
    worse = record["p_value"] <= alpha
    return Check(
        "champion_worse_than_prior", not worse, record["p_value"], alpha,
        f"champion's record: log loss {record['log_loss']:.4f} vs class-prior forecast "
        f"{record['reference_log_loss']:.4f} on its last {record['n']} rows ({record['live_rows']} live, "
        f"the rest out-of-fold from its own run); H1 worse than the prior: p = {_p(record['p_value'])} at "
        f"level {alpha:.4f}: " + ("worse than the prior" if worse else "not shown worse than the prior"),
        required=False)


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
            (``{"log_loss", "prior_log_loss"}`` of the champion on those rows, or ``None``)
            ``, "record"`` (the test of H1 "the champion's log loss is above the class prior's"
            on its record, :func:`include.gate.evidence.champion_record_test`, or ``None``)``}``.
        trading: out-of-fold trading metrics per strategy (``ensemble`` with ``max_drawdown``
            and ``trades``); ``None`` skips checks 3-5.
        deflated: ``{"value", "n_trials", ...}`` of the candidate's deflated Sharpe ratio.

    Returns:
        The decision with every check.

    Raises:
        GateError: a required test or metric is missing.
    """
    try:
        f1_tests, ll = evidence["f1"], evidence["log_loss"]
    except KeyError as exc:
        raise GateError(f"gate evidence lacks {exc}") from exc
    if not f1_tests:
        raise GateError("gate evidence holds no baseline to test macro F1 against")
    checks = [_f1_check(policy, f1_tests), _log_loss_check(policy, ll)]
    if trading is not None:
        strat, flat, mom = _trading_inputs(evidence, trading)
        checks.append(_trading_check(policy, strat, flat, mom))
        checks.append(_drawdown_check(policy, strat))
        if policy.min_deflated_sharpe is not None:
            checks.append(_deflated_sharpe_check(policy.min_deflated_sharpe, strat, deflated))
    champion_version = None
    if champion is not None:
        champion_version = champion["version"]
        window = _champion_out_of_sample_check(policy, champion)
        checks.append(window)
        comparison = champion.get("comparison") or {}
        if window.passed and comparison:
            checks.append(_champion_comparison_check(policy, comparison))
        record = champion.get("record")
        if record and record.get("p_value") is not None:
            checks.append(_champion_record_check(policy, record))
    for check in checks:
        if check.name in SKILL_CHECKS and check.name not in policy.required:
            check.required = False
    passed = all(c.passed or not c.required for c in checks)
    demoted = (not passed and policy.demote
               and any(c.name == "champion_worse_than_prior" and not c.passed for c in checks))
    return GateDecision(passed=passed, checks=checks, candidate=candidate_version, champion=champion_version,
                        action="promote" if passed else "demote" if demoted else "keep")
