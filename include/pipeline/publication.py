"""Publication: per-market summary and report, the universe summary, planning a universe run, one run in-process."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from include.config import RunConfig, Settings
from include.gate import check_outcome
from include.notify import send, universe_message
from include.paths import checked_input_path
from include.registry import (
    ModelRegistry,
    atomic_write_json,
)
from include.report import build_report
from include.run_folder import SKIPPED_FILE, SUMMARY_FILE, RunFolder, json_safe, run_location, step_times, timed_step
from include.storage import is_remote
from include.universe import plan_markets
from include.windows import RunWindow, resolve_window

logger = logging.getLogger(__name__)


@timed_step("report")
def summarise(settings: Settings, cfg: RunConfig, out_dir: Path, window: RunWindow,
              parts: dict[str, Any], *, dag_id: str | None = None) -> dict[str, Any]:
    """Write one market's ``summary.json`` and HTML report.

    Args:
        dag_id: the run's DAG; with run artifacts in an object store, the paths returned name the
            run folder there rather than the step's local copy (``out_dir``).

    Returns:
        ``{"model", "path", "report", "production", "action"}``.
    """
    registry = ModelRegistry.from_settings(settings)
    pointer = registry.production(cfg.model_name)
    registry.dispose()
    summary = json_safe({"model": cfg.model_name, "window": asdict(window), **parts,
                         "production": pointer.version if pointer else None, "step_times": step_times(out_dir)})
    shown = (run_location(settings, dag_id, cfg.model_name, window) if dag_id and is_remote(settings.runs_dir)
             else out_dir)
    report = shown / build_report(out_dir, summary).name
    summary["report"] = str(report)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    logger.info("%s: run report written to %s", cfg.model_name, report)
    return {"model": cfg.model_name, "path": str(shown / SUMMARY_FILE), "report": str(report),
            "production": summary["production"], "action": (parts.get("action") or {}).get("action")}


def universe_outcomes(settings: Settings, dag_id: str, plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each market of a universe run did, from the files its run folder holds.

    Args:
        plans: the run's market plans (``{"model", "config", "window"}`` each).

    Returns:
        Per market, in plan order: ``{"model", "status"}`` with status ``done`` (and the
        market's ``summary``), ``skipped`` (and ``reason``, ``qualifies_on``) or ``failed``
        (no summary: a task of that market failed, and its alert named the market; the reason
        is its failed validation's first message when there is one).
    """
    out = []
    for plan in plans:
        folder = settings.runs_dir / dag_id / plan["model"] / plan["window"]["run_key"]
        if (folder / SUMMARY_FILE).is_file():
            out.append({"model": plan["model"], "status": "done",
                        "summary": json.loads((folder / SUMMARY_FILE).read_text())})
        elif (folder / SKIPPED_FILE).is_file():
            skipped = json.loads((folder / SKIPPED_FILE).read_text())
            out.append({"model": plan["model"], "status": "skipped", "reason": skipped["reason"],
                        "qualifies_on": skipped.get("qualifies_on")})
        else:
            out.append({"model": plan["model"], "status": "failed", "reason": _failure_reason(folder)})
    return out


def _failure_reason(folder: Path) -> str:
    """Why a market's run has no summary: its failed validation's first message when the run
    folder holds one, else where to look."""
    try:
        report = json.loads(RunFolder(folder).validation.read_text())
    except (OSError, ValueError):
        report = None
    if report and not report.get("success"):
        failures = [(s["suite"], f["message"]) for s in report.get("suites", []) for f in s.get("failed", [])]
        if failures:
            suite, message = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            return f"validation failed: {suite}: {message}{more}; report {folder / 'validation.json'}"
    return f"no summary in {folder}: a task of this market failed (see its alert and log)"


#: Airflow stores a DAG run's note in 1,000 characters.
NOTE_LIMIT = 1000
#: Where the api-server serves a version's run report (plugins/model_registry.py).
REPORT_URL = "/model-registry/versions/{version}/report"


#: The decisions a market's line of the note can report, in the note's order.
DECISIONS = ("promoted", "demoted", "kept", "skipped", "failed")


