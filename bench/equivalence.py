"""Benchmark: what a sequence of weekly runs decides, to compare two versions of the code.

Runs each market's weekly run (``include.pipeline.run_once``, default parameters) for consecutive
weeks on one fresh market store, registry and run folder per market, and records per week:

- the decision: the gate's outcome, its action, and every check's name, outcome, value and
  threshold;
- the candidate's out-of-fold metrics (ensemble and members);
- the production version's forecast: its probabilities and position for the week's last closed
  bar, and the sha256 of its members' model files (as its training run wrote them).

Version ids are left out: they differ between two checkouts because a version's lineage records
the commit. So is the registered ensemble file's sha256: it pickles the members as loaded back,
and scikit-learn's tree node arrays carry uninitialised padding bytes, so two pickles of the same
forest differ in bytes (not in any value) even within one checkout.

``--compare`` checks a new record against an earlier one: identical decisions and production
members, metrics and forecasts within ``--tolerance`` (1e-9).

Usage (from the repository root, after ``make install``)::

    PYTHONPATH=. .venv/bin/python bench/equivalence.py --out var/artifacts/equivalence_before.json
    PYTHONPATH=. .venv/bin/python bench/equivalence.py --out var/artifacts/equivalence_after.json \
        --compare var/artifacts/equivalence_before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.edge_capture import run_overrides  # noqa: E402
from include.config import RunConfig, Settings  # noqa: E402
from include.pipeline import run_once  # noqa: E402
from include.run_folder import version_run_dir  # noqa: E402

DAG_ID = "equivalence"
#: The weeks (their last day, a Sunday) of the redesign's equality check.
WEEKS = ("2023-11-05", "2023-11-12", "2023-11-19", "2023-11-26", "2023-12-03", "2023-12-10", "2023-12-17",
         "2023-12-24", "2023-12-31")


def production_forecast(settings: Settings, model: str, as_of: str) -> dict[str, Any] | None:
    """The production version's forecast for the last bar closed by ``as_of`` and the sha256 of
    its members' files in the run folder that trained it; ``None`` when the model has no
    production version."""
    from datetime import UTC, datetime

    from include.serving import NoModel, ProductionModel, deployment_registry

    registry = deployment_registry(settings)
    try:
        pointer = registry.production(model)
        if pointer is None:
            return None
        # A model of its own, not the process-wide one: that one looks the alias up again only
        # every few seconds, and a week that decides faster would see last week's version.
        served = ProductionModel(registry, settings.market_db_url, model)
        when = datetime.fromisoformat(as_of).replace(tzinfo=UTC)
        try:
            prediction = served.predict(as_of=when)
        except NoModel:
            return {"no_model": True}
        lineage = registry.metadata(pointer.version)
        folder = version_run_dir(settings, model, lineage) / "candidates"
        members = {family: hashlib.sha256((folder / family / "model.joblib").read_bytes()).hexdigest()
                   for family in lineage["members"]}
        return {"probabilities": prediction.probabilities, "position": prediction.position, "bar": prediction.bar,
                "members": members}
    finally:
        registry.dispose()


def week_record(settings: Settings, symbol: str, week: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """One weekly run of ``symbol`` for the week ending ``week`` and what it decided.

    Args:
        config: run parameters besides ``as_of_date`` and ``symbol`` (default: none, the defaults).
    """
    run = run_once(RunConfig(as_of_date=week, symbol=symbol, **(config or {})), settings, dag_id=DAG_ID,
                   run_id=f"eq_{week}")
    decision, action, assembled = run["decision"], run["action"], run["assembled"]
    model = run["summary"]["model"]
    return {
        "week": week, "model": model, "passed": bool(decision["passed"]), "gate_action": decision.get("action"),
        "action": action["action"],
        "checks": [{"name": c["name"], "passed": bool(c["passed"]), "value": c.get("value"),
                    "threshold": c.get("threshold"), "required": c.get("required", True)}
                   for c in decision["checks"]],
        "ensemble": assembled["ensemble"], "members": assembled["members"], "weights": assembled["weights"],
        "production": production_forecast(settings, model, week),
    }


def differences(before: Any, after: Any, tolerance: float, where: str = "") -> list[str]:
    """Where two records differ: numbers by more than ``tolerance``, anything else at all."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = [f"{where}.{k}: only in one" for k in sorted(set(before) ^ set(after))]
        for k in sorted(set(before) & set(after)):
            out += differences(before[k], after[k], tolerance, f"{where}.{k}")
        return out
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{where}: {len(before)} vs {len(after)} items"]
        return [d for i, (b, a) in enumerate(zip(before, after, strict=True))
                for d in differences(b, a, tolerance, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(before, numbers) and isinstance(after, numbers) and not isinstance(before, bool):
        if math.isnan(before) and math.isnan(after):
            return []
        return [] if abs(before - after) <= tolerance else [f"{where}: {before!r} vs {after!r}"]
    return [] if before == after else [f"{where}: {before!r} vs {after!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", nargs="+", default=["BTCUSDT", "ETHUSDT"])
    parser.add_argument("--weeks", nargs="+", default=list(WEEKS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="an earlier record to compare with")
    parser.add_argument("--tolerance", type=float, default=1e-9)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a run parameter (repeatable; JSON values where they parse)")
    args = parser.parse_args(argv)
    config = run_overrides(args.set)
    record: dict[str, list[dict[str, Any]]] = {}
    for symbol in args.symbols:
        with tempfile.TemporaryDirectory(prefix="equivalence-") as tmp:
            settings = Settings.in_folder(Path(tmp))
            record[symbol] = []
            for week in args.weeks:
                record[symbol].append(week_record(settings, symbol, week, config))
                print(json.dumps({"symbol": symbol, "week": week, "action": record[symbol][-1]["action"]}),
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
    if args.compare:
        found = differences(json.loads(args.compare.read_text()), json.loads(args.out.read_text()), args.tolerance)
        print(json.dumps({"differences": len(found), "first": found[:20]}))
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
