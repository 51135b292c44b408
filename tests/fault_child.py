"""A task process of the fault-injection suite (``tests/include/test_fault_injection.py``).

Run as ``python -m tests.fault_child SPEC.json``: it runs the tasks the spec names, in order, as
the weekly DAG's tasks run them (``assemble_ensemble`` = assemble + trading simulation,
``quality_gate``, ``promote_or_keep``, ``apply_retention``), each task's result saved to the
spec's ``xcom`` file as Airflow's XCom would hold it. With ``fault`` set, the process kills itself
with SIGKILL at that point, as a machine or the OOM killer would: no ``finally`` block, no
exception handler and no database rollback runs. The points are set by wrapping the library's
own functions in this process only; the library has no test hooks.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

TASKS = ("assemble_ensemble", "quality_gate", "promote_or_keep", "apply_retention")


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(fault: str, remote: bool) -> None:
    """Wrap the function at ``fault`` so that reaching the point kills this process (``remote``:
    the registry is in an object store)."""
    import include.pipeline.decision as decision
    import include.registry.core as core
    import include.registry.retention as retention
    import include.serving as serving
    from include.registry import CHALLENGER, ModelRegistry

    if fault == "register: staged, not published" and remote:
        # In an object store: the files are uploaded, the manifest and the row are not.
        real_write_json = core.write_json
        core.write_json = lambda path, payload: _die() if Path(str(path)).name == "manifest.json" \
            else real_write_json(path, payload)
    elif fault == "register: staged, not published":
        real_rename = core.os.rename
        core.os.rename = lambda a, b: _die() if Path(str(a)).name.startswith(".v") else real_rename(a, b)
    elif fault == "register: published, row not committed":
        core.version_table.insert = lambda *a, **k: _die()
    elif fault == "register: committed, challenger not moved":
        real_move = ModelRegistry.move_alias
        ModelRegistry.move_alias = lambda self, name, *a, **k: _die() if name == CHALLENGER else real_move(
            self, name, *a, **k)
    elif fault == "challenger moved, trading not simulated":
        decision.simulate_trading = lambda *a, **k: _die()
    elif fault == "gate: decided, record not written":
        real_write = decision.atomic_write_json
        decision.atomic_write_json = lambda path, payload: _die() if Path(path).name == "gate_decision.json" \
            else real_write(path, payload)
    elif fault == "promote: alias moved, not smoke-tested":
        decision.smoke_test = lambda *a, **k: _die()
    elif fault == "promote: smoke test predicted, not returned":
        real_predict = serving.ProductionModel.predict

        def predict(self, as_of=None, *, log_as=None):
            result = real_predict(self, as_of, log_as=log_as)
            if log_as == "smoke_test":
                _die()
            return result

        serving.ProductionModel.predict = predict
    elif fault == "retention: rows marked, files not removed":
        retention._remove_tree = lambda path: _die()
    elif fault == "retention: folder set aside, not deleted" and remote:
        # In an object store there is no folder to set aside: the first version's objects are
        # deleted, the rest of the pass is not done.
        real_remove = retention.remove

        def remove_then_die(path: Any) -> None:
            real_remove(path)
            _die()

        retention.remove = remove_then_die
    elif fault == "retention: folder set aside, not deleted":
        real_rmtree = retention.shutil.rmtree
        retention.shutil.rmtree = lambda path, *a, **k: _die() if Path(path).name.startswith(".removing.") \
            else real_rmtree(path, *a, **k)
    elif fault == "smoke test fails":  # not a kill: the smoke test finds the model broken
        from include.errors import PipelineError

        def fails(*args: Any, **kwargs: Any) -> None:
            raise PipelineError("smoke test failed: the model cannot predict (injected)")

        decision.smoke_test = fails
    else:
        raise ValueError(f"unknown fault point {fault!r}")


#: A second market in every batch: its step is skipped, so each batched task runs through
#: :func:`include.tasks.each_market` and its retry through the outcomes that a try recorded.
PASSENGER = "binance-passenger-perp-1h-h4"
#: The tasks of the ``market`` group (run per market, in batches); the others run once per run.
BATCHED = ("assemble_ensemble", "quality_gate", "promote_or_keep")


def _context(spec: dict[str, Any], task: str) -> dict[str, Any]:
    """The task context each_market reads: the task instance's ids and its try."""
    from types import SimpleNamespace

    return {"ti": SimpleNamespace(dag_id="weekly_retrain", run_id=spec["run_id"], task_id=f"market.{task}",
                                  map_index=0, try_number=spec.get("tries", {}).get(task, 1),
                                  max_tries=spec.get("max_tries", 1), log_url="n/a")}


