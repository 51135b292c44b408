"""Calendar walk-forward folds, the deployed model's rows, the fit cache and stable features.

Consecutive weekly runs share every fold but one: these tests check which rows each fold uses,
that a second run reuses exactly the first run's fits (and gets bit-identical out-of-fold
probabilities), that any change to a training row is a miss, and that a bar's features do not
depend on where the run's window starts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.config import RunConfig
from include.data.sources import FileSource
from include.data.store import MarketStore
from include.evaluation import interval_splits
from include.feature_store import feature_frame
from include.features import FeatureSpec, build_features
from include.training import cross_validate, fit_family
from include.training.fit_cache import FitCache
from include.windows import resolve_window

CFG = RunConfig(train_window_days=120, cv_folds=3, models=("lightgbm",), early_stopping_rounds=10)
HOUR = pd.Timedelta(hours=1)
WEEK = pd.Timedelta(days=7)


@pytest.fixture(scope="module")
def market() -> tuple[pd.DataFrame, pd.Series]:
    """Hourly rows 2023-01-01 .. 2023-07-01: five features, three classes with some signal."""
    rng = np.random.default_rng(7)
    index = pd.date_range("2023-01-01", "2023-07-01", freq="h", tz="UTC", inclusive="left", name="timestamp")
    X = pd.DataFrame(rng.normal(size=(len(index), 5)), index=index, columns=[f"f{i}" for i in range(5)])
    score = X["f0"] + 0.5 * X["f1"] + rng.normal(scale=1.5, size=len(index))
    y = pd.Series(np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])), index=index)
    return X, y


def run_table(market, end: str):
    """One weekly run's labelled rows, window and split service (interval ending ``end``)."""
    X, y = market
    window = resolve_window(CFG, data_interval_start=pd.Timestamp(end) - WEEK, data_interval_end=pd.Timestamp(end),
                            run_after=None)
    # Labelled rows: the training window less the last horizon, whose labels are not known yet.
    rows = (X.index >= pd.Timestamp(window.train_start)) & (
        X.index < pd.Timestamp(window.interval_end) - CFG.label_horizon_bars * HOUR)
    Xr, yr = X[rows], y[rows].to_numpy()
    test_size = int((Xr.index >= pd.Timestamp(window.interval_start)).sum())
    return Xr, yr, window, interval_splits(CFG, Xr.index, window, test_size)


def _db(tmp_path) -> str:
    """The market database that holds the cache's digests."""
    return f"sqlite:///{tmp_path / 'market.sqlite'}"


def times(X, idx) -> pd.DatetimeIndex:
    return X.index[idx]


def test_folds_are_the_calendar_weeks_before_the_run_and_consecutive_runs_share_them(market):
    X1, _, w1, s1 = run_table(market, "2023-06-04")
    X2, _, _, s2 = run_table(market, "2023-06-11")
    folds1, folds2 = list(s1.split(len(X1))), list(s2.split(len(X2)))
    assert len(folds1) == CFG.cv_folds
    start = pd.Timestamp(w1.interval_start)
    for fold, train, test in folds1:
        week = start - (CFG.cv_folds - 1 - fold) * WEEK
        assert times(X1, test).min() >= week and times(X1, test).max() < week + WEEK
        # Purge + embargo: no training row within gap rows of the test window.
        assert train[-1] + s1.gap < test[0]
        assert len(train) == s1.max_train_size  # rolling: the same length for every fold
    # Every past week holds all its bars; the run's own week lacks its last horizon.
    assert [len(t) for _, _, t in folds1] == [168, 168, 168 - CFG.label_horizon_bars]
    # Next week's run: its fold k trains on exactly the rows this run's fold k + 1 trained on...
    for (_, train2, _), (_, train1, _) in zip(folds2[:-1], folds1[1:], strict=True):
        assert times(X2, train2).equals(times(X1, train1))
    # ...and its last fold on exactly the rows this run deployed its model on.
    assert times(X2, folds2[-1][1]).equals(times(X1, s1.final_rows(len(X1))))
    assert times(X1, s1.final_rows(len(X1)))[-1] == X1.index[-1] - CFG.cv_embargo_bars * HOUR


