"""Features of stored bars, computed once per calendar month and kept in the market store.

:func:`feature_frame` is how every workflow gets the features of stored bars (the weekly run's
features step, the champion's evaluation, serving, monitoring, the track record's replay): per
month, from the bars of the month and its padding, so a bar's features never depend on where a
caller's range starts; with ``reuse``, each month is computed once and read back bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import logging
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from include import feature_names
from include.config import RunConfig
from include.data.store import MarketStore
from include.features import FUNDING_FEATURES, FeatureSpec, build_features
from include.windows import FUNDING_LOOKBACK, feature_pad, feature_read_start, month_start

logger = logging.getLogger(__name__)


#: The feature code (``include/features.py`` and its vocabulary, ``include/feature_names.py``) as
#: this process imported it: a deployment that preloads modules keeps running the code it loaded
#: after the files change on disk.
_FEATURES_SOURCE = b"".join(Path(inspect.getsourcefile(code) or "").read_bytes()
                            for code in (build_features, feature_names))


@functools.cache
def feature_code_digest() -> str:
    """SHA-256 of the feature code this process runs (:data:`_FEATURES_SOURCE`) and
    the versions of the libraries it computes with (TA-Lib, NumPy, pandas): part of every stored
    feature month's key."""
    import talib

    h = hashlib.sha256(_FEATURES_SOURCE)
    h.update(f"talib {talib.__version__} numpy {np.__version__} pandas {pd.__version__}".encode())
    return h.hexdigest()


def feature_inputs_digest(spec: FeatureSpec, month: datetime, pad: timedelta,
                          inputs: tuple[pd.DataFrame | None, ...]) -> str:
    """Key of one computed feature month: SHA-256 of the spec, the feature code
    (:func:`feature_code_digest`), the month, the padding and every value of the input rows
    (candles, funding, open interest; :func:`pandas.util.hash_pandas_object`)."""
    h = hashlib.sha256(json.dumps({"spec": spec.sha256, "code": feature_code_digest(), "month": month.isoformat(),
                                   "pad_s": pad.total_seconds()}).encode())
    for frame in inputs:
        if frame is None:
            h.update(b"\0none")
            continue
        h.update("\x1f".join(map(str, frame.columns)).encode())
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _month_features(bars: pd.DataFrame, spec: FeatureSpec, funding: pd.DataFrame | None,
                    open_interest: pd.DataFrame, month: datetime, following: datetime) -> pd.DataFrame:
    """The features of the bars of ``[month, following)``, computed from ``bars`` (the month and
    its padding), with every NaN of a float column as the one quiet NaN NumPy writes: Parquet
    stores a missing float as null and reads back that NaN, so a stored month and a computed one
    are the same bytes whatever NaN payload an indicator produced."""
    frame = build_features(bars, spec, funding, open_interest)
    out = frame[(frame.index >= pd.Timestamp(month)) & (frame.index < pd.Timestamp(following))].copy()
    for column in out.columns:
        if out[column].dtype.kind == "f":
            values = out[column].to_numpy(copy=True)
            values[np.isnan(values)] = np.nan
            out[column] = values
    return out


def feature_frame(store: MarketStore, cfg: RunConfig, spec: FeatureSpec, start: datetime,
                  end: datetime, *, reuse: bool = False) -> pd.DataFrame:
    """Features for bars with open time in ``[start, end)`` from the store, per ``spec``.

    Features are computed per calendar month: the bars of month ``m`` from the bars in
    ``[m - feature_pad, end of m)`` (:func:`~include.windows.feature_read_start`).
    A bar's features therefore depend only on the bar and the month before its month, never
    on where a caller's range starts: training, the champion's evaluation, serving and
    monitoring compute the same bits for the same bar. Exponential indicators (EMA, MACD, RSI,
    ATR's Wilder smoothing) remember where their series began, and running sums round
    differently from different starts; this is what makes consecutive weekly runs' rows
    identical, so :mod:`include.training.fit_cache` recognises a fold it has fitted before.

    With ``reuse``, each month is computed once: a month stored in the market database
    (``feature_month``) under the same key (:func:`feature_inputs_digest`: spec, feature code,
    exact input rows) is read back, bit for bit what computing it gives; a computed month is
    stored, replacing that month's earlier entry. Specs with plug-in features are always
    computed (a plug-in's code is not part of the key).

    Args:
        cfg: names the market (exchange, symbol, market type, timeframe).
        spec: the features.
        start: UTC start of the bars wanted (included).
        end: UTC end of the bars wanted (excluded).
        reuse: read and store computed months (the weekly run's features step).

    Returns:
        ``(n_bars, len(spec.names))`` frame indexed by bar open time, columns in spec order.
    """
    key = {"exchange": cfg.exchange, "symbol": cfg.symbol}
    read_from = feature_read_start(start, cfg)
    pad = feature_pad(cfg)
    ohlcv = store.load_ohlcv(market_type=cfg.market_type, timeframe=cfg.timeframe, start=read_from, end=end, **key)
    funding = (store.load_funding_rates(start=read_from - FUNDING_LOOKBACK, end=end, **key)
               if set(spec.names) & set(FUNDING_FEATURES) else None)
    oi = store.load_open_interest(start=read_from - timedelta(days=2), end=end, **key)
    series = {"market_type": cfg.market_type, "timeframe": cfg.timeframe, "spec_sha": spec.sha256, **key}
    reuse = reuse and not spec.params.get("plugins")
    stored = store.load_feature_months(start=month_start(start), end=end, **series) if reuse else {}
    computed: dict[int, tuple[str, bytes, int]] = {}
    parts = []
    month = month_start(start)
    while month < end:
        following = month_start(month + timedelta(days=32))
        seg_from = month - pad
        bars = ohlcv[(ohlcv["timestamp"] >= seg_from) & (ohlcv["timestamp"] < following)]
        if len(bars):
            seg_funding = (None if funding is None else
                           funding[(funding["timestamp"] >= seg_from - FUNDING_LOOKBACK)
                                   & (funding["timestamp"] < following)])
            seg_oi = oi[(oi["timestamp"] >= seg_from - timedelta(days=2)) & (oi["timestamp"] < following)]
            month_ms = int(pd.Timestamp(month).value // 1_000_000)
            inputs = feature_inputs_digest(spec, month, pad, (bars, seg_funding, seg_oi)) if reuse else None
            hit = stored.get(month_ms)
            if hit is not None and hit[0] == inputs:
                frame = pd.read_parquet(io.BytesIO(hit[1]))
            else:
                frame = _month_features(bars, spec, seg_funding, seg_oi, month, following)
                if reuse:
                    buffer = io.BytesIO()
                    frame.to_parquet(buffer)
                    computed[month_ms] = (inputs, buffer.getvalue(), len(frame))
            parts.append(frame[frame.index >= pd.Timestamp(max(month, start))])
        month = following
    if computed:
        store.save_feature_months(computed, **series)
    if not parts:
        return build_features(ohlcv, spec, funding, oi)  # no bars: the empty frame with its columns
    return pd.concat(parts)