def _decision(outcome: dict[str, Any]) -> str:
    """``promoted``, ``demoted`` (to no model), ``kept``, ``skipped`` or ``failed``."""
    if outcome["status"] != "done":
        return outcome["status"]
    action = (outcome["summary"].get("action") or {}).get("action")
    return {"promote": "promoted", "demote": "demoted"}.get(action, "kept")


def _market_line(outcome: dict[str, Any], *, detail: int) -> str:
    """One market's line of the note at a level of ``detail``: 3, every deciding failed check's
    reason on its own line; 2, each as name, value and threshold; 1, the decision and the failed
    checks' names; 0, the decision only."""
    model = outcome["model"]
    if outcome["status"] != "done":
        if detail == 0:
            return f"- {model}: {outcome['status']}"
        reason = outcome.get("reason", "")
        return f"- **{model}**: {outcome['status'].upper()}: " + (reason if detail >= 2 else reason[:80])
    summary = outcome["summary"]
    gate, action = summary.get("gate") or {}, summary.get("action") or {}
    candidate = gate.get("candidate")
    # The checks that decided: one not required is in the report, not the note.
    failed = [c for c in gate.get("checks", []) if check_outcome(c) == "failed"]
    if detail == 0:
        return f"- {model}: {_decision(outcome)}"
    if detail == 1:
        head = (f"PROMOTED {candidate}" if action.get("action") == "promote"
                else "DEMOTED to no model" if action.get("action") == "demote"
                else "KEEP" + (f" ({', '.join(c['name'] for c in failed)})" if failed
                               else " (not approved)" if gate.get("passed") else ""))
        return f"- **{model}**: {head}"
    link = f" ([report]({REPORT_URL.format(version=candidate)}))" if candidate else ""
    if action.get("action") == "promote":
        head = f"PROMOTED {candidate} (was {action.get('previous') or 'none'})"
    elif action.get("action") == "demote":
        head = (f"DEMOTED {action.get('previous')} to no model (class-prior forecast, no position): "
                f"{gate.get('deciding', '')}; candidate {candidate} failed the gate")
    else:
        head = f"KEEP {summary.get('production') or 'no production'}; candidate {candidate} " + (
            "passed the gate but was not approved" if gate.get("passed") else "failed the gate")
    line = f"- **{model}**: {head}{link}"
    if failed and detail >= 3:
        line += "".join(f"\n  - {c['name']}: {c['detail']}" for c in failed)
    elif failed:
        line += ": " + ", ".join(_short(c) for c in failed)
    return line


def _short(check: dict[str, Any]) -> str:
    """A failed check in a few characters: its name, value and threshold."""
    value, threshold = check.get("value"), check.get("threshold")
    if isinstance(value, int | float) and isinstance(threshold, int | float):
        return f"{check['name']} ({value:.4g} vs {threshold:.4g})"
    return check["name"]


def run_note(outcomes: list[dict[str, Any]], limit: int = NOTE_LIMIT, requested: dict[str, Any] | None = None) -> str:
    """The DAG run's note: each market's decision, the failed gate checks, a link to its report.

    Markdown, at most ``limit`` characters (Airflow's note column). When the full text is
    longer, every market's line is shortened alike (the failed checks' reasons to their names
    and values, then to their names, then the decision alone) rather than any market dropped;
    with more markets than even that fits, the markets are listed by decision, names only, and
    only then cut, with the count of those not listed. The first line counts every market.

    Args:
        outcomes: :func:`universe_outcomes`' list.
        requested: :func:`retrain_scope` of a run that monitoring's retrain request started.
    """
    # The first line is what the run's page shows without expanding the note: the decisions.
    counts = {k: sum(_decision(o) == k for o in outcomes) for k in DECISIONS}
    head = (f"Weekly retrain, {len(outcomes)} market(s): {counts['promoted']} promoted, "
            + (f"{counts['demoted']} demoted, " if counts["demoted"] else "")
            + f"{counts['kept']} kept, {counts['skipped']} skipped, {counts['failed']} failed.")
    if requested:
        head += (f" Requested by monitor_production, on data up to {requested['as_of_date']} "
                 "(reasons on the Monitoring page).")
    for detail in (3, 2, 1, 0):
        text = "\n".join([head, *(_market_line(o, detail=detail) for o in outcomes)])
        if len(text) <= limit:
            return text
    # Many markets: names only, grouped by decision, as many as fit; the rest counted.
    body, listed = [], 0
    for decision in ("failed", "promoted", "demoted", "kept", "skipped"):
        names = [o["model"] for o in outcomes if _decision(o) == decision]
        taken: list[str] = []
        for name in names:
            line = f"- {decision}: " + ", ".join([*taken, name])
            if len("\n".join([head, *body, line])) + 50 > limit:
                break
            taken.append(name)
        if taken:
            body.append(f"- {decision}: " + ", ".join(taken))
            listed += len(taken)
        if len(taken) < len(names):
            break
    rest = len(outcomes) - listed
    return "\n".join([head, *body]) + (f"\n- … {rest} more in publish_summary's log" if rest else "")


