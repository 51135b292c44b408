"""The model registry: registered models, versions, aliases, ledger, rollback chain, integrity,
crash safety, concurrency, the 0004 migration, CLI."""

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
from include.errors import IntegrityError, RegistryError
from include.registry import CHALLENGER, PRODUCTION, ModelRegistry

BTC, ETH = "binance-btcusdt-perp-1h-h4", "binance-ethusdt-perp-1h-h4"


def _candidate(tmp_path, name, strategy, symbol="BTCUSDT"):
    d = tmp_path / name
    d.mkdir()
    model = DummyClassifier(strategy=strategy).fit(np.zeros((6, 1)), [0, 1, 2, 1, 1, 2])
    joblib.dump(model, d / "model.joblib")
    (d / "metadata.json").write_text(json.dumps({
        "name": name, "exchange": "binance", "symbol": symbol, "market_type": "perp", "timeframe": "1h",
        "config": {"label_horizon_bars": 4, "label_threshold_mode": "volatility", "label_threshold": 0.43,
                   "label_vol_window_bars": 168},
        "data_window": {"trained_until": "2023-12-24"},
        "metrics": {"ensemble": {"macro_f1": 0.3 + len(name) / 100}}}))
    return d


def _register(reg, tmp_path, name, strategy, day, symbol="BTCUSDT"):
    return reg.register(_candidate(tmp_path, name, strategy, symbol), datetime(2023, 12, day, tzinfo=UTC))


def _vdir(reg, version):
    return reg.root / reg.describe(version)["artifact_path"]


def test_promote_keep_rollback_and_the_alias_history(reg, tmp_path):
    v1 = _register(reg, tmp_path, "a", "prior", 17)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 24)
    assert reg.production(BTC) is None and reg.versions() == [v1, v2] and reg.model_names() == [BTC]
    reg.move_alias(CHALLENGER, v1, event="candidate", run_id="r1", reason="candidate")
    reg.promote(v1, run_id="r1", reason="first", decision={"passed": True}, dag_id="weekly_retrain")
    reg.record_keep(BTC, v2, run_id="r2", reason="worse than champion", decision={"passed": False})
    assert reg.production(BTC).version == v1
    reg.promote(v2, run_id="r3", reason="better")
    assert (reg.production(BTC).version, reg.production(BTC).previous) == (v2, v1)
    reg.rollback(BTC, run_id="r4", reason="bad live performance")
    assert reg.production(BTC).version == v1
    model, lineage = reg.load_production(BTC)
    assert model.predict_proba(np.zeros((2, 1))).shape == (2, 3) and lineage["name"] == "a"
    ledger = reg.ledger(BTC)
    assert [e["event"] for e in ledger] == ["promote", "keep", "promote", "rollback"]
    assert {e["model"] for e in ledger} == {BTC}
    assert [(e["from"], e["to"]) for e in ledger] == [(None, v1), (v1, v1), (v1, v2), (v2, v1)]
    assert ledger[0]["decision"] == {"passed": True} and ledger[0]["dag_id"] == "weekly_retrain"
    assert ledger[1]["candidate"] == v2 and ledger[-1]["reason"] == "bad live performance"
    assert [e["event"] for e in reg.history(CHALLENGER)] == ["candidate"]
    assert reg.aliases() == {BTC: {PRODUCTION: v1, CHALLENGER: v1}}
    described = reg.describe(v2)
    assert described["aliases"] == [] and described["aliases_ever"] == [PRODUCTION]
    # Which model was in production at a given moment:
    assert reg.production_on(BTC, datetime(2000, 1, 1, tzinfo=UTC)) is None
    assert reg.production_on(BTC, datetime.now(UTC)) == v1


