"""Airflow Assets shared by DAGs (light: DAG files import it at parse time)."""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

#: Updated by ``monitor_production`` when a production model drifts or degrades; ``weekly_retrain``
#: runs on its weekly schedule or when this asset is updated. The event's extra names the models
#: (``models``) and the data time of the request (``as_of``, ISO 8601).
RETRAIN_REQUEST = Asset("retrain_request")

#: The alias under which promotions and rollbacks emit each registered model's production asset
#: (:func:`production_asset`): tasks that move production declare it as their outlet, because the
#: models are known only at run time (from the universe file).
PRODUCTION_ALIAS = AssetAlias("model-production")


def production_asset(model: str) -> Asset:
    """The Asset of ``model``'s production alias, ``model://<registered model>/production``.

    Updated on every promotion and rollback with ``{"model", "version", "previous", "event",
    "gate"}`` in the event's extra; a DAG scheduled on it runs after each change of production.
    """
    return Asset(name=f"{model}/production", uri=f"model://{model}/production", group="model")


def production_event(model: str, version: str | None, previous: str | None, event: str,
                     gate: str | None = None) -> dict:
    """The extra of a production asset event (JSON)."""
    return {"model": model, "version": version, "previous": previous, "event": event, "gate": gate}
