"""An example plug-in package for the weekly retrain: one model family and one feature.

Installed (here: put on ``sys.path`` with its ``.dist-info``), it declares in its entry points::

    [weekly_retrain.model_families]
    example_linear = wr_example.family

    [weekly_retrain.features]
    range_pct = wr_example:range_pct
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def range_pct(bars: pd.DataFrame) -> np.ndarray:
    """The bar's high-low range as a fraction of its close: each value from its own bar only."""
    return ((bars["high"] - bars["low"]) / bars["close"]).to_numpy()


range_pct.warmup_bars = 0
