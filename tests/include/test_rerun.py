"""Re-running the same week with the same inputs, code and configuration finds the same version."""

from __future__ import annotations

from include.config import RunConfig, Settings
from include.pipeline import run_once
from include.registry import ModelRegistry


def test_a_rerun_of_an_identical_week_is_the_same_version(tmp_path, data_dir):
    settings = Settings.in_folder(tmp_path, data_dir)
    base = {"as_of_date": "2023-12-31", "train_window_days": 90, "cv_folds": 2, "models": ("lightgbm",)}
    first = run_once(RunConfig(**base), settings, dag_id="weekly_retrain", run_id="run-1")
    # Another gate policy decides differently but trains the same model from the same rows.
    again = run_once(RunConfig(**base, gate_alpha=1.0), settings, dag_id="weekly_retrain", run_id="run-2")
    other = run_once(RunConfig(**base, cv_embargo_bars=12), settings, dag_id="weekly_retrain", run_id="run-3")
    registry = ModelRegistry.from_settings(settings)
    v1, v2, v3 = (r["assembled"]["version"] for r in (first, again, other))
    assert v1 == v2 != v3
    assert sorted(registry.versions()) == sorted([v1, v3])
    # The ledger still records each run's decision about that version.
    assert [e["run_id"] for e in registry.history("challenger")] == ["run-1", "run-2", "run-3"]
    assert registry.metadata(v1)["run_id"] == "run-1"  # the artifacts stay as first registered
    registry.dispose()
