"""Airflow plugin: the model registry's HTTP API and a "Models" page, inside the api-server.

Mounted at ``/model-registry`` by the api-server (Airflow 3 ``fastapi_apps``); every route needs
an authenticated Airflow user (a ``Bearer`` token from ``POST /auth/token`` or the UI's session
cookie), through Airflow's own ``get_user`` dependency, and is authorized by Airflow's auth
manager: reading models, lineage, reports and monitoring needs read access to the runs of
``weekly_retrain`` (the DAG that made them); ``POST /predict``, which writes the prediction log
that monitoring trusts, needs permission to trigger runs of ``monitor_production`` (the Viewer role
gets 403; User and above may). OpenAPI: ``/model-registry/openapi.json`` and ``/model-registry/docs``.

===============================================  ==================================================
``GET  /model-registry/models``                  registered models with their production version
``GET  /model-registry/models/{name}/versions``  one model's versions, newest first
``GET  /model-registry/models/{name}/aliases/{alias}``  where the alias points, and its history
``GET  /model-registry/versions``                every version, newest first, with aliases, metrics
``GET  /model-registry/versions/{id}``           one version: model, files, sha256, lineage
``GET  /model-registry/versions/{id}/report``    the HTML report of the run that made it
``POST /model-registry/predict``                 ``{"model"}`` or ``{"symbol", "market_type"?,
                                                 "timeframe"?}``, ``"as_of"?`` -> probabilities
``GET  /model-registry/ui``                      the "Models" page, shown in the Airflow UI
===============================================  ==================================================

Everything goes through :mod:`include.registry` and :mod:`include.serving` (one production
loader per registered model, cached across requests).
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import get_user, requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field

from include.gate import check_outcome
from include.registry.pages import cell as _cell
from include.run_folder import RunFolder

app = FastAPI(
    title="Model registry",
    version="2.0",
    description="Registered models (one per market and target), their versions, aliases and history, "
                "and predictions of each model's production version.",
    dependencies=[Depends(get_user),
                  # What the registry holds was made by weekly_retrain's runs: who may read those may read it.
                  Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id="weekly_retrain"))],
)

#: Writing a prediction feeds monitoring: it takes the right to start monitoring runs.
_MAY_WRITE_PREDICTIONS = Depends(requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id="monitor_production"))


class PredictRequest(BaseModel):
    """Body of ``POST /predict``: a registered model by name, or a market that resolves to one."""

    model: str | None = Field(None, description="Registered model name, e.g. binance-btcusdt-perp-1h-h4.")
    symbol: str | None = Field(None, description="Instrument, e.g. BTCUSDT, when no model is named.")
    market_type: str | None = Field(None, description="perp or spot, to pick among a symbol's models.")
    timeframe: str | None = Field(None, description="e.g. 1h, to pick among a symbol's models.")
    as_of: datetime | None = Field(None, description="Use bars that closed by this UTC time (default: now).")


class PredictResponse(BaseModel):
    """A prediction of a registered model's production version."""

    model: str
    version: str
    symbol: str
    bar: str = Field(description="Open time of the last complete bar used.")
    probabilities: dict[str, float] = Field(description="down / range / up")
    decision: str
    horizon_bars: int
    model_age_hours: float
    stale: bool
    data_age_hours: float = Field(description="Hours from the close of the bar used to as_of.")
    refused: dict[str, str] | None = Field(
        None, description="The production alias's version when it failed verification ({version, error}): the "
                          "answer is then the last verified version's (see version); null otherwise.")
    no_model: dict[str, str] | None = Field(
        None, description="Set while the gate has demoted the model to no model ({since, demoted, reason}): the "
                          "probabilities are the class-prior forecast, version 'none', decision 'no position'.")


def _settings():
    from include.config import Settings

    return Settings.from_env()


def _registry():
    from include.serving import deployment_registry

    return deployment_registry(_settings())


def _not_found(exc: Exception) -> HTTPException:
    return HTTPException(status_code=404, detail=str(exc))


def _summary(registry, version: str, aliases: dict[str, list[str]]) -> dict[str, Any]:
    from include.registry.pages import hyperparameter_summary

    info = registry.describe(version)
    lineage = info["lineage"]
    metrics = lineage.get("metrics", {})
    ens = metrics.get("ensemble", {})
    window = lineage.get("data_window", {})
    return {
        "version": version, "model": info["model"], "registered_at": info["registered_at"],
        "interval_end": info["interval_end"], "aliases": aliases.get(version, []),
        "ever_production": "production" in info["aliases_ever"],
        "symbol": lineage.get("symbol"), "timeframe": lineage.get("timeframe"),
        "macro_f1": ens.get("macro_f1"), "log_loss": ens.get("log_loss"), "brier": ens.get("brier"),
        "gate": _gate_outcome(info),
        "short_history": bool(window.get("short_history")), "train_start": window.get("train_start"),
        "dag_id": lineage.get("dag_id"), "run_id": lineage.get("run_id"),
        "hyperparameters": hyperparameter_summary(lineage),
    }


