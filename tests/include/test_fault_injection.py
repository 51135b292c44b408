"""Fault injection: a task process killed (SIGKILL) at each step from registration to retention,
then retried as Airflow retries it, never leaves an unverifiable registry.

The base registry holds a production version (week ending 2023-12-10, promoted) and a version
that never served (2023-12-17, kept). Each case copies it, runs the week ending 2023-12-24
(permissive gate: it promotes) in a task process that kills itself at one point
(``tests/fault_child.py``), then retries the killed task and runs the rest, each in a new process.
After every case: ``python -m include.registry verify`` passes, production serves the new version
through the serving loader, the ledger holds exactly one ``candidate`` and one ``promote`` entry
of the run, retention removed the version that never served and left no staging or half-removed
folder behind. The outcomes are written to ``var/artifacts/fault_injection.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fault_child import TASKS

BTC = "binance-btcusdt-perp-1h-h4"
SMALL = dict(train_window_days=120, cv_folds=3, models=("lightgbm",))
PERMISSIVE = dict(gate_min_f1_margin=-1.0, gate_max_log_loss_ratio=10.0, gate_min_sharpe_margin=-1000.0,
                  gate_max_drawdown=1.0, gate_champion_alpha=0.0)
RUN_ID = "scheduled__2023-12-24T00:00:00+00:00"

#: (fault point, the task it kills)
CASES = [
    ("register: staged, not published", "assemble_ensemble"),
    ("register: published, row not committed", "assemble_ensemble"),
    ("register: committed, challenger not moved", "assemble_ensemble"),
    ("challenger moved, trading not simulated", "assemble_ensemble"),
    ("gate: decided, record not written", "quality_gate"),
    ("promote: alias moved, not smoke-tested", "promote_or_keep"),
    ("promote: smoke test predicted, not returned", "promote_or_keep"),
    ("retention: rows marked, files not removed", "apply_retention"),
    ("retention: folder set aside, not deleted", "apply_retention"),
]
OUTCOMES: list[dict[str, str]] = []


def _settings(root: Path):
    from include.config import Settings

    return Settings(data_dir=ROOT / "data" / "binance", market_db_url=f"sqlite:///{root / 'market.sqlite'}",
                    registry_dir=root / "models", runs_dir=root / "runs")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The registry before the week ending 2023-12-24, and that week trained up to its members."""
    from include.config import RunConfig
    from include.pipeline import RunWindow, features, ingest, labels, resolve_window, run_dir, run_once, train, validate
    from include.registry import ModelRegistry

    root = tmp_path_factory.mktemp("fault-base")
    settings = _settings(root)
    promoted = run_once(RunConfig(as_of_date="2023-12-10", **SMALL, **PERMISSIVE), settings, dag_id="weekly_retrain",
                        run_id="scheduled__2023-12-10")
    kept = run_once(RunConfig(as_of_date="2023-12-17", **SMALL, gate_max_log_loss_ratio=0.5,
                              gate_replace_lapsed_champion=False), settings,
                    dag_id="weekly_retrain", run_id="scheduled__2023-12-17")
    assert promoted["action"]["action"] == "promote" and kept["action"]["action"] == "keep"
    cfg = RunConfig(as_of_date="2023-12-24", **SMALL, **PERMISSIVE)
    window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    out = run_dir(settings, "weekly_retrain", cfg.model_name, window)
    window = RunWindow(**ingest(cfg, window, settings, out)["window"])
    validate(cfg, window, settings, out)
    features(cfg, window, settings, out)
    labels(cfg, window, out)
    trained = [train(cfg, window, out, family, settings) for family in cfg.models]
    registry = ModelRegistry.from_settings(settings)
    ledger = registry.ledger(BTC)
    registry.dispose()
    return {"root": root, "cfg": cfg, "window": window, "trained": trained, "champion": promoted["assembled"]["version"],
            "never_served": kept["assembled"]["version"], "ledger": len(ledger)}


