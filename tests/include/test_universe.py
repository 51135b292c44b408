"""The universe file: loading, per-market parameters, selection, and the errors a user sees."""

from __future__ import annotations

import pytest

from include.errors import ConfigError
from include.universe import DEFAULT_UNIVERSE, load_universe, plan_markets


def _write(tmp_path, text: str):
    path = tmp_path / "universe.yaml"
    path.write_text(text)
    return path


def test_the_bundled_universe_is_the_two_bundled_perpetuals():
    assert [(e.market.symbol, e.market.market_type, e.market.timeframe) for e in load_universe(DEFAULT_UNIVERSE)] == [
        ("BTCUSDT", "perp", "1h"), ("ETHUSDT", "perp", "1h")]
    assert [c.model_name for c in plan_markets({})] == ["binance-btcusdt-perp-1h-h4", "binance-ethusdt-perp-1h-h4"]


def test_market_params_override_run_params_and_name_another_registered_model(tmp_path):
    path = _write(tmp_path, """
markets:
  - {symbol: BTCUSDT, market_type: perp, timeframe: 1h}
  - {symbol: ethusdt, market_type: perp, timeframe: 1h, params: {label_horizon_bars: 8, cv_folds: 4}}
""")
    btc, eth = plan_markets({"label_horizon_bars": 6, "cv_folds": 3, "train_window_days": 200}, path=path)
    assert (btc.label_horizon_bars, btc.cv_folds, btc.train_window_days) == (6, 3, 200)
    assert (eth.symbol, eth.label_horizon_bars, eth.cv_folds, eth.train_window_days) == ("ETHUSDT", 8, 4, 200)
    assert (btc.model_name, eth.model_name) == ("binance-btcusdt-perp-1h-h6", "binance-ethusdt-perp-1h-h8")


def test_selection_by_symbol_or_model_name(tmp_path):
    assert [c.symbol for c in plan_markets({}, selected=["ethusdt"])] == ["ETHUSDT"]
    assert [c.symbol for c in plan_markets({}, selected=["binance-btcusdt-perp-1h-h4"])] == ["BTCUSDT"]
    with pytest.raises(ConfigError, match=r"markets \['SOLUSDT'\] are not in the universe"):
        plan_markets({}, selected=["SOLUSDT"])


