"""Champion/challenger quality gate.

A candidate (challenger) is promoted only if every check passes:

1. ``beats_baselines_f1``: its out-of-fold macro F1 over all walk-forward folds exceeds the best
   naive baseline's (majority class, stratified random, momentum rule; same folds) by
   ``min_f1_margin``.
2. ``beats_prior_log_loss``: its out-of-fold log loss is at most ``max_log_loss_ratio`` times
   that of forecasting the training class frequencies, i.e. its probabilities carry information.
3. ``champion_out_of_sample``: the comparison uses only gate-window rows (this run's data
   interval) that neither model saw: those at or after the end of the champion's training data.
   At least ``min_window_rows`` of them are needed; fewer (a champion trained to the window's
   end) keeps production, with the count as the reason. A champion trained before the window
   is compared on all of it; one a requested retrain trained into it, on the rest.
4. ``beats_champion``: on the gate window, the challenger's macro F1 is at least the champion's
   minus ``champion_tolerance``, both scored on the same rows. What is compared is exactly: the
   challenger's last walk-forward fold model (its last training row is purge + embargo bars
   before the window) against the champion as registered (its last training row is purge +
   embargo bars before its own data interval's end, at or before the window start). When the
   champion is the previous week's candidate, the two are the same fit (the deployed model is
   fitted on the rows the next run's last fold trains on) and the check passes by construction;
   against an older champion it compares a more recent model with it. The champion is never
   refitted.
4b. ``champion_significance`` (only when ``max_champion_p_value`` is set): a paired test on the
   same rows, one-sided, of H1 "the challenger's mean per-row log loss is lower than the
   champion's", must give a p-value at most it. The p-value comes from a circular block bootstrap
   of the per-row log-loss differences (Politis & Romano 1992; :func:`include.evaluation.
   paired_log_loss_test`); it is reported whenever a champion is compared, used or not. When
   both forecasts are the same on every row (the week after a promotion the challenger's last
   fold model is the champion's own fit), the check passes as "same model" instead of failing
   with p = 1.

5. ``beats_trading_baselines``: the simulated strategy's out-of-fold annualised Sharpe ratio
   (after fees, slippage and funding; :mod:`include.backtest`) exceeds the best of the
   trading baselines on the same bars (flat, Sharpe 0, and the momentum rule) plus
   ``min_sharpe_margin``. Buy-and-hold is shown in the report but is not a baseline: it is
   market exposure, and over a few out-of-fold weeks its Sharpe measures the market's direction
   in those weeks, so beating it would reject every model in a rally and wave any through in a
   sell-off.
6. ``max_drawdown``: its out-of-fold maximum drawdown is at most ``max_drawdown``.
7. ``significant_sharpe`` (only when ``min_probabilistic_sharpe`` is set): the probabilistic
   Sharpe ratio (Bailey & López de Prado 2012) that the true Sharpe exceeds 0 is at least it.
   A strategy without one (it never traded, so its returns have no variance) fails it.

8. ``deflated_sharpe`` (only when ``min_deflated_sharpe`` is set; 0.95 is the paper's level): the
   deflated Sharpe ratio (Bailey & López de Prado 2014) of the out-of-fold strategy, the
   probability that its true Sharpe ratio exceeds the expected maximum of N unskilled trials,
   with N every candidate the gate has evaluated for this registered model, this one included
   (:func:`include.pipeline.decision.deflated_sharpe_record`). It is recorded whenever trading
   results are given, used or not.

Checks 3-4b apply only when a champion exists, 5-8 only when trading results are given. Any
failed check keeps production as it is. Times are compared as instants (timezone-aware
datetimes), never as strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from include.errors import GateError


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the gate (see module docstring).

    Attributes:
        min_f1_margin: required macro-F1 lead over the best naive baseline.
        max_log_loss_ratio: largest allowed candidate / class-prior log-loss ratio.
        champion_tolerance: largest allowed macro-F1 shortfall against the champion.
        min_window_rows: fewest gate-window rows for a champion comparison.
        min_sharpe_margin: required annualised-Sharpe lead over the best trading baseline.
        max_drawdown: largest allowed out-of-fold maximum drawdown (fraction of equity).
        min_probabilistic_sharpe: required probability that the true Sharpe ratio exceeds 0;
            ``None`` leaves the significance check out.
        max_champion_p_value: largest allowed p-value of the paired challenger-vs-champion
            log-loss test; ``None`` leaves the check out (the p-value is still reported).
        min_deflated_sharpe: required deflated Sharpe ratio; ``None`` leaves the check out.
    """

    min_f1_margin: float = 0.02
    max_log_loss_ratio: float = 1.0
    champion_tolerance: float = 0.0
    min_window_rows: int = 24
    min_sharpe_margin: float = 0.0
    max_drawdown: float = 0.2
    min_probabilistic_sharpe: float | None = None
    max_champion_p_value: float | None = None
    min_deflated_sharpe: float | None = None


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
    """One gate rule's outcome: ``value`` compared with ``threshold``."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class GateDecision:
    """The gate's verdict and every number behind it."""

    passed: bool
    checks: list[Check] = field(default_factory=list)
    candidate: str | None = None
    champion: str | None = None

    @property
    def reasons(self) -> list[str]:
        """Details of the failed checks (empty when passed)."""
        return [c.detail for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record."""
        out = asdict(self)
        out["reasons"] = self.reasons
        out["summary"] = self.summary()
        return out

    def summary(self) -> str:
        """One line: PASS/FAIL and each check."""
        parts = [f"{c.name}={'ok' if c.passed else 'FAIL'}" for c in self.checks]
        return f"{'PASS' if self.passed else 'FAIL'}: " + ", ".join(parts)


def decide(policy: GatePolicy, *, candidate_version: str, candidate_oof: dict[str, float],
           baselines: dict[str, dict[str, float]], candidate_window: dict[str, float] | None,
           champion: dict[str, Any] | None,
           trading: dict[str, dict[str, Any]] | None = None,
           deflated: dict[str, Any] | None = None) -> GateDecision:
    """Apply the policy.

    Args:
        policy: thresholds.
        candidate_version: registry id of the challenger.
        candidate_oof: challenger's out-of-fold metrics over all folds (macro_f1, log_loss, ...).
        baselines: baseline name -> out-of-fold metrics on the same folds; needs ``majority``,
            ``stratified`` and ``prior``.
        candidate_window: challenger's metrics on the gate window (last fold), or ``None``.
        champion: ``None`` without a production model; else ``{"version", "trained_until"
            (ISO), "window_start" (ISO), "metrics" (on the gate window, or None)}``, optionally
            with ``"paired_test"`` (:func:`include.evaluation.paired_log_loss_test`'s result on
            the same rows) and ``"last_training_row"``.
        trading: out-of-fold trading metrics per strategy (``ensemble``, ``momentum``, ...), each
            with ``sharpe``, ``max_drawdown`` and ``probabilistic_sharpe``; ``None`` skips 5-8.
        deflated: ``{"value", "n_trials", ...}`` of the candidate's deflated Sharpe ratio, for
            check 8.

    Returns:
        The decision with every check.

    Raises:
        GateError: a required metric is missing.
    """
    try:
        cand_f1, cand_ll = candidate_oof["macro_f1"], candidate_oof["log_loss"]
        names = [n for n in ("majority", "stratified", "momentum") if n in baselines]
        best_name = max(names, key=lambda n: baselines[n]["macro_f1"])
        best_f1 = baselines[best_name]["macro_f1"]
        prior_ll = baselines["prior"]["log_loss"]
    except KeyError as exc:
        raise GateError(f"gate input lacks {exc}") from exc

    checks = [
        Check("beats_baselines_f1", cand_f1 >= best_f1 + policy.min_f1_margin, cand_f1,
              best_f1 + policy.min_f1_margin,
              f"out-of-fold macro F1 {cand_f1:.4f} vs best baseline ({best_name}) {best_f1:.4f} "
              f"+ margin {policy.min_f1_margin}"),
        Check("beats_prior_log_loss", cand_ll <= policy.max_log_loss_ratio * prior_ll, cand_ll,
              policy.max_log_loss_ratio * prior_ll,
              f"out-of-fold log loss {cand_ll:.4f} vs class-prior forecast {prior_ll:.4f} "
              f"x {policy.max_log_loss_ratio}"),
    ]
    if trading is not None:
        try:
            strat = trading["ensemble"]
            flat = trading.get("flat", {"sharpe": 0.0})["sharpe"]
            base_name, base_sharpe = max([("flat", flat), ("momentum", trading["momentum"]["sharpe"])],
                                         key=lambda kv: kv[1])
        except KeyError as exc:
            raise GateError(f"gate trading input lacks {exc}") from exc
        need = base_sharpe + policy.min_sharpe_margin
        checks.append(Check(
            # Strictly: a strategy that never trades (Sharpe 0) has not beaten staying flat.
            "beats_trading_baselines", strat["sharpe"] > need, strat["sharpe"], need,
            f"out-of-fold Sharpe {strat['sharpe']:.2f} after costs vs best trading baseline "
            f"({base_name}) {base_sharpe:.2f} + margin {policy.min_sharpe_margin}"))
        checks.append(Check(
            "max_drawdown", strat["max_drawdown"] <= policy.max_drawdown, strat["max_drawdown"],
            policy.max_drawdown,
            f"out-of-fold max drawdown {strat['max_drawdown']:.2%} vs limit {policy.max_drawdown:.2%}"))
        if policy.min_probabilistic_sharpe is not None:
            psr = strat.get("probabilistic_sharpe")
            known = psr is not None and psr == psr
            ok = known and psr >= policy.min_probabilistic_sharpe
            checks.append(Check(
                "significant_sharpe", ok, psr if known else None, policy.min_probabilistic_sharpe,
                f"probabilistic Sharpe ratio P(SR > 0) {psr:.3f} vs {policy.min_probabilistic_sharpe}" if known
                else f"probabilistic Sharpe ratio undefined (the strategy made {strat.get('trades', 0)} trades: "
                     f"no return variance to test) vs {policy.min_probabilistic_sharpe}"))
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
        n_oos = champion.get("rows_out_of_sample")
        if n_oos is None:  # a record without the count: the whole window, if trained before it
            fair = instant(champion["trained_until"]) <= instant(champion["window_start"])
            checks.append(Check(
                "champion_out_of_sample", fair, None, None,
                f"champion {champion_version} trained until {champion['trained_until']}, gate window "
                f"starts {champion['window_start']}"))
        else:
            fair = n_oos >= policy.min_window_rows
            checks.append(Check(
                "champion_out_of_sample", fair, float(n_oos), float(policy.min_window_rows),
                f"{n_oos} gate-window rows where both models are out of sample, from {champion['compared_from']} "
                f"(champion {champion_version} trained until {champion['trained_until']}, gate window starts "
                f"{champion['window_start']}; min {policy.min_window_rows})"
                + ("" if fair else ": too few to compare, production kept")))
        metrics = champion.get("metrics")
        if champion.get("challenger_metrics") is not None:
            candidate_window = {**(candidate_window or {}), **champion["challenger_metrics"]}
        paired = champion.get("paired_test") or {}
        p_value = paired.get("p_value")
        if fair and metrics is not None and candidate_window is not None:
            enough = min(metrics.get("n", 0), candidate_window.get("n", 0)) >= policy.min_window_rows
            need = metrics["macro_f1"] - policy.champion_tolerance
            cutoffs = ""
            if candidate_window.get("last_training_row") and champion.get("last_training_row"):
                cutoffs = (f"; last training rows: challenger's fold model {candidate_window['last_training_row']}, "
                           f"champion {champion['last_training_row']}")
            test = (f"; paired log-loss test p = {p_value:.3f}" if p_value is not None
                    else "; same forecast as the champion on every row" if paired.get("same_forecast") else "")
            checks.append(Check(
                "beats_champion", enough and candidate_window["macro_f1"] >= need,
                candidate_window["macro_f1"], need,
                f"gate-window macro F1 {candidate_window['macro_f1']:.4f} vs champion "
                f"{metrics['macro_f1']:.4f} - tolerance {policy.champion_tolerance} on the same "
                f"{candidate_window.get('n', 0)} rows (min {policy.min_window_rows}){test}{cutoffs}"))
            if policy.max_champion_p_value is not None and paired.get("same_forecast"):
                checks.append(Check(
                    "champion_significance", True, None, policy.max_champion_p_value,
                    "same model: the challenger's last fold model gives the champion's forecast on every "
                    f"one of the {paired.get('n', 0)} rows (the champion is the fit the fold trains), "
                    "so there is no difference to test"))
            elif policy.max_champion_p_value is not None:
                checks.append(Check(
                    "champion_significance", p_value is not None and p_value <= policy.max_champion_p_value,
                    p_value, policy.max_champion_p_value,
                    f"paired block-bootstrap test, H1 challenger log loss < champion's: p = "
                    f"{'n/a' if p_value is None else f'{p_value:.3f}'} vs max {policy.max_champion_p_value} "
                    f"(mean difference {paired.get('mean_difference', float('nan')):+.4f} nats per row)"))
        elif fair:
            checks.append(Check("beats_champion", False, None, None,
                                "no champion or challenger metrics on the gate window"))
    return GateDecision(passed=all(c.passed for c in checks), checks=checks,
                        candidate=candidate_version, champion=champion_version)