def test_two_markets_have_their_own_aliases_and_never_move_each_other(reg, tmp_path):
    b1 = _register(reg, tmp_path, "a", "prior", 17)
    b2 = _register(reg, tmp_path, "bb", "most_frequent", 24)
    e1 = _register(reg, tmp_path, "e", "prior", 17, symbol="ETHUSDT")
    e2 = _register(reg, tmp_path, "ee", "uniform", 24, symbol="ETHUSDT")
    assert reg.model_names() == [BTC, ETH] and reg.versions(ETH) == [e1, e2]
    for v in (b1, e1, b2, e2):
        reg.promote(v, run_id="r", reason="x")
    assert {m["name"]: m["production"] for m in reg.models()} == {BTC: b2, ETH: e2}
    reg.rollback(ETH, run_id="r", reason="eth only")
    assert (reg.production(BTC).version, reg.production(ETH).version) == (b2, e1)
    assert reg.production(BTC).previous == b1  # not an ETH version
    with pytest.raises(RegistryError, match=f"belongs to {ETH}"):
        reg.rollback(BTC, e2, run_id="r", reason="wrong model")
    assert reg.resolve_model(symbol="ethusdt") == ETH
    assert reg.resolve_model(symbol="BTCUSDT", market_type="perp", timeframe="1h") == BTC
    with pytest.raises(RegistryError, match="no registered model forecasts SOLUSDT"):
        reg.resolve_model(symbol="SOLUSDT")
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        reg.model("nope")


def test_rollback_twice_walks_back_and_never_toggles(reg, tmp_path):
    a, b, c = (_register(reg, tmp_path, n, "prior", d) for n, d in (("a", 10), ("bb", 17), ("ccc", 24)))
    for v in (a, b, c):
        reg.promote(v, run_id="r", reason="x")
    assert reg.rollback(BTC, run_id="r1", reason="c is bad").version == b
    assert reg.rollback(BTC, run_id="r2", reason="b is bad too").version == a
    with pytest.raises(RegistryError, match="no earlier production version"):
        reg.rollback(BTC, run_id="r3", reason="nothing left")
    assert reg.production(BTC).version == a
    # A later promotion then rollback returns to a (the last holder not rolled away from), not to b or c.
    d = _register(reg, tmp_path, "dddd", "uniform", 31)
    reg.promote(d, run_id="r4", reason="new")
    assert reg.rollback(BTC, run_id="r5", reason="d is bad").version == a
    ledger = reg.ledger(BTC)
    assert [(e["event"], e["from"], e["to"]) for e in ledger] == [
        ("promote", None, a), ("promote", a, b), ("promote", b, c), ("rollback", c, b), ("rollback", b, a),
        ("promote", a, d), ("rollback", d, a)]


def test_removing_an_alias_leaves_no_production_and_is_in_the_ledger(reg, tmp_path):
    a = _register(reg, tmp_path, "a", "prior", 17)
    reg.promote(a, run_id="r", reason="first")
    reg.remove_alias(BTC, PRODUCTION, event="auto_rollback", run_id="r", reason="smoke test failed", expected=a)
    assert reg.production(BTC) is None and reg.aliases(BTC) == {}
    assert [(e["event"], e["to"]) for e in reg.ledger(BTC)] == [("promote", a), ("auto_rollback", None)]
    assert reg.production_on(BTC, datetime.now(UTC)) is None
    assert reg.rollback_target(BTC) is None


def test_load_hashes_the_bytes_it_unpickles(reg, tmp_path, monkeypatch):
    v = _register(reg, tmp_path, "a", "prior", 17)
    path = _vdir(reg, v) / "model.joblib"
    good = path.read_bytes()
    evil = joblib.dump(DummyClassifier(strategy="uniform").fit(np.zeros((3, 1)), [0, 1, 2]), tmp_path / "evil.joblib")
    # verify() passes on the good file; if load opened the file a second time after a swap, the
    # swapped bytes would be unpickled. It reads once and hashes those bytes.
    real_read = type(path).read_bytes

    def swapped(self):
        if self.name == "model.joblib":
            return (tmp_path / "evil.joblib").read_bytes()
        return real_read(self)

    monkeypatch.setattr(type(path), "read_bytes", swapped)
    with pytest.raises(IntegrityError, match="does not match the recorded"):
        reg.load(v)
    monkeypatch.undo()
    assert path.read_bytes() == good and evil


