"""Production monitoring on real data: a promoted model scored forward over a week it never saw,
drift and missing data injected into the input, stale data, the cooldown, the prediction log."""

from __future__ import annotations

import gzip
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.builders import PERMISSIVE_SKILL

BTC = "binance-btcusdt-perp-1h-h4"
FILES = ("btcusdt_perp_1h.csv.gz", "btcusdt_funding_8h.csv.gz", "btcusdt_perp_open_interest_usd_1d.csv.gz")
LIVE = "2023-12-17T00:00:00Z"  # the production model's training data ends here


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, data_dir):
    """A registry whose BTC production model was trained until 2023-12-17 (short window, a gate
    that lets it through), and a market store that ends there. Its ensemble is the three tree
    families: their top features are quiet over the week after, so the checks below can expect no
    drift (with the logistic family's permutation importances, a feature that drifts that week
    ranks among the top ones, and the monitor asks for a retrain)."""
    from include.config import RunConfig, Settings
    from include.pipeline import run_once

    root = tmp_path_factory.mktemp("promoted")
    cfg = RunConfig(symbol="BTCUSDT", as_of_date="2023-12-17", train_window_days=120, cv_folds=3,
                    models=("lightgbm", "xgboost", "random_forest"), **PERMISSIVE_SKILL)
    run = run_once(cfg, Settings.in_folder(root, data_dir), dag_id="weekly_retrain", run_id="monitoring-fixture")
    assert run["action"]["action"] == "promote"
    return root


@pytest.fixture
def deployment(promoted, tmp_path, data_dir):
    """A private copy of the promoted registry and store, and a copy of the bundled files to edit."""
    from include.config import Settings

    root = tmp_path / "deployment"
    shutil.copytree(promoted, root)
    src = tmp_path / "data"
    src.mkdir()
    for name in FILES:
        shutil.copy(data_dir / name, src / name)
    return Settings.in_folder(root, data_dir), src


def _edit(src: Path, name: str, change) -> None:
    frame = pd.read_csv(src / name)
    frame = change(frame, frame["timestamp"] >= LIVE)
    with gzip.open(src / name, "wt") as fh:
        frame.to_csv(fh, index=False)


def _check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def test_a_promoted_model_is_scored_forward_over_a_week_it_never_saw(deployment):
    from include.monitoring import OK, load_predictions, monitor, reports
    from include.registry import ModelRegistry
    from include.serving import ProductionModel

    settings, _ = deployment
    version = ModelRegistry.from_settings(settings).production(BTC).version
    report = monitor(settings, BTC, datetime(2023, 12, 24, tzinfo=UTC), run_id="week-1")
    assert report["version"] == version and report["trained_until"] == "2023-12-17T00:00:00+00:00"
    live = report["live"]
    # Every hourly bar of the unseen week scored once; labels for all but the last horizon (4 bars).
    assert report["scoring"]["new_rows"] == live["scored_rows"] == 168 and live["labelled_rows"] == 164
    assert live["first_bar"] == "2023-12-17T00:00:00+00:00" and live["last_bar"] == "2023-12-23T23:00:00+00:00"
    assert set(live["realised"]) >= {"macro_f1", "log_loss", "brier", "prior_log_loss"}
    assert live["promised"]["macro_f1"] > 0 and len(live["daily"]) == 7
    assert report["trading"]["strategy"]["bars"] > 160 and "buy_and_hold" in report["trading"]
    assert {r["feature"] for r in report["drift"]["table"]} == set(report["drift"]["top_features"])
    assert report["freshness"]["age_hours"] == 0.0
    # Nothing was changed in the input: no drift, no degradation, no request.
    assert report["action"] == OK, report["checks"]
    store_engine = __import__("sqlalchemy").create_engine(settings.market_db_url)
    logged = load_predictions(store_engine, BTC, version)
    # The post-promotion smoke test's prediction (the last training bar), then the monitor's.
    assert logged.iloc[0].name == pd.Timestamp("2023-12-16T23:00Z") and logged.iloc[0]["source"] == "smoke_test"
    logged = logged.iloc[1:]
    assert len(logged) == 168 and set(logged["source"]) == {"monitor"}
    np.testing.assert_allclose(logged[["p_down", "p_range", "p_up"]].sum(axis=1), 1.0)

    # Re-running scores nothing new; the record of the run is replaced, not doubled.
    again = monitor(settings, BTC, datetime(2023, 12, 24, tzinfo=UTC), run_id="week-1")
    assert again["scoring"]["new_rows"] == 0 and again["live"]["scored_rows"] == 168
    assert [r["run_id"] for r in reports(store_engine, BTC)] == ["week-1"]
    # The serving API logs its predictions too; a bar already scored keeps its first prediction.
    serving = ProductionModel(ModelRegistry.from_settings(settings), settings.market_db_url, BTC, max_age_hours=None)
    prediction = serving.predict(datetime(2023, 12, 24, tzinfo=UTC), log_as="api")
    assert prediction.bar == "2023-12-23T23:00:00+00:00"
    assert len(load_predictions(store_engine, BTC, version, start=LIVE)) == 168
    row = load_predictions(store_engine, BTC, version).loc[pd.Timestamp(prediction.bar)]
    assert row["source"] == "monitor" and row["p_up"] == pytest.approx(prediction.probabilities["up"], abs=1e-9)


