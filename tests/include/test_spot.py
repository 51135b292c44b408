"""A spot market needs no funding-rate file: it trains on candles (and open interest if present)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def test_a_spot_market_runs_without_a_funding_file(tmp_path, data_dir):
    """The week ending 2023-03-26 also crosses a real spot outage: no 2023-03-24 13:00 candle."""
    from include.config import RunConfig, Settings
    from include.features import FUNDING_FEATURES
    from include.pipeline import run_once

    src = tmp_path / "data"
    src.mkdir()
    shutil.copy(data_dir / "btcusdt_spot_1h.csv.gz", src)  # candles only: no funding, no open interest
    settings = Settings.in_folder(tmp_path, src)
    cfg = RunConfig(market_type="spot", as_of_date="2023-03-26", train_window_days=120, cv_folds=3)
    run = run_once(cfg, settings, dag_id="weekly_retrain", run_id="spot-test")
    summary = json.loads(Path(run["summary"]["path"]).read_text())
    assert summary["model"] == run["decision"]["model"] == "binance-btcusdt-spot-1h-h4"
    assert "funding_rate" not in summary["ingested"] and summary["ingested"]["ohlcv"]["rows_fetched"] > 2800
    assert set(summary["validation"]["rows"]) == {"ohlcv"}  # no funding suite, no open-interest file
    assert not set(summary["features"]["columns"]) & set(FUNDING_FEATURES)
    assert len(run["decision"]["checks"]) >= 4
    trading = json.loads((Path(run["summary"]["path"]).parent / "trading.json").read_text())
    # The outage's two bars (into and out of the missing candle) are traded flat, not an error.
    assert trading["out_of_fold"]["ensemble"]["skipped_bars"] == 2
    assert trading["out_of_fold"]["buy_and_hold"]["skipped_bars"] == 2
    assert run["action"]["action"] == ("promote" if run["decision"]["passed"] else "keep")
