"""Benchmark: one Optuna study shared by parallel workers (processes), against one worker.

Builds the tuning table of one market as of ``--as-of`` with the weekly run's default parameters,
then runs the study of ``--family`` to ``--trials`` finished trials twice, each in a store of its
own: with one worker process, and with ``--workers`` processes started together on the same
study (Optuna's RDB storage on the SQLite market database; each worker one thread). Reports the
wall time, seconds per trial and how many trials each worker ran (the ``worker`` user attribute
every trial records).

Usage: ``PYTHONPATH=. .venv/bin/python bench/tuning_workers.py [--family lightgbm] [--trials 12]
[--workers 2] [--folds 6] [--as-of 2023-06-30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _env(root: Path) -> None:
    os.environ.update({"MARKET_DB_URL": f"sqlite:///{root / 'market.sqlite'}",
                       "MODEL_REGISTRY_DIR": str(root / "models"),
                       "RUN_ARTIFACTS_DIR": str(root / "runs"), "GX_ANALYTICS_ENABLED": "false",
                       "TRAINING_THREADS": "1"})


def _work(root: Path, job: dict, trials: int, worker: int) -> dict:
    _env(root)
    from include.tuning import tune_family
    from include.tuning.runs import _unpack

    cfg, win, settings, out = _unpack(job, job["window"])
    return tune_family(cfg, win, settings, out, job["family"], n_trials=trials, worker=worker)


def _study(root: Path, job: dict, trials: int, workers: int) -> dict:
    import optuna

    _env(root)
    from include.config import Settings
    from include.tuning import open_storage

    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        runs = list(pool.map(_work, [root] * workers, [job] * workers, [trials] * workers, range(workers)))
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=runs[0]["study"], storage=open_storage(Settings.from_env().market_db_url))
    done = [t for t in study.trials if t.state.is_finished()]
    return {"workers": workers, "wall_seconds": round(wall, 1), "finished_trials": len(done),
            "seconds_per_trial": round(wall / max(len(done), 1), 2),
            "states": dict(Counter(t.state.name.lower() for t in study.trials)),
            "trials_per_worker": sorted(Counter(t.user_attrs.get("worker") for t in done).values()),
            "best_value": study.best_value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="lightgbm")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--as-of", default="2023-06-30")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tuning-workers-"))
    one, many = base / "one", base / "many"
    one.mkdir()
    _env(one)
    from include.tuning.runs import plan_tuning, prepare, studies

    params = {"markets": ["BTCUSDT"], "as_of_date": args.as_of, "models": [args.family], "tune_trials": args.trials,
              "tune_folds": args.folds, "tune_timeout_minutes": None, "tune_search_space": None}
    job = studies([prepare(p) for p in plan_tuning(params, data_interval_start=None, data_interval_end=None,
                                                    run_after=None)])[0]
    shutil.copytree(one, many)  # the same table and market store, a study of its own
    many_job = json.loads(json.dumps(job).replace(str(one), str(many)))
    for row in (_study(one, job, args.trials, 1), _study(many, many_job, args.trials, args.workers)):
        print(json.dumps({"family": args.family, **row}), flush=True)


if __name__ == "__main__":
    main()
