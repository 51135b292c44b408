"""The planted-edge benchmark's oracle is the truth: calibrated, and not beaten by a fitted model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.edge_capture import oracle, parse_cell
from bench.synthetic_markets import market_frames
from include.evaluation import log_loss_rows
from include.labels import make_labels


@pytest.mark.parametrize("cell", ["walk", "ar1:0.3", "funding:0.15", "regime:0.3"])
def test_the_oracle_is_calibrated_and_no_fitted_model_beats_it(cell):
    """Two years of hourly bars: the oracle's mean probability of each class is the class's
    frequency (within 0.01), its log loss beats the class prior's on a market with an edge and
    equals it (within 0.002 nats) on a random walk, and a multinomial logistic regression fitted
    in sample on the generating feature (with its square, for the regime's interaction) does not
    beat it by more than 0.001 nats per row."""
    from sklearn.linear_model import LogisticRegression

    kind, strength = parse_cell(cell)
    kwargs = {"beta": strength} if kind == "funding" else {"phi": strength} if kind != "walk" else {}
    frames = market_frames(kind, seed=11, start="2021-01-01", end="2023-01-01", **kwargs)
    close = pd.Series(frames["ohlcv"]["close"].to_numpy(),
                      index=pd.DatetimeIndex(pd.to_datetime(frames["ohlcv"]["timestamp"], utc=True)))
    labels = make_labels(close, horizon=4, mode="volatility", threshold=0.43, vol_window=168).dropna()
    rows = labels.index[200:]
    y = labels.loc[rows].to_numpy().astype(int)
    proba, move = oracle(frames, kind, strength, rows)
    assert proba.shape == (len(rows), 3) and np.allclose(proba.sum(axis=1), 1.0) and move.shape == (len(rows),)
    freq = np.bincount(y, minlength=3) / len(y)
    assert np.abs(proba.mean(axis=0) - freq).max() < 0.01, (proba.mean(axis=0), freq)
    own = log_loss_rows(y, proba).mean()
    prior = log_loss_rows(y, np.tile(freq, (len(y), 1))).mean()
    if kind == "walk":
        assert abs(prior - own) < 0.002
    else:
        assert prior - own > 0.005
    r = np.log(close).diff().loc[rows].to_numpy()
    state = frames["state"].loc[rows]
    feature = {"walk": r, "ar1": r, "funding": state["z_known"].to_numpy(),
               "regime": r * state["high"].to_numpy()}[kind]
    X = np.c_[feature, state["high"].to_numpy()] if kind == "regime" else feature[:, None]
    fitted = LogisticRegression(C=100.0, max_iter=1000).fit(X, y)
    assert log_loss_rows(y, fitted.predict_proba(X)).mean() > own - 0.001