def test_the_next_run_reuses_every_fit_but_one_and_gets_identical_out_of_fold_results(market, tmp_path):
    cache = FitCache(tmp_path / "cache", _db(tmp_path))
    X1, y1, _, s1 = run_table(market, "2023-06-04")
    cross_validate("lightgbm", X1, y1, splits=s1, random_state=0, n_jobs=1, early_stopping_rounds=10, cache=cache)
    fit_family("lightgbm", X1, y1, s1.final_rows(len(X1)), s1, random_state=0, n_jobs=1,
               early_stopping_rounds=10, cache=cache)
    assert (cache.hits, cache.misses) == (0, 2 * CFG.cv_folds + 1)  # a fit and an evaluation per fold

    X2, y2, _, s2 = run_table(market, "2023-06-11")
    again = FitCache(tmp_path / "cache", _db(tmp_path))
    cached = cross_validate("lightgbm", X2, y2, splits=s2, random_state=0, n_jobs=2, early_stopping_rounds=10,
                            cache=again)
    # Fold 0 tests a week the first run tested with all its bars: fit and evaluation reused. Fold 1
    # tests the first run's own week, which now has its last horizon labelled: the fit is reused,
    # the evaluation is not. Fold 2 uses the first run's deployed model.
    assert [f["reused"] for f in cached.folds] == ["fit and evaluation", "fit", "fit"]
    fresh = cross_validate("lightgbm", X2, y2, splits=s2, random_state=0, n_jobs=1, early_stopping_rounds=10)
    assert np.array_equal(cached.oof_proba, fresh.oof_proba)
    assert cached.overall == fresh.overall
    assert [f["n_estimators"] for f in cached.folds] == [f["n_estimators"] for f in fresh.folds]
    model, _ = fit_family("lightgbm", X2, y2, s2.final_rows(len(X2)), s2, random_state=0, n_jobs=2,
                          early_stopping_rounds=10, cache=again)
    # Read: fold 0's evaluation (its fitted model is not loaded) and the fits of folds 1 and 2.
    # New: the evaluations of folds 1 and 2, and the model to deploy.
    assert (again.hits, again.misses) == (3, 3) and model.get_params()["n_jobs"] == 2

    # A bar before every fold's training rows is not an input: the fits stay reused.
    X3 = X2.copy()
    X3.iloc[10, 0] += 1.0
    outside = cross_validate("lightgbm", X3, y2, splits=s2, random_state=0, n_jobs=1, early_stopping_rounds=10,
                             cache=FitCache(tmp_path / "cache", _db(tmp_path)))
    assert [f["reused"] for f in outside.folds] == ["fit and evaluation"] * 3
    # One corrected bar that every fold trains on: nothing is reused.
    X3 = X2.copy()
    X3.iloc[list(s2.split(len(X2)))[0][1][-1], 0] += 1e-9
    changed = cross_validate("lightgbm", X3, y2, splits=s2, random_state=0, n_jobs=1, early_stopping_rounds=10,
                             cache=FitCache(tmp_path / "cache", _db(tmp_path)))
    assert [f["reused"] for f in changed.folds] == [None, None, None]


def test_an_unreadable_cache_entry_is_refitted_not_an_error(market, tmp_path):
    X1, y1, _, s1 = run_table(market, "2023-06-04")
    cache = FitCache(tmp_path / "cache", _db(tmp_path))
    rows = s1.final_rows(len(X1))
    fit_family("random_forest", X1, y1, rows, s1, random_state=0, n_jobs=1, cache=cache)
    for path in (tmp_path / "cache").glob("*/*.joblib"):
        path.write_bytes(b"truncated")
    again = FitCache(tmp_path / "cache", _db(tmp_path))
    model, _ = fit_family("random_forest", X1, y1, rows, s1, random_state=0, n_jobs=1, cache=again)
    assert (again.hits, again.misses, again.discarded) == (0, 1, 1) and hasattr(model, "estimators_")


