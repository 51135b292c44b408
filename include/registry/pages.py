"""HTML of the registry's pages that the plugin serves: a version's page, a registered model's
production history (its alias timeline) and the track-record section of the Models page.

Pure functions of the registry's records; the plugin (``plugins/model_registry.py``) looks them up
behind Airflow's auth and returns these pages.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote


def cell(value: Any) -> str:
    """A table cell's text: floats to 4 decimals, everything escaped."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


def track_record_section(name: str, record: dict[str, Any] | None) -> str:
    """The Models page's track-record section of one registered model (``record`` as
    :func:`include.track_record.track_record` stores it, or ``None``)."""
    command = f"python -m include.track_record record --model {html.escape(name)}"
    if record is None:
        return (f"<p class='track'>Track record: none stored yet. <code>{command}</code> scores every version "
                "forward on the week it would serve, for the production chain, the newest candidate and never "
                "retraining.</p>")
    labels = {"production": "production chain (the gate)", "newest": "always the newest candidate",
              "never_retrain": "never retrain (the first version)"}
    rows = []
    base = ("production", "newest", "never_retrain")
    ordered = [*base, *sorted(k for k in record["totals"] if k not in base)]
    for policy in (k for k in ordered if k in record["totals"]):
        t = record["totals"][policy]
        cells = [labels.get(policy, f"replay: {policy}"), t.get("weeks"), t.get("log_loss"), t.get("macro_f1"),
                 t.get("sharpe"), t.get("mean_age_days"), t.get("weeks_without_model")]
        rows.append("<tr>" + "".join(f"<td>{cell(round(c, 4) if isinstance(c, float) else c)}</td>" for c in cells)
                    + "</tr>")
    promised = record["totals"].get("production", {}).get("promised_log_loss")
    return (f"<div class='track' data-model=\"{html.escape(name)}\"><h4>Track record</h4><p>Every version scored "
            f"forward on the week after its training data, over the {record['compared_weeks']} week(s) whose labels are known (a week "
            "without a production model counts as the class-prior forecast, no position; made " + cell(record.get("made_at")) + "). The chain's versions promised an out-of-fold log "
            f"loss of {cell(round(promised, 4) if promised is not None else None)} on average. Refresh with "
            f"<code>{command}</code>; try a policy with <code>python -m include.track_record replay --model "
            f"{html.escape(name)} --set alpha=0.1</code>.</p><table><tr><th>policy</th><th>weeks</th>"
            "<th>forward log loss</th><th>forward macro F1</th><th>Sharpe after costs</th><th>mean age (days)</th>"
            "<th>weeks without a model</th>"
            "</tr>" + "".join(rows) + "</table></div>")


STYLE = ("<style>body{font-family:sans-serif;margin:16px}table{border-collapse:collapse;margin-bottom:16px}"
          "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}h3{margin:16px 0 4px}"
          ".pass{color:#070}.fail{color:#b00}tr.production{background:#e6f4ea}</style>")


def rows_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """An HTML table of ``rows`` (dicts) in ``columns`` order, floats rounded to 4 decimals."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(round(r.get(c), 4) if isinstance(r.get(c), float) else r.get(c))}</td>"
                                    for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def production_spans(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The production alias's spans from its ledger: who held it, from when, until when, and why."""
    spans: list[dict[str, Any]] = []
    for e in events:
        if e["event"] == "keep":
            continue
        if spans and spans[-1]["until"] is None:
            spans[-1]["until"] = e["at"]
        if e["to"] or e["event"] == "demote":  # a demotion starts a span of its own: no model
            spans.append({"version": e["to"], "since": e["at"], "until": None, "event": e["event"],
                          "by": f"{e['dag_id'] or 'cli'} {e['run_id'] or ''}".strip(), "reason": e["reason"]})
    return spans


def version_link(version: str | None) -> str:
    """A link to a version's page from a page two levels below the plugin's root ("" for none)."""
    return f"<a href='../../versions/{quote(version)}/page'>{html.escape(version)}</a>" if version else ""


def hyperparameter_summary(lineage: dict[str, Any]) -> str:
    """Which hyperparameters a version's members used, in a few words: ``defaults`` or, per family
    with a tuned set, ``family: set id (trials)``."""
    used = {f: u for f, u in (lineage.get("hyperparameter_sets") or {}).items() if u}
    if not used:
        return "defaults"
    return "; ".join(f"{f}: {u.get('set_id')} ({u.get('n_trials')} trials)" for f, u in used.items())


