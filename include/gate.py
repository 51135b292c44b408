"""Champion/challenger quality gate.

A candidate (challenger) is promoted only if every check passes:

1. ``beats_baselines_f1``: its out-of-fold macro F1 over all walk-forward folds exceeds the best
   naive baseline's (majority class, stratified random, momentum rule; same folds) by
   ``min_f1_margin``.
2. ``beats_prior_log_loss``: its out-of-fold log loss is at most ``max_log_loss_ratio`` times
   that of forecasting the training class frequencies, i.e. its probabilities carry information.
3. ``champion_out_of_sample``: the champion (production model) was trained only on data before
   the gate window (this run's data interval), so comparing on that window is fair.
4. ``beats_champion``: on the gate window, which neither model was fitted on, the challenger's
   macro F1 is at least the champion's minus ``champion_tolerance``.

5. ``beats_trading_baselines``: the simulated strategy's out-of-fold annualised Sharpe ratio
   (after fees, slippage and funding; :mod:`include.backtest`) exceeds the best of the
   trading baselines on the same bars (flat = 0 and the momentum rule) plus
   ``min_sharpe_margin``.
6. ``max_drawdown``: its out-of-fold maximum drawdown is at most ``max_drawdown``.
7. ``significant_sharpe`` (only when ``min_probabilistic_sharpe`` is set): the probabilistic
   Sharpe ratio (Bailey & López de Prado 2012) that the true Sharpe exceeds 0 is at least it.

Checks 3-4 apply only when a champion exists, 5-7 only when trading results are given. Any
failed check keeps production as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    """

    min_f1_margin: float = 0.02
    max_log_loss_ratio: float = 1.0
    champion_tolerance: float = 0.0
    min_window_rows: int = 24
    min_sharpe_margin: float = 0.0
    max_drawdown: float = 0.2
    min_probabilistic_sharpe: float | None = None


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
           trading: dict[str, dict[str, Any]] | None = None) -> GateDecision:
    """Apply the policy.

    Args:
        policy: thresholds.
        candidate_version: registry id of the challenger.
        candidate_oof: challenger's out-of-fold metrics over all folds (macro_f1, log_loss, ...).
        baselines: baseline name -> out-of-fold metrics on the same folds; needs ``majority``,
            ``stratified`` and ``prior``.
        candidate_window: challenger's metrics on the gate window (last fold), or ``None``.
        champion: ``None`` without a production model; else ``{"version", "trained_until"
            (ISO), "window_start" (ISO), "metrics" (on the gate window, or None)}``.
        trading: out-of-fold trading metrics per strategy (``ensemble``, ``momentum``, ...), each
            with ``sharpe``, ``max_drawdown`` and ``probabilistic_sharpe``; ``None`` skips 5-7.

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
            base_name, base_sharpe = max([("flat", 0.0), ("momentum", trading["momentum"]["sharpe"])],
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
            ok = psr is not None and psr == psr and psr >= policy.min_probabilistic_sharpe
            checks.append(Check(
                "significant_sharpe", ok, psr, policy.min_probabilistic_sharpe,
                f"probabilistic Sharpe ratio P(SR > 0) {psr:.3f} vs {policy.min_probabilistic_sharpe}"))
    champion_version = None
    if champion is not None:
        champion_version = champion["version"]
        fair = champion["trained_until"] <= champion["window_start"]
        checks.append(Check(
            "champion_out_of_sample", fair, None, None,
            f"champion {champion_version} trained until {champion['trained_until']}, gate window "
            f"starts {champion['window_start']}"))
        metrics = champion.get("metrics")
        if fair and metrics is not None and candidate_window is not None:
            enough = min(metrics.get("n", 0), candidate_window.get("n", 0)) >= policy.min_window_rows
            need = metrics["macro_f1"] - policy.champion_tolerance
            checks.append(Check(
                "beats_champion", enough and candidate_window["macro_f1"] >= need,
                candidate_window["macro_f1"], need,
                f"gate-window macro F1 {candidate_window['macro_f1']:.4f} vs champion "
                f"{metrics['macro_f1']:.4f} - tolerance {policy.champion_tolerance} on "
                f"{candidate_window.get('n', 0)} rows (min {policy.min_window_rows})"))
        elif fair:
            checks.append(Check("beats_champion", False, None, None,
                                "no champion or challenger metrics on the gate window"))
    return GateDecision(passed=all(c.passed for c in checks), checks=checks,
                        candidate=candidate_version, champion=champion_version)