class _Planted:
    """A pickle that runs code when loaded: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).write_text, ("planted code ran",))


def test_a_planted_cache_entry_is_never_unpickled_and_the_fit_is_redone(market, tmp_path, caplog):
    import joblib

    X1, y1, _, s1 = run_table(market, "2023-06-04")
    rows = s1.final_rows(len(X1))
    cache = FitCache(tmp_path / "cache", _db(tmp_path))
    fit_family("lightgbm", X1, y1, rows, s1, random_state=0, n_jobs=1, cache=cache)
    (entry,) = (tmp_path / "cache").glob("*/*.joblib")
    marker = tmp_path / "marker"
    # Replaced in place (its digest is recorded), and planted under a key never written.
    joblib.dump(_Planted(marker), entry)
    foreign = tmp_path / "cache" / "ff" / ("f" * 64 + ".joblib")
    foreign.parent.mkdir(exist_ok=True)
    joblib.dump(_Planted(marker), foreign)
    again = FitCache(tmp_path / "cache", _db(tmp_path))
    model, _ = fit_family("lightgbm", X1, y1, rows, s1, random_state=0, n_jobs=1, cache=again)
    assert again.get("f" * 64) is None
    assert not marker.exists() and hasattr(model, "booster_")
    assert (again.hits, again.discarded) == (0, 2) and not foreign.exists()
    assert "differs from the recorded" in caplog.text and "no digest recorded" in caplog.text
    # The refit is stored with its own digest and is a verified hit next time.
    third = FitCache(tmp_path / "cache", _db(tmp_path))
    fit_family("lightgbm", X1, y1, rows, s1, random_state=0, n_jobs=1, cache=third)
    assert (third.hits, third.misses) == (1, 0)


def test_the_training_codes_own_version_is_in_every_fit_key(monkeypatch):
    from include.training import fit_cache

    args = dict(random_state=0, early_stopping_rounds=10, gap=28, inner_validation_share=0.2, train_digest="ab")
    before = fit_cache.fit_key("lightgbm", {"n_estimators": 100}, **args)
    assert len(fit_cache.training_code_digest()) == 64
    monkeypatch.setattr(fit_cache, "training_code_digest", lambda: "0" * 64)
    assert fit_cache.fit_key("lightgbm", {"n_estimators": 100}, **args) != before


def test_a_bars_features_do_not_depend_on_where_the_window_starts(data_dir, tmp_path):
    store = MarketStore(f"sqlite:///{tmp_path / 'm.sqlite'}")
    src, key = FileSource(data_dir), {"exchange": "binance", "symbol": "BTCUSDT"}
    first, end = datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 4, 1, tzinfo=UTC)
    try:
        store.upsert_ohlcv(src.fetch_ohlcv("BTCUSDT", "perp", "1h", first, end), market_type="perp", timeframe="1h",
                           **key)
        store.upsert_funding_rates(src.fetch_funding_rates("BTCUSDT", first - timedelta(days=10), end), **key)
        store.upsert_open_interest(src.fetch_open_interest("BTCUSDT", first - timedelta(days=2), end), **key)
        spec = FeatureSpec.default(funding=True, open_interest=True)
        week1, week2 = datetime(2023, 2, 1, tzinfo=UTC), datetime(2023, 2, 8, tzinfo=UTC)
        a, b = (feature_frame(store, CFG, spec, start, end) for start in (week1, week2))
        pd.testing.assert_frame_equal(a[a.index >= pd.Timestamp(week2)], b, check_exact=True)
        # Computed from each window's own start, the same bars differ: the anchor is what makes them equal.
        raw = {start: build_features(store.load_ohlcv(market_type="perp", timeframe="1h", start=start, end=end,
                                                      **key), spec,
                                     store.load_funding_rates(start=start - timedelta(days=10), end=end, **key),
                                     store.load_open_interest(start=start - timedelta(days=2), end=end, **key))
               for start in (week1, week2)}
        overlap = raw[week1].loc[raw[week2].index]
        assert not overlap.equals(raw[week2])
    finally:
        store.dispose()


def test_a_retrain_requested_mid_week_shares_the_scheduled_weeks_folds_and_their_fits(market, tmp_path):
    """Monitoring asks on Wednesday 2023-06-07: the interval is [Sunday 06-04, 06-07), the earlier
    folds are the scheduled weeks, and their fits come from the cache the Sunday run filled."""
    X, y = market
    weekly_X, weekly_y, _, weekly = run_table(market, "2023-06-04")
    cache = FitCache(tmp_path / "cache", _db(tmp_path))
    cross_validate("lightgbm", weekly_X, weekly_y, splits=weekly, random_state=0, n_jobs=1, early_stopping_rounds=10,
                   cache=cache)
    fit_family("lightgbm", weekly_X, weekly_y, weekly.final_rows(len(weekly_X)), weekly, random_state=0, n_jobs=1,
               early_stopping_rounds=10, cache=cache)

    cfg = RunConfig(train_window_days=120, cv_folds=3, models=("lightgbm",), early_stopping_rounds=10,
                    as_of_date="2023-06-07")
    window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    assert (window.interval_start, window.interval_end) == ("2023-06-04T00:00:00+00:00", "2023-06-07T00:00:00+00:00")
    rows = (X.index >= pd.Timestamp(window.train_start)) & (
        X.index < pd.Timestamp(window.interval_end) - CFG.label_horizon_bars * HOUR)
    Xr, yr = X[rows], y[rows].to_numpy()
    test_size = int((Xr.index >= pd.Timestamp(window.interval_start)).sum())
    requested = interval_splits(cfg, Xr.index, window, test_size)
    folds, weekly_folds = list(requested.split(len(Xr))), list(weekly.split(len(weekly_X)))
    # Tests: the scheduled weeks [05-21, 05-28), [05-28, 06-04), then the three days since Sunday.
    assert [times(Xr, te).min().isoformat() for _, _, te in folds] == [
        "2023-05-21T00:00:00+00:00", "2023-05-28T00:00:00+00:00", "2023-06-04T00:00:00+00:00"]
    assert len(folds[-1][2]) == 3 * 24 - CFG.label_horizon_bars
    # Fold k trains on the rows the Sunday run's fold k + 1 trained on, its last fold on the rows
    # the Sunday run deployed its model on: the champion, out of sample on the whole interval.
    for (_, train, _), (_, weekly_train, _) in zip(folds[:-1], weekly_folds[1:], strict=True):
        assert times(Xr, train).equals(times(weekly_X, weekly_train))
    assert times(Xr, folds[-1][1]).equals(times(weekly_X, weekly.final_rows(len(weekly_X))))
    again = FitCache(tmp_path / "cache", _db(tmp_path))
    result = cross_validate("lightgbm", Xr, yr, splits=requested, random_state=0, n_jobs=1, early_stopping_rounds=10,
                            cache=again)
    assert [f["reused"] for f in result.folds] == ["fit and evaluation", "fit", "fit"]
