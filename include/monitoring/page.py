"""The Monitoring page: per registered model, live metrics against the promised out-of-fold ones
over time, the drift table, freshness and the retraining requests (HTML, one chart per model)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

ACTION_CLASS = {"ok": "ok", "alert": "warn", "cooldown": "warn", "retrain_requested": "bad"}


def history(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per report, oldest first: as_of, version, action and the headline numbers."""
    rows = []
    for r in sorted(reports, key=lambda r: r["as_of"]):
        realised = r["live"].get("realised") or {}
        top = r["drift"]["top_features"][: r["policy"]["psi_top_k"]]
        psis = [d["psi"] for d in r["drift"]["table"] if d["feature"] in top and d["psi"] is not None]
        rows.append({"as_of": r["as_of"], "version": r["version"], "action": r["action"], "reason": r["reason"],
                     "labelled_rows": r["live"]["labelled_rows"], "macro_f1": realised.get("macro_f1"),
                     "log_loss": realised.get("log_loss"), "prior_log_loss": realised.get("prior_log_loss"),
                     "promised_macro_f1": r["live"]["promised"].get("macro_f1"),
                     "promised_log_loss": r["live"]["promised"].get("log_loss"),
                     "max_top_psi": max(psis, default=None),
                     "strategy_return": r["trading"]["strategy"].get("total_return"),
                     "data_age_hours": r["freshness"]["age_hours"]})
    return rows


def _chart(rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import pandas as pd

    when = pd.to_datetime([r["as_of"] for r in rows])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key, title in ((left, "log_loss", "log loss (lower is better)"), (right, "macro_f1", "macro F1")):
        ax.plot(when, [r[key] for r in rows], marker="o", label="live (realised)")
        ax.plot(when, [r[f"promised_{key}"] for r in rows], "--", label="promised (out-of-fold)")
        if key == "log_loss":
            ax.plot(when, [r["prior_log_loss"] for r in rows], ":", label="class prior, same rows")
        ax.set_title(title)
        locator = mdates.AutoDateLocator(minticks=2, maxticks=5)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f"<img alt='live vs promised' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    return "–" if value is None else fmt.format(value)


def render(models: dict[str, list[dict[str, Any]]]) -> str:
    """The page for ``{model: reports (any order)}``."""
    sections = []
    for model, reports in models.items():
        rows = history(reports)
        latest = max(reports, key=lambda r: r["as_of"])
        checks = "".join(
            f"<li class='{'bad' if c['tripped'] else ''}'>{'TRIPPED' if c['tripped'] else 'ok'} "
            f"<b>{html.escape(c['name'])}</b>: {html.escape(c['detail'])}</li>" for c in latest["checks"])
        top = latest["drift"]["top_features"][: latest["policy"]["psi_top_k"]]
        drift_rows = "".join(
            f"<tr class='{'top' if d['feature'] in top else ''}'><td>{html.escape(d['feature'])}</td>"
            f"<td>{_num(d['psi'])}</td><td>{_num(d['missing_share'], '{:.1%}')}</td>"
            f"<td>{_num(d['reference_missing_share'], '{:.1%}')}</td></tr>" for d in latest["drift"]["table"])
        requests = [r for r in rows if r["action"] in ("retrain_requested", "cooldown")]
        request_rows = "".join(f"<tr><td>{html.escape(r['as_of'])}</td><td>{html.escape(r['action'])}</td>"
                               f"<td>{html.escape(r['reason'])}</td></tr>" for r in reversed(requests))
        live = latest["live"]
        realised = live.get("realised") or {}
        sections.append(
            f"<section class='model' data-model='{html.escape(model)}'><h3>{html.escape(model)}</h3>"
            f"<p>Production {html.escape(latest['version'])}, trained until {html.escape(latest['trained_until'])}. "
            f"Latest check up to {html.escape(latest['as_of'])}: <b class='{ACTION_CLASS.get(latest['action'], '')}'>"
            f"{html.escape(latest['action'].upper())}</b>: {html.escape(latest['reason'])}</p>"
            f"<p>Live since training: {live['scored_rows']} bars scored, {live['labelled_rows']} with realised labels; "
            f"macro F1 {_num(realised.get('macro_f1'))} (promised {_num(live['promised'].get('macro_f1'))}), "
            f"log loss {_num(realised.get('log_loss'))} vs class prior {_num(realised.get('prior_log_loss'))} "
            f"(promised {_num(live['promised'].get('log_loss'))}); strategy return "
            f"{_num(latest['trading']['strategy'].get('total_return'), '{:+.2%}')}, max drawdown "
            f"{_num(latest['trading']['strategy'].get('max_drawdown'), '{:.2%}')} (buy-and-hold "
            f"{_num(latest['trading']['buy_and_hold'].get('total_return'), '{:+.2%}')}); last bar closed "
            f"{_num(latest['freshness']['age_hours'], '{:.1f}')} h before.</p>"
            + (_chart(rows) if len(rows) >= 1 else "")
            + f"<h4>Checks</h4><ul>{checks}</ul>"
            f"<h4>Feature drift over the last {latest['policy']['drift_window_days']} days (top features marked)</h4>"
            "<table><tr><th>feature</th><th>PSI</th><th>missing</th><th>missing in training</th></tr>"
            f"{drift_rows}</table>"
            "<h4>Retraining requests</h4>"
            + (f"<table><tr><th>as of</th><th>action</th><th>why</th></tr>{request_rows}</table>" if requests
               else "<p>None.</p>")
            + "</section>")
    body = "".join(sections) or ("<p>No monitoring report yet: run the <code>monitor_production</code> DAG "
                                 "(or <code>make monitor</code>).</p>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Monitoring</title><style>"
            "body{font-family:sans-serif;margin:16px}table{border-collapse:collapse;margin-bottom:12px}"
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}.ok{color:#070}.warn{color:#a60}"
            ".bad{color:#b00}tr.top{font-weight:bold}li{font-size:13px}</style></head><body>"
            "<h2>Production monitoring</h2><p>Live metrics of each production model on bars it never saw, "
            "against what the gate saw at promotion (out-of-fold); PSI against the training distribution "
            "(0.1-0.25 moderate, above 0.25 major shift).</p>" + body + "</body></html>")
