"""The production-model loader and predict(): caching, reload on alias moves, staleness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from include.errors import ServingError
from include.features import FeatureSpec
from include.registry import ModelRegistry
from include.serving import ProductionModel

AS_OF = datetime(2023, 12, 31, tzinfo=UTC)
BTC = "binance-btcusdt-perp-1h-h4"


@pytest.fixture
def serving(trained_registry):
    settings = trained_registry["settings"]
    model = ProductionModel(ModelRegistry.from_settings(settings), settings.market_db_url, BTC,
                            max_age_hours=192, refresh_seconds=0)
    yield model
    model.registry.dispose()


def test_predict_uses_the_models_own_features_of_the_last_complete_bar(serving, trained_registry):
    from include.config import RunConfig
    from include.data.store import MarketStore
    from include.feature_store import feature_frame

    v1, v2 = trained_registry["versions"]
    pred = serving.predict(AS_OF)
    assert (pred.model, pred.version, pred.bar) == (BTC, v2, "2023-12-30T23:00:00+00:00")
    assert sum(pred.probabilities.values()) == pytest.approx(1.0) and pred.decision in pred.probabilities
    assert not pred.stale and pred.model_age_hours == 0
    # The same probabilities as the model on the pipeline's own feature frame for that bar.
    _, model, lineage = serving.current()
    spec = FeatureSpec.from_dict({k: v for k, v in lineage["feature_spec"].items() if k != "sha256"})
    store = MarketStore(trained_registry["settings"].market_db_url)
    frame = feature_frame(store, RunConfig(), spec, AS_OF - timedelta(days=30), AS_OF)
    expected = model.predict_proba(frame.loc[[pd.Timestamp(pred.bar)], list(spec.names)])[0]
    np.testing.assert_allclose(list(pred.probabilities.values()), expected, rtol=1e-9)


def test_loads_once_and_reloads_when_the_alias_moves(serving, trained_registry):
    v1, v2 = trained_registry["versions"]
    for _ in range(3):
        serving.predict(AS_OF)
    assert serving.loads == 1
    serving.registry.rollback(BTC, v1, run_id="test", reason="reload check")
    try:
        assert serving.predict(AS_OF).version == v1 and serving.loads == 2
    finally:
        serving.registry.promote(v2, run_id="test", reason="restore")


def test_staleness_guard_warns_or_refuses(trained_registry, caplog):
    settings = trained_registry["settings"]
    registry = ModelRegistry.from_settings(settings)
    later = AS_OF + timedelta(hours=3)
    warn = ProductionModel(registry, settings.market_db_url, BTC, max_age_hours=2, on_stale="warn",
                           max_data_lag_bars=None)
    pred = warn.predict(later)
    assert pred.stale and pred.model_age_hours == 3 and "over the 2 h limit" in caplog.text
    refuse = ProductionModel(registry, settings.market_db_url, BTC, max_age_hours=2, on_stale="refuse",
                             max_data_lag_bars=None)
    with pytest.raises(ServingError, match="refusing to serve"):
        refuse.predict(later)
    with pytest.raises(ServingError, match="binance-xrpusdt-perp-1h-h4 has no production version"):
        ProductionModel(registry, settings.market_db_url, "binance-xrpusdt-perp-1h-h4").predict(AS_OF)
    with pytest.raises(ServingError, match="no BTCUSDT candles .* is ingestion up to date"):
        ProductionModel(registry, settings.market_db_url, BTC).predict(datetime(2010, 1, 1, tzinfo=UTC))
    registry.dispose()


def test_native_fast_path_equals_the_ensembles_predict_proba(serving, trained_registry):
    from include.config import RunConfig
    from include.data.store import MarketStore
    from include.feature_store import feature_frame
    from include.serving import FastPredictor

    serving.predict(AS_OF)
    _, model, lineage = serving.current()
    names = list(lineage["feature_spec"]["names"])
    spec = FeatureSpec.from_dict({k: v for k, v in lineage["feature_spec"].items() if k != "sha256"})
    frame = feature_frame(MarketStore(trained_registry["settings"].market_db_url), RunConfig(), spec,
                          AS_OF - timedelta(days=40), AS_OF)[names].dropna(
                              subset=[n for n in names if n != "oi_change_1d"])
    frame.iloc[::7, names.index("oi_change_1d")] = np.nan  # missing values take the models' own NaN route
    fast = FastPredictor(model, frame.tail(64))
    assert fast.native
    np.testing.assert_allclose(fast.predict_proba(frame.to_numpy()), model.predict_proba(frame), atol=1e-9)
    np.testing.assert_allclose(serving.predict_row(frame.to_numpy()[-3:]), model.predict_proba(frame.tail(3)),
                               atol=1e-9)


def test_a_forecast_from_data_older_than_a_bar_of_lag_is_refused_and_every_answer_says_how_old(trained_registry):
    settings = trained_registry["settings"]
    registry = ModelRegistry.from_settings(settings)
    serving = ProductionModel(registry, settings.market_db_url, BTC, max_age_hours=None)
    on_time = serving.predict(AS_OF)  # the store ends with the bar closing at AS_OF
    assert on_time.bar == "2023-12-30T23:00:00+00:00" and on_time.data_age_hours == 0
    late = serving.predict(AS_OF + timedelta(minutes=90))  # one bar behind: ingestion's allowance
    assert late.bar == on_time.bar and late.data_age_hours == 1.5
    with pytest.raises(ServingError, match=r"closed at 2023-12-31T00:00:00\+00:00, 12.0 h \(12 bars\) before "
                                           r"2023-12-31T12:00:00\+00:00; at most 1 bar"):
        serving.predict(AS_OF + timedelta(hours=12))
    with pytest.raises(ServingError, match=r"the newest stored candle closed at 2023-12-31T00:00:00\+00:00, 72.0 h "
                                           r"before 2024-01-03T00:00:00\+00:00; is ingestion up to date"):
        serving.predict(AS_OF + timedelta(days=3))
    registry.dispose()


def test_serving_and_monitoring_compute_training_s_own_features_for_the_same_bar(trained_registry):
    """No train/serve skew: the bar serving forecasts from has, bit for bit, the features the
    run that trained the model wrote for it (its features.parquet, 120 days of window)."""
    from include.config import RunConfig
    from include.data.store import MarketStore
    from include.feature_store import feature_frame
    from include.run_folder import version_run_dir

    settings = trained_registry["settings"]
    registry = ModelRegistry.from_settings(settings)
    _, v2 = trained_registry["versions"]
    lineage = registry.metadata(v2)
    names = list(lineage["feature_spec"]["names"])
    training = pd.read_parquet(version_run_dir(settings, BTC, lineage) / "features.parquet")[names]
    spec = FeatureSpec.from_dict({k: v for k, v in lineage["feature_spec"].items() if k != "sha256"})
    store = MarketStore(settings.market_db_url)
    # Serving's range (the last three days) and monitoring's (from the training end) give the same
    # bits for every bar they share with training.
    for start in (AS_OF - timedelta(days=3), AS_OF - timedelta(days=45), datetime(2023, 12, 1, tzinfo=UTC)):
        served = feature_frame(store, RunConfig(), spec, start, AS_OF)[names]
        shared = served.index.intersection(training.index)
        assert len(shared) >= 24
        pd.testing.assert_frame_equal(served.loc[shared], training.loc[shared], check_exact=True)
    # The served forecast is the model's forecast on the training row of that bar, exactly.
    serving = ProductionModel(registry, settings.market_db_url, BTC, max_age_hours=None)
    pred = serving.predict(AS_OF)
    assert pred.version == v2
    # Serving's own path computed exactly training's row for the bar it forecast from.
    pd.testing.assert_frame_equal(serving.last_features[names], training.loc[[pd.Timestamp(pred.bar)]],
                                  check_exact=True, check_freq=False)
    row = training.loc[[pd.Timestamp(pred.bar)]].to_numpy(dtype="float64")
    assert list(pred.probabilities.values()) == serving.predict_row(row)[0].tolist()
    store.dispose()
    registry.dispose()


def test_a_promotion_s_consumer_appends_the_production_models_latest_probabilities(trained_registry, tmp_path):
    from dataclasses import replace

    from include.serving import write_signal

    settings = replace(trained_registry["settings"], runs_dir=tmp_path)  # its own signal file
    v1, v2 = trained_registry["versions"]
    first = write_signal(settings, BTC, {"event": "promote", "version": v2})
    # v2 was trained until 2023-12-31: the forecast from the last bar that closed by then.
    assert (first["version"], first["bar"], first["event_version"]) == (v2, "2023-12-30T23:00:00+00:00", v2)
    write_signal(settings, BTC, {"event": "rollback", "version": v2})
    rows = pd.read_csv(tmp_path / "signals" / f"{BTC}.csv")
    assert list(rows["event"]) == ["promote", "rollback"] and len(rows) == 2
    assert np.allclose(rows[["p_down", "p_range", "p_up"]].sum(axis=1), 1.0)
    with pytest.raises(ServingError, match="no production version"):
        write_signal(settings, "binance-xrpusdt-perp-1h-h4")


def test_production_moved_to_a_tampered_version_keeps_serving_the_last_verified_one_on_every_call(
        serving, trained_registry, caplog):
    """Not errors and old answers by turns: every call gets the last verified version's answer,
    naming the refused version and why, and the refusal is logged once; a loader with nothing
    verified refuses on every call; once the alias moves on, the refusal is gone."""
    import time

    from include.errors import RegistryError

    v1, v2 = trained_registry["versions"]
    assert serving.predict(AS_OF).version == v2 and serving.predict(AS_OF).refused is None
    registry = serving.registry
    # A loader that looks the alias up every 0.3 s, as the API's does every few seconds: between
    # two look-ups it answers from memory.
    periodic = ProductionModel(registry, trained_registry["settings"].market_db_url, BTC, refresh_seconds=0.3)
    assert periodic.predict(AS_OF).version == v2
    registry.rollback(BTC, v1, run_id="test", reason="tampered-version check")
    row = registry.verify(v1)
    artifact = registry.root / row.artifact_path / "model.joblib"
    original = artifact.read_bytes()
    artifact.write_bytes(original + b"tampered")
    try:
        time.sleep(0.35)
        outcomes = []
        for _ in range(8):
            try:
                outcomes.append(periodic.predict(AS_OF).version)
            except RegistryError as exc:
                outcomes.append(f"error: {exc}")
            time.sleep(0.1)
        assert outcomes == [v2] * 8, outcomes
        answers = [serving.predict(AS_OF) for _ in range(5)]
        assert [a.version for a in answers] == [v2] * 5
        assert all(a.refused == answers[0].refused for a in answers)
        assert (answers[0].refused["version"] == v1
                and "refusing to load a modified artifact" in answers[0].refused["error"])
        assert answers[0].to_dict()["refused"] == answers[0].refused
        refusals = [r for r in caplog.records if r.levelname == "ERROR" and "fails verification" in r.getMessage()]
        assert (len(refusals) == 2 and v1 in refusals[0].getMessage()
                and v2 in refusals[0].getMessage())  # once per loader
        fresh = ProductionModel(registry, trained_registry["settings"].market_db_url, BTC, refresh_seconds=0)
        for _ in range(3):
            with pytest.raises(RegistryError, match="refusing to load a modified artifact"):
                fresh.predict(AS_OF)
    finally:
        artifact.write_bytes(original)
        registry.promote(v2, run_id="test", reason="restore")
    back = serving.predict(AS_OF)
    assert (back.version, back.refused) == (v2, None)


def test_a_version_registered_with_the_version_1_spec_is_served_its_own_level_features(trained_registry, tmp_path):
    """A model whose lineage names the price and volume levels (feature spec version 1, from before
    the default spec became scale-free) still loads and serves: serving computes the columns of
    the version's own stored spec, levels included, and forecasts from them."""
    import json
    import shutil
    from dataclasses import replace
    from pathlib import Path

    import joblib

    from include.config import RunConfig
    from include.data.store import MarketStore
    from include.ensemble import WeightedSoftVotingEnsemble
    from include.feature_store import feature_frame
    from include.labels import make_labels
    from include.training import build_estimator
    from tests.include.test_features_labels import STORED_V1_SHA256, STORED_V1_SPEC

    shared = trained_registry["settings"]
    # Copies of the market store and the registry: the shared registry's versions stay as they are.
    shutil.copy2(Path(shared.market_db_url.removeprefix("sqlite:///")), tmp_path / "market.sqlite")
    shutil.copytree(shared.registry_dir, tmp_path / "models")
    settings = replace(shared, market_db_url=f"sqlite:///{tmp_path / 'market.sqlite'}",
                       registry_dir=tmp_path / "models", runs_dir=tmp_path / "runs")
    registry = ModelRegistry.from_settings(settings)
    store = MarketStore(settings.market_db_url)
    spec = FeatureSpec.from_dict(STORED_V1_SPEC)
    names = list(spec.names)
    X = feature_frame(store, RunConfig(), spec, datetime(2023, 11, 1, tzinfo=UTC), AS_OF)
    assert list(X.columns) == names
    y = make_labels(X["close"], horizon=4, mode="volatility", threshold=0.43)
    rows = X.drop(columns="oi_change_1d").notna().all(axis=1) & y.notna()
    member = build_estimator("lightgbm", random_state=0, n_jobs=1, n_estimators=20).fit(X[rows], y[rows].astype(int))
    model = WeightedSoftVotingEnsemble.from_fitted([("lightgbm", member)], [1.0], np.full(3, 1 / 3),
                                                   feature_names=names)
    _, v2 = trained_registry["versions"]
    candidate = tmp_path / "candidate"
    shutil.copytree(registry.root / registry.describe(v2)["artifact_path"], candidate)
    (candidate / "manifest.json").unlink()
    joblib.dump(model, candidate / "model.joblib")
    lineage = json.loads((candidate / "metadata.json").read_text())
    lineage["feature_spec"] = {**STORED_V1_SPEC, "sha256": STORED_V1_SHA256}
    (candidate / "metadata.json").write_text(json.dumps(lineage))
    old = registry.register(candidate, AS_OF)
    registry.promote(old, run_id="test", reason="a version-1 model in production")

    pred = ProductionModel(registry, settings.market_db_url, BTC, max_age_hours=None).predict(AS_OF)
    assert (pred.version, pred.bar) == (old, "2023-12-30T23:00:00+00:00")
    bar = pd.Timestamp(pred.bar)
    close = store.load_ohlcv(exchange="binance", symbol="BTCUSDT", market_type="perp", timeframe="1h",
                             start=bar.to_pydatetime(), end=AS_OF)["close"].iloc[0]
    assert X.loc[bar, "close"] == close  # a level, as the version was trained on
    expected = model.predict_proba(X.loc[[bar], names])[0]
    np.testing.assert_allclose(list(pred.probabilities.values()), expected, rtol=1e-9)
    store.dispose()
    registry.dispose()


