"""The gate's track record and its replay, on a real five-week backfill of the bundled data."""

from __future__ import annotations

from datetime import date, timedelta
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest

from tests.builders import PERMISSIVE_SKILL

BTC = "binance-btcusdt-perp-1h-h4"
# Costless trading: the cost-aware decision then takes a position wherever a forecast expects a
# move, so every week a model serves trades (with costs, these small models' forecasts rarely
# expect a move that pays for the round trip).
SMALL = dict(train_window_days=120, cv_folds=3, models=("lightgbm",), fee_bps=0.0, slippage_bps=0.0)
# Skill tests that always pass (PERMISSIVE_SKILL), and weeks where a log loss no forecast reaches
# is required and the champion is not demoted: some weeks promote, some keep.
REFUSING = dict(gate_max_log_loss_ratio=0.5, gate_demote=False)
WEEKS = [str(date(2023, 11, 12) + timedelta(weeks=k)) for k in range(5)]
POLICY_OF_WEEK = [PERMISSIVE_SKILL, REFUSING, PERMISSIVE_SKILL, REFUSING, PERMISSIVE_SKILL]
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def backfill(tmp_path_factory):
    from include.config import RunConfig, Settings
    from include.pipeline import run_once

    root = tmp_path_factory.mktemp("track-record")
    settings = Settings.in_folder(root)
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
    from include.gate.evidence import deflated_sharpe_record
    from include.registry import ModelRegistry
    from include.run_folder import json_safe
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

    settings = Settings.in_folder(tmp_path)
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


@pytest.fixture(scope="module")
def record(backfill):
    """The backfill's track record, with a replay ("strict") that never promotes."""
    from include.gate import GatePolicy
    from include.track_record import track_record

    settings, _ = backfill
    return track_record(settings, BTC, policies={"strict": GatePolicy(max_log_loss_ratio=0.5, demote=False)})


def test_the_track_record_scores_each_policy_forward_on_the_weeks_it_serves(backfill, record):
    from include.registry import ModelRegistry

    settings, actions = backfill
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
    assert (strict["weeks_without_model"] == strict["weeks"] == 4 and strict["sharpe"] == 0
            and strict["total_return"] == 0)
    # The probabilistic Sharpe ratio against flat: none for a record that never traded; for the
    # newest-model record, the normal approximation's probability, on the side its Sharpe ratio says.
    assert strict["psr_vs_flat"] is None
    newest = totals["newest"]
    if newest["sharpe"] != 0:
        assert 0 < newest["psr_vs_flat"] < 1 and (newest["psr_vs_flat"] > 0.5) == (newest["sharpe"] > 0)
    assert [w["policies"]["strict"]["version"] for w in weeks] == [None] * 5
    # The first week's three policies serve the same version: the same forward score.
    first = weeks[0]["policies"]
    assert first["newest"]["log_loss"] == first["never_retrain"]["log_loss"] == first["production"]["log_loss"]


def test_a_week_holds_the_class_prior_s_log_loss_and_each_policy_s_net_return(backfill, record):
    from include.backtest import stays_flat
    from include.registry import ModelRegistry
    from include.track_record import _forward, _versions, load_market

    settings, _ = backfill
    weeks = record["weeks"]
    registry = ModelRegistry.from_settings(settings)
    try:
        versions = _versions(registry, BTC)
        margins = {v.version: (((registry.decision_of(BTC, v.version) or {}).get("trading") or {}).get("decision")
                               or {}).get("deployed_margin") for v in versions}
        flat = {version for version, margin in margins.items() if margin is not None and stays_flat(margin)}
        data = load_market(settings, versions, versions[-1].trained_until + timedelta(days=7))
        for k, (week, v) in enumerate(zip(weeks, versions, strict=True)):
            if not week["rows"]:
                continue
            # The class-prior forecast: the newest version's training class frequencies, every row.
            frame = _forward(registry, data, v, v.trained_until, versions[k + 1].trained_until)
            prior = frame[["prior_down", "prior_range", "prior_up"]].to_numpy()
            expected = -np.log(prior[np.arange(len(frame)), frame["label"].to_numpy()]).mean()
            assert week["prior_log_loss"] == pytest.approx(expected, rel=1e-9)
            assert week["prior_log_loss"] != pytest.approx(week["policies"]["newest"]["log_loss"])
    finally:
        registry.dispose()
    pending = weeks[-1]
    assert pending["rows"] == 0 and pending["prior_log_loss"] is None
    assert all(p["net_return"] is None for p in pending["policies"].values())
    # A week without a model holds no position: no return, no cost.
    strict = [w["policies"]["strict"] for w in weeks[:-1]]
    assert all(p["version"] is None and p["net_return"] == 0.0 for p in strict)
    # A policy with a model trades unless its versions' decisions stay flat: its weeks' returns
    # are the one simulation's, split by week.
    for name in ("production", "newest", "never_retrain"):
        returns = [w["policies"][name]["net_return"] for w in weeks[:-1]]
        assert all(np.isfinite(returns)) and all(abs(r) < 0.5 for r in returns), name
        for week, r in zip(weeks[:-1], returns, strict=True):
            if week["policies"][name]["version"] in flat:
                assert r == 0.0, name
        if any(w["policies"][name]["version"] not in (None, *flat) for w in weeks[:-1]):
            assert any(r != 0 for r in returns), name


