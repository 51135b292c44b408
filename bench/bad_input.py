"""Benchmark: what a user sees, and how fast, for each kind of bad input.

Each case corrupts a copy of the bundled BTCUSDT perpetual data (or names something missing),
runs ``weekly_retrain`` for the week ending 2023-06-04 (120-day window) through ``dag.test()``
with that data as ``source_dir``, and reports the task that failed, its first message line (the
same text as its log and alert) and the wall time to the failed run. Prints one JSON line a case.

Usage: ``PYTHONPATH=. .venv/bin/python bench/bad_input.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TMP = Path(tempfile.mkdtemp(prefix="bench-bad-input-"))
os.environ.update({
    "AIRFLOW_HOME": str(TMP / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "GX_ANALYTICS_ENABLED": "false",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{TMP / 'airflow' / 'airflow.db'}",
    "MODEL_REGISTRY_DIR": str(TMP / "models"), "RUN_ARTIFACTS_DIR": str(TMP / "runs"),
})
(TMP / "airflow").mkdir()
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

DATA = ROOT / "data" / "binance"


def _lines(edit_line):
    def make(dest: Path) -> None:
        with gzip.open(DATA / "btcusdt_perp_1h.csv.gz", "rt") as fh:
            lines = fh.read().splitlines()
        i = next(n for n, line in enumerate(lines) if line.startswith("2023-05-10T07:00:00Z"))
        lines[i] = edit_line(lines[i])
        with gzip.open(dest / "btcusdt_perp_1h.csv.gz", "wt") as fh:
            fh.write("\n".join(lines) + "\n")
    return make


def _frame(edit):
    def make(dest: Path) -> None:
        bars = pd.read_csv(DATA / "btcusdt_perp_1h.csv.gz")
        with gzip.open(dest / "btcusdt_perp_1h.csv.gz", "wt") as fh:
            edit(bars).to_csv(fh, index=False)
    return make


def _set(ts: str, col: str, value: float):
    def edit(bars):
        bars.loc[bars["timestamp"] == ts, col] = value
        return bars
    return edit


def _gap(bars):
    ts = pd.to_datetime(bars["timestamp"])
    return bars[(ts < "2023-04-15T12:00Z") | (ts >= "2023-04-18T12:00Z")]


def _clash(bars):
    row = bars[bars["timestamp"] == "2023-05-10T07:00:00Z"]
    return pd.concat([bars, row.assign(volume=row["volume"] + 1)])  # a valid row, another volume


CASES = {
    "NaN close in the warm-up bars": _frame(_set("2023-02-01T05:00:00Z", "close", float("nan"))),
    "row with 3 fields": _lines(lambda line: ",".join(line.split(",")[:3])),
    "'abc' as a close": _lines(lambda line: ",".join([*line.split(",")[:4], "abc", line.split(",")[5]])),
    "unparseable timestamp": _lines(lambda line: "10/05/2023 07h," + line.split(",", 1)[1]),
    "high below low": _frame(_set("2023-05-10T07:00:00Z", "high", 1.0)),
    "negative volume": _frame(_set("2023-05-10T07:00:00Z", "volume", -5.0)),
    "72-hour gap": _frame(_gap),
    "conflicting duplicate": _frame(_clash),
    "missing data directory": None,
    "unknown symbol (no file)": "XRPUSDT",
    "window past the data (2024)": "2024-06-02",
}


def main() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    import include.notify

    alerts: list[str] = []
    include.notify.send = lambda text, context: alerts.append(text) or []  # what Slack/Discord would get
    db.initdb()
    for i, (name, make) in enumerate(CASES.items()):
        os.environ["MARKET_DB_URL"] = f"sqlite:///{TMP / f'market_{i}.sqlite'}"  # a fresh store per case
        alerts.clear()
        src = TMP / "data" / name.replace(" ", "_").replace("'", "")
        src.mkdir(parents=True)
        shutil.copy(DATA / "btcusdt_funding_8h.csv.gz", src)
        conf = {"train_window_days": 120, "cv_folds": 3, "source_dir": str(src), "markets": ["BTCUSDT"]}
        day = "2023-06-04"
        if make is None:
            conf["source_dir"] = str(src / "missing")
        elif make == "XRPUSDT":
            universe = src / "universe.yaml"
            universe.write_text("markets:\n  - {symbol: XRPUSDT, market_type: perp, timeframe: 1h}\n")
            conf.update(universe_file=str(universe), markets=None)
        elif isinstance(make, str):
            day = make
            shutil.copy(DATA / "btcusdt_perp_1h.csv.gz", src)
        else:
            make(src)
        dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("weekly_retrain")
        t0 = time.perf_counter()
        dr = dag.test(logical_date=pd.Timestamp(day, tz="UTC").to_pydatetime(), run_conf=conf)
        seconds = time.perf_counter() - t0
        failed = sorted(ti.task_id for ti in dr.get_task_instances() if ti.state == "failed"
                        and ti.task_id != "check_markets")
        tries = {ti.task_id: ti.try_number for ti in dr.get_task_instances() if ti.state == "failed"}
        # The alert's error block: its first line, and the specific lines of a validation report.
        errors = []
        for text in alerts:
            block = text.split("Error: ", 1)[-1].split("\nLog:", 1)[0].splitlines()
            errors.append(" | ".join([block[0].split("; report ")[0], *block[1:3]]))
        print(json.dumps({"case": name, "run": dr.state, "failed": failed, "tries": tries,
                          "seconds": round(seconds, 1), "message": errors[0][:400] if errors else None}), flush=True)


if __name__ == "__main__":
    main()