def test_the_served_position_is_the_trading_decision_at_the_margin_the_gate_chose(serving, trained_registry):
    """Serving's position is :class:`include.backtest.TradingDecision` on the version's class
    moves, the bar's volatility scale and funding rate, at the deployed margin of the version's
    gate decision (the trading step's record in the ledger)."""
    from include.backtest import FLAT_MARGIN, MARGIN_GRID, TradingDecision, standardised_moves
    from include.data.store import MarketStore
    from include.trading import deployed_decision

    v1, v2 = trained_registry["versions"]
    pred = serving.predict(AS_OF)
    _, model, lineage = serving.current()
    decided = serving.registry.decision_of(BTC, v2)
    margin = decided["trading"]["decision"]["deployed_margin"]
    assert margin in (*MARGIN_GRID, FLAT_MARGIN) and len(lineage["trading"]["class_moves"]) == 3
    decision = deployed_decision(lineage["config"], decided)
    assert decision.margin == margin and decision.meta is None  # meta-labeling is off by default
    store = MarketStore(trained_registry["settings"].market_db_url)
    bars = store.load_ohlcv(exchange="binance", symbol="BTCUSDT", market_type="perp", timeframe="1h",
                            start=AS_OF - timedelta(days=30), end=AS_OF)
    scale, _ = standardised_moves(bars.set_index("timestamp")["close"], horizon=4, vol_window=168)
    proba = np.array([list(pred.probabilities.values())])
    scale_now = [scale[pd.Timestamp(pred.bar)]]
    funding = serving.last_features["funding_rate"].to_numpy()
    assert pred.expected_move == pytest.approx(
        decision.expected_move(proba, np.array(lineage["trading"]["class_moves"]), scale_now)[0], rel=1e-9)
    assert pred.position == decision.positions(proba, np.array(lineage["trading"]["class_moves"]), scale_now,
                                               funding)[0]
    # With no cost and no margin, a forecast that expects a move takes a position.
    free = TradingDecision.from_config({**lineage["config"], "fee_bps": 0.0, "slippage_bps": 0.0})
    assert free.positions(proba, np.array(lineage["trading"]["class_moves"]), scale_now)[0] == np.sign(
        pred.expected_move)
