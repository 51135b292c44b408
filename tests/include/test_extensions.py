"""Bring your own model family and feature: an installed example package runs through a real weekly run.

The package (``tests/plugin_example``: ``wr_example`` and its ``.dist-info`` with the entry points)
is installed by putting its folder on ``PYTHONPATH`` of a child process, where
:func:`importlib.metadata.entry_points` finds it as it finds any installed distribution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

PLUGIN_PATH = ROOT / "tests" / "plugin_example"


def _child(code: str, tmp_path, plugin: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *([str(PLUGIN_PATH)] if plugin else [])])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=900)


def test_an_installed_family_and_feature_train_register_and_serve_through_a_weekly_run(tmp_path):
    out = _child(f"""
        import json
        from datetime import UTC, datetime
        from pathlib import Path
        from include.config import MODEL_FAMILIES, RunConfig, Settings
        from include.pipeline import run_once
        from include.registry import ModelRegistry
        from include.serving import ProductionModel
        from include.tuning.spaces import search_space

        settings = Settings(data_dir=Path({str(ROOT / "data" / "binance")!r}),
                            market_db_url="sqlite:///{tmp_path / 'market.sqlite'}",
                            registry_dir=Path({str(tmp_path / "models")!r}), runs_dir=Path({str(tmp_path / "runs")!r}))
        cfg = RunConfig(as_of_date="2023-12-31", train_window_days=120, cv_folds=3,
                        models=("lightgbm", "example_linear"), extra_features=("range_pct",),
                        gate_max_log_loss_ratio=10.0, gate_champion_alpha=0.0)
        run = run_once(cfg, settings, dag_id="weekly_retrain", run_id="plugin")
        registry = ModelRegistry.from_settings(settings)
        lineage = registry.metadata(run["assembled"]["version"])
        serving = ProductionModel(registry, settings.market_db_url, cfg.model_name, max_age_hours=None)
        pred = serving.predict(datetime(2023, 12, 31, tzinfo=UTC))
        print(json.dumps({{"families": list(MODEL_FAMILIES), "members": lineage["members"],
                          "weights": lineage["weights"], "names": lineage["feature_spec"]["names"],
                          "plugins": lineage["feature_spec"]["params"]["plugins"],
                          "action": run["action"]["action"], "served": pred.version,
                          "space": search_space("example_linear"),
                          "row": serving.last_features.columns.tolist()}}))
        """, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "example_linear" in result["families"]
    assert result["members"] == ["lightgbm", "example_linear"] and result["weights"]["example_linear"] > 0
    assert result["names"][-1] == "range_pct" and "range_pct" in result["row"]
    assert result["plugins"]["range_pct"]["from"] == "wr-example 0.1 wr_example:range_pct"
    assert result["action"] == "promote" and result["served"].startswith("v20231231")
    assert result["space"]["C"]["high"] == 1.0


def test_without_the_package_its_names_are_refused_and_its_version_is_not_served(tmp_path):
    out = _child("""
        from include.config import RunConfig
        from include.errors import ConfigError
        from include.features import FeatureSpec, build_features
        for kwargs in ({"models": ("lightgbm", "example_linear")}, {"extra_features": ("range_pct",)}):
            try:
                RunConfig(**kwargs)
            except ConfigError as exc:
                print("refused:", exc)
        spec = {"names": ["returns_1", "range_pct"], "version": "2",
                "params": {**FeatureSpec.default().params,
                           "plugins": {"range_pct": {"from": "wr-example 0.1 wr_example:range_pct", "warmup_bars": 0}}}}
        import numpy as np
        import pandas as pd
        bars = pd.DataFrame({"timestamp": pd.date_range("2023-01-01", periods=300, freq="h", tz="UTC"),
                             **{k: np.linspace(100, 110, 300) for k in ("open", "high", "low", "close", "volume")}})
        try:
            build_features(bars, FeatureSpec.from_dict(spec))
        except ConfigError as exc:
            print("features:", type(exc).__name__, exc)
        """, tmp_path, plugin=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert sum(line.startswith("refused: invalid run parameter models=") for line in lines) == 1, lines
    assert sum(line.startswith("refused: invalid run parameter extra_features=") for line in lines) == 1, lines
    assert any("features: ConfigError" in line and "range_pct" in line for line in lines), lines


@pytest.mark.parametrize("broken", ["DEFAULT_PARAMS = None", "raise ImportError('missing dependency')"])
def test_a_broken_family_plug_in_is_named_in_the_error(tmp_path, broken):
    package = tmp_path / "pkg"
    (package / "bad_family").mkdir(parents=True)
    (package / "bad_family" / "__init__.py").write_text(broken + "\n")
    info = package / "bad_family-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-family\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[weekly_retrain.model_families]\nbad = bad_family\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(package)])}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from include.errors import ConfigError
        from include.training import build_estimator
        try:
            build_estimator("bad", random_state=0, n_jobs=1)
        except ConfigError as exc:
            print("refused:", exc)
        """)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused: model family plug-in bad ('bad_family' of bad-family 1.0)" in out.stdout, out.stdout