@app.get("/models", summary="Registered models")
def list_models() -> list[dict[str, Any]]:
    return _registry().models()


@app.get("/models/{name}/versions", summary="One registered model's versions")
def model_versions(name: str) -> list[dict[str, Any]]:
    from include.errors import RegistryError

    registry = _registry()
    try:
        registry.model(name)
    except RegistryError as exc:
        raise _not_found(exc) from exc
    aliases = registry.version_aliases()
    return [_summary(registry, v, aliases) for v in reversed(registry.versions(name))]


@app.get("/models/{name}/aliases/{alias}", summary="An alias of a registered model and its history")
def get_alias(name: str, alias: str) -> dict[str, Any]:
    from include.errors import RegistryError

    registry = _registry()
    try:
        registry.model(name)
    except RegistryError as exc:
        raise _not_found(exc) from exc
    pointer = registry.alias(name, alias)
    history = registry.history(alias, model=name)
    if pointer is None and not history:
        raise HTTPException(status_code=404, detail=f"alias {alias!r} of {name} was never set")
    return {"model": name, "alias": alias, "version": pointer.version if pointer else None,
            "since": pointer.since if pointer else None, "history": history}


@app.get("/versions", summary="List versions")
def list_versions() -> list[dict[str, Any]]:
    registry = _registry()
    aliases = registry.version_aliases()
    return [_summary(registry, v, aliases) for v in reversed(registry.versions())]


@app.get("/versions/{version}", summary="One version")
def get_version(version: str) -> dict[str, Any]:
    from include.errors import RegistryError

    try:
        return _registry().describe(version)
    except RegistryError as exc:
        raise _not_found(exc) from exc


def _gate_outcome(info: dict[str, Any]) -> dict[str, Any] | None:
    """What the gate compared for a version, from its run's ``gate_decision.json``.

    Returns:
        ``{"passed", "failed" (check names), "challenger", "champion" (macro F1 of both models
        on the same rows where both are out of sample; champion None without one), "n", "p_value",
        "champion_version"}``, or ``None`` when the run folder is gone.
    """
    try:
        record = json.loads(RunFolder(_report_path(info).parent).gate_decision.read_text())
    except (OSError, KeyError, ValueError):
        return None
    champion = record.get("champion_evaluation") or {}
    window = champion.get("challenger_metrics") or record.get("candidate_gate_window") or {}
    comparison = champion.get("comparison") or champion.get("paired_test") or {}
    return {"passed": bool(record.get("passed")),
            "failed": [c["name"] for c in record.get("checks", []) if check_outcome(c) == "failed"],
            "deciding": record.get("deciding"), "action": record.get("action"),
            "challenger": window.get("macro_f1"), "n": window.get("n"),
            "champion": (champion.get("metrics") or {}).get("macro_f1"),
            "champion_version": champion.get("version"),
            "p_value": comparison.get("p_value"),
            "same_model": bool(comparison.get("same_forecast"))}


