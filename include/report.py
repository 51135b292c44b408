"""One self-contained HTML report per run: plots embedded as PNG images, no external files.

Contents: the gate decision with every check; the strategy's equity curve and drawdown against
buy-and-hold and the momentum rule (out-of-fold bars); per-fold metrics of the ensemble and each
family's summary; the out-of-fold confusion matrix; the reliability (calibration) curves; the
feature importances (permutation and gain, mean over folds) with their rank stability; and the
baselines. Built from the run folder's files (``candidates/*/metadata.json``, ``trading.json``,
``gate_decision.json``), so it can be rebuilt for any past run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

from include.backtest import margin_words, stays_flat
from include.gate import check_outcome
from include.run_folder import RunFolder

logger = logging.getLogger(__name__)

CLASS_NAMES = ("down", "range", "up")


def _meta_words(meta: dict[str, Any]) -> str:
    """The meta-label models of a trading decision's record in one sentence."""
    fitted = ", ".join("none, all kept" if rows is None else f"{rows}"
                       for rows in (meta.get("per_fold") or {}).values())
    deployed = meta.get("deployed")
    return (f" Meta-labeling keeps only the positions a model of earlier folds' positions expects to pay after "
            f"costs (positions it learned from, per fold: {fitted}); the deployed model's "
            + (f"learned from {deployed['rows']} positions, {100 * deployed['paid_share']:.0f} % of which paid."
               if deployed else "had too few positions to learn from: every position is kept."))


