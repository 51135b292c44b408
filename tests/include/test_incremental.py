"""A week costs its new data: each bar validated once, each month's features computed once, and
every result the same as computing everything from scratch.

Real components throughout: the bundled Binance data ingested into a SQLite market store, Great
Expectations' suites, the pipeline's own steps and ``run_once``. "From scratch" is the same step
on a copy of the store with the records of earlier work (``bar_validation``, ``feature_month``)
removed, so both sides read the same bars.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from include.config import RunConfig, Settings
from include.data.store import MarketStore
from include.errors import DataQualityError
from include.feature_store import feature_frame
from include.features import FeatureSpec
from include.pipeline import ingest, run_once, validate
from include.run_folder import run_dir
from include.windows import RunWindow, resolve_window
from tests.builders import PERMISSIVE_GATE

SMALL = {"train_window_days": 120, "cv_folds": 3}
REUSE_TABLES = ("bar_validation", "feature_month")


def _forget(settings: Settings) -> None:
    """Remove the records of earlier work from a store: what a first run on it would find."""
    store = MarketStore(settings.market_db_url)  # created and migrated when new
    with store.begin() as conn:
        for table in REUSE_TABLES:
            conn.execute(sa.text(f"DELETE FROM {table}"))
    store.dispose()


def _scratch_copy(settings: Settings, root: Path) -> Settings:
    """The same market store, copied, without its records of earlier work."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(settings.market_db_url.removeprefix("sqlite:///"), root / "market.sqlite")
    scratch = Settings.in_folder(root, settings.data_dir)
    _forget(scratch)
    return scratch


def _ingest(cfg: RunConfig, settings: Settings) -> RunWindow:
    window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    return RunWindow(**ingest(cfg, window, settings,
                              run_dir(settings, "weekly_retrain", cfg.model_name, window))["window"])


def _validate(cfg: RunConfig, settings: Settings, window: RunWindow | None = None) -> tuple[dict, RunWindow]:
    """Validate the week ``cfg`` names (ingested first unless ``window`` is given); the
    validation report (also when it fails)."""
    window = window or _ingest(cfg, settings)
    out = run_dir(settings, "weekly_retrain", cfg.model_name, window)
    with contextlib.suppress(DataQualityError):
        validate(cfg, window, settings, out)
    return json.loads((out / "validation.json").read_text()), window


def _outcome(report: dict) -> list:
    """What a validation concluded, suite by suite: rows of the window and every failure as reported."""
    return [(s["suite"], s["rows"], s["success"], s["evaluated"], s["failed"]) for s in report["suites"]]


def _edit_store(settings: Settings, sql: str, **params) -> None:
    engine = sa.create_engine(settings.market_db_url)
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
    engine.dispose()


