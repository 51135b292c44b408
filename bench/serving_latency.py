"""Benchmark: one-row prediction latency of the warm production model, and the memory it adds.

Trains the default weekly model (730-day window, three families, the week ending 2023-12-31) with
the pipeline's own functions into a fresh registry, promotes it, then through the serving loader
(:class:`include.serving.ProductionModel`):

* memory: resident set size after loading the ensemble minus before (libraries already imported);
* one-row latency: ``predict_proba`` on one ready feature row, 2,000 calls after 50 warm-up calls
  (p50, p99); and the full ``predict(symbol, as_of)`` (features from the market store), 50 calls.

Targets on the 2-core CI machine: p50 under 2 ms, under 50 MB. Prints one JSON line.

Usage: ``PYTHONPATH=. .venv/bin/python bench/serving_latency.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    """Train and promote the default model, then measure it in a fresh process."""
    from include import pipeline as p
    from include.config import RunConfig, Settings
    from include.registry import ModelRegistry

    root = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    settings = Settings.in_folder(root)
    cfg = RunConfig(as_of_date="2023-12-31")
    window = p.resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    out = p.run_dir(settings, "bench", cfg.model_name, window)
    p.ingest(cfg, window, settings, out)
    p.features(cfg, window, settings, out)
    p.labels(cfg, window, out)
    trained = [p.train(cfg, window, out, family) for family in cfg.models]
    version = p.assemble(cfg, window, settings, out, trained, dag_id="bench", run_id="bench")["version"]
    registry = ModelRegistry.from_settings(settings)
    registry.promote(version, run_id="bench", reason="latency benchmark")

    registry.dispose()
    # Memory and latency in a fresh process, where the model was never trained or loaded.
    probe = subprocess.run([sys.executable, __file__, "--measure", str(settings.registry_dir),
                            settings.market_db_url, cfg.model_name], capture_output=True, text=True, check=True)
    print(probe.stdout.strip().splitlines()[-1])


def measure(registry_dir: str, market_db_url: str, model_name: str) -> None:
    """Load the production model in this (fresh) process and time one-row predictions."""
    import lightgbm  # noqa: F401 - imported before the baseline so only the model is measured
    import pandas as pd
    import sklearn.ensemble  # noqa: F401
    import xgboost  # noqa: F401

    from include.registry import ModelRegistry
    from include.serving import ProductionModel

    registry = ModelRegistry(registry_dir, market_db_url)
    serving = ProductionModel(registry, market_db_url, model_name, max_age_hours=None)
    import include.features  # noqa: F401
    import include.training  # noqa: F401

    before = _rss_mb()
    version, model, lineage = serving.current()
    after = _rss_mb()
    as_of = datetime(2023, 12, 31, tzinfo=UTC)
    first = serving.predict(as_of)  # builds and checks the native path
    names = list(lineage["feature_spec"]["names"])
    from include.data.store import MarketStore
    from include.features import FeatureSpec, build_features

    spec = FeatureSpec.from_dict({k: v for k, v in lineage["feature_spec"].items() if k != "sha256"})
    store = MarketStore(market_db_url)
    start = datetime(2023, 11, 1, tzinfo=UTC)
    key = {"exchange": "binance", "symbol": "BTCUSDT", "end": as_of}
    feats = build_features(store.load_ohlcv(market_type="perp", timeframe="1h", start=start, **key), spec,
                           store.load_funding_rates(start=start - timedelta(days=10), **key),
                           store.load_open_interest(start=start - timedelta(days=2), **key))
    X = feats.loc[[pd.Timestamp(first.bar)], names].to_numpy(dtype="float64")
    assert np.allclose(serving.predict_row(X)[0], list(first.probabilities.values()))
    for _ in range(50):
        serving.predict_row(X)
    times = []
    for _ in range(2000):
        t0 = time.perf_counter()
        serving.predict_row(X)
        times.append((time.perf_counter() - t0) * 1000)
    wrapped = []
    for _ in range(200):
        t0 = time.perf_counter()
        model.predict_proba(pd.DataFrame(X, columns=names))
        wrapped.append((time.perf_counter() - t0) * 1000)
    full = []
    as_of = datetime(2023, 12, 31, tzinfo=UTC)
    for _ in range(50):
        t0 = time.perf_counter()
        serving.predict(as_of)
        full.append((time.perf_counter() - t0) * 1000)
    times, full, wrapped = np.array(times), np.array(full), np.array(wrapped)
    print(json.dumps({
        "benchmark": "serving_latency", "version": version, "members": lineage["members"],
        "native_path": serving._fast.native,
        "one_row_predict_ms": {"p50": round(float(np.percentile(times, 50)), 3),
                               "p99": round(float(np.percentile(times, 99)), 3), "calls": len(times)},
        "one_row_sklearn_predict_proba_ms": {"p50": round(float(np.percentile(wrapped, 50)), 2),
                                             "p99": round(float(np.percentile(wrapped, 99)), 2)},
        "full_predict_from_store_ms": {"p50": round(float(np.percentile(full, 50)), 1),
                                       "p99": round(float(np.percentile(full, 99)), 1), "calls": len(full)},
        "model_memory_mb": round(after - before, 1), "model_file_mb": round(
            (registry.root / registry.describe(version)["artifact_path"] / "model.joblib").stat().st_size / 2**20, 2),
        "targets": {"p50_ms": 2.0, "memory_mb": 50},
    }))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--measure":
        measure(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
