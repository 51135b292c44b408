"""Failure notifications through Airflow's own Slack and Discord notifiers.

:func:`on_task_failure` is a task-level ``on_failure_callback``. At failure time (never at DAG
parse time) it looks up the connections named by ``ALERT_SLACK_CONN_ID`` (default
``slack_alerts``) and ``ALERT_DISCORD_CONN_ID`` (default ``discord_alerts``), and sends the
message through :class:`~airflow.providers.slack.notifications.slack_webhook.SlackWebhookNotifier`
and :class:`~airflow.providers.discord.notifications.discord.DiscordNotifier` for each one that
exists. A missing connection means that channel is off.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def failure_message(context: dict[str, Any]) -> str:
    """Plain-text alert: DAG, task, run id, data interval (if any), error and log URL."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    map_index = getattr(ti, "map_index", -1)
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", "?")
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    interval = f"{start.isoformat()} → {end.isoformat()}" if start and end else "none (manual run)"
    exc = context.get("exception")
    error = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    if len(error) > 1500:
        error = error[:1500] + " …"
    log_url = getattr(ti, "log_url", None) or "n/a"
    task = task_id if map_index in (None, -1) else f"{task_id}[{map_index}]"
    return (f"Airflow task failed\nDAG: {dag_id}\nTask: {task}\nRun: {run_id}\n"
            f"Data interval: {interval}\nError: {error}\nLog: {log_url}")


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
    text = failure_message(context)
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
            logger.info("failure alert sent to %s connection %s", name, conn_id)
        except Exception:
            logger.exception("could not send the failure alert to %s connection %s", name, conn_id)


def _slack_notifier(conn_id: str, text: str):
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    return SlackWebhookNotifier(slack_webhook_conn_id=conn_id, text=text)


def _discord_notifier(conn_id: str, text: str):
    from airflow.providers.discord.notifications.discord import DiscordNotifier

    return DiscordNotifier(discord_conn_id=conn_id, text=text)