def _ms(text: str) -> int:
    return int(pd.Timestamp(text).value // 1_000_000)


def test_incremental_validation_concludes_what_validation_from_scratch_does(tmp_path, data_dir):
    settings = Settings.in_folder(tmp_path / "store", data_dir)
    weeks = ["2023-06-04", "2023-06-11", "2023-06-18", "2023-06-25", "2023-07-02"]

    def compare(step: int, cfg: RunConfig, edit: str | None = None, **params) -> dict:
        window = _ingest(cfg, settings)
        if edit:  # the stored bars change after ingestion (a correction, a deletion)
            _edit_store(settings, edit, **params)
        scratch, _ = _validate(cfg, _scratch_copy(settings, tmp_path / f"scratch{step}"), window)
        report, _ = _validate(cfg, settings, window)
        assert _outcome(report) == _outcome(scratch)
        assert not scratch["incremental"]
        return report

    first = compare(0, RunConfig(as_of_date=weeks[0], **SMALL))
    assert first["success"] and not first["incremental"]

    # A clean week: the row checks run on the new week's days only, and reach the same verdict.
    second = compare(1, RunConfig(as_of_date=weeks[1], **SMALL))
    assert second["success"] and second["incremental"]
    candles = second["suites"][0]
    assert candles["suite"] == "ohlcv" and candles["validated_rows"] < candles["rows"] / 10

    # A bar already validated last week changes in the store (high below low): its day is checked
    # again, and the run fails with the message a run from scratch gives.
    bad = compare(2, RunConfig(as_of_date=weeks[2], **SMALL), "UPDATE ohlcv SET high = low - 10 WHERE symbol = "
                  "'BTCUSDT' AND market_type = 'perp' AND ts = :ts", ts=_ms("2023-05-10T07:00Z"))
    assert not bad["success"]
    assert any(f["expectation"] == "expect_column_pair_values_a_to_be_greater_than_b"
               for s in bad["suites"] for f in s["failed"])
    # The bar is corrected, and a gap appears in validated days (bars deleted): the window's gap
    # check sees it.
    _edit_store(settings, "UPDATE ohlcv SET high = open + 1e6 WHERE symbol = 'BTCUSDT' AND market_type = 'perp' "
                "AND ts = :ts", ts=_ms("2023-05-10T07:00Z"))
    gap = compare(3, RunConfig(as_of_date=weeks[3], **SMALL), "DELETE FROM ohlcv WHERE symbol = 'BTCUSDT' AND "
                  "market_type = 'perp' AND ts >= :a AND ts < :b", a=_ms("2023-04-15T12:00Z"),
                  b=_ms("2023-04-18T12:00Z"))
    assert not gap["success"]
    assert any("72 missing bars before 2023-04-18T12:00Z" in f["message"] for s in gap["suites"] for f in s["failed"])


def test_a_changed_suite_validates_every_bar_again(tmp_path, data_dir):
    settings = Settings.in_folder(tmp_path / "store", data_dir)
    first, _ = _validate(RunConfig(as_of_date="2023-06-04", **SMALL), settings)
    same, _ = _validate(RunConfig(as_of_date="2023-06-04", **SMALL), settings)
    funding = {s["suite"]: s for s in same["suites"]}["funding_rate"]
    assert first["success"] and same["success"] and funding["validated_rows"] <= 2

    # Another funding bound is another suite version: every settlement is checked again.
    tighter, _ = _validate(RunConfig(as_of_date="2023-06-04", max_abs_funding_rate=0.02, **SMALL), settings)
    funding = {s["suite"]: s for s in tighter["suites"]}["funding_rate"]
    assert tighter["success"] and funding["validated_rows"] == funding["rows"]
    candles = {s["suite"]: s for s in tighter["suites"]}["ohlcv"]
    assert candles["validated_rows"] < candles["rows"] / 10  # the candle suite did not change


def test_stored_feature_months_are_bit_for_bit_what_computing_them_gives(tmp_path, data_dir):
    settings = Settings.in_folder(tmp_path, data_dir)
    cfg = RunConfig(as_of_date="2023-06-04", **SMALL)
    window = resolve_window(cfg, data_interval_start=None, data_interval_end=None, run_after=None)
    ingest(cfg, window, settings, run_dir(settings, "weekly_retrain", cfg.model_name, window))
    spec = FeatureSpec.default(funding=True, open_interest=False)
    start, end = datetime(2023, 3, 10, tzinfo=UTC), datetime(2023, 6, 4, tzinfo=UTC)
    store = MarketStore(settings.market_db_url)
    try:
        fresh = feature_frame(store, cfg, spec, start, end)
        stored = feature_frame(store, cfg, spec, start, end, reuse=True)  # computes and stores
        months = store.load_feature_months(exchange="binance", market_type="perp", symbol="BTCUSDT", timeframe="1h",
                                           spec_sha=spec.sha256, start=datetime(2023, 3, 1, tzinfo=UTC), end=end)
        assert sorted(months) == [_ms(m) for m in ("2023-03-01", "2023-04-01", "2023-05-01", "2023-06-01")]
        reread = feature_frame(store, cfg, spec, start, end, reuse=True)  # reads them back
        for frame in (stored, reread):
            pd.testing.assert_frame_equal(frame, fresh, check_exact=True)
            assert frame.to_numpy().tobytes() == fresh.to_numpy().tobytes()
        # A later start reads the same stored months, cut where it starts.
        later = feature_frame(store, cfg, spec, datetime(2023, 4, 20, tzinfo=UTC), end, reuse=True)
        pd.testing.assert_frame_equal(later, fresh[fresh.index >= "2023-04-20"], check_exact=True)

        # A corrected candle in April: April's (and May's, whose padding reads it) months are
        # computed again from the corrected bars, not read back.
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE ohlcv SET close = close * 1.01 WHERE symbol = 'BTCUSDT' AND "
                                 "market_type = 'perp' AND ts = :ts"), {"ts": _ms("2023-04-20T10:00Z")})
        corrected = feature_frame(store, cfg, spec, start, end)
        reused = feature_frame(store, cfg, spec, start, end, reuse=True)
        pd.testing.assert_frame_equal(reused, corrected, check_exact=True)
        assert not np.array_equal(corrected.to_numpy(), fresh.to_numpy(), equal_nan=True)
    finally:
        store.dispose()


def _week_results(run: dict, settings: Settings) -> dict:
    """What a weekly run decided and registered: the gate's checks, the action, the out-of-fold
    metrics and the bytes of every member model."""
    decision = run["decision"]
    folder = Path(run["summary"]["path"]).parent
    members = {p.parent.name: json.loads(p.read_text())["files"]
               for p in sorted(folder.glob("candidates/*/metadata.json"))}
    return {"passed": decision["passed"], "action": run["action"]["action"],
            "checks": [(c["name"], c["passed"], c.get("value"), c.get("threshold")) for c in decision["checks"]],
            "ensemble": run["assembled"]["ensemble"], "members": members,
            "features": pd.read_parquet(folder / "features.parquet").to_numpy().tobytes(),
            "production": run["summary"]["production"] is not None}


