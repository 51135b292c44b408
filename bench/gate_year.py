"""Benchmark: a year of weekly gate decisions per synthetic market, through the real pipeline.

Usage (from the repository root, after ``make install``)::

    PYTHONPATH=. .venv/bin/python bench/gate_year.py --kind walk --seeds 0-19 [--weeks 52] [--jobs 2]
    PYTHONPATH=. .venv/bin/python bench/gate_year.py --kind ar1 --phi 0.1 0.2 0.3 --seeds 0-19
    PYTHONPATH=. .venv/bin/python bench/gate_year.py --universe 20 --weeks 8 --seeds 100-119

One market-year: a synthetic BTCUSDT perpetual (:mod:`bench.synthetic_markets`: a random walk,
or AR(1) hourly log returns ``r_t = phi r_{t-1} + 0.6 % e_t``) is written in the file format of
``data/binance`` into a folder of its own, and ``--weeks`` consecutive weekly runs
(``include.pipeline.run_once``, the steps the DAG's tasks call) decide the weeks ending on
``--start-week`` (a Sunday) and the Sundays after it, on ONE market store and ONE registry, so
each week's gate meets the production model the weeks before left (or none).

Training configuration (:data:`BENCH_CONFIG`; ``--train-window-days`` and ``--cv-folds`` change
it), small so that a week takes seconds: ``train_window_days=240, cv_folds=6,
models=("lightgbm",)``, every other field at its default, the gate policy included (rolling
walk-forward: each week fits one new fold and the deployed model, and reuses the other folds'
fits from the market's fit cache; the out-of-fold record is about 1,000 hourly rows). On 2
cores shared with other work (load 2 to 8), a market's first week took 15 to 28 s (every fold
fitted, the libraries imported) and each later week 6 to 14 s, about 5 s of it CPU: ingestion
0.5 s, validation 2 s, features 0.4 s, training 1.3 s, registration 0.4 s, gate 0.5 s, report 0.9 s.

Per week the record holds the gate's decision (``passed``, ``summary``, the gate's own
``action`` when it names one, every check's name, passed, value, threshold and required), the
move the run made (``promote``, ``keep``, ``demote``: whatever ``run_once`` returns), the
candidate, the champion it met, production after the week, and seconds. Per market-year:
promotions, demotions, weeks with a production model, the week of the first promotion (1 = the
first week) and whether it came within 4 weeks.

Nothing in a random walk is predictable, so every promotion on one is a false positive: the
summary gives the share of years with any promotion and promotions per year. An AR(1) market's
edge is reachable (the pipeline's ``returns_1`` feature is the last bar's return): the summary
gives the share of seeds promoted within 4 weeks and the weeks to the first promotion.

``--universe N`` decides the same weeks (default 8) for N random-walk markets with symbols
``RW000USDT``, ``RW001USDT``, ... (seeds from ``--seeds``, the first N), week by week across the
universe as the weekly DAG does, and reports promotions per week across the universe. With
``--jobs 1`` all N share one store and one registry; with more jobs each process's share of the
markets has its own (each registered model's decisions depend only on its own versions and
ledger, so the outcome is the same). A seed writes the same market under any symbol: give the
universe seeds the market-years do not use (as ``100-119`` above) for markets of its own.

Output: one JSON line per market-year (or universe run) appended to ``--out`` (default
``var/artifacts/gate_year.jsonl``); a market-year already there with the same kind, phi, seed,
start week, weeks and configuration is skipped, so an interrupted run resumes. The markdown
summary of every record in the file is rewritten to the same path with ``.md``. Each record
carries the commit and whether ``include/`` had uncommitted changes (``code``): start a new
``--out`` when the gate's code changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.synthetic_markets import Kind, write_market
from include.config import PROJECT_ROOT, RunConfig, Settings
from include.errors import ConfigError
from include.pipeline import run_once

logger = logging.getLogger(__name__)

#: The training configuration of every weekly run, besides ``as_of_date`` and ``symbol``.
BENCH_CONFIG: dict[str, Any] = {"train_window_days": 240, "cv_folds": 6, "models": ("lightgbm",)}
#: Days of synthetic history before the first week's training window: the features' and the
#: labels' warm-up (at most a few weeks of hourly bars) with room to spare.
LEAD_DAYS = 60
#: An AR(1) market counts as found when its first promotion comes within this many weeks.
FOUND_WITHIN_WEEKS = 4
DAG_ID = "weekly_retrain"
DEFAULT_OUT = PROJECT_ROOT / "var" / "artifacts" / "gate_year.jsonl"


def week_ends(start_week: str, weeks: int) -> list[str]:
    """The Sundays a run decides: ``start_week`` and the ``weeks - 1`` after it (ISO dates).

    Raises:
        ValueError: ``start_week`` is not an ISO date or not a Sunday.
    """
    first = date.fromisoformat(start_week)
    if first.weekday() != 6:
        raise ValueError(f"--start-week {start_week} is a {first:%A}: expected a Sunday (a week's end)")
    return [(first + timedelta(weeks=i)).isoformat() for i in range(weeks)]


def history_span(weeks: list[str], config: dict[str, Any]) -> tuple[str, str]:
    """First and after-last day of the synthetic history the weeks need under ``config`` (ISO dates)."""
    first, last = date.fromisoformat(weeks[0]), date.fromisoformat(weeks[-1])
    return ((first - timedelta(days=config["train_window_days"] + LEAD_DAYS)).isoformat(),
            (last + timedelta(days=1)).isoformat())


def code_version() -> str:
    """The commit the benchmark ran on, with ``+dirty`` when ``include/`` has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "include") else "")


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``, so that every line is strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def decide_week(settings: Settings, symbol: str, week: str, run_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """One weekly run of ``symbol`` deciding the week ending ``week``; what the gate and the run did.

    Args:
        config: :class:`RunConfig` fields besides ``as_of_date`` and ``symbol`` (:data:`BENCH_CONFIG`).

    Returns:
        ``{"week", "passed", "summary", "gate_action", "checks", "candidate", "champion",
        "action", "production", "seconds"}``; ``checks`` is a list of ``{"name", "passed",
        "value", "threshold", "required"}``, ``production`` the version after the week or
        ``None``.

    Raises:
        PipelineError: from any step of the run.
    """
    started = time.perf_counter()
    run = run_once(RunConfig(as_of_date=week, symbol=symbol, **config), settings, dag_id=DAG_ID, run_id=run_id)
    decision, action = run["decision"], run["action"]
    return {"week": week, "passed": bool(decision["passed"]), "summary": decision["summary"],
            "gate_action": decision.get("action"),
            "checks": [{"name": c["name"], "passed": bool(c["passed"]), "value": _finite(c.get("value")),
                        "threshold": _finite(c.get("threshold")), "required": c.get("required", True)}
                       for c in decision["checks"]],
            "candidate": decision.get("candidate"), "champion": decision.get("champion"),
            "action": action["action"], "production": run["summary"]["production"],
            "seconds": round(time.perf_counter() - started, 2)}


def year_summary(weeks: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over one market's weekly records: promotions, demotions, weeks with a production
    model, the first promotion's week number (1-based, ``None`` without one) and whether it
    came within :data:`FOUND_WITHIN_WEEKS`."""
    promoted = [i for i, w in enumerate(weeks, start=1) if w["action"] == "promote"]
    first = promoted[0] if promoted else None
    return {"promotions": len(promoted), "demotions": sum(w["action"] == "demote" for w in weeks),
            "weeks_with_production": sum(w["production"] is not None for w in weeks),
            "first_promotion_week": first,
            "promoted_within_4_weeks": first is not None and first <= FOUND_WITHIN_WEEKS,
            "seconds": round(sum(w["seconds"] for w in weeks), 1),
            "seconds_per_week": round(statistics.fmean(w["seconds"] for w in weeks), 2) if weeks else None}


def market_key(kind: str, phi: float, seed: int, start_week: str, weeks: int, config: dict[str, Any]) -> str:
    """What makes two market-years the same run, for resuming."""
    return json.dumps({"kind": kind, "phi": phi, "seed": seed, "start_week": start_week, "weeks": weeks,
                       "config": config_label(config)}, sort_keys=True)


def universe_key(n: int, seeds: list[int], start_week: str, weeks: int, config: dict[str, Any]) -> str:
    """What makes two universe runs the same run, for resuming."""
    return json.dumps({"universe": n, "seeds": seeds, "start_week": start_week, "weeks": weeks,
                       "config": config_label(config)}, sort_keys=True)


def config_label(config: dict[str, Any]) -> str:
    """A training configuration in a few characters, e.g. ``240d/6f/lightgbm``."""
    return (f"{config['train_window_days']}d/{config['cv_folds']}f/{'+'.join(config['models'])}"
            + (f"/{config['ensemble_weighting']}" if config.get("ensemble_weighting") else ""))


def run_market(kind: Kind, phi: float, seed: int, start_week: str, weeks: int, config: dict[str, Any],
               workdir: str | None, keep: bool = False) -> dict[str, Any]:
    """One market-year: write the market, decide ``weeks`` consecutive weeks on one store and registry.

    Args:
        config: see :func:`decide_week`.
        workdir: parent of the market's temporary folder (``None``: the system's temporary directory).
        keep: leave the market's folder (data, store, registry, run folders) in place; its path is
            in the record.

    Returns:
        The market-year's record (see the module docstring).

    Raises:
        PipelineError: from any week's run.
    """
    days = week_ends(start_week, weeks)
    root = Path(tempfile.mkdtemp(prefix=f"gate-year-{kind}-{phi:g}-{seed}-", dir=workdir))
    start, end = history_span(days, config)
    write_market(root / "data", kind, seed, phi=phi, start=start, end=end)
    settings = Settings.in_folder(root, root / "data")
    records = []
    try:
        for week in days:
            records.append(decide_week(settings, "BTCUSDT", week, f"gate_year__{kind}_{phi:g}_s{seed}__{week}",
                                       config))
            w = records[-1]
            print(f"{kind} phi={phi:g} seed={seed} {week}: {w['action']:<7} production={w['production']} "
                  f"{w['seconds']:.1f} s | {w['summary']}", file=sys.stderr, flush=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return {"benchmark": "gate_year", "mode": "market", "kind": kind, "phi": phi, "seed": seed,
            "start_week": start_week, "weeks": weeks, "config": config_label(config), "key": market_key(
                kind, phi, seed, start_week, weeks, config), **year_summary(records), "weekly": records,
            "code": code_version(), "folder": str(root) if keep else None,
            "at": datetime.now(UTC).isoformat(timespec="seconds")}


def run_universe_group(symbols: list[str], seeds: list[int], days: list[str], data: str, config: dict[str, Any],
                       workdir: str | None, keep: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Decide ``days`` for several markets of a universe on one store and registry, week by week.

    Returns:
        Symbol -> its weekly records (:func:`decide_week`).
    """
    root = Path(tempfile.mkdtemp(prefix=f"gate-year-universe-{symbols[0]}-", dir=workdir))
    settings = Settings.in_folder(root, Path(data))
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in symbols}
    try:
        for week in days:
            for symbol, seed in zip(symbols, seeds, strict=True):
                out[symbol].append(decide_week(settings, symbol, week, f"gate_year__universe_s{seed}__{week}",
                                                   config))
                w = out[symbol][-1]
                print(f"universe {symbol} {week}: {w['action']:<7} production={w['production']} {w['seconds']:.1f} s",
                      file=sys.stderr, flush=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return out


def run_universe(n: int, seeds: list[int], start_week: str, weeks: int, config: dict[str, Any], jobs: int,
                 workdir: str | None, keep: bool = False, log_level: str = "ERROR") -> dict[str, Any]:
    """N random-walk markets decided for the same weeks; promotions per week across the universe.

    Args:
        seeds: the markets' seeds, the first ``n`` used; market ``i`` is ``RW{i:03d}USDT``.
        config: see :func:`decide_week`.
        jobs: processes; each decides its share of the markets on a store and registry of its own.
        workdir, keep: see :func:`run_market`.
        log_level: the worker processes' log level.

    Raises:
        ValueError: fewer seeds than markets.
    """
    if len(seeds) < n:
        raise ValueError(f"--universe {n} needs at least {n} seeds; --seeds gives {len(seeds)}")
    seeds = seeds[:n]
    days = week_ends(start_week, weeks)
    symbols = [f"RW{i:03d}USDT" for i in range(n)]
    data = Path(tempfile.mkdtemp(prefix="gate-year-universe-data-", dir=workdir))
    start, end = history_span(days, config)
    for symbol, seed in zip(symbols, seeds, strict=True):
        write_market(data, "walk", seed, symbol=symbol, start=start, end=end)
    groups = [list(range(i, n, jobs)) for i in range(min(jobs, n))]
    started = time.perf_counter()
    weekly: dict[str, list[dict[str, Any]]] = {}
    try:
        calls = [([symbols[i] for i in g], [seeds[i] for i in g], days, str(data), config, workdir, keep)
                 for g in groups]
        for part in _map(run_universe_group, calls, jobs, log_level):
            weekly.update(part)
    finally:
        if not keep:
            shutil.rmtree(data, ignore_errors=True)
    per_week = [{"week": week, "promotions": sum(weekly[s][i]["action"] == "promote" for s in symbols),
                 "demotions": sum(weekly[s][i]["action"] == "demote" for s in symbols),
                 "passed": sum(weekly[s][i]["passed"] for s in symbols),
                 "with_production": sum(weekly[s][i]["production"] is not None for s in symbols)}
                for i, week in enumerate(days)]
    seconds = [w["seconds"] for s in symbols for w in weekly[s]]
    return {"benchmark": "gate_year", "mode": "universe", "kind": "walk", "markets": n, "seeds": seeds,
            "start_week": start_week, "weeks": weeks, "config": config_label(config), "jobs": jobs,
            "key": universe_key(n, seeds, start_week, weeks, config),
            "per_week": per_week, "promotions": sum(w["promotions"] for w in per_week),
            "markets_promoted": sum(any(w["action"] == "promote" for w in weekly[s]) for s in symbols),
            "seconds_per_market_week": round(statistics.fmean(seconds), 2),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "markets_detail": {s: [{k: w[k] for k in ("week", "action", "production", "summary", "seconds")}
                                   for w in weekly[s]] for s in symbols},
            "code": code_version(), "at": datetime.now(UTC).isoformat(timespec="seconds")}


def configure_logging(level: str) -> None:
    """Log at ``level`` to stderr, in this process or a worker process of :func:`_map`."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Libraries that set their own loggers' levels (Great Expectations does) still pass this handler's.
    for handler in logging.getLogger().handlers:
        handler.setLevel(level.upper())


def _map(fn: Any, calls: list[tuple[Any, ...]], jobs: int, log_level: str) -> Any:
    """``fn(*call)`` for each call, yielding results as they finish: in this process for one job,
    else in ``jobs`` fresh processes (spawned: LightGBM's threads do not survive a fork) that log
    at ``log_level``.

    Raises:
        Exception: the first call's error; the calls not yet started are cancelled.
    """
    if jobs <= 1:
        for call in calls:
            yield fn(*call)
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=configure_logging, initargs=(log_level,)) as pool:
        futures = [pool.submit(fn, *call) for call in calls]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a results file (none when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a line is written whole in one call, so a reader sees whole records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(record, allow_nan=False) + "\n")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_markdown(records: list[dict[str, Any]]) -> str:
    """The results file's summary tables: one row per (kind, phi, start week, weeks, configuration)
    over its seeds, and one table per universe run with its promotions per week."""
    lines = ["# Gate over a year of weekly decisions", "",
             "Synthetic markets (`bench/synthetic_markets.py`) decided week after week by `include.pipeline.run_once` "
             "on one store and registry per market (`bench/gate_year.py`). On a random walk every promotion is "
             f"false; an AR(1) market's edge is real. Found: first promotion within {FOUND_WITHIN_WEEKS} weeks.", "",
             "| kind | phi | first week | weeks | config | years (seeds) | years with a promotion | promotions / year "
             "| demotions / year | weeks with production (mean) | found within 4 weeks | weeks to first promotion "
             "(median of promoted) | never promoted | s / week |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    markets = [r for r in records if r.get("mode") == "market"]
    if not markets:
        del lines[-3:]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in markets:
        groups.setdefault((r["kind"], r["phi"], r["start_week"], r["weeks"], r["config"]), []).append(r)
    for (kind, phi, start, weeks, config), rows in sorted(groups.items()):
        firsts = [r["first_promotion_week"] for r in rows if r["first_promotion_week"] is not None]
        lines.append(
            f"| {kind} | {phi:g} | {start} | {weeks} | {config} | {len(rows)} "
            f"| {_fmt(sum(r['promotions'] > 0 for r in rows) / len(rows))} "
            f"| {_fmt(statistics.fmean(r['promotions'] for r in rows))} "
            f"| {_fmt(statistics.fmean(r['demotions'] for r in rows))} "
            f"| {_fmt(statistics.fmean(r['weeks_with_production'] for r in rows), 1)} "
            f"| {_fmt(sum(r['promoted_within_4_weeks'] for r in rows) / len(rows))} "
            f"| {_fmt(statistics.median(firsts) if firsts else None, 1)} | {len(rows) - len(firsts)} "
            f"| {_fmt(statistics.fmean(r['seconds_per_week'] for r in rows), 1)} |")
    for r in (r for r in records if r.get("mode") == "universe"):
        lines += ["", f"## Universe: {r['markets']} random walks, {r['weeks']} weeks from {r['start_week']} "
                      f"({r['config']}): {r['promotions']} promotions, {r['markets_promoted']} market(s) promoted",
                  "", "| week | promotions | demotions | passed the gate | markets with production |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {w['week']} | {w['promotions']} | {w['demotions']} | {w['passed']} | {w['with_production']} |"
                  for w in r["per_week"]]
    return "\n".join(lines) + "\n"


def write_summary(out: Path) -> Path:
    """Rewrite the markdown summary next to ``out`` from every record in it; return its path."""
    path = out.with_suffix(".md")
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(summary_markdown(read_records(out)))
    partial.replace(path)
    return path


def seed_range(text: str) -> list[int]:
    """``0-19`` -> 0..19; ``3`` -> [3]; ``0-4,10`` -> 0..4 and 10.

    Raises:
        argparse.ArgumentTypeError: not such a list.
    """
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            seeds += range(int(low), int(high or low) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected a range such as 0-19") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: no seed in the range")
    return seeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("walk", "ar1"), default="walk", help="market kind (default walk)")
    parser.add_argument("--phi", type=float, nargs="+", default=None,
                        help="AR(1) coefficients, each a market per seed (ar1 only; default 0.1 0.2 0.3)")
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0-19"), help="seed range (default 0-19)")
    parser.add_argument("--weeks", type=int, default=None, help="weeks per market (default 52; universe 8)")
    parser.add_argument("--start-week", default="2023-01-08", help="the first week's end, a Sunday")
    parser.add_argument("--jobs", type=int, default=1, help="markets decided in parallel processes (default 1)")
    parser.add_argument("--universe", type=int, default=None, metavar="N",
                        help="decide N random-walk markets for the same weeks instead of one market per seed")
    parser.add_argument("--train-window-days", type=int, default=BENCH_CONFIG["train_window_days"],
                        help=f"training window, days (default {BENCH_CONFIG['train_window_days']})")
    parser.add_argument("--cv-folds", type=int, default=BENCH_CONFIG["cv_folds"],
                        help=f"walk-forward folds, one week each (default {BENCH_CONFIG['cv_folds']})")
    parser.add_argument("--models", nargs="+", default=list(BENCH_CONFIG["models"]),
                        help=f"model families (default {' '.join(BENCH_CONFIG['models'])})")
    parser.add_argument("--weighting", choices=["fixed", "selected", "fitted", "stacking"], default=None,
                        help="ensemble weighting (default: the run parameter's default)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument("--workdir", default=None, help="where the markets' temporary folders go")
    parser.add_argument("--keep", action="store_true", help="keep each market's folder (store, registry, runs)")
    parser.add_argument("--log-level", default="ERROR", help="the pipeline's log level (default ERROR)")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if args.jobs < 1:
        parser.error("--jobs: expected at least 1")
    if args.weeks is not None and args.weeks < 1:
        parser.error("--weeks: expected at least 1")
    if args.universe is not None and (args.universe < 1 or args.kind != "walk"):
        parser.error("--universe: expected at least 1 market, of kind walk")
    if args.kind == "walk" and args.phi not in (None, [0.0]):
        parser.error("--phi: a random walk has phi 0; use --kind ar1")
    weeks = args.weeks or (8 if args.universe else 52)
    config = {**BENCH_CONFIG, "train_window_days": args.train_window_days, "cv_folds": args.cv_folds,
              "models": tuple(args.models)}
    if args.weighting:
        config["ensemble_weighting"] = args.weighting
    # A bad date or configuration fails before any market is written.
    try:
        week_ends(args.start_week, weeks)
        RunConfig(**config)
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))
    # One model thread per process (include.resources) and none for the BLAS pools besides.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    done = {r["key"] for r in read_records(args.out)}

    if args.universe:
        if universe_key(args.universe, args.seeds[:args.universe], args.start_week, weeks, config) in done:
            print(f"this universe run is already in {args.out}: nothing to do", file=sys.stderr)
            return
        record = run_universe(args.universe, args.seeds, args.start_week, weeks, config, args.jobs, args.workdir,
                              args.keep, args.log_level)
        append_record(args.out, record)
        print(json.dumps({k: v for k, v in record.items() if k not in ("markets_detail", "key")}), flush=True)
        print(f"summary: {write_summary(args.out)}", file=sys.stderr)
        return

    phis = [0.0] if args.kind == "walk" else (args.phi or [0.1, 0.2, 0.3])
    calls = [(args.kind, phi, seed, args.start_week, weeks, config, args.workdir, args.keep)
             for phi in phis for seed in args.seeds
             if market_key(args.kind, phi, seed, args.start_week, weeks, config) not in done]
    skipped = len(phis) * len(args.seeds) - len(calls)
    print(f"{len(calls)} market-year(s) to run, {skipped} already in {args.out}; configuration {config_label(config)}, "
          f"{weeks} weeks from {args.start_week}, {args.jobs} job(s)", file=sys.stderr, flush=True)
    for record in _map(run_market, calls, args.jobs, args.log_level):
        append_record(args.out, record)
        print(json.dumps({k: v for k, v in record.items() if k not in ("weekly", "key")}), flush=True)
        write_summary(args.out)
    print(f"summary: {write_summary(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
