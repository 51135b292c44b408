from __future__ import annotations

import json
from datetime import UTC, datetime

import joblib
import numpy as np
import pytest
from sklearn.dummy import DummyClassifier

from include import registry as registry_module
from include.errors import RegistryError
from include.registry import ModelRegistry


def _candidate(tmp_path, name, strategy):
    d = tmp_path / name
    d.mkdir()
    model = DummyClassifier(strategy=strategy).fit(np.zeros((6, 1)), [0, 1, 2, 1, 1, 2])
    joblib.dump(model, d / "model.joblib")
    (d / "metadata.json").write_text(json.dumps({"name": name}))
    return d


@pytest.fixture
def reg(tmp_path):
    return ModelRegistry(tmp_path / "models")


def _register(reg, tmp_path, name, strategy, day):
    return reg.register(_candidate(tmp_path, name, strategy), datetime(2023, 12, day, tzinfo=UTC))


def test_promote_keep_rollback(reg, tmp_path):
    v1 = _register(reg, tmp_path, "a", "prior", 24)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 31)
    assert reg.production() is None
    reg.promote(v1, run_id="r1", reason="first")
    reg.record_keep(v2, run_id="r2", reason="worse than champion")
    assert reg.production().version == v1
    reg.promote(v2, run_id="r3", reason="better")
    assert (reg.production().version, reg.production().previous) == (v2, v1)
    assert (tmp_path / "models" / "archive" / f"{v1}.json").is_file()
    reg.rollback(run_id="r4", reason="bad live performance")
    assert reg.production().version == v1
    model, _ = reg.load_production()
    assert model.predict_proba(np.zeros((2, 1))).shape == (2, 3)
    assert [e["event"] for e in reg.ledger()] == ["promote", "keep", "promote", "rollback"]
    assert reg.ledger()[-1]["reason"] == "bad live performance"


def test_register_is_content_addressed_and_idempotent(reg, tmp_path):
    cand = _candidate(tmp_path, "a", "prior")
    v = reg.register(cand, datetime(2023, 12, 24, tzinfo=UTC))
    assert reg.register(cand, datetime(2023, 12, 24, tzinfo=UTC)) == v
    assert reg.versions() == [v]


def test_tampered_artifact_is_refused_and_production_unchanged(reg, tmp_path):
    v1 = _register(reg, tmp_path, "a", "prior", 24)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 31)
    reg.promote(v1, run_id="r1", reason="first")
    (reg.versions_dir / v2 / "model.joblib").write_bytes(b"not a model")
    with pytest.raises(RegistryError, match="sha256"):
        reg.promote(v2, run_id="r2", reason="x")
    with pytest.raises(RegistryError, match="sha256"):
        reg.load(v2)
    assert reg.production().version == v1
    with pytest.raises(RegistryError, match="no previous"):
        ModelRegistry(tmp_path / "empty").rollback(run_id="r", reason="x")


def test_interrupted_promotion_leaves_production_loadable(reg, tmp_path, monkeypatch):
    v1 = _register(reg, tmp_path, "a", "prior", 24)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 31)
    reg.promote(v1, run_id="r1", reason="first")

    real_replace = registry_module.os.replace

    def crash(src, dst):
        if str(dst).endswith("production.json"):
            raise KeyboardInterrupt("killed mid-promotion")
        return real_replace(src, dst)

    monkeypatch.setattr(registry_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        reg.promote(v2, run_id="r2", reason="x")
    monkeypatch.undo()
    fresh = ModelRegistry(tmp_path / "models")
    assert fresh.production().version == v1
    model, _ = fresh.load_production()
    assert model.predict(np.zeros((1, 1))).shape == (1,)
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".production")]
    assert [e["event"] for e in fresh.ledger()] == ["promote"]
