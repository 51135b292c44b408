"""Artifacts in an S3-compatible object store (moto's server on 127.0.0.1): run folders staged on
workers that share nothing else, a registry whose sha256 checks hold for remote objects, and a
fit cache that a second worker reuses."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import time
from pathlib import Path

import boto3
import pytest

from include import storage
from include.config import RunConfig, Settings
from include.errors import ConfigError, IntegrityError
from include.pipeline import run_once
from include.registry import ModelRegistry
from include.storage import is_remote, location, mirror, scratch_root, staged
from tests.cluster import S3Server


@pytest.fixture
def store_env(s3, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_ARTIFACT_STORE", s3.connection())
    return f"s3://{s3.bucket}/{tmp_path.name}"


def _objects(s3: S3Server, prefix: str) -> dict[str, int]:
    client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return {o["Key"][len(prefix):].lstrip("/"): o["Size"] for page in pages for o in page.get("Contents", [])}


def test_location_is_local_for_a_path_and_remote_for_a_uri(store_env, tmp_path):
    assert not is_remote(location(tmp_path)) and location(f"file://{tmp_path}") == tmp_path
    assert not is_remote(str(tmp_path)) and not is_remote(tmp_path)  # a plain path, as text too
    remote = location(f"{store_env}/runs/")
    assert is_remote(remote) and str(remote).endswith("/runs")


def test_staged_folder_mirrors_the_store_on_two_workers(s3, store_env, tmp_path, monkeypatch):
    folder = location(f"{store_env}/runs/dag/model/key")
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker-a"))
    with staged(folder, name="dag/model/key") as out:
        (out / "features.parquet").write_bytes(b"a" * 1000)
        (out / "candidates" / "lightgbm").mkdir(parents=True)
        (out / "candidates" / "lightgbm" / "model.joblib").write_bytes(b"model")
        (out / ".features.parquet.tmp").write_bytes(b"half")  # a temporary file stays local
    prefix = f"{tmp_path.name}/runs/dag/model/key"
    assert _objects(s3, prefix) == {"features.parquet": 1000, "candidates/lightgbm/model.joblib": 5}

    # Worker B, with its own disk, sees A's files; it changes one, removes one, adds one.
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker-b"))
    with staged(folder, name="dag/model/key") as out:
        assert (out / "features.parquet").read_bytes() == b"a" * 1000
        (out / "features.parquet").write_bytes(b"b" * 10)
        (out / "candidates" / "lightgbm" / "model.joblib").unlink()
        (out / "summary.json").write_text("{}")
    assert _objects(s3, prefix) == {"features.parquet": 10, "summary.json": 2}

    # Back on A: its cached copy of the old object is not used, and the removed file is gone.
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker-a"))
    with staged(folder, name="dag/model/key") as out:
        assert (out / "features.parquet").read_bytes() == b"b" * 10
        assert not (out / "candidates" / "lightgbm" / "model.joblib").exists()
        assert {p.name for p in out.iterdir()} == {"features.parquet", "summary.json"}
    assert not list((tmp_path / "worker-a" / "steps").iterdir())  # each step's copy is removed


def test_copies_left_by_killed_steps_are_removed_after_a_day(s3, store_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker"))
    (tmp_path / "worker").mkdir(mode=0o700)
    old, recent = tmp_path / "worker" / "steps" / "run.killed", tmp_path / "worker" / "steps" / "run.running"
    for path in (old, recent):
        path.mkdir(parents=True)
        (path / "features.parquet").write_bytes(b"x")
    day_ago = time.time() - 86_400 - 60
    os.utime(old, (day_ago, day_ago))
    with staged(location(f"{store_env}/runs/y"), name="y"):
        pass
    assert not old.exists() and recent.exists()


def test_steps_running_at_once_on_one_worker_do_not_share_a_copy(s3, store_env, tmp_path, monkeypatch):
    """Two families training at once on one worker: neither removes nor re-uploads the other's files."""
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker"))
    folder = location(f"{store_env}/runs/run")
    with staged(folder, name="run") as first:
        (first / "dataset.parquet").write_bytes(b"rows")
    with staged(folder, name="run") as lightgbm, staged(folder, name="run") as xgboost:
        assert lightgbm != xgboost
        (lightgbm / "candidates" / "lightgbm").mkdir(parents=True)
        (lightgbm / "candidates" / "lightgbm" / "model.joblib").write_bytes(b"L")
        (xgboost / "candidates" / "xgboost").mkdir(parents=True)
        (xgboost / "candidates" / "xgboost" / "model.joblib").write_bytes(b"X")
    assert _objects(s3, f"{tmp_path.name}/runs/run") == {
        "dataset.parquet": 4, "candidates/lightgbm/model.joblib": 1, "candidates/xgboost/model.joblib": 1}
    local = tmp_path / "copy"
    local.mkdir()
    assert set(mirror(folder, local)) == {"dataset.parquet", "candidates/lightgbm/model.joblib",
                                          "candidates/xgboost/model.joblib"}


