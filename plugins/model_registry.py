"""Airflow plugin: the model registry's HTTP API and a "Models" page, inside the api-server.

Mounted at ``/model-registry`` by the api-server (Airflow 3 ``fastapi_apps``); every route needs
an authenticated Airflow user (a ``Bearer`` token from ``POST /auth/token`` or the UI's session
cookie), through Airflow's own ``get_user`` dependency. OpenAPI: ``/model-registry/openapi.json``
and ``/model-registry/docs``.

=======================================  ==========================================================
``GET  /model-registry/versions``        versions, newest first, with aliases and key metrics
``GET  /model-registry/versions/{id}``   one version: files, sha256, lineage, aliases
``GET  /model-registry/aliases/{alias}`` where an alias points and its whole history
``POST /model-registry/predict``         ``{"symbol", "as_of"?}`` -> class probabilities + version
``GET  /model-registry/ui``              the "Models" page (HTML table), shown in the Airflow UI
=======================================  ==========================================================

Everything goes through :mod:`include.registry` and :mod:`include.serving` (the one production
loader, cached across requests).
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from airflow.api_fastapi.core_api.security import get_user
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

app = FastAPI(
    title="Model registry",
    version="1.0",
    description="Versions, aliases and their history, and predictions of the production model.",
    dependencies=[Depends(get_user)],
)


class PredictRequest(BaseModel):
    """Body of ``POST /predict``."""

    symbol: str = Field(description="Instrument, e.g. BTCUSDT; must be the production model's.")
    as_of: datetime | None = Field(None, description="Use bars that closed by this UTC time (default: now).")


class PredictResponse(BaseModel):
    """A prediction of the production model."""

    version: str
    symbol: str
    bar: str = Field(description="Open time of the last complete bar used.")
    probabilities: dict[str, float] = Field(description="down / range / up")
    decision: str
    horizon_bars: int
    model_age_hours: float
    stale: bool


def _settings():
    from include.config import Settings

    return Settings.from_env()


def _registry():
    from include.serving import production_model

    return production_model(_settings()).registry


def _summary(registry, version: str, aliases: dict[str, list[str]]) -> dict[str, Any]:
    info = registry.describe(version)
    lineage = info["lineage"]
    metrics = lineage.get("metrics", {})
    ens = metrics.get("ensemble", {})
    return {
        "version": version, "registered_at": info["registered_at"], "interval_end": info["interval_end"],
        "aliases": aliases.get(version, []), "ever_production": "production" in info["aliases_ever"],
        "symbol": lineage.get("symbol"), "timeframe": lineage.get("timeframe"),
        "macro_f1": ens.get("macro_f1"), "log_loss": ens.get("log_loss"), "brier": ens.get("brier"),
        "gate_window_macro_f1": metrics.get("gate_window", {}).get("macro_f1"),
        "run_id": lineage.get("run_id"),
    }


@app.get("/versions", summary="List versions")
def list_versions() -> list[dict[str, Any]]:
    registry = _registry()
    aliases: dict[str, list[str]] = {}
    for alias, version in registry.aliases().items():
        aliases.setdefault(version, []).append(alias)
    return [_summary(registry, v, aliases) for v in reversed(registry.versions())]


@app.get("/versions/{version}", summary="One version")
def get_version(version: str) -> dict[str, Any]:
    from include.errors import RegistryError

    try:
        return _registry().describe(version)
    except RegistryError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@app.get("/aliases/{alias}", summary="An alias and its history")
def get_alias(alias: str) -> dict[str, Any]:
    registry = _registry()
    pointer = registry.alias(alias)
    history = registry.history(alias)
    if pointer is None and not history:
        raise HTTPException(status_code=404, detail=f"alias {alias!r} was never set")
    return {"alias": alias, "version": pointer.version if pointer else None,
            "since": pointer.since if pointer else None, "history": history}


@app.post("/predict", summary="Predict with the production model", response_model=PredictResponse)
def predict(body: PredictRequest) -> dict[str, Any]:
    from include.errors import RegistryError, ServingError
    from include.serving import production_model

    try:
        return production_model(_settings()).predict(body.symbol, body.as_of).to_dict()
    except ServingError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except RegistryError as exc:
        raise HTTPException(status_code=500, detail=str(exc)) from exc


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


@app.get("/ui", response_class=HTMLResponse, summary="The Models page")
def models_page() -> str:
    rows = list_versions()
    columns = ["version", "aliases", "symbol", "interval_end", "macro_f1", "gate_window_macro_f1", "log_loss",
               "brier", "registered_at", "run_id"]
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = []
    for row in rows:
        marked = "production" in row["aliases"]
        cells = []
        for c in columns:
            value = ", ".join(row[c]) if c == "aliases" else row[c]
            cells.append(f"<td>{'&#9733; ' if marked and c == 'version' else ''}{_cell(value)}</td>")
        body.append(f"<tr class=\"{'production' if marked else ''}\" data-version=\"{html.escape(row['version'])}\">"
                    + "".join(cells) + "</tr>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Models</title><style>"
        "body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
        "tr.production{background:#e6f4ea;font-weight:bold}</style></head><body>"
        f"<h2>Model versions ({len(rows)})</h2><p>&#9733; production. Out-of-fold metrics of the ensemble; "
        "gate window = the run's own data interval.</p>"
        f"<table id='versions'><tr>{head}</tr>{''.join(body)}</table></body></html>"
    )


class ModelRegistryPlugin(AirflowPlugin):
    """Registers the API and the Models page with the api-server and the UI."""

    name = "model_registry"
    fastapi_apps = [{"app": app, "url_prefix": "/model-registry", "name": "Model registry"}]
    external_views = [{"name": "Models", "href": "/model-registry/ui", "destination": "nav",
                       "url_route": "models"}]
