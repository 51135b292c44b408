"""The gate's track record and its replay, on a real five-week backfill of the bundled data."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from tests.conftest import ROOT

BTC = "binance-btcusdt-perp-1h-h4"
SMALL = dict(train_window_days=120, cv_folds=3, models=("lightgbm",))
# Skill tests that always pass, and weeks where a log loss no forecast reaches is required and the
# champion is not demoted: some weeks promote, some keep.
PERMISSIVE = dict(gate_min_f1_margin=-1.0, gate_max_log_loss_ratio=10.0, gate_min_sharpe_margin=-1000.0,
                  gate_max_drawdown=1.0)
REFUSING = dict(gate_max_log_loss_ratio=0.5, gate_demote=False)
WEEKS = [str(date(2023, 11, 12) + timedelta(weeks=k)) for k in range(5)]
POLICY_OF_WEEK = [PERMISSIVE, REFUSING, PERMISSIVE, REFUSING, PERMISSIVE]


@pytest.fixture(scope="module")
def backfill(tmp_path_factory):
    from include.config import RunConfig, Settings
    from include.pipeline import run_once

    root = tmp_path_factory.mktemp("track-record")
    settings = Settings(data_dir=ROOT / "data" / "binance", market_db_url=f"sqlite:///{root / 'market.sqlite'}",
                        registry_dir=root / "models", runs_dir=root / "runs")
    actions = {}
    for day, policy in zip(WEEKS, POLICY_OF_WEEK, strict=True):
        run = run_once(RunConfig(as_of_date=day, **SMALL, **policy), settings, dag_id="weekly_retrain",
                       run_id=f"backfill__{day}")
        actions[run["assembled"]["version"]] = run["action"]["action"]
    return settings, actions


def test_the_replay_of_the_backfill_s_policy_reproduces_its_decisions(backfill):
    from include.gate import GatePolicy
    from include.registry import ModelRegistry
    from include.track_record import _versions, load_market, replay

    settings, actions = backfill
    assert list(actions.values()) == ["promote", "keep", "promote", "keep", "promote"]
    registry = ModelRegistry.from_settings(settings)
    try:
        versions = _versions(registry, BTC)
        data = load_market(settings, versions, versions[-1].trained_until + timedelta(days=7))
        # Each version with the policy its run used: the decisions the backfill took.
        decisions = replay(registry, data, versions, None)
        assert {d["version"]: d["action"] for d in decisions} == actions
        # One policy for every week decides otherwise: a replay is not a copy of the ledger.
        permissive = replay(registry, data, versions, GatePolicy(min_f1_margin=-1.0, max_log_loss_ratio=10.0,
                                                                 min_sharpe_margin=-1000.0, max_drawdown=1.0))
        assert [d["action"] for d in permissive] == ["promote"] * len(WEEKS)
        refusing = replay(registry, data, versions, GatePolicy(max_log_loss_ratio=0.5, demote=False))
        assert [d["action"] for d in refusing] == ["keep"] * len(WEEKS)
        assert all(d["champion"] is None for d in refusing)
    finally:
        registry.dispose()


def test_the_replay_s_deflated_sharpe_ratio_counts_the_trials_the_live_gate_counted(backfill):
    from include.pipeline.common import json_safe
    from include.pipeline.decision import deflated_sharpe_record
    from include.registry import ModelRegistry
    from include.track_record import _versions, load_market, replay

    settings, _ = backfill
    registry = ModelRegistry.from_settings(settings)
    try:
        versions = _versions(registry, BTC)
        data = load_market(settings, versions, versions[-1].trained_until + timedelta(days=7))
        recorded = {e["decision"]["candidate"]: e["decision"] for e in registry.ledger(BTC)
                    if (e.get("decision") or {}).get("candidate")}
        # The newest version as if a member had been tuned by a study of 10 trials, 6 of them
        # completed with a Sharpe ratio: the live gate counts every one of them.
        tuned = {"lightgbm": {"n_trials": 10, "trial_sharpes": [0.001 * k for k in range(6)]}}
        last = versions[-1]
        last.lineage = {**last.lineage, "hyperparameter_sets": tuned}
        decisions = replay(registry, data, versions, None)
        # As the gate's record stores them: a value without variance (NaN) as None.
        replayed = {d["version"]: json_safe(d["deflated_sharpe"]) for d in decisions}
        for k, v in enumerate(versions[:-1]):  # the values the live gate recorded
            live = recorded[v.version]["deflated_sharpe"]
            assert replayed[v.version]["n_trials"] == live["n_trials"] == k + 1
            for key in ("trials_variance", "sharpe_per_bar", "value"):
                assert replayed[v.version][key] == (None if live[key] is None else pytest.approx(live[key])), key
        strategy = recorded[last.version]["trading"]["out_of_fold"]["ensemble"]
        live = json_safe(deflated_sharpe_record(registry, BTC, last.version, strategy, 3600, tuned))
        assert replayed[last.version]["n_trials"] == live["n_trials"] == 4 + 10 + 1
        for key in ("trials_variance", "sharpe_per_bar", "value", "expected_max_sharpe"):
            assert replayed[last.version][key] == (None if live[key] is None else pytest.approx(live[key])), key
    finally:
        registry.dispose()


def test_the_replay_of_the_default_policy_reproduces_a_default_backfill(tmp_path):
    from include.config import RunConfig, Settings
    from include.gate import GatePolicy
    from include.pipeline import run_once
    from include.registry import ModelRegistry
    from include.track_record import _versions, load_market, replay

    settings = Settings(data_dir=ROOT / "data" / "binance", market_db_url=f"sqlite:///{tmp_path / 'market.sqlite'}",
                        registry_dir=tmp_path / "models", runs_dir=tmp_path / "runs")
    actions = {}
    for day in WEEKS[:3]:
        run = run_once(RunConfig(as_of_date=day, **SMALL), settings, dag_id="weekly_retrain", run_id=f"d__{day}")
        actions[run["assembled"]["version"]] = run["action"]["action"]
    registry = ModelRegistry.from_settings(settings)
    try:
        versions = _versions(registry, BTC)
        data = load_market(settings, versions, versions[-1].trained_until + timedelta(days=7))
        decisions = replay(registry, data, versions, GatePolicy())
        assert {d["version"]: d["action"] for d in decisions} == actions
    finally:
        registry.dispose()


def test_the_track_record_scores_each_policy_forward_on_the_weeks_it_serves(backfill):
    from include.gate import GatePolicy
    from include.registry import ModelRegistry
    from include.track_record import track_record

    settings, actions = backfill
    refusing = GatePolicy(max_log_loss_ratio=0.5, demote=False)
    record = track_record(settings, BTC, policies={"strict": refusing})
    registry = ModelRegistry.from_settings(settings)
    versions = sorted(actions, key=lambda v: registry.metadata(v)["data_window"]["trained_until"])
    registry.dispose()
    weeks = record["weeks"]
    assert len(weeks) == len(WEEKS) and [w["start"][:10] for w in weeks] == WEEKS
    # Week k: newest serves version k, never-retrain the first, production what the ledger says.
    for k, week in enumerate(weeks):
        assert week["policies"]["newest"]["version"] == versions[k]
        assert week["policies"]["never_retrain"]["version"] == versions[0]
        assert week["policies"]["never_retrain"]["age_days"] == pytest.approx(7 * k)
        assert pd.Timestamp(week["end"]) - pd.Timestamp(week["start"]) == pd.Timedelta(days=7)
    chain = [w["policies"]["production"]["version"] for w in weeks]
    served = versions[0]
    for k, v in enumerate(versions):
        served = v if actions[v] == "promote" else served
        assert chain[k] == served
    # The last week's labels are not in the store yet (the backfill ingested up to its end): pending.
    assert [w["rows"] > 160 for w in weeks] == [True] * 4 + [False]
    totals = record["totals"]
    assert totals["newest"]["weeks"] == totals["never_retrain"]["weeks"] == totals["production"]["weeks"] == 4
    assert totals["newest"]["mean_age_days"] == 0 and totals["never_retrain"]["mean_age_days"] == 10.5
    for name in ("production", "newest", "never_retrain"):
        assert 0.9 < totals[name]["log_loss"] < 1.3 and totals[name]["rows"] > 4 * 160
    # A replay that never promotes: every week is scored as the class-prior forecast, flat.
    strict = totals["strict"]
    assert strict["weeks_without_model"] == strict["weeks"] == 4 and strict["sharpe"] == 0 and strict["total_return"] == 0
    assert [w["policies"]["strict"]["version"] for w in weeks] == [None] * 5
    # The first week's three policies serve the same version: the same forward score.
    first = weeks[0]["policies"]
    assert first["newest"]["log_loss"] == first["never_retrain"]["log_loss"] == first["production"]["log_loss"]