def test_a_volume_shift_requests_one_retrain_per_cooldown(deployment):
    import sqlalchemy as sa

    from include.monitoring import COOLDOWN, RETRAIN, MonitorPolicy, mark_requested, monitor
    from include.predictions import report_table

    settings, src = deployment

    def surging(frame, live):
        # Volume 5 % higher every hour: the features are scale-free, so a volume that only jumped
        # to a new level would look normal again once the trailing windows hold that level; a
        # surge keeps the volume z-score far above its training range for as long as it lasts.
        frame.loc[live, "volume"] *= 1.05 ** np.arange(int(live.sum()))
        return frame

    _edit(src, FILES[0], surging)
    source = {"source_dir": str(src)}
    first = monitor(settings, BTC, datetime(2023, 12, 24, tzinfo=UTC), run_id="d1", source=source)
    volume = next(r for r in first["drift"]["table"] if r["feature"] == "volume_zscore")
    assert volume["psi"] > 0.25 and "volume_zscore" in first["drift"]["top_features"][:5]
    assert _check(first, "feature_drift")["tripped"] and first["action"] == RETRAIN
    # The request never became an asset event (request_retrain did not run): no cooldown yet.
    engine = sa.create_engine(settings.market_db_url)
    again = monitor(settings, BTC, datetime(2023, 12, 24, 12, tzinfo=UTC), run_id="d1b", source=source)
    assert again["action"] == RETRAIN
    with engine.begin() as conn:
        conn.execute(sa.delete(report_table).where(report_table.c.run_id == "d1b"))
    assert mark_requested(engine, "d1", [BTC]) == 1  # what request_retrain does as its last step
    # One incident, one retrain: the next days fall in the 72 h cooldown, then a new request.
    assert monitor(settings, BTC, datetime(2023, 12, 25, tzinfo=UTC), run_id="d2", source=source)["action"] == COOLDOWN
    assert monitor(settings, BTC, datetime(2023, 12, 27, tzinfo=UTC), run_id="d3", source=source)["action"] == RETRAIN
    mark_requested(engine, "d3", [BTC])
    # Without a cooldown, every tripped day asks.
    assert monitor(settings, BTC, datetime(2023, 12, 28, tzinfo=UTC), run_id="d4", source=source,
                   policy=MonitorPolicy(cooldown_hours=0))["action"] == RETRAIN

    # The Monitoring page and its API read the same records.
    from include.monitoring import reports
    from include.monitoring.page import history, render

    found = reports(sa.create_engine(settings.market_db_url), BTC)
    assert [r["run_id"] for r in found] == ["d4", "d3", "d2", "d1"]  # newest as_of first
    rows = history(found)
    assert [r["action"] for r in rows] == [RETRAIN, COOLDOWN, RETRAIN, RETRAIN]
    assert rows[0]["max_top_psi"] == pytest.approx(volume["psi"]) and rows[0]["promised_macro_f1"] > 0
    page = render({BTC: found})
    assert page.count("data:image/png;base64,") == 1 and "RETRAIN_REQUESTED" in page
    assert "<tr class='top'><td>volume_zscore</td>" in page and page.count("<td>cooldown</td>") == 1


def test_funding_that_stops_arriving_shows_as_missing_values(deployment):
    from include.monitoring import RETRAIN, monitor

    settings, src = deployment
    _edit(src, FILES[1], lambda frame, live: frame[~live])
    report = monitor(settings, BTC, datetime(2023, 12, 24, tzinfo=UTC), run_id="f1", source={"source_dir": str(src)})
    funding = next(r for r in report["drift"]["table"] if r["feature"] == "funding_rate")
    # The last settlement before the cut ages past 24 h on the first day: the rest of the week is missing.
    assert funding["missing_share"] > 0.8 and funding["reference_missing_share"] == 0
    assert _check(report, "missing_values")["tripped"] and report["action"] == RETRAIN


