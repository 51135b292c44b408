"""Two weekly runs decide today what the code decided before its redesign into layers and one routine.

The reference (``tests/fixtures/equivalence_two_weeks.json``) was recorded with
``bench/equivalence.py`` from the code before the redesign (commit a692995): BTCUSDT, the weeks
ending 2023-12-24 and 2023-12-31 on an empty store and registry, default parameters but a gate
whose skill tests always pass (:data:`tests.builders.PERMISSIVE_SKILL`), so that the first week
promotes and the second compares its candidate with that champion. The ensemble is the one the
reference was recorded with (:data:`RECORDED_ENSEMBLE`: three families at 0.4 / 0.4 / 0.2; the
default has since gained the logistic family) and the trading decision's margins come from
the grid it had (``trade_may_stay_flat`` off). Each week's decision, every
gate check's value, the out-of-fold metrics (ensemble and members) and the production version's
forecast and member files must be the same, numbers to 1e-9.
"""

from __future__ import annotations

import json

import pytest

from bench.equivalence import differences, week_record
from include.config import Settings
from tests.builders import PERMISSIVE_SKILL
from tests.conftest import ROOT

REFERENCE = ROOT / "tests" / "fixtures" / "equivalence_two_weeks.json"
WEEKS = ("2023-12-24", "2023-12-31")
RECORDED_ENSEMBLE = {"models": ("lightgbm", "xgboost", "random_forest"),
                     "ensemble_weights": {"lightgbm": 0.4, "xgboost": 0.4, "random_forest": 0.2},
                     "trade_may_stay_flat": False}


@pytest.mark.integration
def test_two_weeks_decide_as_before_the_redesign(tmp_path):
    settings = Settings.in_folder(tmp_path)
    config = {**PERMISSIVE_SKILL, **RECORDED_ENSEMBLE}
    record = {"BTCUSDT": [week_record(settings, "BTCUSDT", week, config) for week in WEEKS]}
    # Through JSON, as the reference was written, so that NumPy scalars compare as the numbers they are.
    now = json.loads(json.dumps(record, sort_keys=True, default=str))
    reference = json.loads(REFERENCE.read_text())
    assert [w["action"] for w in reference["BTCUSDT"]][0] == "promote"  # the second week has a champion
    assert differences(reference, now, 1e-9) == []


def test_the_comparison_finds_a_difference_beyond_the_tolerance():
    before = {"m": [{"action": "promote", "log_loss": 1.0, "checks": [{"passed": True}]}]}
    assert differences(before, before, 1e-9) == []
    assert differences(before, {"m": [{"action": "keep", "log_loss": 1.0, "checks": [{"passed": True}]}]},
                       1e-9) == [".m[0].action: 'promote' vs 'keep'"]
    assert differences(before, {"m": [{"action": "promote", "log_loss": 1.0 + 1e-8, "checks": [{"passed": True}]}]},
                       1e-9) != []
    assert differences(before, {"m": [{"action": "promote", "log_loss": 1.0 + 1e-10, "checks": [{"passed": True}]}]},
                       1e-9) == []