def test_register_is_content_addressed_and_idempotent(reg, tmp_path):
    cand = _candidate(tmp_path, "a", "prior")
    v = reg.register(cand, datetime(2023, 12, 24, tzinfo=UTC))
    assert reg.register(cand, datetime(2023, 12, 24, tzinfo=UTC)) == v
    assert reg.versions() == [v]
    assert reg.describe(v)["files"]["model.joblib"] == registry_module.sha256_file(cand / "model.joblib")
    assert reg.describe(v)["artifact_path"] == f"versions/{BTC}/{v}"


def test_tampered_artifact_is_refused_and_production_unchanged(reg, tmp_path):
    v1 = _register(reg, tmp_path, "a", "prior", 24)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 31)
    reg.promote(v1, run_id="r1", reason="first")
    (_vdir(reg, v2) / "model.joblib").write_bytes(b"not a model")
    with pytest.raises(RegistryError, match="sha256 .* does not match the registry"):
        reg.promote(v2, run_id="r2", reason="x")
    with pytest.raises(IntegrityError, match="sha256"):
        reg.load(v2)
    # The manifest on disk cannot vouch for a file: the registry's database holds the hashes.
    (_vdir(reg, v2) / "manifest.json").write_text(json.dumps({"files": {
        "model.joblib": registry_module.sha256_file(_vdir(reg, v2) / "model.joblib")}}))
    with pytest.raises(IntegrityError, match="sha256"):
        reg.load(v2)
    assert reg.production(BTC).version == v1 and [e["event"] for e in reg.ledger()] == ["promote"]
    with pytest.raises(RegistryError, match="no earlier production version"):
        reg.rollback(BTC, run_id="r", reason="x")


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
    assert fresh.production(BTC).version == v1
    model, _ = fresh.load_production(BTC)
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
    assert not (reg.versions_dir / BTC / versions[3]).exists() and versions[3] not in reg.versions()
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
        # Only the registry's tables: the other tables of the market database (and their indexes)
        # are compared with their own code in tests/data/test_store_postgres.py.
        ours = set(registry_module.metadata.tables)
        diff = [d for d in compare_metadata(ctx, registry_module.metadata) if d[0] != "remove_table"
                and not (d[0] == "remove_index" and d[1].table.name not in ours)]
    assert diff == []


def test_cli(reg, tmp_path, monkeypatch, capsys):
    v1 = _register(reg, tmp_path, "a", "prior", 17)
    v2 = _register(reg, tmp_path, "bb", "most_frequent", 24)
    monkeypatch.setenv("MODEL_REGISTRY_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MARKET_DB_URL", f"sqlite:///{tmp_path / 'registry.sqlite'}")

    from include.registry.cli import main

    def run(*argv):
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    e1 = _register(reg, tmp_path, "e", "prior", 24, symbol="ETHUSDT")
    assert run("promote", v1, "--reason", "first")[0] == 0
    assert run("promote", v2, "--reason", "second")[0] == 0
    assert run("promote", e1, "--reason", "eth")[0] == 0
    models = json.loads(run("models")[1])
    assert [(m["name"], m["production"], m["versions"]) for m in models] == [(BTC, v2, 2), (ETH, e1, 1)]
    code, out, _ = run("list", "--model", BTC)
    rows = json.loads(out)
    assert [r["version"] for r in rows] == [v1, v2] and rows[1]["aliases"] == [PRODUCTION]
    assert {r["model"] for r in rows} == {BTC}
    code, _, err = run("list", "--model", "nope")
    assert code == 1 and "no registered model 'nope'" in err
    assert json.loads(run("show", v2)[1])["lineage"]["name"] == "bb"
    diff = json.loads(run("diff", v1, v2)[1])
    assert diff["lineage.name"] == {"a": "a", "b": "bb"} and "lineage.metrics.ensemble.macro_f1" in diff
    assert run("rollback", "--model", BTC, "--reason", "live drift")[0] == 0
    history = json.loads(run("history", "--model", BTC)[1])
    assert [(e["event"], e["to"]) for e in history] == [("promote", v1), ("promote", v2), ("rollback", v1)]
    assert history[-1]["run_id"].startswith("cli:")
    assert json.loads(run("models")[1])[1]["production"] == e1  # the other model did not move
    assert run("verify")[1].count(": ok") == 3
    assert run("verify", "--model", ETH)[1].count(": ok") == 1
    assert json.loads(run("cleanup", "--keep", "0", "--dry-run", "--model", ETH)[1]) == {"would_remove": []}
    (tmp_path / "models" / "versions" / BTC / v2 / "model.joblib").write_bytes(b"x")
    code, _, err = run("verify", v2)
    assert code == 1 and "does not match" in err
    code, _, err = run("promote", "v-nope", "--reason", "x")
    assert code == 1 and "no model version" in err
    # Retention without --keep is the weekly run's: MODEL_REGISTRY_KEEP_LAST (20 unless set).
    v3, _ = _register(reg, tmp_path, "c", "prior", 30), _register(reg, tmp_path, "d", "prior", 31)
    assert json.loads(run("cleanup", "--dry-run", "--model", BTC)[1]) == {"would_remove": []}
    monkeypatch.setenv("MODEL_REGISTRY_KEEP_LAST", "1")
    assert json.loads(run("cleanup", "--dry-run", "--model", BTC)[1]) == {"would_remove": [v3]}
    assert json.loads(run("cleanup", "--dry-run", "--keep", "2", "--model", BTC)[1]) == {"would_remove": []}