def _child(case: Path, spec: dict, tasks: list[str], fault: str | None) -> subprocess.CompletedProcess:
    path = case / f"spec-{len(list(case.glob('spec-*.json')))}.json"
    path.write_text(json.dumps({**spec, "tasks": tasks, "fault": fault}, default=str))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tests.fault_child", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("fault", "killed_task"), CASES, ids=[c[0] for c in CASES])
def test_a_task_killed_and_retried_leaves_a_verifiable_registry(base, tmp_path, fault, killed_task):
    from include.registry import CHALLENGER, PRODUCTION, ModelRegistry
    from include.serving import ProductionModel

    case = tmp_path / "case"
    shutil.copytree(base["root"], case)
    settings = _settings(case)
    out = case / "runs" / "weekly_retrain" / BTC / base["window"].run_key
    trained = [{**t, "path": str(out / "candidates" / t["family"])} for t in base["trained"]]
    spec = {"settings": {k: str(v) for k, v in asdict(settings).items() if v is not None},
            "config": base["cfg"].to_dict(), "window": asdict(base["window"]), "out": str(out),
            "trained": trained, "run_id": RUN_ID, "keep_last": 1, "xcom": str(case / "xcom.json")}

    killed = _child(case, spec, list(TASKS), fault)
    assert killed.returncode == -signal.SIGKILL, (fault, killed.returncode, killed.stderr[-3000:])
    done = json.loads((case / "xcom.json").read_text()) if (case / "xcom.json").is_file() else {}
    assert [t for t in TASKS if t not in done][0] == killed_task
    # Airflow retries the killed task in a new process; the tasks after it run as usual.
    retried = _child(case, spec, list(TASKS[TASKS.index(killed_task):]), None)
    assert retried.returncode == 0, retried.stderr[-3000:]
    xcom = json.loads((case / "xcom.json").read_text())

    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEL_REGISTRY_DIR": str(settings.registry_dir),
           "MARKET_DB_URL": settings.market_db_url}
    verify = subprocess.run([sys.executable, "-m", "include.registry", "verify"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    registry = ModelRegistry.from_settings(settings)
    try:
        candidate = xcom["assemble_ensemble"]["ensemble"]["version"]
        assert xcom["promote_or_keep"]["action"] == "promote", xcom["quality_gate"]["summary"]
        assert registry.production(BTC).version == candidate
        served = ProductionModel(registry, settings.market_db_url, BTC, max_age_hours=None).predict(
            datetime(2023, 12, 24, tzinfo=UTC))
        assert served.version == candidate
        # Exactly the entries the finished steps imply: one candidate move, one promotion.
        run_events = [(e["alias"], e["event"], e["to"]) for e in registry.history() if e["run_id"] == RUN_ID]
        assert run_events == [(CHALLENGER, "candidate", candidate), (PRODUCTION, "promote", candidate)], run_events
        assert len(registry.ledger(BTC)) == base["ledger"] + 1
        # Retention: the version that never served is gone, files and all; nothing half-done is left.
        assert base["never_served"] not in registry.versions() and xcom["apply_retention"]["removed"] in (
            [base["never_served"]], [])
        assert not (settings.registry_dir / "versions" / BTC / base["never_served"]).exists()
        leftovers = [p.name for p in (settings.registry_dir / "versions" / BTC).iterdir() if p.name.startswith(".")]
        assert leftovers == []
        assert sorted(p.name for p in (settings.registry_dir / "versions" / BTC).iterdir()) == sorted(
            registry.versions(BTC))
    finally:
        registry.dispose()
    OUTCOMES.append({"fault": fault, "task": killed_task, "killed": "SIGKILL", "retry": "succeeded",
                     "verify": "ok", "production": candidate, "run ledger": "candidate, promote"})


def test_write_the_fault_injection_table():
    """The table of the cases above, for the closing note (runs after them)."""
    if len(OUTCOMES) != len(CASES):
        pytest.skip(f"{len(OUTCOMES)} of {len(CASES)} cases ran in this session")
    out = ROOT / "var" / "artifacts" / "fault_injection.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = list(OUTCOMES[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(o[c]) for c in cols) + " |" for o in OUTCOMES]
    out.write_text("\n".join(lines) + "\n")
