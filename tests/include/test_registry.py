"""The model registry: versions, aliases, ledger, integrity, crash safety, concurrency, CLI."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime

import joblib
import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.dummy import DummyClassifier

from include import registry as registry_module
from include.errors import RegistryError
from include.registry import CHALLENGER, PRODUCTION, ModelRegistry


def _candidate(tmp_path, name, strategy):
    d = tmp_path / name
    d.mkdir()
    model = DummyClassifier(strategy=strategy).fit(np.zeros((6, 1)), [0, 1, 2, 1, 1, 2])
    joblib.dump(model, d / "model.joblib")
    (d / "metadata.json").write_text(json.dumps({"name": name, "data_window": {"trained_until": "2023-12-24"},
                                                 "metrics": {"ensemble": {"macro_f1": 0.3 + len(name) / 100}}}))
    return d


@pytest.fixture
def reg(tmp_path):
    registry = ModelRegistry(tmp_path / "models", f"sqlite:///{tmp_path / 'registry.sqlite'}")
    yield registry
    registry.dispose()


def _register(reg, tmp_path, name, strategy, day):
    return reg.register(_candidate(tmp_path, name, strategy), datetime(2023, 12, day, tzinfo=UTC))


def test_promote_keep_rollback_and_the_alias_history(reg, tmp_path):
    v1 = _register(reg, tmp_path, "a", "prior", 17)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 24)
    assert reg.production() is None and reg.versions() == [v1, v2]
    reg.move_alias(CHALLENGER, v1, event="candidate", run_id="r1", reason="candidate")
    reg.promote(v1, run_id="r1", reason="first", decision={"passed": True}, dag_id="weekly_retrain")
    reg.record_keep(v2, run_id="r2", reason="worse than champion", decision={"passed": False})
    assert reg.production().version == v1
    reg.promote(v2, run_id="r3", reason="better")
    assert (reg.production().version, reg.production().previous) == (v2, v1)
    reg.rollback(run_id="r4", reason="bad live performance")
    assert reg.production().version == v1
    model, lineage = reg.load_production()
    assert model.predict_proba(np.zeros((2, 1))).shape == (2, 3) and lineage["name"] == "a"
    ledger = reg.ledger()
    assert [e["event"] for e in ledger] == ["promote", "keep", "promote", "rollback"]
    assert [(e["from"], e["to"]) for e in ledger] == [(None, v1), (v1, v1), (v1, v2), (v2, v1)]
    assert ledger[0]["decision"] == {"passed": True} and ledger[0]["dag_id"] == "weekly_retrain"
    assert ledger[1]["candidate"] == v2 and ledger[-1]["reason"] == "bad live performance"
    assert [e["event"] for e in reg.history(CHALLENGER)] == ["candidate"]
    assert reg.aliases() == {PRODUCTION: v1, CHALLENGER: v1}
    described = reg.describe(v2)
    assert described["aliases"] == [] and described["aliases_ever"] == [PRODUCTION]
    # Which model was in production at a given moment:
    assert reg.production_on(datetime(2000, 1, 1, tzinfo=UTC)) is None
    assert reg.production_on(datetime.now(UTC)) == v1


def test_register_is_content_addressed_and_idempotent(reg, tmp_path):
    cand = _candidate(tmp_path, "a", "prior")
    v = reg.register(cand, datetime(2023, 12, 24, tzinfo=UTC))
    assert reg.register(cand, datetime(2023, 12, 24, tzinfo=UTC)) == v
    assert reg.versions() == [v]
    assert reg.describe(v)["files"]["model.joblib"] == registry_module.sha256_file(cand / "model.joblib")


def test_tampered_artifact_is_refused_and_production_unchanged(reg, tmp_path):
    v1 = _register(reg, tmp_path, "a", "prior", 24)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 31)
    reg.promote(v1, run_id="r1", reason="first")
    (reg.versions_dir / v2 / "model.joblib").write_bytes(b"not a model")
    with pytest.raises(RegistryError, match="sha256 .* does not match the registry"):
        reg.promote(v2, run_id="r2", reason="x")
    with pytest.raises(RegistryError, match="sha256"):
        reg.load(v2)
    # The manifest on disk cannot vouch for a file: the registry's database holds the hashes.
    (reg.versions_dir / v2 / "manifest.json").write_text(json.dumps({"files": {
        "model.joblib": registry_module.sha256_file(reg.versions_dir / v2 / "model.joblib")}}))
    with pytest.raises(RegistryError, match="sha256"):
        reg.load(v2)
    assert reg.production().version == v1 and [e["event"] for e in reg.ledger()] == ["promote"]
    with pytest.raises(RegistryError, match="no previous"):
        ModelRegistry(tmp_path / "empty", f"sqlite:///{tmp_path / 'empty.sqlite'}").rollback(run_id="r", reason="x")


def test_a_crash_inside_an_alias_move_leaves_production_loadable(reg, tmp_path, monkeypatch):
    v1 = _register(reg, tmp_path, "a", "prior", 24)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 31)
    reg.promote(v1, run_id="r1", reason="first")
    real_insert = registry_module.event_table.insert

    class Killed(BaseException):
        pass

    def crash():  # the alias row is already updated when the ledger row is written
        raise Killed("killed mid-promotion")

    monkeypatch.setattr(registry_module.event_table, "insert", crash)
    with pytest.raises(Killed):
        reg.promote(v2, run_id="r2", reason="x")
    monkeypatch.setattr(registry_module.event_table, "insert", real_insert)
    fresh = ModelRegistry(tmp_path / "models", f"sqlite:///{tmp_path / 'registry.sqlite'}")
    assert fresh.production().version == v1
    model, _ = fresh.load_production()
    assert model.predict(np.zeros((1, 1))).shape == (1,)
    assert [e["event"] for e in fresh.ledger()] == ["promote"]


def test_compare_and_set_refuses_a_stale_decision(reg, tmp_path):
    v1 = _register(reg, tmp_path, "a", "prior", 17)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 24)
    reg.promote(v1, run_id="r1", reason="first", expected=None)
    with pytest.raises(RegistryError, match="moved meanwhile"):
        reg.promote(v2, run_id="r2", reason="gate compared with nothing", expected=None)
    assert reg.promote(v2, run_id="r2", reason="ok", expected=v1).version == v2


def test_retention_keeps_the_last_n_and_every_former_production(reg, tmp_path):
    names = "abcdef"
    versions = [_register(reg, tmp_path, n * (i + 1), "prior", 10 + i) for i, n in enumerate(names)]
    reg.promote(versions[0], run_id="r", reason="x")
    reg.promote(versions[2], run_id="r", reason="x")
    reg.move_alias(CHALLENGER, versions[1], event="candidate", run_id="r", reason="x")
    assert reg.cleanup(2, dry_run=True) == [versions[3]]
    assert reg.cleanup(2) == [versions[3]]
    assert not (reg.versions_dir / versions[3]).exists() and versions[3] not in reg.versions()
    assert versions[3] in reg.versions(include_deleted=True)
    with pytest.raises(RegistryError, match="removed by retention"):
        reg.load(versions[3])
    for kept in (versions[0], versions[1], versions[2], versions[4], versions[5]):
        reg.verify(kept)


def test_schema_matches_the_migrations(reg):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from include.data.store import SCHEMA_VERSION_TABLE

    with reg.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": SCHEMA_VERSION_TABLE})
        diff = [d for d in compare_metadata(ctx, registry_module._meta) if d[0] != "remove_table"]
    assert diff == []


def test_cli(reg, tmp_path, monkeypatch, capsys):
    v1 = _register(reg, tmp_path, "a", "prior", 17)
    v2 = _register(reg, tmp_path, "bb", "most_frequent", 24)
    monkeypatch.setenv("MODEL_REGISTRY_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MARKET_DB_URL", f"sqlite:///{tmp_path / 'registry.sqlite'}")

    def run(*argv):
        code = registry_module.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    assert run("promote", v1, "--reason", "first")[0] == 0
    assert run("promote", v2, "--reason", "second")[0] == 0
    code, out, _ = run("list")
    rows = json.loads(out)
    assert [r["version"] for r in rows] == [v1, v2] and rows[1]["aliases"] == [PRODUCTION]
    assert json.loads(run("show", v2)[1])["lineage"]["name"] == "bb"
    diff = json.loads(run("diff", v1, v2)[1])
    assert diff["lineage.name"] == {"a": "a", "b": "bb"} and "lineage.metrics.ensemble.macro_f1" in diff
    assert run("rollback", "--reason", "live drift")[0] == 0
    history = json.loads(run("history")[1])
    assert [(e["event"], e["to"]) for e in history] == [("promote", v1), ("promote", v2), ("rollback", v1)]
    assert history[-1]["run_id"].startswith("cli:")
    assert run("verify")[1].count(": ok") == 2
    (tmp_path / "models" / "versions" / v2 / "model.joblib").write_bytes(b"x")
    code, _, err = run("verify", v2)
    assert code == 1 and "does not match" in err
    code, _, err = run("promote", "v-nope", "--reason", "x")
    assert code == 1 and "no model version" in err


def _promote_many(root, url, versions, worker, n):
    registry = ModelRegistry(root, url)
    for i in range(n):
        registry.promote(versions[(i + worker) % len(versions)], run_id=f"w{worker}-{i}", reason="race")
    registry.dispose()


def test_concurrent_promotions_leave_a_consistent_registry_on_postgres(tmp_path, pg_url):
    reg = ModelRegistry(tmp_path / "models", pg_url)
    versions = [_register(reg, tmp_path, n, "prior", 10 + i) for i, n in enumerate(["a", "bb", "ccc"])]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_promote_many, args=(tmp_path / "models", pg_url, versions, w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    ledger = reg.ledger()
    assert len(ledger) == 45
    # Every move starts where the previous one ended: no lost or interleaved update.
    for before, after in zip(ledger, ledger[1:], strict=False):
        assert after["from"] == before["to"]
    assert reg.production().version == ledger[-1]["to"]
    with reg.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM model_alias WHERE alias = 'production'")).scalar() == 1
    reg.dispose()