def _promote_many(root, url, versions, worker, n):
    registry = ModelRegistry(root, url)
    for i in range(n):
        registry.promote(versions[(i + worker) % len(versions)], run_id=f"w{worker}-{i}", reason="race")
    registry.dispose()


def test_concurrent_promotions_of_two_models_leave_a_consistent_registry_on_postgres(tmp_path, pg_url):
    reg = ModelRegistry(tmp_path / "models", pg_url)
    btc = [_register(reg, tmp_path, n, "prior", 10 + i) for i, n in enumerate(["a", "bb", "ccc"])]
    eth = [_register(reg, tmp_path, n, "prior", 10 + i, symbol="ETHUSDT") for i, n in enumerate(["e", "ee", "eee"])]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_promote_many, args=(tmp_path / "models", pg_url, versions, w, 15))
             for versions in (btc, eth) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    for model, versions in ((BTC, btc), (ETH, eth)):
        ledger = reg.ledger(model)
        assert len(ledger) == 30
        # Every move starts where the previous one of the same model ended: no lost or interleaved update,
        # and no move of one model ever names a version of the other.
        for before, after in zip(ledger, ledger[1:], strict=False):
            assert after["from"] == before["to"]
        assert {e["to"] for e in ledger} <= set(versions)
        assert reg.production(model).version == ledger[-1]["to"]
    with reg.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT model, count(*) FROM model_alias WHERE alias = 'production' "
                                    "GROUP BY model ORDER BY model")).all()
    assert [tuple(r) for r in rows] == [(BTC, 1), (ETH, 1)]
    reg.dispose()


def test_migration_0004_moves_a_registry_made_by_revision_0003(tmp_path):
    """tests/fixtures/registry_0003 was written by the registry code of revision 0003 (one global
    alias): BTC v1 promoted, v2 promoted, v3 kept, rollback to v1, then an ETH version promoted
    over BTC's production, which is the bug registered models fix."""
    import shutil

    from tests.conftest import ROOT

    src = ROOT / "tests" / "fixtures" / "registry_0003"
    shutil.copytree(src, tmp_path / "old")
    versions = json.loads((src / "versions.json").read_text())
    b1, b2, b3 = versions["btc"]
    (e1,) = versions["eth"]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old' / 'registry.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM market_schema_version")).scalar() == "0003"
        assert conn.execute(sa.text("SELECT alias, version FROM model_alias ORDER BY alias")).all() == [
            ("challenger", e1), ("production", e1)]
    engine.dispose()

    reg = ModelRegistry(tmp_path / "old" / "models", f"sqlite:///{tmp_path / 'old' / 'registry.sqlite'}")
    assert reg.model_names() == [BTC, ETH]
    assert reg.versions(BTC) == [b1, b2, b3] and reg.versions(ETH) == [e1]
    assert reg.aliases() == {BTC: {PRODUCTION: b1, CHALLENGER: b3}, ETH: {PRODUCTION: e1, CHALLENGER: e1}}
    btc = reg.ledger(BTC)
    assert [(e["event"], e["from"], e["to"]) for e in btc] == [
        ("promote", None, b1), ("promote", b1, b2), ("keep", b2, b2), ("rollback", b2, b1), ("migrate", None, b1)]
    assert "restored" in btc[-1]["reason"] and btc[-1]["run_id"] == "migration:0004"
    assert [e["event"] for e in reg.ledger(ETH)] == ["promote"]
    # Old artifacts stay where they were and still load after their hash check.
    model, lineage = reg.load(b1)
    assert lineage["symbol"] == "BTCUSDT" and model.predict(np.zeros((1, 1))).shape == (1,)
    assert reg.rollback_target(BTC) is None  # b2 was rolled away from
    reg.dispose()


