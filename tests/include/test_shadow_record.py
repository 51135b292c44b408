"""The shadow record: earlier candidates' walk-forward forecasts join the log-loss test.

Its level on long records of two forecasts of equal expected loss is tested with the other
level tests (``tests/include/test_significance.py``, 4,368 rows: 26 weeks).
"""

from __future__ import annotations

import json
from datetime import timedelta

import joblib
import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier

from include.gate import GatePolicy
from include.gate.evidence import RECORD_COLUMNS, candidate_evidence, earlier_record, recipe
from include.registry import OOF_FILE, ModelRegistry
from tests.include.test_gate import _noise_rows

MODEL = "binance-btcusdt-perp-1h-h4"
WEEK = 168
#: The week ends of the registered candidates, oldest first.
ENDS = pd.date_range("2023-03-05", periods=5, freq="7D", tz="UTC")
CONFIG = {"symbol": "BTCUSDT", "label_horizon_bars": 4, "label_threshold_mode": "volatility",
          "label_threshold": 0.43, "label_vol_window_bars": 168, "train_window_days": 240,
          "as_of_date": "x", "gate_alpha": 0.1}


def _oof(end: pd.Timestamp, seed: int, folds: int = 6, edge: float = 0.0) -> pd.DataFrame:
    """``folds`` weeks of hourly out-of-fold rows ending at ``end``, with a ``version`` tag."""
    frame = _noise_rows(seed, n=folds * WEEK, edge=edge)
    frame.index = pd.date_range(end - timedelta(hours=folds * WEEK), periods=folds * WEEK, freq="h")
    frame["fold"] = np.repeat(np.arange(folds), WEEK)
    return frame


def _register(reg: ModelRegistry, tmp_path, end: pd.Timestamp, oof: pd.DataFrame, **config) -> dict:
    folder = tmp_path / f"cand-{end:%Y%m%d}-{len(config)}"
    folder.mkdir()
    joblib.dump(DummyClassifier().fit(np.zeros((3, 1)), [0, 1, 2]), folder / "model.joblib")
    oof.to_parquet(folder / OOF_FILE)
    lineage = {"exchange": "binance", "symbol": "BTCUSDT", "market_type": "perp", "timeframe": "1h",
               "config": {**CONFIG, **config}, "feature_spec": {"sha256": "spec-2"},
               "data_window": {"trained_until": end.isoformat()}}
    (folder / "metadata.json").write_text(json.dumps(lineage))
    reg.register(folder, end.to_pydatetime())
    return lineage


def test_the_shadow_record_is_the_weeks_before_the_candidate_from_earlier_candidates_each_bar_once(reg, tmp_path):
    oofs = [_oof(end, seed) for seed, end in enumerate(ENDS)]
    lineages = [_register(reg, tmp_path, end, oof) for end, oof in zip(ENDS, oofs, strict=True)]
    candidate = oofs[-1]

    record = earlier_record(reg, MODEL, lineages[-1], candidate, weeks=3)
    assert list(record.columns) == RECORD_COLUMNS
    first = candidate.index.min()
    assert record.index.is_unique and record.index.is_monotonic_increasing
    assert record.index.min() == first - timedelta(weeks=3) and record.index.max() == first - timedelta(hours=1)
    # The week just before the candidate's rows comes from the newest earlier candidate (its
    # oldest fold), the one before it from the candidate a week older, and so on.
    for weeks_back, source in ((1, oofs[3]), (2, oofs[2]), (3, oofs[1])):
        start = first - timedelta(weeks=weeks_back)
        week = record[(record.index >= start) & (record.index < start + timedelta(weeks=1))]
        assert len(week) == WEEK
        pd.testing.assert_frame_equal(week, source.loc[week.index, RECORD_COLUMNS])
    assert earlier_record(reg, MODEL, lineages[-1], candidate, weeks=0).empty
    # The first candidate has nothing before it.
    assert earlier_record(reg, MODEL, lineages[0], oofs[0], weeks=20).empty


def test_only_earlier_candidates_of_the_same_recipe_count(reg, tmp_path):
    other = _register(reg, tmp_path, ENDS[3], _oof(ENDS[3], 3), train_window_days=730)
    mine = _register(reg, tmp_path, ENDS[4], _oof(ENDS[4], 4))
    assert recipe(other) != recipe(mine)
    # A change of the gate's own parameters or the run's date is the same recipe.
    assert recipe(mine) == recipe({**mine, "config": {**mine["config"], "gate_alpha": 0.5, "as_of_date": "y"}})
    assert earlier_record(reg, MODEL, mine, _oof(ENDS[4], 4), weeks=20).empty
    # A later candidate (trained after this one) is never part of its record.
    later = _register(reg, tmp_path, ENDS[4] + timedelta(weeks=1), _oof(ENDS[4] + timedelta(weeks=1), 5))
    assert later and earlier_record(reg, MODEL, mine, _oof(ENDS[4], 4), weeks=20).empty


def test_an_edge_too_small_for_one_candidate_s_rows_passes_on_its_shadow_record(reg, tmp_path):
    """A steady edge: the candidate's own 1,008 rows do not reach the weekly level; with 20 weeks
    of earlier candidates' forecasts of the same edge, the same test does."""
    policy = GatePolicy()
    ends = pd.date_range("2023-01-01", periods=21, freq="7D", tz="UTC")
    # Each earlier candidate registers only its newest week here: that is all its record adds.
    lineages = [_register(reg, tmp_path, end, _oof(end, 100 + i, folds=1, edge=0.005))
                for i, end in enumerate(ends[:-1])]
    assert lineages
    candidate = _oof(ends[-1] + timedelta(weeks=5), 7, edge=0.005)
    lineage = {**lineages[-1], "data_window": {"trained_until": (ends[-1] + timedelta(weeks=5)).isoformat()}}
    alone = candidate_evidence(policy, candidate, None, horizon=4, bar_seconds=3600, random_state=0)
    earlier = earlier_record(reg, MODEL, lineage, candidate, weeks=policy.record_weeks)
    pooled = candidate_evidence(policy, candidate, None, horizon=4, bar_seconds=3600, random_state=0,
                                earlier=earlier)
    assert alone["log_loss"]["p_value"] > policy.level, alone["log_loss"]
    assert pooled["log_loss"]["p_value"] <= policy.level, pooled["log_loss"]
    assert pooled["log_loss"]["record_rows"] == len(candidate) + len(earlier) == len(candidate) + 20 * WEEK
    assert pooled["log_loss"]["earlier_rows"] == 20 * WEEK and alone["log_loss"]["earlier_rows"] == 0