def _decision_words(trading: dict[str, Any]) -> str:
    """The trading decision in one or two sentences, with the margins the walk-forward chose."""
    decided = trading.get("decision")
    floor = float(trading.get("min_probability") or 0)
    side = f" The position's side also needs a probability of at least {floor:.3f}." if floor > 0 else ""
    if not decided:
        return f"A position needs the decided class's probability ≥ {floor:.3f}."
    per_fold = ", ".join(margin_words(m) for m in (decided.get("margin_per_fold") or {}).values())
    deployed = float(decided.get("deployed_margin") or 0)
    flat = (" The deployed model stays flat: no margin made money after costs on the out-of-fold rows."
            if stays_flat(deployed) else "")
    meta = _meta_words(decided["meta_label"]) if decided.get("meta_label") else ""
    sizing = decided.get("sizing")
    sized = ("" if not sizing else
             " Each position takes min(1, reference / volatility scale) units of notional, the reference being its "
             "model's median volatility scale over its training rows"
             + (f" (out-of-fold positions: {sizing['mean_size']:.2f} units on average)." if sizing.get("mean_size")
                else "."))
    return (f"A position is taken where the forecast's expected move over the horizon beats the round trip "
            f"({100 * float(decided.get('round_trip') or 0):.2f} %) and the funding it pays by a margin, in round "
            f"trips, chosen on earlier folds only (per fold: {per_fold}; the deployed model: "
            f"{margin_words(deployed)}).{flat}{sized}{meta}{side}")


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(value: Any) -> str:
    """A table cell: floats to 4 significant decimals, missing values as a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return html.escape(str(value))


def _when(iso: str) -> str:
    """``2023-12-24T00:00:00+00:00`` as ``2023-12-24 00:00 UTC``."""
    from datetime import UTC, datetime

    return f"{datetime.fromisoformat(iso).astimezone(UTC):%Y-%m-%d %H:%M} UTC"


#: The trading strategies of the report, their role and line style.
STRATEGIES = (("ensemble", "candidate", "-"), ("flat", "gate baseline", None),
              ("momentum", "gate baseline", ":"), ("buy_and_hold", "reference only", "--"))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _equity_plot(trading: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    import matplotlib.dates as mdates

    for name, _, style in STRATEGIES:
        curve = trading["out_of_fold"].get(name, {}).get("equity") or []
        if not curve or style is None:
            continue
        ts = pd.to_datetime([t for t, _ in curve])
        eq = pd.Series([e for _, e in curve], index=ts)
        top.plot(eq.index, eq.values, style, label=name)
        bottom.plot(eq.index, (eq / eq.cummax() - 1).values, style, label=name)
    top.set_ylabel("equity (start = 1)")
    top.legend(loc="best")
    top.set_title("Out-of-fold trading after fees, slippage and funding")
    bottom.set_ylabel("drawdown")
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    return _png(fig)


def _confusion_plot(confusion: list[list[int]]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(4, 3.5))
    matrix = np.asarray(confusion)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks(range(3), CLASS_NAMES)
    ax.set_yticks(range(3), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Out-of-fold confusion matrix")
    return _png(fig)


def _calibration_plot(curves: dict[str, dict[str, list[float]]]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    for name, curve in curves.items():
        ax.plot(curve["mean_predicted"], curve["observed"], marker="o", label=name)
    ax.set_xlabel("forecast probability")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reliability (out-of-fold)")
    ax.legend()
    return _png(fig)


def _calibration_paragraph(calibration: dict[str, Any] | None) -> str:
    """What calibrated the probabilities above: the temperatures per fold and the registered one."""
    if not calibration or calibration.get("mode", "none") == "none":
        return ("<p>Calibration: none; the curves are the combined probabilities as the members gave them "
                "(run parameter <code>calibration</code>).</p>")

    def temps(record: dict[str, Any]) -> str:
        folds = ", ".join("–" if t is None else f"{t:.2f}" for t in record["folds"].values())
        deployed = "none" if record["deployed"] is None else f"{record['deployed']:.2f}"
        return f"per fold {folds}; registered {deployed}"

    members = "".join(f"<li>{html.escape(f)}: {temps(r)}</li>" for f, r in (calibration.get("members") or {}).items())
    return (f"<p>Calibration <code>{html.escape(calibration['mode'])}</code>: temperature scaling fitted on "
            "earlier folds' out-of-fold rows only (–: too few rows, probabilities kept). Ensemble temperature "
            f"{temps(calibration['ensemble'])}.</p>" + (f"<ul>{members}</ul>" if members else ""))


def _weighting_paragraph(meta: dict[str, Any]) -> str:
    """The registered ensemble's weights and, for ``ensemble_weighting='selected'``, why."""
    weights = meta.get("weights") or {}
    shown = ", ".join(f"{html.escape(f)} {w:.2f}" for f, w in weights.items())
    record = meta.get("weighting") or {"mode": (meta.get("config") or {}).get("ensemble_weighting", "fixed")}
    mode = html.escape(str(record["mode"]))
    if mode == "stacking":
        return (f"<p>Ensemble <code>{mode}</code>: a multinomial logistic regression on the members' "
                f"out-of-fold log-probabilities combines {', '.join(html.escape(f) for f in weights)}.</p>")
    words = f"<p>Ensemble weights <code>{mode}</code>: {shown}."
    candidates = record.get("candidates") or []
    if len(candidates) > 1:
        def name(i: int, c: dict[str, float]) -> str:
            alone = [f for f, w in c.items() if w > 0]
            return "the configured weights" if i == 0 else f"{alone[0]} alone"

        losses = "; ".join(f"{html.escape(name(i, c['weights']))} {c['log_loss']:.4f}"
                           for i, c in enumerate(candidates))
        words += (" The weights with the lower out-of-fold log loss were chosen (" + losses + "). Fold 0 "
                  "was combined with the configured weights, each later fold with the choice on earlier "
                  "folds' rows only.")
    return words + "</p>"


def top_features(importance: dict[str, float], k: int = 12) -> list[str]:
    """The ``k`` features of largest importance, largest first (ties by name).

    The order of ``importance`` is not trusted: metadata files are written with sorted keys.
    """
    return sorted(importance, key=lambda name: (-importance[name], name))[:k]