def test_a_sequence_of_weeks_decides_the_same_with_and_without_reuse(tmp_path, data_dir):
    reuse = Settings.in_folder(tmp_path / "reuse", data_dir)
    scratch = Settings.in_folder(tmp_path / "scratch", data_dir)
    for week in ("2023-12-17", "2023-12-24", "2023-12-31"):
        cfg = RunConfig(as_of_date=week, models=("lightgbm", "logistic"), **SMALL, **PERMISSIVE_GATE)
        with_reuse = run_once(cfg, reuse, dag_id="weekly_retrain", run_id=f"reuse__{week}")
        _forget(scratch)
        without = run_once(cfg, scratch, dag_id="weekly_retrain", run_id=f"scratch__{week}")
        assert _week_results(with_reuse, reuse) == _week_results(without, scratch), week
    engine = sa.create_engine(reuse.market_db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feature_month")).scalar() > 0
        assert conn.execute(sa.text("SELECT count(*) FROM bar_validation")).scalar() > 0
    engine.dispose()


@pytest.mark.parametrize("step", ["ingest", "validate", "features", "labels", "train.lightgbm", "assemble",
                                  "trading", "gate", "report"])
def test_each_step_of_a_run_records_its_time(trained_registry, step):
    settings = trained_registry["settings"]
    summaries = sorted(Path(settings.runs_dir).glob("weekly_retrain/*/*/summary.json"))
    assert summaries
    folder = summaries[0].parent
    record = json.loads((folder / "step_times" / f"{step}.json").read_text())
    assert record["step"] == step and record["ok"] and record["wall_s"] > 0 and record["cpu_s"] >= 0
    if step != "report":  # the report's own time is recorded after the summary it renders
        assert step in json.loads(summaries[0].read_text())["step_times"]


def test_the_records_of_earlier_work_live_in_a_postgresql_market_store_too(tmp_path, data_dir, pg_url):
    settings = Settings.in_folder(tmp_path, data_dir, market_db_url=pg_url)
    first, window = _validate(RunConfig(as_of_date="2023-06-04", **SMALL), settings)
    again, _ = _validate(RunConfig(as_of_date="2023-06-04", **SMALL), settings, window)
    assert first["success"] and again["success"] and again["incremental"]
    assert _outcome(first) == _outcome(again)
    cfg, spec = RunConfig(as_of_date="2023-06-04", **SMALL), FeatureSpec.default(funding=True, open_interest=False)
    start, end = datetime(2023, 4, 10, tzinfo=UTC), datetime(2023, 6, 4, tzinfo=UTC)
    store = MarketStore(pg_url)
    try:
        fresh = feature_frame(store, cfg, spec, start, end)
        for _ in range(2):  # computed and stored, then read back
            pd.testing.assert_frame_equal(feature_frame(store, cfg, spec, start, end, reuse=True), fresh,
                                          check_exact=True)
    finally:
        store.dispose()


def test_a_quarantined_bar_fails_the_week_as_validation_from_scratch_does(tmp_path, data_dir):
    import gzip

    source = tmp_path / "data"
    source.mkdir()
    for name in ("btcusdt_perp_1h.csv.gz", "btcusdt_funding_8h.csv.gz", "btcusdt_perp_open_interest_usd_1d.csv.gz"):
        shutil.copy(data_dir / name, source / name)
    settings = Settings.in_folder(tmp_path / "store", source)
    first, _ = _validate(RunConfig(as_of_date="2023-06-04", **SMALL), settings)
    assert first["success"]

    # The next week's source holds a candle without a close: ingestion keeps it out of the store
    # (quarantined), and validation fails naming it, having validated the window from scratch.
    bars = pd.read_csv(source / "btcusdt_perp_1h.csv.gz")
    bars.loc[bars["timestamp"] == "2023-06-06T05:00:00Z", "close"] = float("nan")
    with gzip.open(source / "btcusdt_perp_1h.csv.gz", "wt") as fh:
        bars.to_csv(fh, index=False)
    cfg = RunConfig(as_of_date="2023-06-11", **SMALL)
    window = _ingest(cfg, settings)
    scratch, _ = _validate(cfg, _scratch_copy(settings, tmp_path / "scratch"), window)
    report, _ = _validate(cfg, settings, window)
    assert not report["success"] and not report["incremental"]
    assert report["suites"][0]["suite"] == "ohlcv_refused"
    assert "2023-06-06T05:00Z: close is missing" in report["suites"][0]["failed"][0]["message"]
    assert _outcome(report) == _outcome(scratch)


def test_the_suite_version_covers_the_code_that_derives_the_checked_columns(monkeypatch):
    from include.quality import suites

    limits = suites.SuiteLimits(bar_seconds=3600, expected_bars=100, min_row_share=0.9, max_gap_share=0.1,
                                max_gap_bars=24, max_abs_funding_rate=0.03, funding_interval_hours=8)
    before = suites.suite_versions(limits)
    assert before == suites.suite_versions(limits)
    monkeypatch.setattr(suites, "_SOURCE_SHA256", "another derivation of grid_offset_s")
    after = suites.suite_versions(limits)
    assert all(after[name] != before[name] for name in before)