def version_page(info: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """A version's page: its gate decision with every check, where it held production, its lineage
    and per-fold metrics. ``info`` is :meth:`ModelRegistry.describe`'s, ``events`` its model's ledger."""
    version = info["version"]
    lineage, model = info["lineage"], info["model"]
    window = lineage.get("data_window", {})
    metrics = lineage.get("metrics", {})
    config = lineage.get("config", {})
    lineage_rows = [
        {"field": "registered model", "value": model},
        {"field": "data window", "value": f"training {window.get('train_start')} to {window.get('trained_until')} "
                                          f"(data interval from {window.get('interval_start')})"},
        {"field": "last training row", "value": window.get("last_training_row")},
        {"field": "rows", "value": json.dumps(lineage.get("rows"))},
        {"field": "run", "value": f"{lineage.get('dag_id')} {lineage.get('run_id')}"},
        {"field": "code version", "value": lineage.get("code_version")},
        {"field": "libraries", "value": ", ".join(f"{k} {v}" for k, v in (lineage.get("libraries") or {}).items())},
        {"field": "feature spec", "value": f"{len((lineage.get('feature_spec') or {}).get('names', []))} features, "
                                            f"sha256 {(lineage.get('feature_spec') or {}).get('sha256', '')[:12]}"},
        {"field": "ensemble", "value": json.dumps(lineage.get("weights"))},
        {"field": "hyperparameter sets", "value": hyperparameter_summary(lineage)},
        {"field": "hyperparameters", "value": json.dumps(lineage.get("member_params"))},
        {"field": "label", "value": f"horizon {config.get('label_horizon_bars')} bars, "
                                     f"{config.get('label_threshold_mode')} {config.get('label_threshold')}"},
        {"field": "files (sha256)", "value": ", ".join(f"{k} {v[:12]}" for k, v in (info.get("files") or {}).items())},
    ]
    folds = [{"fold": f.get("fold"), **{k: f.get(k) for k in ("n", "macro_f1", "balanced_accuracy", "log_loss", "brier")}}
             for f in metrics.get("ensemble_per_fold", [])]
    decision = next((e["decision"] for e in reversed(events) if e.get("decision")
                     and (e["decision"].get("candidate") == version)), None)
    gate = ""
    if decision:
        checks = [{"check": c["name"], "outcome": "passed" if c["passed"]
                   else "failed" if c.get("required", True) else "failed (not required)",
                   "value": c.get("value"), "threshold": c.get("threshold"), "detail": c.get("detail")}
                  for c in decision.get("checks", [])]
        gate = (f"<h3>Gate: {'PASS' if decision.get('passed') else 'FAIL'}</h3>"
                f"<p class='deciding'><b>{cell(decision.get('deciding') or decision.get('summary'))}</b></p>"
                f"<p>{cell(decision.get('summary'))} (champion {cell(decision.get('champion') or 'none')})</p>"
                + rows_table(checks, ["check", "outcome", "value", "threshold", "detail"]))
    else:
        gate = "<h3>Gate</h3><p>No gate decision about this version in the ledger.</p>"
    held = [sp for sp in production_spans(events) if sp["version"] == version]
    production = (rows_table(held, ["since", "until", "event", "by", "reason"]) if held
                  else "<p>This version has not held production.</p>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(version) + "</title>" + STYLE
            + f"</head><body><p><a href='../../ui'>Models</a> / <a href='../../models/{quote(model)}/timeline'>"
            f"{html.escape(model)}</a></p><h2>{html.escape(version)}</h2>"
            f"<p>Aliases now: {cell(', '.join(info['aliases']) or 'none')}. "
            f"<a target='_blank' href='report'>The run's report</a>.</p>"
            + gate + "<h3>In production</h3>" + production
            + "<h3>Lineage</h3>" + rows_table(lineage_rows, ["field", "value"])
            + "<h3>Out-of-fold metrics per walk-forward fold</h3>"
            + rows_table(folds, ["fold", "n", "macro_f1", "balanced_accuracy", "log_loss", "brier"])
            + "</body></html>")




def timeline_page(name: str, events: list[dict[str, Any]]) -> str:
    """A registered model's production history from its ledger ``events`` (oldest first), newest first."""
    rows = []
    for e in reversed(events):
        rows.append({"when": e["at"], "event": e["event"], "from": e["from"], "to": e["to"],
                     "candidate": e["candidate"], "by": f"{e['dag_id'] or 'cli'} {e['run_id'] or ''}".strip(),
                     "reason": e["reason"]})
    body = []
    for r in rows:
        to = (version_link(r["to"]) if r["to"] else
              "<b>no model</b> (class-prior forecast, no position)" if r["event"] == "demote" else "")
        cells = [cell(r["when"]), f"<b>{cell(r['event'])}</b>", version_link(r["from"]), to,
                 version_link(r["candidate"]), cell(r["by"]), cell(r["reason"])]
        body.append(f"<tr class='{'production' if r['event'] != 'keep' else ''}' data-event='{html.escape(r['event'])}'>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in ("when", "event", "from", "to", "candidate", "by", "reason"))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(name) + "</title>" + STYLE
            + f"</head><body><p><a href='../../ui'>Models</a></p><h2>{html.escape(name)}: production history</h2>"
            f"<p>Every decision about the production alias, newest first: promotions, keeps, demotions to no "
            f"model, rollbacks and removals, with the run or person that made them and why. {len(rows)} "
            "event(s).</p>"
            f"<table class='timeline'><tr>{head}</tr>{''.join(body)}</table></body></html>")
