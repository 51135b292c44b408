"""Glue between Airflow task bodies and :mod:`include.pipeline`: rebuild typed objects from XCom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from include.config import RunConfig, Settings
from include.pipeline import RunWindow, run_dir


def unpack(config: dict[str, Any], window: dict[str, Any],
           dag_id: str) -> tuple[RunConfig, RunWindow, Settings, Path]:
    """``(config, window, settings, run folder)`` from the ``plan_run`` task's XCom outputs."""
    cfg = RunConfig.from_params(config)
    win = RunWindow(**window)
    settings = Settings.from_env()
    return cfg, win, settings, run_dir(settings, dag_id, win)
