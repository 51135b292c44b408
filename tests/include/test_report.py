"""The run report's feature-importance panel shows the largest importances, whatever the file order."""

from __future__ import annotations

import json

from include.report import top_features


def test_top_features_ranks_by_value_not_by_the_sorted_keys_of_the_metadata_file():
    importance = {f"f{i:02d}": float(i) for i in range(20)}  # largest values are last alphabetically
    reread = json.loads(json.dumps(importance, sort_keys=True))  # as metadata.json stores it
    assert top_features(reread) == [f"f{i:02d}" for i in range(19, 7, -1)]
    assert top_features({"b": 0.1, "a": 0.1, "c": -0.2}, k=2) == ["a", "b"]


def _outcome(model: str, checks: list[dict]) -> dict:
    return {"model": model, "status": "done", "summary": {
        "production": "v1", "action": {"action": "keep"},
        "gate": {"passed": False, "candidate": "v2", "checks": checks}}}


def test_run_note_names_each_decision_and_fits_airflows_note_column():
    from include.pipeline.publication import NOTE_LIMIT, run_note

    failed = {"name": "beats_trading_baselines", "passed": False, "value": -6.26, "threshold": 0.0,
              "detail": "out-of-fold Sharpe -6.26 after costs vs best trading baseline (flat) 0.00 + margin 0.0"}
    one = run_note([_outcome("m1", [failed]),
                    {"model": "m2", "status": "skipped", "reason": "leaves 33 days"}])
    assert one.splitlines() == [
        "Weekly retrain, 2 market(s): 0 promoted, 1 kept, 1 skipped, 0 failed.",
        "- **m1**: KEEP v1; candidate v2 failed the gate ([report](/model-registry/versions/v2/report))",
        f"  - beats_trading_baselines: {failed['detail']}",
        "- **m2**: SKIPPED: leaves 33 days"]
    # Too long for the column: every market's line shrinks alike, and no market is dropped.
    some = run_note([_outcome(f"market-{i}", [failed]) for i in range(6)])
    assert len(some) <= NOTE_LIMIT and some.count("beats_trading_baselines (-6.26 vs 0)") == 6
    many = [_outcome(f"binance-market{i:02d}-perp-1h-h4", [failed]) for i in range(12)]
    many.append({"model": "binance-solusdt-perp-1h-h4", "status": "failed", "reason": "ohlcv: 12991 rows"})
    note = run_note(many)
    assert len(note) <= NOTE_LIMIT and "more in publish_summary's log" not in note
    assert all(o["model"] in note for o in many)
    assert note.splitlines()[0] == "Weekly retrain, 13 market(s): 0 promoted, 12 kept, 0 skipped, 1 failed."
    # Hundreds of markets: names by decision, as many as fit, and the rest counted.
    crowd = run_note([_outcome(f"binance-m{i:03d}-perp-1h-h4", [failed]) for i in range(200)])
    listed = crowd.splitlines()[1].removeprefix("- kept: ").split(", ")
    assert len(crowd) <= NOTE_LIMIT and crowd.endswith(f"- … {200 - len(listed)} more in publish_summary's log")
    assert crowd.splitlines()[0].startswith("Weekly retrain, 200 market(s): 0 promoted, 200 kept")


def test_a_run_that_monitoring_requested_says_so_in_its_note():
    from include.pipeline.publication import retrain_scope, run_note

    class Event:  # the shape of Airflow's triggering asset events: an ``extra`` dict
        extra = {"models": ["m1"], "as_of": "2023-12-20T00:00:00+00:00", "reasons": {"m1": "PSI"}}

    scope = retrain_scope({"retrain_request": [Event()]})
    assert scope == {"markets": ["m1"], "as_of_date": "2023-12-20", "reasons": {"m1": "PSI"}}
    note = run_note([{"model": "m1", "status": "skipped", "reason": "x"}], requested=scope)
    assert note.splitlines()[0].endswith("Requested by monitor_production, on data up to 2023-12-20 "
                                         "(reasons on the Monitoring page).")
    assert retrain_scope({"retrain_request": []}) is None and retrain_scope(None) is None


def test_a_market_that_failed_validation_says_why_in_the_run_outcomes(tmp_path):
    from include.config import Settings
    from include.pipeline.publication import universe_outcomes

    settings = Settings(data_dir=tmp_path, market_db_url="sqlite://", registry_dir=tmp_path / "m", runs_dir=tmp_path)
    plans = [{"model": m, "window": {"run_key": "20231224T0000_20231231T0000"}} for m in ("sol", "eth")]
    sol = tmp_path / "weekly_retrain" / "sol" / "20231224T0000_20231231T0000"
    sol.mkdir(parents=True)
    (sol / "validation.json").write_text(json.dumps({"success": False, "suites": [
        {"suite": "ohlcv", "failed": [{"message": "12991 rows in the window; at least 16804 expected"},
                                      {"message": "a gap"}]}]}))
    sol_out, eth_out = universe_outcomes(settings, "weekly_retrain", plans)
    assert sol_out == {"model": "sol", "status": "failed", "reason": (
        "validation failed: ohlcv: 12991 rows in the window; at least 16804 expected (and 1 more); "
        f"report {sol / 'validation.json'}")}
    assert eth_out["status"] == "failed" and "a task of this market failed" in eth_out["reason"]


def test_the_report_says_which_rows_the_row_checks_ran_on(tmp_path):
    from include.report import _step_times_section, _validation_paragraph

    (tmp_path / "validation.json").write_text(json.dumps({"success": True, "suites": [
        {"suite": "ohlcv", "rows": 18960, "validated_rows": 169}, {"suite": "open_interest", "rows": 728,
                                                                  "validated_rows": 728}]}))
    text = _validation_paragraph(tmp_path)
    assert "Data validation: passed" in text
    assert "ohlcv 18960 rows (row checks on 169 of them; the other days passed in earlier runs)" in text
    assert "open_interest 728 rows." in text  # a first run checks every row: nothing more to say
    table = _step_times_section({"validate": {"wall_s": 0.5, "cpu_s": 0.4, "ok": True},
                                 "train.lightgbm": {"wall_s": 1.25, "cpu_s": 1.2, "ok": False}})
    assert "<td>validate</td><td>0.50</td><td>0.40</td><td>yes</td>" in table
    assert "<td>train.lightgbm</td><td>1.25</td><td>1.20</td><td>no (raised)</td>" in table
    assert _step_times_section({}) == ""


def test_the_report_gives_the_ensemble_weights_and_why_they_were_selected(trained_registry):
    from include.registry import ModelRegistry

    settings = trained_registry["settings"]
    registry = ModelRegistry.from_settings(settings)
    try:
        for version in [*trained_registry["versions"], trained_registry["eth_version"]]:
            meta = registry.metadata(version)
            record = meta["weighting"]
            assert record["mode"] == "selected" and sorted(record["folds"]) == ["0", "1", "2"]
            # The registered weights are the candidate with the lower out-of-fold log loss.
            best = min(record["candidates"], key=lambda c: c["log_loss"])
            assert meta["weights"] == best["weights"]
            assert record["candidates"][1]["weights"] == {"lightgbm": 0.0, "xgboost": 0.0, "random_forest": 0.0,
                                                          "logistic": 1.0}
    finally:
        registry.dispose()
    for path in (settings.runs_dir / "weekly_retrain").glob("*/*/report.html"):
        html = path.read_text()
        assert "Ensemble weights <code>selected</code>" in html and "logistic alone" in html