def test_a_failed_step_still_uploads_what_it_wrote(s3, store_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker"))
    folder = location(f"{store_env}/runs/x")
    with pytest.raises(RuntimeError, match="bad data"), staged(folder, name="x") as out:
        (out / "validation.json").write_text(json.dumps({"success": False}))
        raise RuntimeError("bad data")
    assert json.loads((folder / "validation.json").read_text()) == {"success": False}


def test_weekly_run_with_artifacts_in_the_store(s3, store_env, tmp_path, monkeypatch, data_dir, pg_url):
    """run_once with run folders and registry in the store: the version's objects carry the
    registry's hashes, a modified object is refused, and a second worker re-running the week
    reuses every fit through the shared fit cache and finds the same version."""
    settings = Settings(data_dir=data_dir, market_db_url=pg_url,
                        registry_dir=location(f"{store_env}/models"), runs_dir=location(f"{store_env}/runs"))
    cfg = RunConfig(as_of_date="2023-12-31", train_window_days=90, cv_folds=2, models=("lightgbm",))
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker-a"))
    first = run_once(cfg, settings, dag_id="weekly_retrain", run_id="run-a")
    version = first["assembled"]["version"]
    registry = ModelRegistry.from_settings(settings)
    row = registry.verify(version)
    stored = _objects(s3, f"{tmp_path.name}/models/{row.artifact_path}")
    assert set(row.files) <= set(stored) and "manifest.json" in stored
    model, lineage = registry.load(version)
    assert lineage["registered_model"] == cfg.model_name and hasattr(model, "predict_proba")
    assert first["summary"]["report"].startswith("s3://") and first["summary"]["report"].endswith("/report.html")
    run_files = _objects(s3, f"{tmp_path.name}/runs/weekly_retrain/{cfg.model_name}")
    assert any(k.endswith("/summary.json") for k in run_files)
    assert any(k.endswith("/candidates/lightgbm/model.joblib") for k in run_files)
    assert not any(k.startswith(".") or "/." in k for k in run_files)  # no temporary object
    assert _objects(s3, f"{tmp_path.name}/runs/.fit_cache")  # the cache lives in the store too

    # Worker B: nothing local; the fit cache and the registry come from the store.
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker-b"))
    again = run_once(cfg, settings, dag_id="weekly_retrain", run_id="run-b")
    assert again["assembled"]["version"] == version
    meta = json.loads((location(f"{store_env}/runs/weekly_retrain/{cfg.model_name}")
                       / first["window"].run_key / "candidates" / "lightgbm" / "metadata.json").read_text())
    assert meta["cache"]["misses"] == 0 and meta["cache"]["hits"] > 0
    assert not os.path.exists(tmp_path / "worker-a" / ".fit_cache")

    # A modified object is refused, by the sha256 the registry recorded.
    target = settings.registry_dir / row.artifact_path / "model.joblib"
    target.write_bytes(target.read_bytes() + b"tampered")
    with pytest.raises(IntegrityError, match="sha256"):
        registry.load(version)
    with pytest.raises(IntegrityError, match="sha256"):
        registry.verify(version)
    registry.dispose()


def test_a_batch_retried_on_another_worker_keeps_nothing_in_the_store(s3, store_env, monkeypatch, tmp_path):
    """The outcomes a retry reuses are records, in the market database: the artifact store, which
    parties the registry does not trust may write, holds none of them."""
    from include.errors import BatchRetryError
    from include.tasks import each_market
    from tests.include.test_tasks import _batch, _context, _Flaky

    monkeypatch.setenv("RUN_ARTIFACTS_DIR", f"{store_env}/runs")
    monkeypatch.setenv("MARKET_DB_URL", f"sqlite:///{tmp_path / 'market.sqlite'}")
    step = _Flaky(failures=1)
    with pytest.raises(BatchRetryError):
        each_market(_batch("ok", "flaky"), step, context=_context(1))
    assert _objects(s3, f"{store_env.split('/', 3)[3]}/runs") == {}
    assert set(each_market(_batch("ok", "flaky"), step, context=_context(2))) == {"ok", "flaky"}
    assert step.calls == ["ok", "flaky", "flaky"]


def test_the_object_cache_is_cut_to_its_size_least_recently_used_first(s3, store_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker"))
    monkeypatch.setenv("ARTIFACT_CACHE_MAX_MB", "2")
    (tmp_path / "worker").mkdir(mode=0o700)
    objects = tmp_path / "worker" / ".objects" / "ab"
    objects.mkdir(parents=True)
    now = time.time()
    # Four 1 MiB objects: used 5 h, 4 h and 3 h ago, and one just now (another step may be copying it).
    for name, hours in (("oldest", 5), ("older", 4), ("old", 3), ("in-use", 0)):
        (objects / name).write_bytes(b"x" * 2**20)
        os.utime(objects / name, (now - hours * 3600, now - hours * 3600))
    with staged(location(f"{store_env}/runs/z"), name="z"):
        pass
    assert sorted(p.name for p in objects.iterdir()) == ["in-use", "old"]
    monkeypatch.setenv("ARTIFACT_CACHE_MAX_MB", "none")
    with (pytest.raises(ConfigError, match="ARTIFACT_CACHE_MAX_MB='none': expected a positive number of MiB"),
          staged(location(f"{store_env}/runs/z"), name="z")):
        pass


def _cache_entries(scratch: Path) -> list[Path]:
    """The object cache's entries (not its temporary files) in the scratch folder ``scratch``."""
    return [p for p in (scratch / ".objects").glob("*/*") if not p.name.startswith(".")]


def test_the_pruner_never_removes_an_object_a_step_is_copying(s3, store_env, tmp_path, monkeypatch):
    """A pruner that runs between a step finding a cached object and copying it, which saw the object
    unused for days, leaves it to the step; so does one that finds the object locked by a step."""
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker"))
    folder = location(f"{store_env}/runs/r")
    with staged(folder, name="r") as out:
        (out / "features.parquet").write_bytes(b"f" * 100)
    (tmp_path / "first").mkdir()
    mirror(folder, tmp_path / "first")
    [cached] = _cache_entries(tmp_path / "worker")
    two_days_ago = time.time() - 2 * 86_400
    os.utime(cached, (two_days_ago, two_days_ago))

    # Another step on the worker prunes at the moment this step touches the object (before the touch
    # lands, so the pruner sees it unused for two days).
    real_utime, pruned = os.utime, []

    def touch_while_a_pruner_runs(*args, **kwargs):
        if not pruned:
            pruned.append(storage._prune_scratch())
        return real_utime(*args, **kwargs)

    monkeypatch.setattr(os, "utime", touch_while_a_pruner_runs)
    (tmp_path / "second").mkdir()
    mirror(folder, tmp_path / "second")
    monkeypatch.setattr(os, "utime", real_utime)
    assert pruned and cached.exists()
    assert (tmp_path / "second" / "features.parquet").read_bytes() == b"f" * 100

    # A step holding the object (its shared lock) keeps it from the pruner; once it lets go, it may go.
    os.utime(cached, (two_days_ago, two_days_ago))
    with open(cached, "rb") as copying:
        fcntl.flock(copying, fcntl.LOCK_SH)
        storage._prune_scratch()
        assert cached.exists()
    storage._prune_scratch()
    assert not cached.exists()


def test_the_scratch_folder_is_private_to_its_user(s3, store_env, tmp_path, monkeypatch):
    monkeypatch.delenv("ARTIFACT_SCRATCH_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = scratch_root()
    assert root == tmp_path.resolve() / f"market-artifacts-{os.geteuid()}"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700

    # A folder others may write to (a planted cache entry would be read as the store's object).
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(shared))
    with (pytest.raises(ConfigError, match=rf"ARTIFACT_SCRATCH_DIR=.*{re.escape(str(shared.resolve()))} has mode "
                                           r"0o777, which lets its group or others in"),
          staged(location(f"{store_env}/runs/s"), name="s")):
        pass
    shared.chmod(0o750)
    with pytest.raises(ConfigError, match="has mode 0o750"):
        scratch_root()
    shared.chmod(0o700)
    assert scratch_root() == shared.resolve()

    # A folder another user owns, at the default path too (someone created it first).
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(shared.resolve()))} is owned by uid {uid}, "):
        scratch_root()
    (tmp_path / f"market-artifacts-{uid + 1}").mkdir(mode=0o700)
    os.chown(tmp_path / f"market-artifacts-{uid + 1}", uid, -1)
    monkeypatch.delenv("ARTIFACT_SCRATCH_DIR")
    with pytest.raises(ConfigError, match=r"ARTIFACT_SCRATCH_DIR \(unset, so its default\): .* is owned by uid"):
        scratch_root()


