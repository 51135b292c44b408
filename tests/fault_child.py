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


def _install(fault: str) -> None:
    """Wrap the function at ``fault`` so that reaching the point kills this process."""
    import include.pipeline.decision as decision
    import include.registry.core as core
    import include.registry.retention as retention
    import include.serving as serving
    from include.registry import CHALLENGER, ModelRegistry

    if fault == "register: staged, not published":
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
    elif fault == "retention: folder set aside, not deleted":
        real_rmtree = retention.shutil.rmtree
        retention.shutil.rmtree = lambda path, *a, **k: _die() if Path(path).name.startswith(".removing.") \
            else real_rmtree(path, *a, **k)
    else:
        raise ValueError(f"unknown fault point {fault!r}")


def run(spec: dict[str, Any]) -> None:
    from include.config import RunConfig, Settings
    from include.pipeline import RunWindow, assemble, gate, keep, promote
    from include.registry import ModelRegistry

    settings = Settings(**{k: (Path(v) if k.endswith("_dir") else v) for k, v in spec["settings"].items()})
    cfg, window, out = RunConfig.from_params(spec["config"]), RunWindow(**spec["window"]), Path(spec["out"])
    xcom_path = Path(spec["xcom"])
    xcom = json.loads(xcom_path.read_text()) if xcom_path.is_file() else {}
    if spec.get("fault"):
        _install(spec["fault"])
    for task in spec["tasks"]:
        if task == "assemble_ensemble":
            assembled = assemble(cfg, window, settings, out, spec["trained"], dag_id="weekly_retrain",
                                 run_id=spec["run_id"])
            import include.pipeline.decision as decision  # the module's name, so a fault can wrap it

            value: Any = {"ensemble": assembled, "trading": decision.simulate_trading(cfg, window, settings, out)}
        elif task == "quality_gate":
            value = gate(cfg, window, settings, out, xcom["assemble_ensemble"]["ensemble"],
                         xcom["assemble_ensemble"]["trading"])
        elif task == "promote_or_keep":
            decided = xcom["quality_gate"]
            value = (promote(settings, decided, run_id=spec["run_id"], dag_id="weekly_retrain",
                             as_of=datetime.fromisoformat(window.interval_end)) if decided["passed"]
                     else keep(settings, decided, run_id=spec["run_id"], dag_id="weekly_retrain"))
        elif task == "apply_retention":
            registry = ModelRegistry.from_settings(settings)
            value = {"removed": registry.cleanup(spec["keep_last"])}
            registry.dispose()
        else:
            raise ValueError(f"unknown task {task!r}")
        xcom[task] = value
        tmp = xcom_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(xcom, default=str))
        os.replace(tmp, xcom_path)


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
