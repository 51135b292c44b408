"""The gate benchmarks' synthetic markets: files the project's source reads, returns with the stated dependence."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import numpy as np
import pytest

from bench.random_walk_gate import write_walk
from bench.synthetic_markets import log_returns, write_market
from include.data.sources import FileSource

EVERYTHING = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def lag1_autocorrelation(x: np.ndarray) -> float:
    """Sample lag-1 autocorrelation of a series."""
    x = x - x.mean()
    return float(np.dot(x[:-1], x[1:]) / np.dot(x, x))


@pytest.mark.parametrize(("kind", "phi"), [("walk", 0.0), ("ar1", 0.1), ("ar1", 0.3)])
def test_written_market_reads_back_with_its_autocorrelation(tmp_path, kind, phi):
    """Three years of hourly bars (26,280; the estimate's standard error is about 0.006) written
    to files, read by FileSource: complete series, consistent candles, lag-1 autocorrelation of
    the hourly log returns within 0.03 of phi."""
    write_market(tmp_path, kind, seed=7, phi=phi, start="2020-01-01", end="2023-01-01")
    source = FileSource(tmp_path)
    bars = source.fetch_ohlcv("BTCUSDT", "perp", "1h", *EVERYTHING)
    funding = source.fetch_funding_rates("BTCUSDT", *EVERYTHING)
    interest = source.fetch_open_interest("BTCUSDT", *EVERYTHING)

    assert len(bars) == 1096 * 24 and len(funding) == 1096 * 3 and len(interest) == 1096
    assert bars["timestamp"].diff().dropna().eq(np.timedelta64(1, "h")).all()
    assert not bars.isna().any().any() and not funding.isna().any().any() and not interest.isna().any().any()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars["volume"] > 0).all() and (interest["open_interest"] > 0).all()
    # Each candle opens at the previous close: close-to-close returns are the generated ones.
    assert np.allclose(bars["open"].to_numpy()[1:], bars["close"].to_numpy()[:-1])
    returns = np.diff(np.log(bars["close"].to_numpy()))
    assert lag1_autocorrelation(returns) == pytest.approx(phi, abs=0.03)
    assert np.std(returns) == pytest.approx(0.006 / np.sqrt(1 - phi * phi), rel=0.05)


def test_markets_of_several_symbols_share_a_folder(tmp_path):
    write_market(tmp_path, "walk", seed=1, symbol="RW000USDT", start="2022-01-01", end="2022-02-01")
    write_market(tmp_path, "walk", seed=2, symbol="RW001USDT", start="2022-01-01", end="2022-02-01")
    source = FileSource(tmp_path)
    first = source.fetch_ohlcv("RW000USDT", "perp", "1h", *EVERYTHING)
    second = source.fetch_ohlcv("RW001USDT", "perp", "1h", *EVERYTHING)
    assert len(first) == len(second) == 31 * 24
    assert not np.allclose(first["close"], second["close"])
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "rw000usdt_funding_8h.csv.gz"  # no temporary left


def test_a_walk_is_the_random_walk_gate_market(tmp_path):
    """Same seed and dates: the same bytes as ``bench/random_walk_gate.py``'s market."""
    write_walk(tmp_path / "a", 5, start="2022-01-01", end="2022-03-01")
    write_market(tmp_path / "b", "walk", 5, start="2022-01-01", end="2022-03-01")
    for path in (tmp_path / "a").iterdir():
        with gzip.open(path, "rt") as ours, gzip.open(tmp_path / "b" / path.name, "rt") as theirs:
            assert ours.read() == theirs.read(), path.name


def test_same_seed_same_market_other_seed_other_market():
    first, again, other = (log_returns("ar1", 1000, np.random.default_rng(s), phi=0.2) for s in (3, 3, 4))
    assert np.array_equal(first, again) and not np.allclose(first, other)


@pytest.mark.parametrize(("kind", "phi", "message"), [("ar1", 1.0, "stationary"), ("ar1", -1.5, "stationary"),
                                                      ("walk", 0.2, "kind='ar1'"), ("garch", 0.0, "kind")])
def test_bad_arguments_are_refused(kind, phi, message):
    with pytest.raises(ValueError, match=message):
        log_returns(kind, 10, np.random.default_rng(0), phi=phi)