def test_the_gate_never_scores_a_champion_of_another_model(reg, tmp_path):
    """Even if a model's production row were edited by hand to name another market's version."""
    from include.config import RunConfig, Settings
    from include.errors import GateError
    from include.pipeline.decision import _champion_evaluation
    from include.windows import resolve_window

    _register(reg, tmp_path, "a", "prior", 17)
    eth = _register(reg, tmp_path, "e", "prior", 17, symbol="ETHUSDT")
    reg.promote(eth, run_id="r", reason="eth")
    cfg = RunConfig(as_of_date="2023-12-24")
    window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    settings = Settings(data_dir=tmp_path, market_db_url=str(reg.engine.url), registry_dir=reg.root,
                        runs_dir=tmp_path / "runs")
    # BTC has no production version: nothing to compare with, and ETH's champion is not used.
    assert _champion_evaluation(reg, cfg, window, settings, tmp_path) is None
    with reg.engine.begin() as conn:
        conn.execute(registry_module.alias_table.insert().values(
            model=BTC, alias=PRODUCTION, version=eth, since=0, run_id="hand-edit", reason="corrupt"))
    with pytest.raises(GateError, match=f"production of {BTC} points at {eth} of {ETH}: refusing"):
        _champion_evaluation(reg, cfg, window, settings, tmp_path)


def test_retention_cleans_every_registered_model_and_one_when_named(reg, tmp_path):
    btc = [_register(reg, tmp_path, "b" * (i + 1), "prior", 10 + i) for i in range(4)]
    eth = [_register(reg, tmp_path, "e" * (i + 1), "prior", 10 + i, symbol="ETHUSDT") for i in range(5)]
    assert sorted(reg.cleanup(2, dry_run=True, model=ETH)) == sorted(eth[:3])
    assert sorted(reg.cleanup(2, dry_run=True)) == sorted(btc[:2] + eth[:3])
    assert sorted(reg.cleanup(2)) == sorted(btc[:2] + eth[:3])
    assert reg.versions(BTC) == btc[2:] and reg.versions(ETH) == eth[3:]
    for v in btc[2:] + eth[3:]:
        reg.verify(v)


def test_retention_never_removes_a_version_an_alias_move_is_pointing_at(reg, tmp_path):
    old = _register(reg, tmp_path, "a", "prior", 10)
    for i in range(3):
        _register(reg, tmp_path, "n" * (i + 2), "prior", 11 + i)
    reg.verify(old)  # the gate checked it; retention runs before the promotion commits
    assert sorted(reg.cleanup(1)) == reg.versions(include_deleted=True)[:3] and old not in reg.versions()
    with pytest.raises(RegistryError, match="removed by retention"):
        reg.promote(old, run_id="r", reason="x", expected=None)  # re-checked inside the model's lock
    assert reg.production(BTC) is None and reg.ledger() == []


