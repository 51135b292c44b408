"""Meta-labeling: a second model that decides whether to act on the trading decision's side.

The primary decision (:class:`include.backtest.TradingDecision`) picks a side where the
forecast's expected move beats the round trip. The meta-label of such a bar is whether that
position paid after costs over the label horizon: ``side * (r - f) - c > 0``, with ``r`` the
realised log return from the bar's close to the close ``h`` bars later, ``f`` the funding the
horizon pays at the last settled rate and ``c`` the round trip. A logistic regression on what the
decision knew at the bar (:data:`META_INPUTS`) estimates the probability that a position pays;
the decision acts only where that probability is at least one half.

Reference: M. López de Prado, *Advances in Financial Machine Learning* (Wiley, 2018), section
3.6 "Meta-labeling". The secondary model is scikit-learn's ``LogisticRegression`` on
standardised inputs; only its coefficients are kept, so that a version's gate decision (plain
JSON) carries it to serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: What the secondary model reads, per bar a position is taken: the expected move net of funding
#: in round trips on the position's side, the side's class probability, the range class's, and
#: the natural log of the label rule's volatility scale (a calm and a turbulent market ask for
#: different odds at the same expected edge).
META_INPUTS: tuple[str, ...] = ("edge_round_trips", "p_side", "p_range", "log_scale")

#: Fewest positions (with both outcomes among them) a meta-label model is fitted on; with fewer
#: the decision acts on every position, as without meta-labeling.
MIN_META_ROWS = 100

#: Inverse L2 strength of the secondary logistic regression on standardised inputs: strong, as
#: it learns from a few hundred positions of a few weeks.
META_C = 0.1


def meta_inputs(proba: np.ndarray, side: np.ndarray, net_expected: np.ndarray, round_trip: float,
                scale: np.ndarray) -> np.ndarray:
    """The secondary model's inputs (:data:`META_INPUTS`), ``(n, 4)``.

    Args:
        proba: ``(n, 3)`` class probabilities (down, range, up).
        side: ``(n,)`` positions in {-1, 0, +1}; a flat row gets its inputs as a long's.
        net_expected: ``(n,)`` expected log return over the horizon less the funding it pays.
        round_trip: cost of a round trip as a fraction (> 0 scales the edge; 0 leaves it in
            log-return units).
        scale: ``(n,)`` the label rule's volatility scale (a log-return fraction; a row without
            one, or with 0, gets the log of 1e-12).
    """
    proba = np.asarray(proba, dtype="float64")
    side = np.where(np.asarray(side) < 0, -1, 1)
    edge = side * np.asarray(net_expected, dtype="float64") / (round_trip if round_trip > 0 else 1.0)
    p_side = np.where(side > 0, proba[:, 2], proba[:, 0])
    scale = np.nan_to_num(np.asarray(scale, dtype="float64"), nan=0.0)
    return np.column_stack([edge, p_side, proba[:, 1], np.log(np.maximum(scale, 1e-12))])


@dataclass(frozen=True)
class MetaLabel:
    """A fitted secondary model: ``P(paid) = 1 / (1 + exp(-(b + w . (x - mean) / scale)))``.

    Attributes:
        mean, scale: per input, the standardisation of the rows it was fitted on.
        coef: per input, the logistic regression's weight.
        intercept: its intercept.
        rows: positions it was fitted on; ``paid_share``: the share of them that paid.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    rows: int
    paid_share: float

    def probability(self, inputs: np.ndarray) -> np.ndarray:
        """``(n,)`` probability that a position with these :func:`meta_inputs` pays after costs."""
        z = (np.asarray(inputs, dtype="float64") - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(self.intercept + z @ np.asarray(self.coef))))

    def acts(self, inputs: np.ndarray) -> np.ndarray:
        """``(n,)`` booleans: act where :meth:`probability` is at least one half."""
        return self.probability(inputs) >= 0.5

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (a gate decision's record)."""
        return {"inputs": list(META_INPUTS), "mean": list(self.mean), "scale": list(self.scale),
                "coef": list(self.coef), "intercept": self.intercept, "rows": self.rows,
                "paid_share": self.paid_share}

    @classmethod
    def from_dict(cls, record: dict[str, Any] | None) -> MetaLabel | None:
        """The model :meth:`to_dict` wrote, or ``None`` for ``None``.

        Raises:
            ValueError: the record was fitted on other inputs than :data:`META_INPUTS`.
        """
        if record is None:
            return None
        if tuple(record.get("inputs", ())) != META_INPUTS:
            raise ValueError(f"meta-label model on inputs {record.get('inputs')}, expected {list(META_INPUTS)}")
        return cls(mean=tuple(record["mean"]), scale=tuple(record["scale"]), coef=tuple(record["coef"]),
                   intercept=float(record["intercept"]), rows=int(record["rows"]),
                   paid_share=float(record["paid_share"]))


def fit_meta_label(inputs: np.ndarray, paid: np.ndarray, random_state: int = 0) -> MetaLabel | None:
    """Fit the secondary model on positions already taken and whether each paid.

    Args:
        inputs: ``(n, 4)`` :func:`meta_inputs` of the positions.
        paid: ``(n,)`` booleans: the position paid after costs over the horizon.
        random_state: the solver's seed.

    Returns:
        The model, or ``None`` with fewer than :data:`MIN_META_ROWS` positions, only one outcome,
        or a non-finite input or coefficient.
    """
    from sklearn.linear_model import LogisticRegression

    inputs, paid = np.asarray(inputs, dtype="float64"), np.asarray(paid, dtype=bool)
    if len(paid) < MIN_META_ROWS or paid.all() or not paid.any():
        return None
    mean, scale = inputs.mean(axis=0), inputs.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    fitted = LogisticRegression(C=META_C, random_state=random_state).fit((inputs - mean) / scale, paid)
    if not (np.isfinite(fitted.coef_).all() and np.isfinite(fitted.intercept_).all() and np.isfinite(mean).all()):
        return None
    return MetaLabel(mean=tuple(map(float, mean)), scale=tuple(map(float, scale)),
                     coef=tuple(map(float, fitted.coef_[0])), intercept=float(fitted.intercept_[0]),
                     rows=int(len(paid)), paid_share=float(paid.mean()))