# -- the chart on the Models page ------------------------------------------------------------------
def _week(k: int, production: str | None, *, rows: int = 168, replay: str = "strict<&>") -> dict:
    start = pd.Timestamp("2024-01-07", tz="UTC") + pd.Timedelta(weeks=k)
    loss = None if not rows else 1.0 + 0.01 * k

    def policy(version, net):
        return {"version": version, "log_loss": loss, "age_days": 0.0 if version else None,
                "net_return": net if rows else None}

    return {"start": start.isoformat(), "end": (start + pd.Timedelta(weeks=1)).isoformat(), "rows": rows,
            "prior_log_loss": 1.09 if rows else None,
            "policies": {"production": policy(production, 0.01 * k if production else 0.0),
                         "newest": policy(f"n{k}", -0.005), "never_retrain": policy("n0", 0.002),
                         replay: policy(None, 0.0)}}


def _chart_record() -> dict:
    """Six weeks: no model, a promotion of ``v<1>``, a keep, a promotion of ``v2``, a demotion, and
    a promotion of ``v3`` in a week whose labels are pending."""
    chain = [None, "v<1>", "v<1>", "v2", None, "v3"]
    weeks = [_week(k, version, rows=0 if k == 5 else 168) for k, version in enumerate(chain)]
    totals = {name: {"weeks": 5, "log_loss": 1.05, "macro_f1": 0.3, "sharpe": 0.1, "mean_age_days": 0.0,
                     "weeks_without_model": 0} for name in ("production", "newest", "never_retrain", "strict<&>")}
    return {"model": BTC, "weeks": weeks, "totals": totals, "replays": {}, "compared_weeks": 5,
            "made_at": "2024-02-18T00:00:00+00:00"}


def _svg(record: dict) -> ElementTree.Element:
    from include.registry.pages import track_record_chart

    return ElementTree.fromstring(track_record_chart(record))


def _series(svg: ElementTree.Element, panel: str) -> dict[str, str]:
    return {p.get("data-series"): p.get("points") for p in svg.iter(f"{SVG}polyline") if p.get("data-panel") == panel}


def test_the_chart_draws_each_policy_the_prior_and_the_production_chain_s_changes():
    from include.registry.pages import track_record_chart, track_record_section

    record = _chart_record()
    svg = _svg(record)
    losses, returns = _series(svg, "log_loss"), _series(svg, "return")
    assert sorted(losses) == ["never_retrain", "newest", "prior", "production"]
    assert sorted(returns) == ["never_retrain", "newest", "production", "strict<&>"]
    # The pending week has no value: five points per line.
    assert all(len(points.split()) == 5 for points in [*losses.values(), *returns.values()])
    # Cumulative return: production earns 0.01 k in week k (0 without a model), so it never falls;
    # the newest candidate loses 0.005 a week, so it falls every week (SVG y grows downwards).
    production = [float(p.split(",")[1]) for p in returns["production"].split()]
    newest = [float(p.split(",")[1]) for p in returns["newest"].split()]
    assert all(b <= a for a, b in zip(production, production[1:], strict=False))
    assert all(b > a for a, b in zip(newest, newest[1:], strict=False))

    def marks(kind):
        return [(int(g.get("data-week")), g.find(f"{SVG}title").text) for g in svg.iter(f"{SVG}g")
                if g.get("class") == kind]

    promotions, demotions = marks("promotion"), marks("demotion")
    assert [k for k, _ in promotions] == [1, 3, 5] and [k for k, _ in demotions] == [4]
    assert promotions[0][1].endswith("promotion of v<1>") and promotions[1][1].endswith("promotion of v2")
    assert demotions[0][1] == "2024-02-04: demotion of v2"
    shaded = [int(r.get("data-week")) for r in svg.iter(f"{SVG}rect") if r.get("class") == "no-model"]
    assert shaded == [0, 4]
    text = track_record_chart(record)
    assert "v<1>" not in text and "v&lt;1&gt;" in text and "strict<&>" not in text
    section = track_record_section(BTC, record)
    assert section.index("<svg") < section.index("<table>")


def test_the_chart_of_a_record_without_prior_or_returns_draws_the_log_loss_lines():
    record = _chart_record()
    for week in record["weeks"]:
        del week["prior_log_loss"]
        for policy in week["policies"].values():
            del policy["net_return"]
    svg = _svg(record)
    assert sorted(_series(svg, "log_loss")) == ["never_retrain", "newest", "production"]
    assert _series(svg, "return") == {}
    assert [int(g.get("data-week")) for g in svg.iter(f"{SVG}g") if g.get("class") == "promotion"] == [1, 3, 5]
