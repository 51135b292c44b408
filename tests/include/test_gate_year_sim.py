"""The simulated gate years (bench/gate_year_sim.py): the records overlap as the pipeline's do, the
champion meets its successors as in the gate step, and the gate decides as its levels say."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.gate_year_sim import (
    POLICIES,
    PROBA,
    MarketYear,
    SimSpec,
    boundary_edge,
    champion_input,
    clopper_pearson,
    fast_evidence,
    gate_resamples,
    log_loss_excess,
    main,
    promoted,
    simulate_year,
)
from include.gate import GatePolicy, decide

SPEC = SimSpec.from_config(weeks=4)


@pytest.fixture(scope="module")
def resamples() -> dict[str, int]:
    """The gate step's log-loss resamples per policy, checked against candidate_evidence."""
    return gate_resamples(POLICIES, SPEC)


def test_consecutive_candidates_share_five_folds_of_rows_and_forecasts():
    market = MarketYear(SPEC, seed=3)
    first, second = market.oof(0), market.oof(1)
    shared = first.index.intersection(second.index)
    assert len(first) == len(second) == 1008 and len(shared) == 5 * 168
    assert shared[0] == second.index[0] and second.index[-168:].difference(first.index).size == 168
    np.testing.assert_array_equal(first.loc[shared, PROBA].to_numpy(), second.loc[shared, PROBA].to_numpy())
    assert list(second["fold"].unique()) == [0, 1, 2, 3, 4, 5]
    # The forecast errors persist from hour to hour with the stated coefficient.
    errors = market.common[:, 0]
    assert np.corrcoef(errors[1:], errors[:-1])[0, 1] == pytest.approx(SPEC.persistence, abs=0.03)
    # Equal-thirds labels: every class prior near a third.
    assert np.abs(market.prior - 1 / 3).max() < 0.02


def test_the_champion_meets_the_next_candidate_as_the_same_model_then_on_more_rows_each_week():
    market = MarketYear(SPEC, seed=5, edge=0.05)
    champion = promoted(market, 0, "w01")
    policy = GatePolicy()
    week_after = champion_input(market, champion, market.oof(1), policy, "")
    assert week_after["rows_out_of_sample"] == 168 and week_after["comparison"]["p_value"] is None
    assert week_after["record"]["live_rows"] == 168 and week_after["record"]["n"] == 1008
    two_weeks = champion_input(market, champion, market.oof(2), policy, "")
    assert two_weeks["rows_out_of_sample"] == 336 and two_weeks["comparison"]["p_value"] is not None


def test_a_champion_whose_record_is_worse_than_the_prior_is_demoted(resamples):
    # A negative edge moves probability away from the true class: far worse than the prior.
    market = MarketYear(SPEC, seed=1, edge=-0.1)
    champion = promoted(market, 0, "w01")
    oof = market.oof(1)
    found = champion_input(market, champion, oof, GatePolicy(), "")
    decision = decide(GatePolicy(), candidate_version="w02",
                      evidence=fast_evidence(GatePolicy(), oof, SPEC, resamples["default"]),
                      champion=found)
    assert found["record"]["p_value"] <= GatePolicy().level and decision.action == "demote"


def test_the_simulated_test_is_the_gate_steps_and_the_least_favourable_edge_is_small(resamples):
    assert set(resamples) == set(POLICIES) and min(resamples.values()) > 0
    edge = boundary_edge(SPEC, rows=100_000)
    excess = log_loss_excess(SPEC, rows=100_000)
    assert 0 < edge < 0.01 and excess(0.0) > 0 > excess(2 * edge) > excess(0.01)


def test_a_large_edge_is_promoted_within_four_weeks_and_no_skill_never_in_the_first_week(resamples):
    skilled = [simulate_year(SPEC, seed, 0.15, POLICIES, until_promoted=True, resamples=resamples)
               for seed in range(5)]
    assert sum(r["policies"]["default"]["first_promotion"] is not None for r in skilled) >= 4
    # At the default weekly level (0.0019) a week-one promotion without skill has probability at
    # most 0.0019 per market: five markets all pass with probability above 0.99.
    unskilled = [simulate_year(SPEC, seed, 0.0, POLICIES, weeks=1, resamples=resamples) for seed in range(10, 15)]
    assert all(r["policies"]["default"]["promotions"] == [] for r in unskilled)


def test_a_tiny_run_writes_every_table(tmp_path):
    main(["--years", "2", "--power-years", "2", "--edges", "0.15", "--weeks", "3", "--universe", "2",
          "--universe-weeks", "2", "--universe-reps", "2", "--out", str(tmp_path / "sim")])
    report = (tmp_path / "sim.md").read_text()
    for heading in ("Without skill", "Power", "Universe", "Runtime"):
        assert f"## {heading}" in report
    data = json.loads((tmp_path / "sim.json").read_text())
    power = data["summary"]["power"]["default"]["0.15"]
    assert power["years"] == 2 and power["promoted_within_4"] == 2
    assert data["summary"]["universe"]["default"]["replications"] == 2
    assert len([r for r in data["results"] if r["kind"] == "no_skill"]) == 2
    main(["--resummarise", "--out", str(tmp_path / "sim")])  # the same tables from the saved market-years
    assert (tmp_path / "sim.md").read_text() == report


def test_clopper_pearson_interval():
    assert clopper_pearson(0, 200)[1] == pytest.approx(0.0183, abs=1e-4)
    low, high = clopper_pearson(10, 100)
    assert low == pytest.approx(0.0490, abs=1e-4) and high == pytest.approx(0.1762, abs=1e-4)
