"""HTML of the registry's pages that the plugin serves: a version's page, a registered model's
production history (its alias timeline) and the track-record section of the Models page (an
inline SVG chart of the weekly record above a table of its totals).

Pure functions of the registry's records; the plugin (``plugins/model_registry.py``) looks them up
behind Airflow's auth and returns these pages.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from include.gate import check_outcome


def cell(value: Any) -> str:
    """A table cell's text: floats to 4 decimals, everything escaped."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


# Line colours per series (the class prior is dashed grey); replayed policies take the rest in turn.
COLOURS = {"production": "#1f77b4", "newest": "#ff7f0e", "never_retrain": "#2ca02c", "prior": "#7f7f7f"}
REPLAY_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
SERIES_LABELS = {"production": "production chain (the gate)", "newest": "always the newest candidate",
                 "never_retrain": "never retrain (the first version)", "prior": "class prior (no model)"}


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (missing, ``None``, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _points(xs: list[float], ys: list[float | None], scale: Callable[[float], float]) -> str:
    """An SVG ``points`` list of the weeks with a value (a week without one is left out)."""
    return " ".join(f"{x:.1f},{scale(y):.1f}" for x, y in zip(xs, ys, strict=True) if y is not None)


def _range(values: list[float], *, floor: float | None = None) -> tuple[float, float]:
    """A y-axis span holding ``values`` (and ``floor``), padded by 5%, never empty."""
    low, high = min(values), max(values)
    if floor is not None:
        low, high = min(low, floor), max(high, floor)
    pad = (high - low) * 0.05 or max(abs(high) * 0.05, 1e-3)
    return low - pad, high + pad


def production_changes(weeks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The weeks in which the production chain changed, from a track record's ``weeks``.

    A promotion is a week whose production version differs from the week before's and is a
    version (the first week counts as following no model); a demotion is a week with no model
    after a week with one.

    Returns:
        ``[{"week": index, "event": "promotion" | "demotion", "version": the version promoted, or
        the one demoted}]``, oldest first.
    """
    changes: list[dict[str, Any]] = []
    before: str | None = None
    for k, week in enumerate(weeks):
        version = ((week.get("policies") or {}).get("production") or {}).get("version")
        if version is not None and version != before:
            changes.append({"week": k, "event": "promotion", "version": version})
        elif version is None and before is not None:
            changes.append({"week": k, "event": "demotion", "version": before})
        before = version
    return changes


# The policies every track record scores, drawn first and in this order (replayed ones follow).
_BASE_POLICIES = ("production", "newest", "never_retrain")


def _policy_value(week: dict[str, Any], policy: str, key: str) -> float | None:
    """The finite number ``key`` of ``policy`` in one of a record's ``weeks``, or ``None``."""
    return _number(((week.get("policies") or {}).get(policy) or {}).get(key))


def _chart_policies(weeks: list[dict[str, Any]]) -> list[str]:
    """The policies the chart draws: the three scored by every record, then the replayed ones, sorted."""
    return [*_BASE_POLICIES,
            *sorted({p for w in weeks for p in (w.get("policies") or {}) if p not in _BASE_POLICIES})]


def _loss_series(weeks: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per series with any value, its forward log loss per week (``None`` where not recorded).

    The base policies, then the class prior (``"prior"``), in that order.
    """
    losses = {p: [_policy_value(w, p, "log_loss") for w in weeks] for p in _BASE_POLICIES}
    losses["prior"] = [_number(w.get("prior_log_loss")) for w in weeks]
    return {p: ys for p, ys in losses.items() if any(y is not None for y in ys)}


def _cumulative_returns(weeks: list[dict[str, Any]], policies: list[str]) -> dict[str, list[float | None]]:
    """Per policy with any ``net_return``, the running sum of its weeks' returns (``None`` in a week
    without one, which adds nothing to the sum), in the order of ``policies``."""
    returns: dict[str, list[float | None]] = {}
    for policy in policies:
        weekly = [_policy_value(w, policy, "net_return") for w in weeks]
        if any(r is not None for r in weekly):
            total = 0.0
            path: list[float | None] = []
            for r in weekly:
                total += r or 0.0
                path.append(total if r is not None else None)
            returns[policy] = path
    return returns


def _series_colours(policies: list[str]) -> dict[str, str]:
    """Each series' line colour: :data:`COLOURS`, and the replayed policies :data:`REPLAY_COLOURS` in turn."""
    colours = dict(COLOURS)
    for k, policy in enumerate(p for p in policies if p not in COLOURS):
        colours[policy] = REPLAY_COLOURS[k % len(REPLAY_COLOURS)]
    return colours


@dataclass(frozen=True)
class _ChartLayout:
    """Where the chart's parts go, in SVG user units (pixels; y grows downwards).

    ``left``/``right``: the margins beside the panels (axis labels; the legend); ``top``: the top
    panel's upper edge; ``panel``: each panel's height; ``gap``: the space between the panels;
    ``bottom_top``: the bottom panel's upper edge; ``plot_bottom``: the last panel's lower edge;
    ``step``: a week's width; ``xs``: each week's centre.
    """

    width: int
    height: int
    left: int
    right: int
    top: int
    panel: int
    bottom_top: int
    plot_bottom: int
    step: float
    xs: list[float]

    def scaler(self, low: float, high: float, y0: int) -> Callable[[float], float]:
        """The map from a value in ``[low, high]`` to its y in the panel whose upper edge is ``y0``."""
        panel = self.panel
        return lambda y: y0 + panel - (y - low) / (high - low) * panel


def _chart_layout(n_weeks: int, legend_lines: int, two_panels: bool) -> _ChartLayout:
    """The layout of a chart of ``n_weeks`` weeks whose longest legend has ``legend_lines`` lines,
    with the bottom (return) panel when ``two_panels``."""
    width, left, right, top, panel, gap = 760, 70, 200, 24, 150, 44
    bottom_top = top + panel + gap
    plot_bottom = bottom_top + panel if two_panels else top + panel
    # Tall enough for the longest legend (one line per series, replays included) as well.
    legend_bottom = (bottom_top if two_panels else top) + 10 + 16 * legend_lines + 6
    height = max(plot_bottom + 36, legend_bottom)
    step = (width - left - right) / n_weeks
    xs = [left + step * (k + 0.5) for k in range(n_weeks)]
    return _ChartLayout(width=width, height=height, left=left, right=right, top=top, panel=panel,
                        bottom_top=bottom_top, plot_bottom=plot_bottom, step=step, xs=xs)


def _svg_open(layout: _ChartLayout) -> list[str]:
    """The chart's opening ``<svg>`` tag and its title."""
    width, height = layout.width, layout.height
    return [f"<svg xmlns='http://www.w3.org/2000/svg' class='track-chart' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' font-family='sans-serif' font-size='11' role='img'>",
            "<title>Track record per week: forward log loss and cumulative after-cost return</title>"]


def _no_model_shading(weeks: list[dict[str, Any]], layout: _ChartLayout) -> list[str]:
    """A grey ``<rect>`` over both panels for each week without a production model."""
    top, step, xs = layout.top, layout.step, layout.xs
    parts = []
    # Weeks without a production model, shaded over both panels.
    for k, week in enumerate(weeks):
        if ((week.get("policies") or {}).get("production") or {}).get("version") is None:
            span = layout.plot_bottom - top
            parts.append(f"<rect class='no-model' data-week='{k}' x='{xs[k] - step / 2:.1f}' y='{top}' "
                         f"width='{step:.1f}' height='{span}' fill='#eeeeee'><title>"
                         f"{html.escape(str(week.get('start', ''))[:10])}: no model (class-prior forecast, no position)"
                         "</title></rect>")
    return parts


def _panel_axis(key: str, low: float, high: float, floor: float | None, scale: Callable[[float], float],
                layout: _ChartLayout) -> list[str]:
    """A panel's y-axis labels (its span's ends and middle) and, given a ``floor``, its dotted line."""
    left, width, right = layout.left, layout.width, layout.right
    parts = []
    fmt = "{:.3f}" if key == "log_loss" else "{:+.1%}"
    for tick in (low, (low + high) / 2, high):
        parts.append(f"<text x='{left - 4}' y='{scale(tick) + 4:.1f}' text-anchor='end'>"
                     f"{html.escape(fmt.format(tick))}</text>")
    if floor is not None:
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{scale(floor):.1f}' y2='{scale(floor):.1f}' "
                     "stroke='#999999' stroke-dasharray='2,2'/>")
    return parts


def _series_lines(key: str, series: dict[str, list[float | None]], scale: Callable[[float], float],
                  colours: dict[str, str], layout: _ChartLayout) -> list[str]:
    """A panel's ``<polyline>`` per series, the first of ``series`` drawn last (on top)."""
    parts = []
    for policy, ys in reversed(series.items()):  # production drawn last, on top
        label = SERIES_LABELS.get(policy, f"replay: {policy}")
        dash = " stroke-dasharray='5,3'" if policy == "prior" else ""
        parts.append(f"<polyline class='series' data-panel='{key}' data-series='{html.escape(policy)}' "
                     f"fill='none' stroke='{colours[policy]}' stroke-width='1.5'{dash} "
                     f"points='{_points(layout.xs, ys, scale)}'><title>{html.escape(label)}</title></polyline>")
    return parts


def _panel_legend(series: dict[str, list[float | None]], y0: int, colours: dict[str, str],
                  layout: _ChartLayout) -> list[str]:
    """A panel's legend, right of it: one line sample and label per series, in order."""
    width, right = layout.width, layout.right
    parts = []
    # The legend, right of the panel.
    for n, policy in enumerate(series):
        y = y0 + 10 + 16 * n
        dash = " stroke-dasharray='5,3'" if policy == "prior" else ""
        parts.append(f"<line x1='{width - right + 10}' x2='{width - right + 30}' y1='{y}' y2='{y}' "
                     f"stroke='{colours[policy]}' stroke-width='2'{dash}/><text x='{width - right + 34}' "
                     f"y='{y + 4}'>{html.escape(SERIES_LABELS.get(policy, f'replay: {policy}'))}</text>")
    return parts


def _chart_panel(key: str, title: str, series: dict[str, list[float | None]], y0: int, floor: float | None,
                 colours: dict[str, str], layout: _ChartLayout) -> list[str]:
    """One panel: its title and frame, then its axis, lines and legend (or "not recorded")."""
    left, panel = layout.left, layout.panel
    parts = [f"<text x='{left}' y='{y0 - 8}' font-weight='bold'>{html.escape(title)}</text>"
             f"<rect x='{left}' y='{y0}' width='{layout.width - left - layout.right}' height='{panel}' fill='none' "
             "stroke='#999999'/>"]
    values = [y for ys in series.values() for y in ys if y is not None]
    if not values:
        parts.append(f"<text x='{left + 8}' y='{y0 + panel / 2:.1f}'>not recorded</text>")
        return parts
    low, high = _range(values, floor=floor)
    scale = layout.scaler(low, high, y0)
    parts.extend(_panel_axis(key, low, high, floor, scale, layout))
    parts.extend(_series_lines(key, series, scale, colours, layout))
    parts.extend(_panel_legend(series, y0, colours, layout))
    return parts


def _week_labels(weeks: list[dict[str, Any]], layout: _ChartLayout) -> list[str]:
    """The weeks' start dates under the last panel."""
    parts = []
    # Week labels under the last panel: every week when few, otherwise about eight.
    every = max(1, math.ceil(len(weeks) / 8))
    for k in range(0, len(weeks), every):
        parts.append(f"<text x='{layout.xs[k]:.1f}' y='{layout.plot_bottom + 16}' text-anchor='middle'>"
                     f"{html.escape(str(weeks[k].get('start', ''))[:10])}</text>")
    return parts


def _production_change_markers(weeks: list[dict[str, Any]], layout: _ChartLayout) -> list[str]:
    """A ``<g>`` per change of the production chain (:func:`production_changes`): a triangle and a line."""
    top, plot_bottom = layout.top, layout.plot_bottom
    parts = []
    # The production chain's changes, where the week starts (the version serves from there on): a
    # triangle on the top panel's upper edge and a thin line down through both panels.
    for change in production_changes(weeks):
        k = change["week"]
        x = layout.xs[k] - layout.step / 2
        shape = (f"M{x - 5:.1f},{top + 9} L{x + 5:.1f},{top + 9} L{x:.1f},{top + 1} Z"
                 if change["event"] == "promotion" else
                 f"M{x - 5:.1f},{top + 1} L{x + 5:.1f},{top + 1} L{x:.1f},{top + 9} Z")
        colour = "#2e7d32" if change["event"] == "promotion" else "#c62828"
        parts.append(f"<g class='{change['event']}' data-week='{k}'><title>"
                     f"{html.escape(str(weeks[k].get('start', ''))[:10])}: {change['event']} of "
                     f"{html.escape(str(change['version']))}</title><line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' "
                     f"y2='{plot_bottom}' stroke='{colour}' stroke-opacity='0.5' stroke-dasharray='3,3'/>"
                     f"<path d='{shape}' fill='{colour}'/></g>")
    return parts


def _svg_close(layout: _ChartLayout) -> str:
    """The key to the shading and the markers under the week labels, and the closing ``</svg>``."""
    return (f"<text x='{layout.left}' y='{layout.plot_bottom + 32}' fill='#555555'>shaded: production had no model; "
            "&#9650; promotion, &#9660; demotion (hover for the version)</text></svg>")


def track_record_chart(record: dict[str, Any]) -> str:
    """An inline SVG chart of a track record's weeks (no script, every text escaped).

    Top panel: the forward log loss (nats per row) per week of the production chain, the newest
    candidate, never retraining and the class-prior forecast. Bottom panel: the cumulative
    after-cost return per policy, the running sum of the weeks' ``net_return`` (fractions of
    equity). Weeks in which production had no model are shaded; a triangle marks each week the
    production chain changed (up: a promotion, down: a demotion) where that week starts, with a
    tooltip naming the version.
    A record whose weeks lack ``prior_log_loss`` or ``net_return`` is drawn without the prior's line
    or without the bottom panel.

    Args:
        record: as :func:`include.track_record.track_record` returns it.

    Returns:
        ``<svg>…</svg>``, or ``""`` for a record without weeks.
    """
    weeks = record.get("weeks") or []
    if not weeks:
        return ""
    policies = _chart_policies(weeks)
    losses = _loss_series(weeks)
    returns = _cumulative_returns(weeks, policies)
    colours = _series_colours(policies)
    layout = _chart_layout(len(weeks), len(returns or losses), bool(returns))
    parts = [*_svg_open(layout), *_no_model_shading(weeks, layout)]
    panels = [("log_loss", "forward log loss (nats per row)", losses, layout.top, None)]
    if returns:
        panels.append(("return", "cumulative after-cost return", returns, layout.bottom_top, 0.0))
    for key, title, series, y0, floor in panels:
        parts.extend(_chart_panel(key, title, series, y0, floor, colours, layout))
    parts.extend(_week_labels(weeks, layout))
    parts.extend(_production_change_markers(weeks, layout))
    parts.append(_svg_close(layout))
    return "".join(parts)


def track_record_section(name: str, record: dict[str, Any] | None) -> str:
    """The Models page's track-record section of one registered model (``record`` as
    :func:`include.track_record.track_record` stores it, or ``None``)."""
    command = f"python -m include.track_record record --model {html.escape(name)}"
    if record is None:
        return (f"<p class='track'>Track record: none stored yet. <code>{command}</code> scores every version "
                "forward on the week it would serve, for the production chain, the newest candidate and never "
                "retraining.</p>")
    rows = []
    base = ("production", "newest", "never_retrain")
    ordered = [*base, *sorted(k for k in record["totals"] if k not in base)]
    for policy in (k for k in ordered if k in record["totals"]):
        t = record["totals"][policy]
        cells = [SERIES_LABELS.get(policy, f"replay: {policy}"), t.get("weeks"), t.get("log_loss"), t.get("macro_f1"),
                 t.get("sharpe"), t.get("mean_age_days"), t.get("weeks_without_model")]
        rows.append("<tr>" + "".join(f"<td>{cell(round(c, 4) if isinstance(c, float) else c)}</td>" for c in cells)
                    + "</tr>")
    promised = record["totals"].get("production", {}).get("promised_log_loss")
    return (f"<div class='track' data-model=\"{html.escape(name)}\"><h4>Track record</h4><p>Every version scored "
            f"forward on the week after its training data, over the {record['compared_weeks']} week(s) "
            "whose labels are known (a week "
            "without a production model counts as the class-prior forecast, no position; made "
            + cell(record.get("made_at"))
            + "). The chain's versions promised an out-of-fold log "
            f"loss of {cell(round(promised, 4) if promised is not None else None)} on average. Refresh with "
            f"<code>{command}</code>; try a policy with <code>python -m include.track_record replay --model "
            f"{html.escape(name)} --set alpha=0.1</code>.</p>" + track_record_chart(record)
            + "<table><tr><th>policy</th><th>weeks</th>"
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
    folds = [{"fold": f.get("fold"),
              **{k: f.get(k) for k in ("n", "macro_f1", "balanced_accuracy", "log_loss", "brier")}}
             for f in metrics.get("ensemble_per_fold", [])]
    decision = next((e["decision"] for e in reversed(events) if e.get("decision")
                     and (e["decision"].get("candidate") == version)), None)
    gate = ""
    if decision:
        checks = [{"check": c["name"],
                   "outcome": {"passed": "passed", "failed": "failed",
                               "not required": "failed (not required)"}[check_outcome(c)],
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
        body.append(f"<tr class='{'production' if r['event'] != 'keep' else ''}' "
                    f"data-event='{html.escape(r['event'])}'>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in ("when", "event", "from", "to", "candidate", "by", "reason"))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(name) + "</title>" + STYLE
            + f"</head><body><p><a href='../../ui'>Models</a></p><h2>{html.escape(name)}: production history</h2>"
            f"<p>Every decision about the production alias, newest first: promotions, keeps, demotions to no "
            f"model, rollbacks and removals, with the run or person that made them and why. {len(rows)} "
            "event(s).</p>"
            f"<table class='timeline'><tr>{head}</tr>{''.join(body)}</table></body></html>")
