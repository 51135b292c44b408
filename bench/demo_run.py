"""Benchmark: wall time and peak memory of one weekly_retrain run with default params.

Usage (from the repository root, after ``make install``)::

    PYTHONPATH=. AIRFLOW_HOME=var/airflow ... .venv/bin/python bench/demo_run.py 2023-12-31

or simply ``make bench``. Target on the 2-core CI machine: under 180 s for BTC/USDT 1h, a 730-day
training window and three model families. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def main(date: str) -> None:
    exe = Path(sys.executable).with_name("airflow")
    started = time.perf_counter()
    proc = subprocess.run([str(exe), "dags", "test", "weekly_retrain", date], capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"benchmark": "weekly_retrain_run", "date": date, "exit": proc.returncode,
                      "wall_s": round(wall, 1), "peak_rss_mib": round(peak_kib / 1024, 1),
                      "target_wall_s": 180}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "2023-12-31")
