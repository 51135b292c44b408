"""The gate over a year: a yearly level spent over the weeks, no waiver, demotion to "no model"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.gate import DECISIONS_PER_YEAR, GatePolicy, decide
from tests.include.test_gate import champion, evidence

TRADING = {"ensemble": {"sharpe": 0.3, "max_drawdown": 0.05, "trades": 30}, "momentum": {"sharpe": 0.1}}


def _record(p: float | None, log_loss: float = 1.05, prior: float = 1.07) -> dict:
    return {"p_value": p, "n": 1008, "block": 6, "log_loss": log_loss, "reference_log_loss": prior, "live_rows": 44}


def test_each_week_spends_a_52nd_of_the_yearly_level():
    policy = GatePolicy()
    assert policy.alpha == 0.10 and policy.level == pytest.approx(0.10 / 52) and DECISIONS_PER_YEAR == 52
    # p = 0.01 passed a test at 0.10 a week; a year of such weeks promotes noise about 5 times.
    assert not decide(policy, candidate_version="v1", evidence=evidence(ll_p=0.01), champion=None).passed
    strong = decide(policy, candidate_version="v1", evidence=evidence(ll_p=0.001), champion=None)
    assert strong.passed and strong.action == "promote"
    check = next(c for c in strong.checks if c.name == "beats_prior_log_loss")
    assert check.threshold == pytest.approx(0.10 / 52) and "at level 0.0019" in check.detail


def test_a_challenger_that_fails_its_required_test_is_never_promoted_whatever_the_champion():
    """The lapse rule waived a challenger's failed skill test when the champion had shown no live
    skill; one lucky promotion then turned into weekly promotions of no-skill models."""
    weak = evidence(ll_p=0.4, stratified_p=0.5, flat_p=0.3)
    for champ in (champion(live_p=0.4), champion(live=1.2, live_p=1.0), None):
        if champ is not None:
            champ["record"] = _record(0.6)  # no skill shown, not shown worse than the prior either
        d = decide(GatePolicy(), candidate_version="v1", evidence=weak, champion=champ, trading=TRADING)
        assert not d.passed and d.action == "keep", d.summary()
        assert "beats_prior_log_loss=FAIL" in d.summary() and "waived" not in d.summary()
        assert d.deciding == "kept: the challenger failed the log-loss test against the class-prior forecast"


def test_a_champion_whose_record_is_worse_than_the_prior_is_demoted_to_no_model():
    weak = evidence(ll_p=0.4)
    worse = {**champion(), "record": _record(0.0001, log_loss=1.12, prior=1.07)}
    d = decide(GatePolicy(), candidate_version="v1", evidence=weak, champion=worse, trading=TRADING)
    assert not d.passed and d.action == "demote" and d.summary().startswith("FAIL, DEMOTE")
    assert d.deciding.startswith("demoted to no model: the champion's own record is significantly worse")
    assert any("H1 worse than the prior: p = 0.0001" in r for r in d.reasons)
    record = d.to_dict()
    assert record["action"] == "demote" and record["deciding"] == d.deciding
    # A passing challenger replaces such a champion: a promotion, not a demotion.
    assert decide(GatePolicy(), candidate_version="v1", evidence=evidence(ll_p=0.0001), champion=worse,
                  trading=TRADING).action == "promote"
    # Recorded, not acted on, with demote=False; and a champion not shown worse is kept.
    assert decide(GatePolicy(demote=False), candidate_version="v1", evidence=weak, champion=worse,
                  trading=TRADING).action == "keep"
    fine = {**champion(), "record": _record(0.3)}
    assert decide(GatePolicy(), candidate_version="v1", evidence=weak, champion=fine, trading=TRADING).action == "keep"


def _rows(n: int, edge: float, rng: np.random.Generator, start: str) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` hourly rows whose labels follow the prior, and forecasts that put ``edge`` more
    probability on the true class (negative: less) than the prior does; persistent, as a real
    model's errors are (an AR(1) of coefficient 0.9 in the forecast's noise)."""
    prior = np.array([0.3, 0.4, 0.3])
    y = rng.choice(3, n, p=prior)
    noise = np.zeros((n, 3))
    shocks = rng.normal(0, 0.03, (n, 3))
    for t in range(n):
        noise[t] = (0.9 * noise[t - 1] if t else 0) + shocks[t]
    proba = np.clip(prior + noise, 0.02, None)
    proba[np.arange(n), y] = np.clip(proba[np.arange(n), y] + edge, 0.02, None)
    proba /= proba.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(proba, columns=["p_down", "p_range", "p_up"],
                         index=pd.date_range(start, periods=n, freq="h", tz="UTC"))
    frame[["prior_down", "prior_range", "prior_up"]] = prior
    frame["label"] = y
    return frame, proba


