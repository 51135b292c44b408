"""The task bodies of ``monitor_production``: which models, one model's run, the retrain request."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from include.config import Settings
from include.data.store import open_store
from include.errors import ConfigError
from include.monitoring import MonitorPolicy, mark_requested, monitor
from include.notify import send
from include.registry import ModelRegistry

logger = logging.getLogger(__name__)


def production_models(settings: Settings, wanted: list[str] | None = None) -> list[str]:
    """Registered models with a production version, in name order; ``wanted`` narrows them.

    A model the gate demoted to no model is not monitored (it serves the class-prior forecast);
    the log names such models.

    Raises:
        ConfigError: a wanted model is unknown or has no production version.
    """
    registry = ModelRegistry.from_settings(settings)
    try:
        models = registry.models()
        live = [m["name"] for m in models if m["production"]]
        # Demoted to no model: they serve the class-prior forecast, which has nothing to drift.
        no_model = [m["name"] for m in models if not m["production"] and registry.no_model_since(m["name"])]
    finally:
        registry.dispose()
    if no_model:
        logger.info("not monitored, demoted to no model by the gate (class-prior forecast, no position): %s",
                    ", ".join(no_model))
    if wanted:
        missing = sorted(set(wanted) - set(live))
        if missing:
            demoted = sorted(set(missing) & set(no_model))
            raise ConfigError(f"models {missing} have no production version to monitor (in production: {live}"
                              + (f"; demoted to no model: {demoted}" if demoted else "") + ")")
        return [m for m in live if m in wanted]
    logger.info("monitoring %d production model(s): %s", len(live), ", ".join(live) or "none")
    return live


def as_of_of(params: dict[str, Any], data_interval_end: Any, run_after: Any) -> datetime:
    """The end of the monitored span: the ``as_of`` param, else the data interval's end, else
    the run's start.

    Raises:
        ConfigError: ``as_of`` does not parse.
    """
    raw = params.get("as_of") or data_interval_end or run_after or datetime.now(UTC)
    try:
        ts = pd.Timestamp(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid run parameter as_of={raw!r}: {exc}") from exc
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def monitor_one(settings: Settings, model: str, *, params: dict[str, Any], data_interval_end: Any,
                run_after: Any, run_id: str) -> dict[str, Any]:
    """One model's monitoring run (:func:`include.monitoring.monitor`); its headline.

    Returns:
        ``{"model", "version", "as_of", "action", "reason", "tripped" (checks), "realised",
        "promised", "strategy", "freshness_hours"}``.
    """
    source = {k: params[k] for k in ("source", "source_dir") if params.get(k) is not None}
    report = monitor(settings, model, as_of_of(params, data_interval_end, run_after),
                     policy=MonitorPolicy.from_params(params), run_id=run_id, source=source)
    for check in report["checks"]:
        logger.log(logging.WARNING if check["tripped"] else logging.INFO, "  %s %s: %s",
                   "TRIPPED" if check["tripped"] else "ok     ", check["name"], check["detail"])
    strategy = report["trading"]["strategy"]
    return {"model": model, "version": report["version"], "as_of": report["as_of"], "action": report["action"],
            "reason": report["reason"], "tripped": [c for c in report["checks"] if c["tripped"]],
            "realised": report["live"]["realised"], "promised": report["live"]["promised"],
            "strategy": {k: strategy.get(k) for k in ("total_return", "sharpe", "max_drawdown", "trades")},
            "freshness_hours": report["freshness"]["age_hours"]}


def monitor_message(results: list[dict[str, Any]]) -> str:
    """The alert text: per model the action, and every tripped check with its numbers."""
    lines = [f"monitor_production: {sum(r['action'] != 'ok' for r in results)} of {len(results)} "
             "model(s) need attention"]
    for r in results:
        lines.append(f"{r['model']} {r['version']} at {r['as_of']}: {r['action'].upper()}")
        lines += [f"  - {c['name']}: {c['detail']}" for c in r["tripped"]]
        if r["action"] == "cooldown":
            lines.append(f"  ({r['reason']})")
    return "\n".join(lines)


def retrain_request(results: list[dict[str, Any]], context: dict[str, Any] | None,
                    settings: Settings | None = None) -> dict[str, Any] | None:
    """Alert on every model that is not ``ok``; the retrain request's extra, or ``None``.

    With ``context`` and ``settings``, the requested models' reports of this run are marked as
    emitted (:func:`include.monitoring.mark_requested`), which starts their cooldown.

    Returns:
        ``{"models", "as_of", "reasons": {model: reason}}`` for the models whose action is
        ``retrain_requested``; ``None`` when there are none (no asset event).
    """
    attention = [r for r in results if r["action"] != "ok"]
    if attention and context is not None:
        send(monitor_message(attention), context)
    wanted = [r for r in results if r["action"] == "retrain_requested"]
    if not wanted:
        return None
    request = {"models": [r["model"] for r in wanted], "as_of": max(r["as_of"] for r in wanted),
               "reasons": {r["model"]: r["reason"] for r in wanted}}
    if context is not None and settings is not None:
        # Last step: the cooldown starts with the event, not with the report that asked for it.
        store = open_store(settings)
        try:
            mark_requested(store.engine, context["run_id"], request["models"])
        finally:
            store.dispose()
    logger.warning("retrain requested for %s", ", ".join(request["models"]))
    return request
