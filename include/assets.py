"""Airflow Assets shared by DAGs (light: DAG files import it at parse time)."""

from __future__ import annotations

from airflow.sdk import Asset

#: Updated by ``monitor_production`` when a production model drifts or degrades; ``weekly_retrain``
#: runs on its weekly schedule or when this asset is updated. The event's extra names the models
#: (``models``) and the data time of the request (``as_of``, ISO 8601).
RETRAIN_REQUEST = Asset("retrain_request")
