"""The steps of a tuning run, one function per task of ``tune_hyperparameters``.

A tuning run plans the markets as ``weekly_retrain`` does (:func:`include.pipeline.plan_universe`)
for a window ending at the as-of date, with ``cv_folds`` set to the tuning's fold count; builds
each market's modelling table with the weekly run's own steps (ingest, validate, features,
labels) under ``<RUN_ARTIFACTS_DIR>/tune_hyperparameters/<model>/<interval>/``; tunes each
(market, family) as one study (:func:`include.tuning.tune_family`) and records its set
(:class:`include.training.sets.HyperparameterSets`); and writes ``tuning.json`` beside the table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pandas as pd

from include.config import RunConfig, Settings, TuningConfig
from include.pipeline import MarketRun, plan_universe, run_routine
from include.run_folder import run_dir, run_location, staged_run_dir
from include.storage import location, write_json
from include.training.sets import HyperparameterSets
from include.tuning import open_storage, summarise_study, tune_family
from include.windows import RunWindow

logger = logging.getLogger(__name__)

DAG_ID = "tune_hyperparameters"
#: Run parameters of the tuning itself (:class:`~include.config.TuningConfig`; the rest are
#: :class:`~include.config.RunConfig` fields).
TUNING_PARAMS = tuple(f.name for f in fields(TuningConfig))


def plan_tuning(params: dict[str, Any], *, data_interval_start: Any, data_interval_end: Any,
                run_after: Any) -> list[dict[str, Any]]:
    """One plan per market: ``{"model", "config", "window", "tuning"}`` (JSON for XCom), as of the
    ``as_of_date`` param, else the data interval's end (a scheduled run), else the last complete
    week.

    Raises:
        ConfigError: a bad run parameter, named.
    """
    tuning = TuningConfig.from_params({k: params.get(k) for k in TUNING_PARAMS}).to_dict()
    run_params = {k: v for k, v in params.items() if k not in (*TUNING_PARAMS, "markets", "universe_file")}
    run_params["cv_folds"] = tuning["tune_folds"]
    if not run_params.get("as_of_date") and data_interval_end is not None:
        # A scheduled (monthly) run tunes as of its interval's end: the folds are the weeks before
        # it, as for a run triggered with that as-of date, not one month-long last fold.
        run_params["as_of_date"] = pd.Timestamp(data_interval_end).strftime("%Y-%m-%d")
    plans = plan_universe(run_params, selected=params.get("markets"), universe_file=params.get("universe_file"),
                          data_interval_start=data_interval_start, data_interval_end=data_interval_end,
                          run_after=run_after)
    for plan in plans:
        plan["config"]["cv_folds"] = tuning["tune_folds"]  # over any universe entry's own folds
        RunConfig.from_params(plan["config"])
        plan["tuning"] = tuning
    return plans


def _unpack(plan: dict[str, Any], window: dict[str, Any] | None = None) -> tuple[RunConfig, Any, Settings, Path]:
    cfg, settings = RunConfig.from_params(plan["config"]), Settings.from_env()
    win = RunWindow(**(window or plan["window"]))
    return cfg, win, settings, run_dir(settings, DAG_ID, cfg.model_name, win)


@contextmanager
def _staged(plan: dict[str, Any], window: dict[str, Any] | None = None) -> Iterator[tuple[Any, ...]]:
    """``(config, window, settings, local run folder, the folder's location)`` for one step; the
    folder is staged when the run artifacts are in an object store (:mod:`include.storage`)."""
    cfg, settings = RunConfig.from_params(plan["config"]), Settings.from_env()
    win = RunWindow(**(window or plan["window"]))
    with staged_run_dir(settings, DAG_ID, cfg.model_name, win) as out:
        yield cfg, win, settings, out, run_location(settings, DAG_ID, cfg.model_name, win)


def prepare(plan: dict[str, Any]) -> dict[str, Any]:
    """Ingest, validate, build features and labels for the tuning window of one market, and
    create the study storage's tables in the market database.

    Returns:
        The plan with the settled ``window`` and ``labelled_rows``.

    Raises:
        PipelineError: as the weekly run's steps raise (bad data stops the market with a report).
    """
    with _staged(plan) as (cfg, win, settings, out, _):
        open_storage(settings.market_db_url).remove_session()  # Optuna's tables, before the studies start together
        # The weekly routine's steps up to the labels: the same data, checks and table a weekly run trains on.
        results = run_routine(MarketRun(cfg, win, settings, out, DAG_ID, run_id=None), until="build")
        win, dataset = results["run"].window, results["labels"]
    return {**plan, "window": asdict(win), "labelled_rows": dataset.get("labelled_rows")}


def studies(prepared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One job per (market, family in the market's ``models``): the unit a mapped task tunes."""
    return [{**plan, "family": family} for plan in prepared
            for family in RunConfig.from_params(plan["config"]).models]


def tune_and_record(job: dict[str, Any], *, worker: int = 0) -> dict[str, Any]:
    """Run the job's study to ``tune_trials`` finished trials, then record its set.

    Returns:
        The recorded set's summary: ``{"model", "family", "set_id", "as_of", "study", "n_trials",
        "best_value", "params", "pbo", "best_metrics", "seconds_per_trial"}``.

    Raises:
        ConfigError: bad search space; TrainingError: no trial completed.
    """
    import optuna

    tuning, family = job["tuning"], job["family"]
    timeout = tuning.get("tune_timeout_minutes")
    with _staged(job, job["window"]) as (cfg, win, settings, out, folder):
        ran = tune_family(cfg, win, settings, out, family, n_trials=tuning["tune_trials"],
                          timeout_s=60 * float(timeout) if timeout else None,
                          space_overrides=(tuning.get("tune_search_space") or {}).get(family), worker=worker)
    study = optuna.load_study(study_name=ran["study"], storage=open_storage(settings.market_db_url))
    summary = summarise_study(study)
    sets = HyperparameterSets(settings.market_db_url)
    try:
        stored = sets.record(cfg.model_name, family, win.ts("interval_end"), summary, study=ran["study"],
                             search_space=study.user_attrs.get("search_space", {}),
                             data_window=study.user_attrs.get("data_window", {}))
    finally:
        sets.dispose()
    pbo = (stored.get("pbo") or {}).get("pbo")
    logger.info("%s %s: set %s from %d trial(s) (%s), best out-of-fold log loss %.5f, PBO %s; params %s",
                cfg.model_name, family, stored["set_id"], stored["n_trials"], stored["states"],
                stored["best_value"], "n/a" if pbo is None else f"{pbo:.2f}", stored["params"])
    return {"model": cfg.model_name, "family": family, "set_id": stored["set_id"], "as_of": stored["as_of"],
            "study": stored["study"], "n_trials": stored["n_trials"], "states": stored["states"],
            "best_value": stored["best_value"], "params": stored["params"], "pbo": stored.get("pbo"),
            "best_metrics": stored["best_metrics"], "seconds_per_trial": ran["seconds_per_trial"],
            "run_folder": str(folder)}


def run_note(results: list[dict[str, Any]], limit: int = 1000) -> str:
    """The tuning run's note for the Airflow UI: one short clause per set, within ``limit``
    characters (Airflow stores 1,000); sets that do not fit are counted."""
    done = [r for r in results if r]
    if not done:
        return "Tuning recorded no hyperparameter set."
    head = (f"Tuned {len(done)} hyperparameter set(s) as of {done[0]['as_of'][:10]} "
            "(used by weekly runs with hyperparameters=tuned): ")
    parts = []
    for r in done:
        pbo = (r.get("pbo") or {}).get("pbo")
        parts.append(f"{r['model']} {r['family']}: {r['n_trials']} trials, log loss {r['best_value']:.4f}, "
                     f"PBO {'n/a' if pbo is None else f'{pbo:.2f}'}")
    for shown in range(len(parts), -1, -1):
        rest = len(parts) - shown
        note = (head + "; ".join(parts[:shown]) + (f"; and {rest} more (see publish_summary's log)" if rest else "")
                + ".")
        if len(note) <= limit:
            return note
    return note[:limit]


def report(results: list[dict[str, Any]]) -> str:
    """The run's sets as text, one line per (market, family), and ``tuning.json`` in each market's folder."""
    lines = []
    by_folder: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if not r:
            continue
        by_folder.setdefault(r["run_folder"], []).append(r)
        pbo = (r.get("pbo") or {}).get("pbo")
        f1 = r["best_metrics"].get("macro_f1")
        lines.append(f"{r['model']} {r['family']}: {r['set_id']} ({r['n_trials']} trials: {r['states']}), "
                     f"log loss {r['best_value']:.5f}, macro F1 {f1:.4f}, "
                     f"PBO {'n/a' if pbo is None else f'{pbo:.2f}'}; {json.dumps(r['params'], sort_keys=True)}")
    for folder, rows in by_folder.items():
        write_json(location(folder) / "tuning.json", rows)
    return "\n".join(lines)
