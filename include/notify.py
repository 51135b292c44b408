"""Failure alerts and weekly summaries through Airflow's own Slack and Discord notifiers.

:func:`on_task_failure` is a task-level ``on_failure_callback``. At failure time (never at DAG
parse time) it looks up the connections named by ``ALERT_SLACK_CONN_ID`` (default
``slack_alerts``) and ``ALERT_DISCORD_CONN_ID`` (default ``discord_alerts``), and sends the
message through :class:`~airflow.providers.slack.notifications.slack_webhook.SlackWebhookNotifier`
and :class:`~airflow.providers.discord.notifications.discord.DiscordNotifier` for each one that
exists. A missing connection means that channel is off. :func:`send` with
:func:`summary_message` sends the weekly summary of a successful run to the same channels.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from include.redaction import mask_urls

logger = logging.getLogger(__name__)


def market_of(context: dict[str, Any]) -> str | None:
    """The registered model a failing task worked on, from its ``plan`` argument (``job`` in
    ``tune_hyperparameters``; the batch's label in ``weekly_retrain``'s market group), if it has one."""
    task = context.get("task")
    kwargs = getattr(task, "op_kwargs", None) or {}
    plan = kwargs.get("plan") or kwargs.get("job")
    if isinstance(plan, dict) and plan.get("model"):
        return str(plan["model"])
    batch = kwargs.get("batch")
    if isinstance(batch, dict) and batch.get("label"):
        return str(batch["label"])
    ti = context.get("ti") or context.get("task_instance")
    rendered = getattr(ti, "rendered_map_index", None)
    return str(rendered) if rendered else None


def failure_message(context: dict[str, Any], market: str | None = None) -> str:
    """Plain-text alert: DAG, market, task, run id, data interval (if any), error and log URL.

    Credentials in a URL the error quotes (a database's password, an API key in a query) are
    masked (:func:`~include.redaction.mask_urls`): the alert leaves for a chat channel.

    Args:
        market: the failing market, when the task ran several (default: :func:`market_of`).
    """
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    map_index = getattr(ti, "map_index", -1)
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", "?")
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    interval = f"{start.isoformat()} → {end.isoformat()}" if start and end else "none (manual run)"
    exc = context.get("exception")
    error = mask_urls(f"{type(exc).__name__}: {exc}") if exc is not None else "unknown error"
    if len(error) > 1500:
        error = error[:1500] + " …"
    log_url = getattr(ti, "log_url", None) or "n/a"
    task = task_id if map_index in (None, -1) else f"{task_id}[{map_index}]"
    market = market or market_of(context)
    return (f"Airflow task failed{f' for {market}' if market else ''}\nDAG: {dag_id}\n"
            + (f"Market: {market}\n" if market else "")
            + f"Task: {task}\nRun: {run_id}\nData interval: {interval}\nError: {error}\nLog: {log_url}")


def _connection_exists(conn_id: str) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # the SDK raises AirflowNotFoundException (and others) for a missing id
        return False
    return True


def on_task_failure(context: dict[str, Any]) -> None:
    """Send :func:`failure_message` to every configured alert channel.

    A channel that fails to deliver is logged and does not hide the task's own failure.
    """
    send(failure_message(context), context)


def summary_message(summary: dict[str, Any], report_path: str | None) -> str:
    """The weekly summary after a successful run: version, gate decision, key numbers, report."""
    window, gate, action = summary["window"], summary.get("gate") or {}, summary.get("action") or {}
    ens = (summary.get("ensemble") or {}).get("ensemble") or {}
    trading = ((summary.get("trading") or {}).get("out_of_fold") or {})
    strat, hold = trading.get("ensemble") or {}, trading.get("buy_and_hold") or {}

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    def num(v: Any, fmt: str = ".2f") -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [
        f"{summary.get('model', 'weekly_retrain')} {window['interval_start'][:10]} → {window['interval_end'][:10]}: "
        f"{action.get('action', '?').upper()}",
        f"Candidate: {gate.get('candidate')}  Production: {summary.get('production')}",
        f"Gate: {gate.get('summary', 'n/a')}",
        f"Out-of-fold macro F1 {num(ens.get('macro_f1'), '.4f')}, log loss {num(ens.get('log_loss'), '.4f')}",
        f"Strategy: return {pct(strat.get('total_return'))}, Sharpe {num(strat.get('sharpe'))}, "
        f"max drawdown {pct(strat.get('max_drawdown'))}, {strat.get('trades', 'n/a')} trades; "
        f"buy-and-hold {pct(hold.get('total_return'))}",
    ]
    if gate.get("reasons"):
        lines.append("Why not: " + "; ".join(gate["reasons"]))
    lines.append(f"Report: {report_path or 'n/a'}")
    return "\n".join(lines)


def universe_message(outcomes: list[dict[str, Any]]) -> str:
    """The weekly summary of a universe run: one block per market (decision, skip or failure)."""
    done = [o for o in outcomes if o["status"] == "done"]
    window = done[0]["summary"]["window"] if done else None
    head = (f"weekly_retrain {window['interval_start'][:10]} → {window['interval_end'][:10]}: " if window
            else "weekly_retrain: ")
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("done", "skipped", "failed")}
    blocks = [head + f"{len(outcomes)} market(s), {counts['done']} decided, {counts['skipped']} skipped, "
              f"{counts['failed']} failed"]
    for o in outcomes:
        if o["status"] == "done":
            blocks.append(summary_message(o["summary"], o["summary"].get("report")))
        else:
            blocks.append(f"{o['model']}: {o['status'].upper()}: {o.get('reason', '')}")
    return "\n\n".join(blocks)


def send(text: str, context: dict[str, Any]) -> list[str]:
    """Send ``text`` through every configured channel (the failure-alert connections).

    Returns:
        Names of the channels it went to. A channel that fails is logged, never raised.
    """
    sent = []
    # The notifiers render their text as a Jinja template; keep the message literal.
    template = "{% raw %}" + text.replace("{% endraw %}", "") + "{% endraw %}"
    channels = (
        ("Slack", os.environ.get("ALERT_SLACK_CONN_ID", "slack_alerts"), _slack_notifier),
        ("Discord", os.environ.get("ALERT_DISCORD_CONN_ID", "discord_alerts"), _discord_notifier),
    )
    for name, conn_id, make in channels:
        if not _connection_exists(conn_id):
            continue
        try:
            make(conn_id, template)(context)
            sent.append(name)
            logger.info("message sent to %s connection %s", name, conn_id)
        except Exception:
            logger.exception("could not send the message to %s connection %s", name, conn_id)
    return sent


def _slack_notifier(conn_id: str, text: str):
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    return SlackWebhookNotifier(slack_webhook_conn_id=conn_id, text=text)


def _discord_notifier(conn_id: str, text: str):
    from airflow.providers.discord.notifications.discord import DiscordNotifier

    return DiscordNotifier(discord_conn_id=conn_id, text=text)