def publish_universe(settings: Settings, dag_id: str, plans: list[dict[str, Any]],
                     context: dict[str, Any] | None = None, requested: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the universe summary of one weekly run and send it to the alert channels.

    The summary lists every market of the run: its decision and key numbers, or why it was
    skipped, or that it failed. It goes to ``<runs>/<dag_id>/_universe/<run key>.json``.

    Args:
        context: the Airflow task context, for the notifiers; ``None`` sends nothing.
        requested: :func:`retrain_scope` when monitoring's retrain request started the run.

    Returns:
        ``{"path", "markets": {model: status}, "notified", "note"}``; ``note`` (see
        :func:`run_note`) becomes the DAG run's note (``plugins/run_notes.py``).
    """
    outcomes = universe_outcomes(settings, dag_id, plans)
    run_key = plans[0]["window"]["run_key"] if plans else "empty"
    path = settings.runs_dir / dag_id / "_universe" / f"{run_key}.json"
    atomic_write_json(path, json_safe({"run_key": run_key, "markets": outcomes}))
    for o in outcomes:
        action = (o.get("summary") or {}).get("action") or {}
        logger.info("%s: %s %s", o["model"], o["status"].upper(),
                    action.get("action") or o.get("reason", ""))
    notified = send(universe_message(outcomes), context) if context is not None else []
    return {"path": str(path), "markets": {o["model"]: o["status"] for o in outcomes}, "notified": notified,
            "note": run_note(outcomes, requested=requested)}


def plan_universe(run_params: dict[str, Any], *, selected: list[str] | None, universe_file: str | None,
                  data_interval_start: Any, data_interval_end: Any, run_after: Any) -> list[dict[str, Any]]:
    """One plan per market of the universe: ``{"model", "config", "window"}``, JSON for XCom.

    Raises:
        ConfigError: see :func:`include.universe.plan_markets` and :func:`resolve_window`;
            ``universe_file`` lies outside the input roots (:func:`include.paths.checked_input_path`).
    """
    if universe_file:  # a run parameter: only under the input roots
        universe_file = str(checked_input_path(universe_file, "universe_file"))
    plans = []
    for cfg in plan_markets(run_params, selected=selected, path=universe_file):
        window = resolve_window(cfg, data_interval_start=data_interval_start, data_interval_end=data_interval_end,
                                run_after=run_after)
        plans.append({"model": cfg.model_name, "config": cfg.to_dict(), "window": asdict(window)})
    return plans


def retrain_scope(triggering_asset_events: Any) -> dict[str, Any] | None:
    """What a run triggered by ``retrain_request`` events retrains: the union of their models,
    on data up to the day of their latest ``as_of`` (the interval from the Sunday before it).

    Args:
        triggering_asset_events: the run's ``triggering_asset_events`` (asset -> events, each
            with an ``extra`` written by ``monitor_production``), or ``None``.

    Returns:
        ``{"markets": [registered models], "as_of_date": "YYYY-MM-DD", "reasons": {...}}``, or
        ``None`` when no event names a model (a run of the weekly schedule).
    """
    models: list[str] = []
    as_of, reasons = None, {}
    for events in (triggering_asset_events or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or (event.get("extra") if isinstance(event, dict) else None) or {}
            models += [m for m in extra.get("models", []) if m not in models]
            reasons.update(extra.get("reasons") or {})
            if extra.get("as_of") and (as_of is None or extra["as_of"] > as_of):
                as_of = extra["as_of"]
    if not models or as_of is None:
        return None
    return {"markets": models, "as_of_date": as_of[:10], "reasons": reasons}
