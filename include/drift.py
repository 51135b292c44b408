"""Feature drift: reference bins stored with a version, population stability index against them.

The population stability index of a feature compares the share of live values in each bin of
the training distribution with the share of training values there:
``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` over bins ``i``, with ``e_i`` the training and
``a_i`` the live share (Siddiqi 2006, *Credit Risk Scorecards*, ch. 8; Yurdakul 2018, "Statistical
properties of population stability index"). Bins are the training deciles; shares are floored at
1e-4 so that an empty bin gives a large, finite value. The customary reading: below 0.1 stable,
0.1-0.25 a moderate shift, above 0.25 a major shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

FLOOR = 1e-4


def reference_bins(X: pd.DataFrame, n_bins: int = 10) -> dict[str, dict[str, Any]]:
    """Per feature: inner bin edges (training quantiles), the training share per bin, and the
    share of missing values.

    Args:
        X: ``(n_rows, n_features)`` training feature rows.
        n_bins: quantile bins per feature (fewer when the feature has few distinct values).

    Returns:
        ``{feature: {"edges": [n_edges], "proportions": [n_edges + 1], "missing_share", "rows"}}``.
    """
    out = {}
    for name in X.columns:
        values = X[name].to_numpy(dtype="float64")
        finite = values[np.isfinite(values)]
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1])) if len(finite) else np.array([])
        out[name] = {"edges": edges.tolist(), "proportions": _shares(finite, edges).tolist(),
                     "missing_share": float(1 - len(finite) / len(values)) if len(values) else 0.0,
                     "rows": int(len(values))}
    return out


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(counts.sum(), 1)


def psi(reference: dict[str, Any], values: np.ndarray) -> float:
    """Population stability index of live ``values`` ``(n,)`` against one feature's reference.

    Missing values are left out (their share is reported apart). NaN when no live value is finite.
    """
    values = np.asarray(values, dtype="float64")
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan")
    expected = np.maximum(np.asarray(reference["proportions"], dtype="float64"), FLOOR)
    actual = np.maximum(_shares(finite, np.asarray(reference["edges"], dtype="float64")), FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_table(reference: dict[str, dict[str, Any]], live: pd.DataFrame) -> list[dict[str, Any]]:
    """PSI and missing share of every referenced feature over the live rows, largest PSI first.

    Returns:
        ``[{"feature", "psi", "missing_share", "reference_missing_share", "rows"}]``.
    """
    rows = []
    for name, ref in reference.items():
        values = live[name].to_numpy(dtype="float64") if name in live else np.full(len(live), np.nan)
        rows.append({"feature": name, "psi": psi(ref, values),
                     "missing_share": float(np.mean(~np.isfinite(values))) if len(values) else float("nan"),
                     "reference_missing_share": ref["missing_share"], "rows": int(len(values))})
    return sorted(rows, key=lambda r: -r["psi"] if r["psi"] == r["psi"] else 1.0)
