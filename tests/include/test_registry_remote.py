"""A registry whose artifacts live in an S3-compatible object store (moto's server on 127.0.0.1):
the database it needs for its lock, and registrations that each upload under their own prefix."""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from datetime import UTC, datetime

import boto3
import joblib
import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.dummy import DummyClassifier

from include.errors import ConfigError
from include.registry import ModelRegistry
from include.registry.schema import version_table
from include.storage import location, read_bytes, write_bytes
from tests.cluster import S3Server

BTC = "binance-btcusdt-perp-1h-h4"
END = datetime(2023, 12, 24, tzinfo=UTC)
#: The identity both racing registrations share: the same inputs, code and configuration.
IDENTITY = "ab" * 32


@pytest.fixture
def root(s3, monkeypatch, tmp_path):
    """The registry root: a prefix of its own in the store for each test."""
    monkeypatch.setenv("AIRFLOW_CONN_ARTIFACT_STORE", s3.connection())
    return location(f"s3://{s3.bucket}/{tmp_path.name}/models")


@pytest.fixture
def registry(root, pg_url):
    reg = ModelRegistry(root, pg_url)
    yield reg
    reg.dispose()


def _objects(s3: S3Server, prefix: str) -> list[str]:
    """Keys under ``prefix``, relative to it, sorted."""
    client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/")
    return sorted(o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", []))


def _candidate(tmp_path, folder, strategy):
    """A candidate folder; the lineage is the same for every ``strategy``, only the model's bytes differ."""
    d = tmp_path / folder
    d.mkdir()
    joblib.dump(DummyClassifier(strategy=strategy).fit(np.zeros((6, 1)), [0, 1, 2, 1, 1, 2]), d / "model.joblib")
    (d / "metadata.json").write_text(json.dumps({
        "name": "candidate", "exchange": "binance", "symbol": "BTCUSDT", "market_type": "perp", "timeframe": "1h",
        "config": {"label_horizon_bars": 4, "label_threshold_mode": "volatility", "label_threshold": 0.43,
                   "label_vol_window_bars": 168}}))
    return d


def test_a_registry_in_an_object_store_refuses_a_database_without_advisory_locks(root, tmp_path):
    """SQLite has no lock that another machine sees: the registry refuses before it writes anything."""
    db = tmp_path / "db" / "market.sqlite"
    with pytest.raises(ConfigError, match=r"MODEL_REGISTRY_DIR=s3://.*MARKET_DB_URL.*PostgreSQL") as info:
        ModelRegistry(root, f"sqlite:///{db}")
    assert "sqlite" in str(info.value) and "advisory lock" in str(info.value)
    assert not db.parent.exists()  # no database file (or folder) was made
    local = ModelRegistry(tmp_path / "models", f"sqlite:///{db}")  # one machine: SQLite stays fine
    local.dispose()


def test_a_registration_racing_a_committed_one_leaves_the_committed_version_verifiable(
        s3, root, pg_url, tmp_path, monkeypatch):
    """Two workers register the same version (same identity, model files whose bytes differ, as
    pickles of one computation can). The loser's lock excludes nobody, so it finds no row and
    uploads; the winner commits meanwhile. The winner's objects stay as its row records them."""
    winner, loser = ModelRegistry(root, pg_url), ModelRegistry(root, pg_url)
    monkeypatch.setattr(loser, "lock", lambda model, blocking=True: nullcontext(True))
    monkeypatch.setattr(loser, "_transaction", lambda model, *, lock=True: loser.engine.begin())
    won, lost = _candidate(tmp_path, "won", "prior"), _candidate(tmp_path, "lost", "most_frequent")
    fs = root.fs
    real_put = fs.put_file
    committed = []

    def put_file(lpath, rpath, **kwargs):
        # The loser's first upload starts only once the winner has registered and committed.
        if str(lpath).startswith(str(lost)) and not committed:
            committed.append(winner.register(won, END, identity=IDENTITY))
        return real_put(lpath, rpath, **kwargs)

    monkeypatch.setattr(fs, "put_file", put_file)
    try:
        version = loser.register(lost, END, identity=IDENTITY)
        assert committed == [version]
        row = winner.verify(version)  # the winner's bytes, as its row records them
        model, _ = winner.load(version)
        assert model.strategy == "prior" and loser.load(version)[0].strategy == "prior"
        # Only the winner's attempt is left in the store: the loser removed its own upload.
        prefix = f"{tmp_path.name}/models/versions/{BTC}/{version}"
        attempt = row.artifact_path.rsplit("/", 1)[1]
        assert _objects(s3, prefix) == [f"{attempt}/{name}" for name in ("manifest.json", "metadata.json",
                                                                           "model.joblib")]
    finally:
        winner.dispose()
        loser.dispose()


def test_each_registration_uploads_under_its_own_prefix_and_removes_abandoned_ones(s3, registry, tmp_path):
    prefix = f"{tmp_path.name}/models/versions/{BTC}"
    version = f"v20231224T0000-{IDENTITY[:10]}"
    # An attempt that crashed before its commit left objects and no row.
    write_bytes(registry.root / "versions" / BTC / version / ("0" * 32) / "model.joblib", b"half")
    assert registry.register(_candidate(tmp_path, "a", "prior"), END, identity=IDENTITY) == version
    first = registry.describe(version)["artifact_path"]
    assert re.fullmatch(rf"versions/{BTC}/{version}/[0-9a-f]{{32}}", first)
    attempt = first.rsplit("/", 1)[1]
    assert _objects(s3, prefix) == [f"{version}/{attempt}/{n}" for n in ("manifest.json", "metadata.json",
                                                                         "model.joblib")]
    # Retention removes the row's objects; the same week registered again restores the version
    # under a new attempt's prefix.
    assert registry.cleanup(keep_last=0) == [version]
    assert _objects(s3, prefix) == []
    assert registry.register(_candidate(tmp_path, "b", "most_frequent"), END, identity=IDENTITY) == version
    second = registry.describe(version)["artifact_path"]
    assert second != first and registry.load(version)[0].strategy == "most_frequent"
    assert {key.split("/")[1] for key in _objects(s3, prefix)} == {second.rsplit("/", 1)[1]}


def test_a_version_registered_without_an_attempt_prefix_still_loads(s3, registry, tmp_path):
    """A row whose artifact path is the version's folder itself loads, verifies and is removed by retention."""
    version = registry.register(_candidate(tmp_path, "a", "prior"), END, identity=IDENTITY)
    attempt = registry.root / registry.describe(version)["artifact_path"]
    flat = f"versions/{BTC}/{version}"
    for name in ("manifest.json", "metadata.json", "model.joblib"):
        write_bytes(registry.root / flat / name, read_bytes(attempt / name))
        (attempt / name).unlink()
    with registry.engine.begin() as conn:
        conn.execute(sa.update(version_table).where(version_table.c.version == version).values(artifact_path=flat))
    assert registry.verify(version).artifact_path == flat
    assert registry.load(version)[0].strategy == "prior" and registry.out_of_fold(version) is None
    assert registry.cleanup(keep_last=0) == [version]
    assert _objects(s3, f"{tmp_path.name}/models/{flat}") == []