class _Payload:
    """A pickle that, when loaded, creates the file ``marker``: proof that it was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def _plant(spec: dict[str, Any], settings: Any, cfg: Any, window: Any) -> None:
    """Plant files as someone who can write the artifact store (or a worker's disk) would."""
    import hashlib
    import io

    import joblib
    from airflow.sdk.serde import serialize

    from include import storage

    buffer = io.BytesIO()
    joblib.dump(_Payload(spec["marker"]), buffer)
    payload = buffer.getvalue()
    if spec["fault"] == "plant outcome files":
        # Where a retry once read the outcomes of its earlier try: every batched task's file,
        # naming the payload as a member model and a gate that passed.
        run = settings.runs_dir / "weekly_retrain" / cfg.model_name / window.run_key
        storage.write_bytes(run / "candidates" / "lightgbm" / "planted.joblib", payload)
        member = {"family": "lightgbm", "path": str(run / "candidates" / "lightgbm"),
                  "sha256": hashlib.sha256(payload).hexdigest()}
        results = {"assemble_ensemble": {"ensemble": {"version": "planted", "members": [member]}, "trading": None},
                   "quality_gate": {"passed": True, "candidate": "planted", "model": cfg.model_name},
                   "promote_or_keep": {"action": "promote", "production": "planted"}}
        for task, result in results.items():
            path = settings.runs_dir / ".batches" / "weekly_retrain" / spec["run_id"] / f"market.{task}" / "0.json"
            storage.write_bytes(path, json.dumps(serialize({cfg.model_name: {"result": result}})).encode())
        print(f"planted {len(results)} outcome files", flush=True)
    else:  # "plant cache copies": every object a step copied to this worker's cache
        copies = [p for p in (Path(spec["scratch"]) / ".objects").glob("*/*") if p.is_file()]
        for path in copies:
            path.write_bytes(payload)
        assert copies, "no cached copies to plant"
        print(f"planted {len(copies)} cache copies", flush=True)


def run(spec: dict[str, Any]) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from include.config import RunConfig, Settings
    from include.pipeline import assemble, gate, keep, promote
    from include.registry import ModelRegistry
    from include.run_folder import staged_run_dir
    from include.storage import is_remote, location
    from include.tasks import each_market
    from include.windows import RunWindow

    settings = Settings(**{k: (location(v) if k.endswith("_dir") else v) for k, v in spec["settings"].items()})
    cfg, window = RunConfig.from_params(spec["config"]), RunWindow(**spec["window"])
    xcom_path = Path(spec["xcom"])
    xcom = json.loads(xcom_path.read_text()) if xcom_path.is_file() else {}
    if (spec.get("fault") or "").startswith("plant "):
        _plant(spec, settings, cfg, window)
        return
    if spec.get("fault"):
        _install(spec["fault"], is_remote(settings.registry_dir))

    def step(task: str) -> Any:
        if task == "assemble_ensemble":
            with staged_run_dir(settings, "weekly_retrain", cfg.model_name, window) as out:
                trained = [{**t, "path": str(out / "candidates" / t["family"])} for t in spec["trained"]]
                assembled = assemble(cfg, window, settings, out, trained, dag_id="weekly_retrain",
                                     run_id=spec["run_id"])
                import include.pipeline.decision as decision  # the module's name, so a fault can wrap it

                return {"ensemble": assembled, "trading": decision.simulate_trading(cfg, window, settings, out)}
        if task == "quality_gate":
            with staged_run_dir(settings, "weekly_retrain", cfg.model_name, window) as out:
                return gate(cfg, window, settings, out, xcom["assemble_ensemble"]["ensemble"],
                            xcom["assemble_ensemble"]["trading"])
        if task == "promote_or_keep":
            decided = xcom["quality_gate"]
            return (promote(settings, decided, run_id=spec["run_id"], dag_id="weekly_retrain",
                            as_of=datetime.fromisoformat(window.interval_end)) if decided["passed"]
                    else keep(settings, decided, run_id=spec["run_id"], dag_id="weekly_retrain"))
        if task == "apply_retention":
            registry = ModelRegistry.from_settings(settings)
            try:
                return {"removed": registry.cleanup(spec["keep_last"])}
            finally:
                registry.dispose()
        raise ValueError(f"unknown task {task!r}")

    def market_step(task: str, plan: dict[str, Any]) -> Any:
        if plan["model"] == PASSENGER:
            if spec.get("passenger_error"):
                raise ConnectionResetError("the passenger market's connection was reset")
            raise AirflowSkipException("the passenger market is not run")
        print(f"ran {task} for {plan['model']} in try {_context(spec, task)['ti'].try_number}", flush=True)
        return step(task)

    batch = {"label": f"{cfg.model_name} (+1 more)", "plans": [{"model": cfg.model_name}, {"model": PASSENGER}]}
    for task in spec["tasks"]:
        if task in BATCHED:
            results = each_market(batch, lambda plan, task=task: market_step(task, plan), context=_context(spec, task))
            value = results[cfg.model_name]
        else:
            value = step(task)
        xcom[task] = value
        tmp = xcom_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(xcom, default=str))
        os.replace(tmp, xcom_path)


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