def _importance_plot(importance: dict[str, dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    families = list(importance)
    fig, axes = plt.subplots(1, len(families), figsize=(4 * len(families), 4.5), squeeze=False)
    for ax, family in zip(axes[0], families, strict=True):
        perm = importance[family]["permutation"]["mean"]
        names = top_features(perm)[::-1]  # barh draws the first name at the bottom
        ax.barh(names, [1e3 * perm[n] for n in names])
        stab = importance[family]["permutation"]["rank_stability"]
        ax.set_title(f"{family}\nrank stability {stab:.2f}" if stab is not None else family)
        ax.set_xlabel("log-loss increase when permuted\n(10⁻³ nats per row)")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    fig.tight_layout()
    return _png(fig)


TRADE_COLUMNS = ("total_return", "sharpe", "sortino", "max_drawdown", "calmar", "profit_factor", "hit_rate",
                 "trades", "exposure", "turnover", "probabilistic_sharpe", "skipped_bars")


def _gate_row(check: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """One gate check as a table row; checks without numbers show what they compared."""
    value, threshold = check["value"], check["threshold"]
    if check["name"] == "champion_out_of_sample":
        champion = gate.get("champion_evaluation") or {}
        if champion.get("rows_out_of_sample") is not None:
            value = f"{champion['rows_out_of_sample']} rows from {_when(champion['compared_from'])}"
            threshold = f"min {threshold:g} rows" if threshold is not None else None
        else:
            value = f"trained until {_when(champion['trained_until'])}" if champion.get("trained_until") else None
            threshold = f"window starts {_when(champion['window_start'])}" if champion.get("window_start") else None
    passed = {"passed": "yes", "failed": "NO", "not required": "no (not required)"}[check_outcome(check)]
    return {"check": check["name"], "passed": passed, "value": value,
            "threshold": threshold, "detail": check["detail"]}


def _deflated_paragraph(deflated: dict[str, Any] | None) -> str:
    """The strategy's deflated Sharpe ratio and the trials it counts (Bailey & López de Prado 2014)."""
    if not deflated:
        return ""
    value = deflated.get("value")
    shown = f"{value:.3f}" if value is not None and value == value else "undefined (no return variance)"
    return (f"<p>Deflated Sharpe ratio {shown}: the probability that the ensemble strategy's true Sharpe ratio "
            f"exceeds {deflated['expected_max_sharpe']:.4f} per bar, the expected maximum of "
            f"{deflated['n_trials']} unskilled trials (every candidate the gate has evaluated for this model, "
            f"this one included; variance of their Sharpe ratios {deflated['trials_variance']:.2e}); the "
            f"strategy's own is {deflated['sharpe_per_bar']:.4f} per bar.</p>")


def _champion_section(gate: dict[str, Any]) -> str:
    """Challenger and champion on the same out-of-fold rows where both are out of sample, with the paired test."""
    champion = gate.get("champion_evaluation") or {}
    if not champion:
        return "<p>No champion: this model has no production version, so the gate compared with baselines only.</p>"
    metrics, cand = champion.get("metrics"), champion.get("challenger_metrics") or {}
    if metrics is None:
        return (f"<p>Champion {html.escape(str(champion.get('version')))} was trained until "
                f"{_when(champion['trained_until'])}: no out-of-fold row after it, not compared.</p>")
    last = {"challenger": (gate.get("candidate_gate_window") or {}).get("last_training_row"),
            "champion": champion.get("last_training_row")}
    last = {k: _when(v) if v else None for k, v in last.items()}
    rows = [{"model": f"challenger {gate.get('candidate')}", "last training row": last["challenger"],
             **{k: cand.get(k) for k in ("n", "macro_f1", "log_loss", "brier")}},
            {"model": f"champion {champion.get('version')}", "last training row": last["champion"],
             **{k: metrics.get(k) for k in ("n", "macro_f1", "log_loss", "brier")}}]
    paired = champion.get("comparison") or {}
    live = champion.get("live") or {}
    test = ("<p>Paired test on the same rows (circular block bootstrap of per-row log-loss differences, "
            f"blocks of {paired.get('block')} bars, {paired.get('n_resamples')} resamples): champion minus "
            f"challenger {paired['statistic']:+.4f} nats per row, one-sided p = {paired['p_value']:.3f} "
            "for H1 “the champion's log loss is lower”.</p>") if paired.get("p_value") is not None else (
            f"<p>Paired test: same model. Both give the same forecast on every one of the {paired.get('n')} rows "
            "(the champion is the fit the challenger's last fold trains), so there is no difference to test.</p>"
            if paired.get("same_forecast") else "")
    if live:
        test += (f"<p>The champion's live record on these rows: log loss {live['log_loss']:.4f} against the "
                 f"class-prior forecast's {live['prior_log_loss']:.4f}.</p>")
    record = champion.get("record") or {}
    if record.get("p_value") is not None:
        worse = next((not c["passed"] for c in gate.get("checks", []) if c["name"] == "champion_worse_than_prior"),
                     False)
        test += (f"<p>The champion's record, judged as a challenger is (its last {record['n']} rows: "
                 f"{record['live_rows']} live, the rest out-of-fold from its own run): log loss "
                 f"{record['log_loss']:.4f} against the class prior's {record['reference_log_loss']:.4f}, p = "
                 f"{record['p_value']:.4f} for H1 “worse than the prior”: "
                 + ("<b>worse than the prior</b>; without a passing challenger it is demoted to no model.</p>"
                    if worse else "not shown worse than the prior.</p>"))
    return (f"<p>Both models scored on the same rows: every out-of-fold row from {_when(champion['compared_from'])}, "
            "the end of the champion's training data (several weeks when the champion is older). The challenger's "
            "rows are scored by its walk-forward fold models; the champion is the registered model, never "
            "refitted.</p>" + _table(rows, ["model", "last training row", "n", "macro_f1", "log_loss", "brier"])
            + test)


def _validation_paragraph(out_dir: Path) -> str:
    """The data validation's outcome per suite, and a link to its Great Expectations Data Docs."""
    try:
        report = json.loads(RunFolder(out_dir).validation.read_text())
    except (OSError, ValueError):
        return ""

    def suite_words(s: dict[str, Any]) -> str:
        checked = s.get("validated_rows")
        words = f"{s['suite']} {s.get('rows', '?')} rows"
        if checked is not None and checked != s.get("rows"):
            words += f" (row checks on {checked} of them; the other days passed in earlier runs)"
        return words

    suites = ", ".join(suite_words(s) for s in report.get("suites", []))
    docs = (" <a href='data_docs/index.html'>Great Expectations Data Docs</a> (every expectation and its result "
            "on the rows checked)." if (out_dir / "data_docs" / "index.html").is_file() else "")
    return (f"<h2>Data validation: {'passed' if report.get('success') else 'FAILED'}</h2>"
            f"<p>{html.escape(suites)}.{docs}</p>")


def _step_times_section(times: dict[str, dict[str, Any]]) -> str:
    """Where the run's time went: wall and CPU seconds per step (:func:`include.run_folder.timed_step`)."""
    if not times:
        return ""
    rows = [{"step": step, "wall s": f"{t['wall_s']:.2f}", "CPU s": f"{t['cpu_s']:.2f}",
             "finished": "yes" if t.get("ok", True) else "no (raised)"} for step, t in times.items()]
    return ("<h2>Where the run's time went</h2><p>Seconds per step of this market's run (CPU: its process's, "
            "all threads). A step run again (a retry) shows its last try.</p>"
            + _table(rows, ["step", "wall s", "CPU s", "finished"]))


def build_report(out_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``report.html`` in the run folder and return its path.

    Args:
        out_dir: the run folder (holds ``candidates/``, ``trading.json``, ``gate_decision.json``).
        summary: the run summary (window, gate, action).

    Raises:
        FileNotFoundError: a run file the report needs is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    ens = json.loads((RunFolder(out_dir).member("ensemble") / "metadata.json").read_text())
    trading = json.loads(RunFolder(out_dir).trading.read_text())
    gate = json.loads(RunFolder(out_dir).gate_decision.read_text())
    importance = {}
    for family in ens["members"]:
        meta = json.loads((RunFolder(out_dir).member(family) / "metadata.json").read_text())
        importance[family] = meta["cv"]["importance"]
    metrics = ens["metrics"]
    window = summary["window"]
    trade_rows = [{"strategy": name, "role": role,
                   **{k: trading["out_of_fold"][name].get(k) for k in TRADE_COLUMNS}}
                  for name, role, _ in STRATEGIES if name in trading["out_of_fold"]]
    gate_rows = [_gate_row(c, gate) for c in gate["checks"]]
    fold_cols = ["fold", "n", "macro_f1", "balanced_accuracy", "log_loss", "brier"]
    model_rows = [{"model": f, **m} for f, m in metrics["members"].items()]
    model_rows.append({"model": "ensemble", **metrics["ensemble"]})
    model_rows += [{"model": f"baseline: {b}", **m} for b, m in metrics["baselines"].items()]
    verdict = "PASS" if gate["passed"] else "FAIL, DEMOTE" if gate.get("action") == "demote" else "FAIL"
    costs = trading.get("costs") or {}
    period = f"{_when(window['interval_start'])} → {_when(window['interval_end'])}"
    model = summary.get("model") or ens.get("registered_model") or "weekly_retrain"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(model)} {html.escape(window['interval_end'][:10])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
        "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
        ".PASS{color:#070}.FAIL{color:#b00}h1{font-size:22px}</style></head><body>",
        f"<h1>{html.escape(model)}</h1><p>Data interval {html.escape(period)}.</p>",
        f"<p>Candidate <b>{html.escape(str(gate.get('candidate')))}</b>; champion "
        f"{html.escape(str(gate.get('champion') or 'none'))}; action "
        f"<b>{html.escape(str((summary.get('action') or {}).get('action')))}</b>; "
        f"production now {html.escape(str(summary.get('production') or 'none'))}.</p>",
        f"<h2>Gate: <span class='{verdict}'>{verdict}</span></h2>",
        _table(gate_rows, list(gate_rows[0]) if gate_rows else []),
        "<h3>Challenger against champion</h3>", _champion_section(gate),
        _validation_paragraph(out_dir),
        "<h2>Trading (out-of-fold bars)</h2>", _equity_plot(trading),
        _table(trade_rows, ["strategy", "role", *TRADE_COLUMNS]),
        _deflated_paragraph(gate.get("deflated_sharpe")),
        "<p>The gate's trading baselines are flat (never in the market: Sharpe 0) and the momentum rule. "
        "Buy-and-hold is shown for reference and is not one of them: it is market exposure, and over a few "
        "out-of-fold weeks its Sharpe measures the market's direction in those weeks, not a forecast's skill.</p>",
        f"<p>Costs: fee {costs.get('fee_bps', 0):g} bps + slippage {costs.get('slippage_bps', 0):g} bps per side of "
        f"notional traded; funding charged to the position held into each settlement. {_decision_words(trading)} "
        "Entry at the next bar's open; bars without a known return (candle gaps) are traded flat and counted as "
        "skipped.</p>",
        "<h2>Classification (out-of-fold, purged walk-forward)</h2>",
        _table(model_rows, ["model", "macro_f1", "balanced_accuracy", "log_loss", "brier", "n"]),
        _weighting_paragraph(ens),
        "<h3>Ensemble per fold</h3>", _table(metrics["ensemble_per_fold"], fold_cols),
        "<h3>Gate window (this run's data interval)</h3>", _table([metrics["gate_window"]], fold_cols[1:]),
        _confusion_plot(metrics["ensemble"]["confusion"]), _calibration_plot(metrics["reliability"]),
        _calibration_paragraph(ens.get("calibration")),
        "<h2>Feature importance (mean over folds; the 12 largest)</h2>", _importance_plot(importance),
        _step_times_section(summary.get("step_times") or {}),
        "</body></html>",
    ]
    path = RunFolder(out_dir).report
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    logger.info("run report: %s", path)
    return path