def test_stale_data_alerts_without_asking_for_a_retrain(deployment):
    from include.monitoring import ALERT, monitor

    settings, src = deployment
    _edit(src, FILES[0], lambda frame, live: frame[frame["timestamp"] < "2023-12-22T00:00:00Z"])
    report = monitor(settings, BTC, datetime(2023, 12, 24, tzinfo=UTC), run_id="s1", source={"source_dir": str(src)})
    assert report["freshness"]["age_hours"] == 48.0
    assert _check(report, "data_freshness")["tripped"] and report["action"] == ALERT, report["checks"]
    assert "last closed bar 2023-12-22T00:00:00+00:00, 48.0 h before" in report["reason"]


def test_the_prediction_log_is_append_only_and_idempotent(tmp_path):
    import sqlalchemy as sa

    from include.data.store import MarketStore
    from include.errors import PipelineError
    from include.monitoring import load_predictions, log_predictions

    engine = MarketStore(f"sqlite:///{tmp_path / 'm.sqlite'}").engine
    row = {"bar": pd.Timestamp("2023-12-24T00:00Z"), "p_down": 0.2, "p_range": 0.5, "p_up": 0.3, "decision": "range"}
    assert log_predictions(engine, "m", "v1", [row], source="api") == 1
    assert log_predictions(engine, "m", "v1", [{**row, "p_up": 0.9}], source="monitor") == 0
    assert log_predictions(engine, "m", "v2", [row], source="monitor") == 1  # another version: its own row
    frame = load_predictions(engine, "m", "v1")
    assert len(frame) == 1 and frame.iloc[0]["p_up"] == 0.3 and frame.iloc[0]["source"] == "api"
    with pytest.raises(PipelineError, match="prediction source"):
        log_predictions(engine, "m", "v1", [row], source="cron")
    with pytest.raises(PipelineError, match="non-finite"):
        log_predictions(engine, "m", "v3", [{**row, "p_up": float("nan")}], source="api")
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from prediction_log")).scalar() == 2


def test_population_stability_index():
    from include.drift import psi, reference_bins

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(0, 1, 20_000)})
    ref = reference_bins(train)["x"]
    assert len(ref["edges"]) == 9 and np.allclose(ref["proportions"], 0.1, atol=0.01)
    assert psi(ref, rng.normal(0, 1, 5_000)) < 0.02
    assert psi(ref, rng.normal(1, 1, 5_000)) > 0.25  # a one-sigma shift
    # By hand: live values all in the top bin -> (1 - 0.1) ln(1 / 0.1) + 9 (1e-4 - 0.1) ln(1e-4 / 0.1).
    expected = 0.9 * np.log(10) + 9 * (1e-4 - 0.1) * np.log(1e-4 / 0.1)
    assert psi({"edges": list(range(1, 10)), "proportions": [0.1] * 10}, np.full(100, 50.0)) == pytest.approx(expected)
    assert np.isnan(psi(ref, np.array([np.nan, np.nan])))


def test_a_version_registered_without_a_reference_is_monitored_from_the_store(deployment):
    """Versions registered before references were stored: the reference is recomputed from the
    training window's bars in the market store, and the report says so."""
    import sqlalchemy as sa

    from include.monitoring import OK, monitor
    from include.registry import ModelRegistry
    from include.registry.schema import version_table

    settings, _ = deployment
    registry = ModelRegistry.from_settings(settings)
    version = registry.production(BTC).version
    with_stored = monitor(settings, BTC, datetime(2023, 12, 24, tzinfo=UTC), run_id="stored")
    assert with_stored["drift"]["reference"] == "stored at registration"
    old = {k: v for k, v in registry.describe(version)["lineage"].items()
           if k not in ("drift_reference", "top_features")}
    with registry.engine.begin() as conn:
        conn.execute(sa.update(version_table).where(version_table.c.version == version).values(lineage=old))
    report = monitor(settings, BTC, datetime(2023, 12, 24, tzinfo=UTC), run_id="old-version")
    assert report["drift"]["reference"].startswith("recomputed from ")
    assert "by the permutation importance in" in report["drift"]["reference"]
    assert report["drift"]["top_features"] == with_stored["drift"]["top_features"]
    # The recomputed training distribution is the stored one but for the last label horizon's
    # bars: on the checked features, the same PSIs to within 10 %.
    recomputed = {r["feature"]: r["psi"] for r in report["drift"]["table"]}
    stored = {r["feature"]: r["psi"] for r in with_stored["drift"]["table"]}
    assert set(recomputed) == set(stored)
    for feature in with_stored["drift"]["top_features"][:5]:
        assert recomputed[feature] == pytest.approx(stored[feature], rel=0.1, abs=0.01), feature
    assert report["action"] == with_stored["action"] == OK and report["live"]["scored_rows"] == 168