def _gate_cell(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "<span title='run folder cleaned'>–</span>"
    verdict = ("<b class='pass'>PASS</b>" if gate["passed"]
               else f"<b class='fail'>FAIL</b> {html.escape(', '.join(gate['failed']))}")
    if gate.get("deciding"):
        verdict += f"<br>{html.escape(gate['deciding'])}"
    if gate["champion"] is None:
        versus = "no champion compared"
    else:
        p = (f", p(champion better) = {gate['p_value']:.2f}" if gate["p_value"] is not None
             else ", same model" if gate.get("same_model") else "")
        versus = (f"macro F1 {gate['challenger']:.3f} vs champion {html.escape(str(gate['champion_version']))} "
                  f"{gate['champion']:.3f} on the same {gate['n']} rows{p}")
    return f"{verdict}<br><small>{versus}</small>"


def _report_path(info: dict[str, Any]) -> Any:
    from include.run_folder import version_run_dir

    return version_run_dir(_settings(), info["model"], info["lineage"]) / "report.html"


def _file_response(path: Any, media_type: str | None) -> Response:
    """A run folder's file: sent from disk, or read from the object store."""
    from include.storage import is_remote

    if is_remote(path):
        return Response(path.read_bytes(), media_type=media_type)
    return FileResponse(path, media_type=media_type)


@app.get("/versions/{version}/report", summary="The HTML report of the run that made a version",
         response_class=FileResponse)
def version_report(version: str) -> Response:
    from include.errors import RegistryError

    try:
        path = _report_path(_registry().describe(version))
    except (RegistryError, KeyError, ValueError) as exc:
        raise _not_found(exc) from exc
    if not path.is_file():
        raise HTTPException(status_code=404, detail=f"no report at {path} (run folder cleaned, or run unfinished)")
    return _file_response(path, "text/html")


@app.get("/versions/{version}/data_docs/{path:path}", summary="The Great Expectations Data Docs of a version's run",
         response_class=FileResponse)
def version_data_docs(version: str, path: str) -> Response:
    from include.errors import RegistryError
    from include.storage import is_remote

    try:
        root = _report_path(_registry().describe(version)).parent / "data_docs"
    except RegistryError as exc:
        raise _not_found(exc) from exc
    parts = Path(path).parts
    if is_remote(root):  # keys have no links to follow: only ".." could leave the folder
        target, inside = root.joinpath(*parts), ".." not in parts
    else:
        root = root.resolve()
        target = (root / path).resolve()
        inside = target.is_relative_to(root)
    if not inside or not target.is_file():
        raise HTTPException(status_code=404, detail=f"no Data Docs page {path!r} for {version}")
    return _file_response(target, "text/html" if target.suffix == ".html" else None)


@app.post("/predict", summary="Predict with a registered model's production version", response_model=PredictResponse,
          dependencies=[_MAY_WRITE_PREDICTIONS])
def predict(body: PredictRequest) -> dict[str, Any]:
    from include.errors import RegistryError, ServingError
    from include.serving import production_model

    settings = _settings()
    try:
        name = _registry().resolve_model(body.model, symbol=body.symbol, market_type=body.market_type,
                                         timeframe=body.timeframe)
    except RegistryError as exc:
        raise _not_found(exc) from exc
    try:
        return production_model(settings, name).predict(body.as_of, log_as="api").to_dict()
    except ServingError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except RegistryError as exc:
        raise HTTPException(status_code=500, detail=str(exc)) from exc


#: The Models page sits in an iframe under the Airflow UI; links open in the top window.
_RUN_LINK = "/dags/{dag_id}/runs/{run_id}"


def _monitoring(model: str | None, limit: int) -> dict[str, list[dict[str, Any]]]:
    import sqlalchemy as sa

    from include.monitoring import reports

    engine = sa.create_engine(_settings().market_db_url)
    try:
        found = reports(engine, model, limit=limit)
    except sa.exc.OperationalError:  # no market store yet: nothing monitored
        found = []
    finally:
        engine.dispose()
    out: dict[str, list[dict[str, Any]]] = {}
    for report in found:
        out.setdefault(report["model"], []).append(report)
    return out


@app.get("/monitoring", summary="Monitoring reports of every production model, newest first")
def monitoring(limit: int = 200) -> dict[str, Any]:
    from include.monitoring.page import history

    return {model: {"latest": reports[0], "history": history(reports)}
            for model, reports in _monitoring(None, limit).items()}


@app.get("/monitoring/{name}", summary="One registered model's monitoring reports, newest first")
def monitoring_of(name: str, limit: int = 50) -> list[dict[str, Any]]:
    return _monitoring(name, limit).get(name, [])


@app.get("/monitoring-ui", response_class=HTMLResponse, summary="The Monitoring page")
def monitoring_page() -> str:
    from include.monitoring.page import render

    return render(_monitoring(None, 500))


def _track_record(name: str) -> dict[str, Any] | None:
    """The stored track record of a registered model (``python -m include.track_record record``)."""
    from include.errors import ConfigError
    from include.paths import check_name

    try:
        path = _settings().registry_dir / "track_record" / f"{check_name(name, 'registered model')}.json"
        return json.loads(path.read_text())
    except (ConfigError, OSError, ValueError):
        return None


@app.get("/models/{name}/track-record", summary="The gate's forward track record for a registered model")
def track_record_of(name: str) -> dict[str, Any]:
    record = _track_record(name)
    if record is None:
        raise HTTPException(status_code=404, detail=f"no track record stored for {name}: run "
                            f"python -m include.track_record record --model {name}")
    return record


@app.get("/versions/{version}/page", response_class=HTMLResponse, summary="One version's page")
def version_page(version: str) -> str:
    from include.errors import RegistryError
    from include.registry.pages import version_page as render

    registry = _registry()
    try:
        info = registry.describe(version)
    except RegistryError as exc:
        raise _not_found(exc) from exc
    return render(info, registry.ledger(info["model"]))


@app.get("/models/{name}/timeline", response_class=HTMLResponse,
         summary="A registered model's production alias history: moves, keeps, rollbacks, who and why")
def alias_timeline(name: str) -> str:
    from include.errors import RegistryError
    from include.registry.pages import timeline_page

    registry = _registry()
    try:
        registry.model(name)
    except RegistryError as exc:
        raise _not_found(exc) from exc
    return timeline_page(name, registry.ledger(name))


@app.get("/ui", response_class=HTMLResponse, summary="The Models page")
def models_page() -> str:
    from include.registry.pages import track_record_section

    registry = _registry()
    aliases = registry.version_aliases()
    columns = ["version", "aliases", "interval_end", "macro_f1", "log_loss", "brier", "gate", "hyperparameters",
               "registered_at", "run", "report"]
    head = "".join(f"<th>{c}</th>" for c in columns)
    sections = []
    for model in registry.models():
        rows = [_summary(registry, v, aliases) for v in reversed(registry.versions(model["name"]))]
        body = []
        for row in rows:
            marked = "production" in row["aliases"]
            cells = []
            for c in columns:
                if c == "run":
                    cell = ("<a target='_top' href='"
                            f"{_RUN_LINK.format(dag_id=quote(row['dag_id'] or ''), run_id=quote(row['run_id']))}'>"
                            f"{_cell(row['run_id'])}</a>" if row["run_id"] and row["dag_id"] else "")
                elif c == "report":
                    cell = f"<a target='_blank' href='versions/{quote(row['version'])}/report'>report</a>"
                elif c == "gate":
                    cell = _gate_cell(row["gate"])
                elif c == "aliases":
                    cell = _cell(", ".join(row[c]) + (" (short history)" if row["short_history"] else ""))
                elif c == "version":
                    cell = (("&#9733; " if marked else "")
                            + f"<a href='versions/{quote(row['version'])}/page'>{_cell(row['version'])}</a>")
                else:
                    cell = _cell(row[c])
                cells.append(f"<td>{cell}</td>")
            body.append(f"<tr class=\"{'production' if marked else ''}\" "
                        f"data-version=\"{html.escape(row['version'])}\">"
                        + "".join(cells) + "</tr>")
        production = html.escape(model["production"] or "none")
        since = registry.no_model_since(model["name"]) if model["production"] is None else None
        if since is not None:  # why: the last decision, next
            production = (f"no model</b> since {html.escape(since['at'])}, when the gate demoted "
                          f"{html.escape(str(since['from']))}: the class-prior forecast and no position<b>")
        last = next((e for e in reversed(registry.ledger(model["name"])) if e.get("decision")), None)
        latest = (f" Last decision ({html.escape(last['at'])}): "
                  f"<b>{html.escape(str(last['decision'].get('deciding') or last['decision'].get('summary')))}</b>."
                  if last else "")
        sections.append(
            f"<section class='model' data-model=\"{html.escape(model['name'])}\">"
            f"<h3>{html.escape(model['name'])}</h3><p>{html.escape(model['symbol'])} "
            f"{html.escape(model['market_type'])} "
            f"{html.escape(model['timeframe'])}, horizon {model['label_horizon_bars']} bars, labels "
            f"{html.escape(model['label_threshold_mode'])} {model['label_threshold']:g}. "
            f"Production: <b>{production}</b>.{latest} {len(rows)} version(s). "
            f"<a href='models/{quote(model['name'])}/timeline'>Production history</a>.</p>"
            # The gate's record (chart first) before the versions: how the decisions did, then each one.
            f"{track_record_section(model['name'], _track_record(model['name']))}"
            f"<table><tr>{head}</tr>{''.join(body)}</table></section>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Models</title><style>"
        "body{font-family:sans-serif;margin:16px}table{border-collapse:collapse;margin-bottom:24px}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}h3{margin:16px 0 4px}"
        "tr.production{background:#e6f4ea;font-weight:bold}.pass{color:#070}.fail{color:#b00}</style></head><body>"
        f"<h2>Registered models ({len(sections)})</h2><p>&#9733; production. macro_f1, log_loss, brier: the "
        "ensemble's out-of-fold metrics over all walk-forward folds. gate: the decision, and the challenger and "
        "the champion it was compared with, both scored on the same rows, where both are out of sample. A "
        "version's id opens its page; Production history, the model's alias timeline.</p>"
        + "".join(sections) + "</body></html>"
    )


class ModelRegistryPlugin(AirflowPlugin):
    """Registers the API and the Models page with the api-server and the UI."""

    name = "model_registry"
    fastapi_apps = [{"app": app, "url_prefix": "/model-registry", "name": "Model registry"}]
    external_views = [{"name": "Models", "href": "/model-registry/ui", "destination": "nav",
                       "url_route": "models"},
                      {"name": "Monitoring", "href": "/model-registry/monitoring-ui", "destination": "nav",
                       "url_route": "monitoring"}]