def test_a_cached_copy_is_used_only_while_it_matches_the_store(s3, store_env, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ARTIFACT_SCRATCH_DIR", str(tmp_path / "worker"))
    folder = location(f"{store_env}/runs/p")
    with staged(folder, name="p") as out:
        (out / "model.joblib").write_bytes(b"the store's model")
    (tmp_path / "first").mkdir()
    mirror(folder, tmp_path / "first")
    [cached] = _cache_entries(tmp_path / "worker")
    assert cached.read_bytes() == b"the store's model"

    # A planted copy is not read: it is discarded, with a warning naming the object, and replaced.
    cached.write_bytes(b"a planted model")
    with caplog.at_level(logging.WARNING, logger="include.storage"), staged(folder, name="p") as out:
        assert (out / "model.joblib").read_bytes() == b"the store's model"
    assert f"{folder}/model.joblib does not match the store's ETag" in caplog.text
    assert _cache_entries(tmp_path / "worker") == [cached] and cached.read_bytes() == b"the store's model"

    # A download whose bytes do not hash to the ETag is refused, and nothing of it is kept.
    listed = storage._remote_files

    def listed_with_etag(etag):
        return lambda root: {rel: {**info, "ETag": etag} for rel, info in listed(root).items()}

    other = hashlib.md5(b"another model").hexdigest()
    monkeypatch.setattr(storage, "_remote_files", listed_with_etag(f'"{other}"'))
    (tmp_path / "refused").mkdir()
    with pytest.raises(IntegrityError, match=rf"object {re.escape(str(folder))}/model.joblib: .* ETag says {other}"):
        mirror(folder, tmp_path / "refused")
    assert _cache_entries(tmp_path / "worker") == [cached]
    assert not (tmp_path / "refused" / "model.joblib").exists()

    # A multipart ETag is no MD5 of the bytes: a copy is not trusted from one use to the next.
    monkeypatch.setattr(storage, "_remote_files", listed_with_etag('"0123456789abcdef0123456789abcdef-2"'))
    for use in ("once", "again"):
        for entry in _cache_entries(tmp_path / "worker"):
            entry.write_bytes(b"a planted model")
        (tmp_path / use).mkdir()
        mirror(folder, tmp_path / use)
        assert (tmp_path / use / "model.joblib").read_bytes() == b"the store's model"
