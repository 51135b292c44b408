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
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    import lightgbm  # noqa: F401 - imported before the baseline so only the model is measured
    import sklearn.ensemble  # noqa: F401
    import xgboost  # noqa: F401

    from include import pipeline as p
    from include.config import RunConfig, Settings
    from include.registry import ModelRegistry
    from include.serving import ProductionModel

    root = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    settings = Settings(data_dir=Path(__file__).resolve().parent.parent / "data" / "binance",
                        market_db_url=f"sqlite:///{root / 'market.sqlite'}", registry_dir=root / "models",
                        runs_dir=root / "runs")
    cfg = RunConfig(as_of_date="2023-12-31")
    window = p.resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    out = p.run_dir(settings, "bench", window)
    p.ingest(cfg, window, settings)
    p.features(cfg, window, settings, out)
    p.labels(cfg, window, out)
    trained = [p.train(cfg, window, out, family) for family in cfg.models]
    version = p.assemble(cfg, window, settings, out, trained, dag_id="bench", run_id="bench")["version"]
    registry = ModelRegistry.from_settings(settings)
    registry.promote(version, run_id="bench", reason="latency benchmark")

    serving = ProductionModel(registry, settings.market_db_url, max_age_hours=None)
    import pandas as pd

    row = pd.read_parquet(out / "features.parquet").dropna().iloc[[-1]]
    before = _rss_mb()
    _, model, lineage = serving.current()
    after = _rss_mb()
    X = row[list(lineage["feature_spec"]["names"])]
    for _ in range(50):
        model.predict_proba(X)
    times = []
    for _ in range(2000):
        t0 = time.perf_counter()
        model.predict_proba(X)
        times.append((time.perf_counter() - t0) * 1000)
    full = []
    as_of = datetime(2023, 12, 31, tzinfo=UTC)
    for _ in range(50):
        t0 = time.perf_counter()
        serving.predict("BTCUSDT", as_of)
        full.append((time.perf_counter() - t0) * 1000)
    times, full = np.array(times), np.array(full)
    print(json.dumps({
        "benchmark": "serving_latency", "version": version, "members": lineage["members"],
        "one_row_predict_ms": {"p50": round(float(np.percentile(times, 50)), 3),
                               "p99": round(float(np.percentile(times, 99)), 3), "calls": len(times)},
        "full_predict_from_store_ms": {"p50": round(float(np.percentile(full, 50)), 1),
                                       "p99": round(float(np.percentile(full, 99)), 1), "calls": len(full)},
        "model_memory_mb": round(after - before, 1), "model_file_mb": round(
            (registry.versions_dir / version / "model.joblib").stat().st_size / 2**20, 2),
        "targets": {"p50_ms": 2.0, "memory_mb": 50},
    }))


if __name__ == "__main__":
    main()
