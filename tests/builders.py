"""Builders that tests and benchmarks share, declared once instead of copied into each module.

Run parameters here are keyword arguments of :class:`include.config.RunConfig` and keys of a
``weekly_retrain`` run's conf alike: spread them into either (``RunConfig(**PERMISSIVE_GATE)``,
``{**SHORT, **PERMISSIVE_GATE}``). A test that needs one more setting adds it at its call site.
(A self-contained deployment in a folder is :meth:`include.config.Settings.in_folder`.)
"""

from __future__ import annotations

from typing import Any

#: A quality gate that every candidate passes, so that each week promotes: skill tests whose
#: alternatives any forecast meets (an F1 lead of -1, a log loss under ten times the class
#: prior's, a Sharpe ratio above -1000), no drawdown limit, and a champion that never refuses
#: the challenger (``gate_champion_alpha`` 0).
PERMISSIVE_GATE: dict[str, Any] = {"gate_min_f1_margin": -1.0, "gate_max_log_loss_ratio": 10.0,
                                   "gate_min_sharpe_margin": -1000.0, "gate_max_drawdown": 1.0,
                                   "gate_champion_alpha": 0.0}

#: :data:`PERMISSIVE_GATE` without its champion setting: the skill tests and the drawdown limit
#: always pass, and the comparison with a champion keeps its default level, so a champion
#: significantly better than the challenger still refuses it (a first week, with no champion,
#: promotes).
PERMISSIVE_SKILL: dict[str, Any] = {k: v for k, v in PERMISSIVE_GATE.items() if k != "gate_champion_alpha"}