@pytest.mark.parametrize(("text", "message"), [
    ("markets: []", "expected a non-empty 'markets' list"),
    ("markets: [{symbol: BTCUSDT, market_type: perp}]", "market 1: missing timeframe"),
    ("markets: [{symbol: BTCUSDT, market_type: perp, timeframe: 1h, horizon: 8}]", r"unknown key\(s\) \['horizon'\]"),
    ("markets: [{symbol: BTCUSDT, market_type: perp, timeframe: 1h, params: {horizon: 8}}]",
     r"params \['horizon'\] are not run parameters"),
    ("markets: [{symbol: BTCUSDT, market_type: perp, timeframe: 1h, params: {cv_folds: 1}}]",
     "market BTCUSDT perp 1h: invalid run parameter cv_folds=1"),
    ("markets:\n  - {symbol: BTCUSDT, market_type: perp, timeframe: 1h}\n"
     "  - {symbol: BTCUSDT, market_type: perp, timeframe: 1h}", "listed twice"),
    ("markets: [{symbol: BTCUSDT, market_type: perp, timeframe: 1h", "is not valid YAML"),
])
def test_a_bad_universe_file_is_refused_with_the_entry_and_field(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        plan_markets({}, path=_write(tmp_path, text))


def test_market_fields_in_run_params_are_refused_not_ignored(tmp_path):
    with pytest.raises(ConfigError, match=r"\['symbol'\] are set per market in the universe file"):
        plan_markets({"symbol": "ETHUSDT"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_universe(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("entry", "message"), [
    ('{exchange: "x/../../../../escaped", symbol: BTCUSDT, market_type: perp, timeframe: 1h}',
     "market 1: invalid run parameter exchange='x/../../../../escaped'"),
    ('{symbol: "BTC/../../USDT", market_type: perp, timeframe: 1h}', "market 1: invalid run parameter symbol"),
])
def test_a_name_that_would_leave_its_folder_is_refused_at_load(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message):
        load_universe(_write(tmp_path, f"markets: [{entry}]"))


def test_path_components_are_checked_wherever_a_path_is_formed(tmp_path):
    from include.config import Settings
    from include.paths import check_name
    from include.registry import RegisteredModel
    from include.run_folder import run_dir, version_run_dir

    with pytest.raises(ConfigError, match="not a safe name"):
        RegisteredModel("x/../../escaped", "BTCUSDT", "perp", "1h", 4).name  # noqa: B018
    settings = Settings.in_folder(tmp_path, tmp_path, market_db_url="sqlite://")
    with pytest.raises(ConfigError, match="not a safe name"):
        version_run_dir(settings, "m", {"dag_id": "../../etc", "data_window": {
            "interval_start": "2023-12-24T00:00:00+00:00", "interval_end": "2023-12-31T00:00:00+00:00"}})
    with pytest.raises(ConfigError, match="not a safe name"):
        run_dir(settings, "weekly_retrain", "..", None)
    assert check_name("binance-btcusdt-perp-1h-h4", "model") == "binance-btcusdt-perp-1h-h4"
    assert not list(tmp_path.parent.glob("escaped*")) and not (tmp_path / "runs").exists()


def test_universe_file_and_source_dir_params_are_read_only_under_the_input_roots(tmp_path, monkeypatch):
    from include.config import RunConfig, Settings
    from include.data.ingest import market_source
    from include.pipeline.publication import plan_universe

    outside = tmp_path / "outside"
    outside.mkdir()
    universe = outside / "u.yaml"
    universe.write_text("markets: [{symbol: BTCUSDT, market_type: perp, timeframe: 1h}]")
    monkeypatch.setenv("MARKET_INPUT_ROOTS", str(tmp_path / "allowed"))
    with pytest.raises(ConfigError, match="universe_file .* is outside the folders run parameters may read"):
        plan_universe({}, selected=None, universe_file=str(universe), data_interval_start=None,
                      data_interval_end=None, run_after=None)
    settings = Settings.in_folder(tmp_path, tmp_path, market_db_url="sqlite://")
    with pytest.raises(ConfigError, match="source_dir .* is outside"):
        market_source(RunConfig(source_dir=str(tmp_path / "allowed" / ".." / "outside")), settings)
    monkeypatch.setenv("MARKET_INPUT_ROOTS", str(outside))
    assert market_source(RunConfig(source_dir=str(outside)), settings).directory == outside.resolve()


def test_a_market_s_params_may_hold_lists(tmp_path):
    text = ("markets:\n  - {symbol: BTCUSDT, market_type: perp, timeframe: 1h, params: {models: [lightgbm]}}\n"
            "  - {symbol: BTCUSDT, market_type: perp, timeframe: 1h, "
            "params: {models: [lightgbm], label_horizon_bars: 6}}")
    configs = plan_markets({}, path=_write(tmp_path, text))
    assert [(c.models, c.label_horizon_bars) for c in configs] == [(("lightgbm",), 4), (("lightgbm",), 6)]


def _plans(n: int, approval: tuple[int, ...] = ()) -> list[dict]:
    return [{"model": f"m{i:03d}", "config": {"require_approval": i in approval}} for i in range(n)]


def test_markets_get_an_instance_each_while_they_fit_then_even_batches():
    from include.universe import batch_markets

    assert [b["label"] for b in batch_markets(_plans(3), instances=8)] == ["m000", "m001", "m002"]
    batches = batch_markets(_plans(200), instances=8)
    assert [len(b["plans"]) for b in batches] == [25] * 8
    assert batches[1]["label"] == "m025 (+24 more)"
    assert [p["model"] for b in batches for p in b["plans"]] == [f"m{i:03d}" for i in range(200)]
    assert [len(b["plans"]) for b in batch_markets(_plans(10), instances=4)] == [3, 3, 2, 2]
    assert [len(b["plans"]) for b in batch_markets(_plans(10), size=4)] == [4, 3, 3]


def test_a_market_that_asks_for_approval_has_an_instance_of_its_own():
    from include.universe import batch_markets

    batches = batch_markets(_plans(7, approval=(2,)), instances=3)
    assert [[p["model"] for p in b["plans"]] for b in batches] == [
        ["m002"], ["m000", "m001", "m003"], ["m004", "m005", "m006"]]


def test_the_instances_default_to_twice_the_parallelism_and_bad_sizes_are_refused(monkeypatch):
    from include.universe import batch_markets, market_group_instances

    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "4")
    monkeypatch.delenv("MARKET_GROUP_INSTANCES", raising=False)
    assert market_group_instances() == 8
    monkeypatch.setenv("MARKET_GROUP_INSTANCES", "3")
    assert len(batch_markets(_plans(10))) == 3
    monkeypatch.setenv("MARKET_GROUP_INSTANCES", "zero")
    with pytest.raises(ConfigError, match="MARKET_GROUP_INSTANCES"):
        market_group_instances()
    with pytest.raises(ConfigError, match="market_batch_size=0"):
        batch_markets(_plans(2), size=0)