def test_the_champion_is_judged_on_the_challengers_row_budget_not_on_its_few_live_rows():
    """A champion with real skill, 44 live rows after a mid-week retrain: it is judged on its own
    out-of-fold record and those rows (1,008 in all, as the challenger is), so it is not demoted;
    a champion truly worse than the prior is."""
    from include.gate.evidence import champion_record_test

    level = GatePolicy().level
    rng = np.random.default_rng(7)
    demoted = {"skilled": 0, "harmful": 0}
    for _ in range(20):
        for kind, edge in (("skilled", 0.06), ("harmful", -0.08)):
            own, _ = _rows(964, edge, rng, "2023-01-01")
            live, live_proba = _rows(44, edge, rng, "2023-03-01")
            test = champion_record_test(own, live, live_proba, np.array([0.3, 0.4, 0.3]), n=1008, horizon=4,
                                        level=level, random_state=0)
            assert test["n"] == 1008 and test["live_rows"] == 44
            demoted[kind] += test["p_value"] <= level
    assert demoted == {"skilled": 0, "harmful": 20}, demoted


def test_a_demotion_is_a_production_state_of_its_own_in_the_registry(tmp_path):
    from datetime import UTC, datetime

    from include.registry import ModelRegistry
    from tests.include.test_registry import BTC, _register

    reg = ModelRegistry(tmp_path / "models", f"sqlite:///{tmp_path / 'registry.sqlite'}")
    try:
        a, b = (_register(reg, tmp_path, n, "prior", d) for n, d in (("a", 10), ("bb", 17)))
        reg.promote(a, run_id="r1", reason="x")
        reg.promote(b, run_id="r2", reason="x")
        decision = {"candidate": "v-new", "champion": b, "action": "demote"}
        reg.demote(BTC, run_id="r3", reason="worse than the prior", decision=decision, expected=b)
        reg.demote(BTC, run_id="r3", reason="worse than the prior", decision=decision, expected=b)  # a retry
        assert reg.production(BTC) is None
        since = reg.no_model_since(BTC)
        assert since["from"] == b and since["run_id"] == "r3" and since["decision"]["action"] == "demote"
        assert [(e["event"], e["from"], e["to"], e["candidate"]) for e in reg.ledger(BTC)][-1] == (
            "demote", b, None, "v-new")
        assert reg.production_on(BTC, datetime.now(UTC)) is None
        # A rollback from no model restores the version demoted: a person's override of the gate.
        assert reg.rollback(BTC, run_id="r4", reason="restore").version == b
        assert reg.no_model_since(BTC) is None
    finally:
        reg.dispose()


def test_serving_a_demoted_model_answers_the_class_prior_and_no_position(tmp_path):
    from datetime import UTC, datetime

    from include.registry import ModelRegistry
    from include.serving import ProductionModel
    from tests.include.test_registry import BTC, _register

    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    reg = ModelRegistry(tmp_path / "models", url)
    try:
        a = _register(reg, tmp_path, "a", "prior", 10)
        reg.promote(a, run_id="r1", reason="x")
        reg.demote(BTC, run_id="r2", reason="worse than the prior", expected=a,
                   decision={"deciding": "demoted to no model: …", "action": "demote"})
        serving = ProductionModel(reg, url, BTC, refresh_seconds=0)
        answer = serving.predict(datetime(2023, 12, 24, 10, 30, tzinfo=UTC))
        prior = reg.load(a)[0].class_prior_
        assert answer.version == "none" and answer.decision == "no position"
        assert list(answer.probabilities.values()) == pytest.approx(list(prior))
        assert answer.bar == "2023-12-24T09:00:00+00:00"  # the last bar closed by 10:30
        assert answer.no_model["demoted"] == a and answer.no_model["reason"] == "worse than the prior"
        # A rollback ends the state: the demoted version serves again.
        reg.rollback(BTC, run_id="r3", reason="restore")
        assert serving.current()[0] == a
    finally:
        reg.dispose()