def test_a_crash_between_publishing_the_folder_and_inserting_the_row_is_repaired(reg, tmp_path, monkeypatch):
    cand = _candidate(tmp_path, "a", "prior")
    real_insert = registry_module.version_table.insert

    class Killed(BaseException):
        pass

    def crash():
        raise Killed("killed after the rename")

    monkeypatch.setattr(registry_module.version_table, "insert", crash)
    with pytest.raises(Killed):
        reg.register(cand, datetime(2023, 12, 24, tzinfo=UTC), identity="ab" * 20)
    monkeypatch.setattr(registry_module.version_table, "insert", real_insert)
    # The retry brings a candidate made anew: same identity, other bytes (metadata's created_at).
    meta = json.loads((cand / "metadata.json").read_text())
    (cand / "metadata.json").write_text(json.dumps({**meta, "created_at": "later"}))
    v = reg.register(cand, datetime(2023, 12, 24, tzinfo=UTC), identity="ab" * 20)
    reg.verify(v)
    assert reg.register(cand, datetime(2023, 12, 24, tzinfo=UTC), identity="ab" * 20) == v
    assert json.loads((_vdir(reg, v) / "metadata.json").read_text())["created_at"] == "later"
    assert not [p for p in (reg.versions_dir / BTC).iterdir() if p.name.startswith(".")]


def test_re_registering_a_version_retention_removed_restores_it(reg, tmp_path):
    cand = _candidate(tmp_path, "a", "prior")
    v = reg.register(cand, datetime(2023, 12, 3, tzinfo=UTC), identity="cd" * 20)
    for i in range(2):
        _register(reg, tmp_path, "n" * (i + 2), "prior", 10 + i)
    assert v in reg.cleanup(1) and v not in reg.versions()
    assert reg.register(cand, datetime(2023, 12, 3, tzinfo=UTC), identity="cd" * 20) == v
    reg.verify(v)
    assert v in reg.versions() and reg.describe(v)["deleted_at"] is None
    reg.move_alias(CHALLENGER, v, event="candidate", run_id="rerun", reason="re-run of the week")


def test_a_promotion_retried_after_its_worker_died_carries_on_and_records_once(reg, tmp_path):
    v1 = _register(reg, tmp_path, "a", "prior", 17)
    v2 = _register(reg, tmp_path, "b", "most_frequent", 24)
    reg.promote(v1, run_id="r1", reason="first", expected=None)
    reg.promote(v2, run_id="r2", reason="gate passed", expected=v1)
    # The worker died after the move: the retry's compare-and-set must not refuse its own move.
    assert reg.promote(v2, run_id="r2", reason="gate passed", expected=v1).version == v2
    assert [e["event"] for e in reg.ledger(BTC)] == ["promote", "promote"]
    # Another run with the same stale expectation is still refused.
    with pytest.raises(RegistryError, match="moved meanwhile"):
        reg.promote(v2, run_id="r3", reason="stale", expected=v1)
    reg.record_keep(BTC, v1, run_id="r4", reason="worse")
    reg.record_keep(BTC, v1, run_id="r4", reason="worse")
    assert [e["event"] for e in reg.ledger(BTC)] == ["promote", "promote", "keep"]


def test_a_rollback_run_cleared_after_its_move_does_not_walk_back_twice(reg, tmp_path):
    """Issue 35, finding 4: a ``rollback_model`` try that died after committing its move, then
    cleared, recomputed the target and moved again (C → B → A under one run id)."""
    a, b, c = (_register(reg, tmp_path, n, "prior", d) for n, d in (("a", 10), ("bb", 17), ("ccc", 24)))
    for v in (a, b, c):
        reg.promote(v, run_id="r", reason="x")
    run = "manual__2023-12-25T10:00:00+00:00"
    assert reg.rollback(BTC, run_id=run, reason="c is bad", once_per_run=True).version == b
    again = reg.rollback(BTC, run_id=run, reason="c is bad", once_per_run=True)  # the cleared task's new try
    assert again.version == b and reg.production(BTC).version == b
    assert [(e["event"], e["to"], e["run_id"]) for e in reg.ledger(BTC)][-1:] == [("rollback", b, run)]
    assert sum(e["event"] == "rollback" for e in reg.ledger(BTC)) == 1
    # Another run (or the command line, which moves on every call) still walks down the chain.
    assert reg.rollback(BTC, run_id="manual__2023-12-26T10:00:00+00:00", reason="b too",
                        once_per_run=True).version == a
