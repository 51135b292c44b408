"""The gate's skill tests: one-sided tests that state their level, on serially dependent rows.

Every skill check of :mod:`include.gate` is a hypothesis test whose null is "no skill" (the
candidate is no better than the reference), so that a check passes at level ``alpha`` on a
market with nothing to predict in at most a share ``alpha`` of weeks:

* :func:`log_loss_skill_test` compares the candidate's out-of-fold forecasts with a reference
  forecast on the same rows by :func:`mean_below_zero_test` of the per-row loss difference: a
  studentized circular block bootstrap (Politis & Romano 1992; Götze & Künsch 1996). Per-row
  scores are serially dependent (an h-bar label overlaps the next h - 1 labels; volatility and
  the models' errors persist), so the mean is studentized by a block (Bartlett, Newey & West
  1987) standard error over a few long blocks, at least a quarter of the rows each: a slow
  component of the loss difference stays inside a block, and the bootstrap reproduces the
  spread of a standard error estimated from so few blocks (Kiefer & Vogelsang 2005's fixed
  bandwidth ratio; Gonçalves & Vogelsang 2011).
* :func:`macro_f1_test` compares hard predictions: macro F1 is not a mean over rows, so whole
  circular block resamples are scored, in blocks of at least the label horizon and at least the
  automatic length of Politis & White (2004, with Patton, Politis & White 2009's correction;
  ``arch.bootstrap.optimal_block_length``). Its baselines are those a forecast without skill
  can fail to beat (the stratified draw and the momentum rule). The majority class scores F1 0
  on two of the three classes, so a random predictor beats it with p near 0: it is reported by
  :mod:`include.evaluation` and left out of the test.
* :func:`sharpe_skill_test` is the probabilistic Sharpe ratio (Bailey & López de Prado 2012) of
  per-bar net returns against a benchmark Sharpe ratio: a strategy passes when ``PSR >= 1 -
  alpha``. Against another strategy (the momentum rule) it is applied to the per-bar return
  difference, the information ratio of trading the candidate instead.

A bootstrap p-value is ``(1 + #{resampled statistics at least as favourable to H1 as the
observed one}) / (B + 1)`` over ``B`` resamples centred under the null (Davison & Hinkley 1997,
section 4.2; Hall & Wilson 1991's guideline of resampling under the null by centring): never 0,
and exact for an exchangeable statistic when ``alpha (B + 1)`` is an integer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from include.backtest import probabilistic_sharpe
from include.errors import TrainingError
from include.evaluation import log_loss_rows
from include.training import metrics_with_prior

#: Bootstrap resamples per test.
N_RESAMPLES = 1000

#: The studentized mean test's blocks are at least ``rows // MAX_BLOCKS`` and at least
#: ``MIN_BLOCK_ROWS`` long, so that a resample is at most this many whole blocks: 6 (a week of
#: hourly rows each) for the gate's 1,008 out-of-fold rows, 4 for a 164-row window.
MAX_BLOCKS = 6
MIN_BLOCK_ROWS = 40
#: ... but never longer than this (two weeks of hourly rows) because of ``MAX_BLOCKS``: a longer
#: record (a candidate's out-of-fold rows with its shadow record, several months) is tested in
#: more blocks of two weeks, not in six blocks of a month, so its power grows with its length.
MAX_BLOCK_ROWS = 336


def block_length(series: np.ndarray, minimum: int) -> int:
    """Circular-bootstrap block length for ``series``: the automatic choice of Politis & White
    (2004), at least ``minimum`` (the label horizon in rows) and at most a quarter of the rows.

    Args:
        series: ``(n,)`` the per-row statistic to be resampled.
        minimum: fewest rows per block.
    """
    from arch.bootstrap import optimal_block_length

    series = np.asarray(series, dtype="float64")
    automatic = 1.0
    if len(series) > 8 and np.std(series) > 0:
        value = float(optimal_block_length(series)["circular"].iloc[0])
        automatic = value if math.isfinite(value) else 1.0
    return int(max(minimum, 1, min(math.ceil(automatic), len(series) // 4)))


def _resample_indices(n: int, block: int, n_resamples: int, random_state: int) -> np.ndarray:
    """``(n_resamples, n)`` row indices of circular block-bootstrap resamples of ``n`` rows
    (Politis & Romano 1992): ``ceil(n / block)`` blocks of ``block`` consecutive rows, wrapping
    from the last row to the first, each starting at a uniformly drawn row; the last block is cut
    to ``n`` rows."""
    rng = np.random.default_rng(random_state)
    k = -(-n // block)
    starts = rng.integers(0, n, (n_resamples, k))
    return ((starts[:, :, None] + np.arange(block)) % n).reshape(n_resamples, k * block)[:, :n]


def _circular_block_means(series: np.ndarray, block: int) -> np.ndarray:
    """``(n,)`` the means of the ``n`` circular blocks of ``block`` rows, block ``i`` starting at row ``i``."""
    n = len(series)
    sums = np.concatenate([[0.0], np.cumsum(np.concatenate([series, series[: block - 1]]))])
    return (sums[block:block + n] - sums[:n]) / block


def _t_ratio(deviation: np.ndarray, se: np.ndarray) -> np.ndarray:
    """``deviation / se``, with a zero standard error giving 0 for no deviation and an infinity
    of the deviation's sign otherwise (a constant difference)."""
    deviation, se = np.asarray(deviation, dtype="float64"), np.asarray(se, dtype="float64")
    finite = deviation / np.where(se > 0, se, 1.0)
    return np.where(se > 0, finite, np.where(deviation == 0, 0.0, np.copysign(np.inf, deviation)))


def _studentized_block_rows(n: int, block: int) -> int:
    """The block length :func:`mean_below_zero_test` uses on ``n`` rows: at least ``block``, at least
    ``n // MAX_BLOCKS`` up to ``MAX_BLOCK_ROWS``, and at least ``MIN_BLOCK_ROWS`` up to a quarter of the rows."""
    return int(max(block, 1, min(n // MAX_BLOCKS, MAX_BLOCK_ROWS), min(MIN_BLOCK_ROWS, n // 4)))


def _studentized_bootstrap(diff: np.ndarray, observed: float, used: int, k: int, n_resamples: int,
                           random_state: int) -> tuple[float, float, float]:
    """``(standard_error, t_statistic, p_value)`` of H1 "mean of ``diff`` < 0": the observed mean
    ``observed`` studentized by its overlapping-block standard error in circular blocks of ``used``
    rows, against ``n_resamples`` resamples of ``k`` whole blocks, each studentized by its own
    block variance (see :func:`mean_below_zero_test`)."""
    n = len(diff)
    means = _circular_block_means(diff, used)
    se = math.sqrt(used * float(np.mean((means - observed) ** 2)) / n)
    t = float(_t_ratio(np.array(observed), np.array(se)))
    drawn = means[np.random.default_rng(random_state).integers(0, n, (n_resamples, k))]
    t_boot = _t_ratio(drawn.mean(axis=1) - observed, np.sqrt(drawn.var(axis=1) / k))
    p_value = (1 + int(np.sum(t_boot <= t))) / (n_resamples + 1)
    return se, t, p_value


def mean_below_zero_test(diff: np.ndarray, *, block: int, n_resamples: int = N_RESAMPLES,
                         random_state: int = 0) -> dict[str, Any]:
    """One-sided test of H1 "mean of ``diff`` < 0" by the studentized circular block bootstrap.

    The statistic is the t-ratio ``T = mean / se`` with ``se^2 = b / n * sum_i (B_i - mean)^2 /
    n`` over the ``n`` circular block means ``B_i`` of ``b`` rows: the overlapping-block variance
    of Künsch (1989), the Bartlett-kernel (Newey & West 1987) long-run variance with bandwidth
    ``b`` on circular autocovariances. Each of ``B`` resamples draws ``k = n // b`` whole circular
    blocks (Politis & Romano 1992) and is studentized by its own block variance, ``T* = (mean*
    - mean) / sqrt(var(B*_1..B*_k) / k)`` (Götze & Künsch 1996); ``p = (1 + #{T* <= T}) / (B +
    1)`` (Davison & Hinkley 1997, section 4.2).

    The blocks are at least ``n // MAX_BLOCKS`` (6 blocks) but at most ``MAX_BLOCK_ROWS`` (336)
    for that reason, and at least ``MIN_BLOCK_ROWS`` (40) rows long, whatever ``block`` asks for.
    A loss difference whose persistent part is small beside the
    labels' noise has a short automatic block length (a few rows), and a bootstrap in such blocks
    misses the slow part: at level 0.10 it rejects a true null in 17 % of 164-row and 1,000-row
    windows when both forecasts' errors are AR(1) with coefficient 0.99. Few, long blocks keep
    the slow part inside a block; a standard error from so few blocks is noisy, and the
    resamples, being as few blocks, carry that noise into the null distribution (a fixed
    bandwidth ratio: Kiefer & Vogelsang 2005; Gonçalves & Vogelsang 2011). Fewer blocks hold the
    level better and cost power at the gate's small weekly level. Measured on two forecasts of
    equal expected loss whose errors are AR(1) (rejection rates at level 0.10, and at 0.01 where
    shown; 1,000 markets per case and 999 resamples, or 500 and 199 for the 6-block row), and the
    share of 40 skilled markets (1,008 rows, extra probability ``e`` on the true class) passed at
    the weekly level 0.10 / 52 with 10,400 resamples:

    ================  ===========  ===========  ============  =============  ======  ======
    blocks             164, φ 0.9   164, φ 0.99  1,000, φ 0.9  1,000, φ 0.99  e 0.01  e 0.02
    ================  ===========  ===========  ============  =============  ======  ======
    4                  .091 / .002  .112 / .004  .087 / .001   .095 / .003    0.30    0.88
    6                                            .100, .088    .122, .100     0.85    1.00
    8                  .109 / .016  .137 / .012  .109 / .005   .117 / .011    0.95    1.00
    ================  ===========  ===========  ============  =============  ======  ======

    So a short window (the champion's comparison a few days after a promotion) is tested in 4
    blocks, which hold its level, and the candidate's 1,008 out-of-fold rows in 6, a week each,
    with the power to find a real edge at the gate's weekly level.

    Limits. A resample of ``k`` blocks is studentized with ``k - 1`` degrees of freedom, so its
    lower tail is long: with four blocks a p-value below 0.002 needs a t-ratio of about -11. No
    test holds its level on every series either: on
    a loss difference that is itself an AR(1) of coefficient 0.99, 164 rows span less than two
    of its time constants, and this test rejects about 29 % of the time at level 0.10 (Müller
    2014, "HAC corrections for strongly autocorrelated time series", shows that no test can
    without bounding the persistence).

    Args:
        diff: ``(n,)`` per-row differences (e.g. candidate minus reference loss, nats).
        block: shortest block in rows (the label horizon, or :func:`block_length`'s choice).
        n_resamples: bootstrap resamples ``B``.
        random_state: seed of the block draws.

    Returns:
        ``{"statistic" (mean of diff), "p_value", "n", "block" (the block length used, rows),
        "blocks" (whole blocks per resample), "standard_error" (of the mean), "t_statistic",
        "n_resamples", "method"}``; ``p_value`` is ``None`` when every difference is 0 (the same
        forecast: nothing to test).

    Raises:
        TrainingError: fewer than ``2 * block`` rows.
    """
    diff = np.asarray(diff, dtype="float64")
    n = len(diff)
    if n < 2 * block:
        raise TrainingError(f"{n} rows are too few for a block bootstrap in blocks of {block}")
    observed = float(diff.mean())
    used = _studentized_block_rows(n, block)
    k = n // used
    out = {"statistic": observed, "p_value": None, "n": int(n), "block": used, "blocks": int(k),
           "standard_error": None, "t_statistic": None, "n_resamples": 0,
           "method": "studentized circular block bootstrap, one-sided"}
    if not np.any(diff):
        return out
    se, t, p_value = _studentized_bootstrap(diff, observed, used, k, n_resamples, random_state)
    return {**out, "p_value": float(p_value), "standard_error": se, "t_statistic": t,
            "n_resamples": int(n_resamples)}


def log_loss_skill_test(y: np.ndarray, proba: np.ndarray, reference: np.ndarray, *, ratio: float = 1.0,
                        horizon: int, n_resamples: int = N_RESAMPLES, random_state: int = 0) -> dict[str, Any]:
    """Test H1 "the forecast's mean log loss < ``ratio`` x the reference's" on the same rows.

    Args:
        y: ``(n,)`` labels in {0, 1, 2}.
        proba: ``(n, 3)`` the candidate's class probabilities.
        reference: ``(n, 3)`` the reference's (such as the training class frequencies).
        ratio: multiple of the reference's loss to beat (1: beat it).
        horizon: label horizon in bars, the shortest block.

    Returns:
        :func:`mean_below_zero_test`'s result plus ``log_loss`` and ``reference_log_loss``
        (nats per row).
    """
    own, ref = log_loss_rows(y, proba), log_loss_rows(y, reference)
    diff = own - ratio * ref
    result = mean_below_zero_test(diff, block=block_length(diff, horizon), n_resamples=n_resamples,
                                  random_state=random_state)
    return {**result, "log_loss": float(own.mean()), "reference_log_loss": float(ref.mean()), "ratio": ratio}


def macro_f1_from_counts(y: np.ndarray, pred: np.ndarray, k: int = 3) -> np.ndarray:
    """Macro F1 of each row of ``pred`` against the matching row of ``y``.

    Equal to scikit-learn's ``f1_score(average="macro", labels=range(k), zero_division=0)``,
    vectorised over resamples: F1 per class ``2 TP / (2 TP + FP + FN)``, 0 when undefined.

    Args:
        y: ``(m, n)`` labels in ``{0..k-1}`` (``m`` resamples).
        pred: ``(m, n)`` predictions in ``{0..k-1}``.
        k: classes.

    Returns:
        ``(m,)`` macro F1 scores.
    """
    y, pred = np.atleast_2d(y).astype(int), np.atleast_2d(pred).astype(int)
    scores = np.zeros(y.shape[0])
    for cls in range(k):
        tp = np.sum((pred == cls) & (y == cls), axis=1)
        fp = np.sum((pred == cls) & (y != cls), axis=1)
        fn = np.sum((pred != cls) & (y == cls), axis=1)
        denom = 2 * tp + fp + fn
        scores += np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    return scores / k


def macro_f1_test(y: np.ndarray, pred: np.ndarray, reference: np.ndarray, *, margin: float = 0.0,
                  horizon: int, n_resamples: int = N_RESAMPLES, random_state: int = 0) -> dict[str, Any]:
    """Test H1 "macro F1 of ``pred`` > macro F1 of ``reference`` + ``margin``" on the same rows.

    Macro F1 is not a mean over rows, so whole resamples of row indices (circular blocks, the
    same indices for both) are scored; the block length is chosen on the per-row difference in
    correctness. ``p = (1 + #{F1* lead - observed lead >= observed lead - margin}) / (B + 1)``.

    Args:
        y: ``(n,)`` labels in {0, 1, 2}.
        pred: ``(n,)`` the candidate's hard predictions.
        reference: ``(n,)`` the reference's hard predictions.
        margin: required lead in macro F1.
        horizon: label horizon in bars, the shortest block.

    Returns:
        ``{"statistic" (F1 difference), "macro_f1", "reference_macro_f1", "margin", "p_value",
        "n", "block", "n_resamples"}``; ``p_value`` is ``None`` when both predict the same class
        on every row.

    Raises:
        TrainingError: fewer than ``2 * block`` rows.
    """
    y, pred, reference = (np.asarray(a).astype(int) for a in (y, pred, reference))
    own, ref = macro_f1_from_counts(y, pred)[0], macro_f1_from_counts(y, reference)[0]
    observed = float(own - ref)
    correct = (pred == y).astype(float) - (reference == y).astype(float)
    block = block_length(correct, horizon)
    n = len(y)
    if n < 2 * block:
        raise TrainingError(f"{n} rows are too few for a block bootstrap in blocks of {block}")
    out = {"statistic": observed, "macro_f1": float(own), "reference_macro_f1": float(ref), "margin": margin,
           "p_value": None, "n": int(n), "block": int(block), "n_resamples": 0}
    if np.array_equal(pred, reference):
        return out
    idx = _resample_indices(n, block, n_resamples, random_state)
    boot = macro_f1_from_counts(y[idx], pred[idx]) - macro_f1_from_counts(y[idx], reference[idx])
    # H0: difference <= margin. Centred at the observation, the resampled difference estimates the
    # null distribution of (estimate - truth).
    p_value = (1 + int(np.sum(boot - observed >= observed - margin))) / (n_resamples + 1)
    return {**out, "p_value": p_value, "n_resamples": int(n_resamples)}


def sharpe_skill_test(net: np.ndarray, *, benchmark_annual: float = 0.0, bars_per_year: float) -> dict[str, Any]:
    """The probabilistic Sharpe ratio of per-bar returns against a benchmark, as a test.

    ``PSR = P(true Sharpe > benchmark)`` (Bailey & López de Prado 2012, eq. 2, via
    :func:`include.backtest.probabilistic_sharpe`); the test's p-value is ``1 - PSR``.

    Args:
        net: ``(n,)`` per-bar net returns (fractions), or a difference of two strategies'.
        benchmark_annual: benchmark annualised Sharpe ratio.
        bars_per_year: bars in a year, to convert the benchmark to per-bar units.

    Returns:
        ``{"sharpe" (annualised), "probabilistic_sharpe", "p_value", "benchmark", "n"}``;
        ``probabilistic_sharpe`` and ``p_value`` are ``None`` for returns without variance
        (a strategy that never traded, or the same positions as the reference).
    """
    net = np.asarray(net, dtype="float64")
    std = net.std(ddof=1) if len(net) > 1 else 0.0
    sharpe = float(net.mean() / std * math.sqrt(bars_per_year)) if std > 0 else 0.0
    psr = probabilistic_sharpe(net, benchmark_annual / math.sqrt(bars_per_year))
    known = psr == psr
    return {"sharpe": sharpe, "probabilistic_sharpe": psr if known else None,
            "p_value": 1.0 - psr if known else None, "benchmark": benchmark_annual, "n": int(len(net))}


def skill_evidence(oof: Any, returns: Any | None, *, f1_margin: float, log_loss_ratio: float,
                   sharpe_margin: float, horizon: int, bars_per_year: float, random_state: int,
                   n_resamples: int = N_RESAMPLES, f1_resamples: int | None = None) -> dict[str, Any]:
    """Every skill test of the gate on a candidate's out-of-fold record (checks 1-3 of
    :mod:`include.gate`).

    Args:
        oof: the ensemble's out-of-fold rows (``ensemble_oof.parquet``): ``p_down, p_range,
            p_up`` (forecast), ``prior_down, prior_range, prior_up`` (training class
            frequencies of the row's fold), ``label``, ``momentum`` (the rule's class) and, where
            recorded, ``pred_stratified`` (the stratified baseline's draw).
        returns: per-bar net returns over the same span with columns ``ensemble`` and
            ``momentum`` (``trading_returns.parquet``), or ``None`` (no trading tests).
        f1_margin: the policy's macro-F1 margin (:class:`include.gate.GatePolicy`).
        log_loss_ratio: the policy's log-loss ratio.
        sharpe_margin: the policy's annualised Sharpe margin.
        horizon: label horizon in bars (shortest bootstrap block).
        bars_per_year: for annualised Sharpe ratios.
        random_state: seed of the resampling.
        n_resamples: bootstrap resamples of each test (enough to resolve the gate's level).
        f1_resamples: the F1 tests' resamples when they differ (``None``: ``n_resamples``); their
            resamples cost a macro F1 each, so a gate that records them without requiring
            them may use fewer.

    Returns:
        ``{"f1": {baseline: macro_f1_test}, "log_loss": log_loss_skill_test, "trading":
        {"flat": sharpe_skill_test, "momentum": sharpe_skill_test} or None}``; the F1 baselines
        are ``stratified`` (where recorded) and ``momentum``, each a forecast without skill can
        fail to beat (the majority class is left out, see the module docstring).
    """
    y = oof["label"].to_numpy().astype(int)
    proba = oof[["p_down", "p_range", "p_up"]].to_numpy()
    prior = oof[["prior_down", "prior_range", "prior_up"]].to_numpy()
    # The prior-corrected decision the reported macro F1 scores (include.training.metrics_with_prior).
    pred = (proba / np.where(prior > 0, prior, 1.0)).argmax(axis=1)
    # No majority-class baseline: predicting one class scores F1 0 on the other two, so any varied
    # predictor, a random one too, beats it with p near 0, and a test that cannot fail would only
    # dilute the intersection-union. The evaluation report still shows its scores.
    references = {}
    if "pred_stratified" in oof:
        references["stratified"] = oof["pred_stratified"].to_numpy()
    references["momentum"] = oof["momentum"].to_numpy()
    f1 = {name: macro_f1_test(y, pred, ref, margin=f1_margin, horizon=horizon,
                              n_resamples=f1_resamples or n_resamples, random_state=random_state)
          for name, ref in references.items()}
    log_loss = log_loss_skill_test(y, proba, prior, ratio=log_loss_ratio, horizon=horizon, n_resamples=n_resamples,
                                   random_state=random_state)
    trading = None
    if returns is not None:
        ens, mom = returns["ensemble"].to_numpy(), returns["momentum"].to_numpy()
        trading = {"flat": sharpe_skill_test(ens, benchmark_annual=sharpe_margin, bars_per_year=bars_per_year),
                   "momentum": sharpe_skill_test(ens - mom, benchmark_annual=sharpe_margin,
                                                 bars_per_year=bars_per_year)}
    return {"f1": f1, "log_loss": log_loss, "trading": trading}


def champion_evidence(rows: Any, champion_proba: np.ndarray, champion_prior: np.ndarray, *, horizon: int,
                      random_state: int) -> dict[str, Any]:
    """The challenger-champion comparison on rows where both are out of sample (checks 6-8 of
    :mod:`include.gate`).

    Args:
        rows: the challenger's out-of-fold rows at or after the end of the champion's training
            data (columns as in :func:`skill_evidence`), ``n`` of them.
        champion_proba: ``(n, 3)`` the champion's forecasts on the same rows.
        champion_prior: ``(3,)`` the champion's training class frequencies (its decision rule).
        horizon: label horizon in bars (shortest bootstrap block).
        random_state: seed of the resampling.

    Returns:
        ``{"comparison": mean_below_zero_test of champion-minus-challenger per-row log loss (H1:
        the champion is better) with ``challenger_log_loss``, ``champion_log_loss`` and
        ``same_forecast``, or ``None`` with ``error`` when there are too few rows; "live": the
        champion's log loss and the class-prior forecast's on these rows, and the p-value of
        :func:`log_loss_skill_test` of the champion there (its live skill); "metrics",
        "challenger_metrics": full metrics of both}``.
    """
    y = rows["label"].to_numpy().astype(int)
    challenger = rows[["p_down", "p_range", "p_up"]].to_numpy()
    prior = rows[["prior_down", "prior_range", "prior_up"]].to_numpy()
    champ, chall = log_loss_rows(y, champion_proba), log_loss_rows(y, challenger)
    diff = champ - chall
    try:
        live_test = log_loss_skill_test(y, champion_proba, prior, horizon=horizon, random_state=random_state)
    except TrainingError:
        live_test = {"p_value": None}
    out: dict[str, Any] = {
        "live": {"log_loss": float(champ.mean()), "prior_log_loss": float(log_loss_rows(y, prior).mean()),
                 "p_value": live_test["p_value"]},
        "metrics": metrics_with_prior(y, champion_proba, champion_prior),
        "challenger_metrics": metrics_with_prior(y, challenger, prior), "comparison": None}
    try:
        test = mean_below_zero_test(diff, block=block_length(diff, horizon), random_state=random_state)
    except TrainingError as exc:  # too few rows: champion_out_of_sample speaks for it
        out["error"] = str(exc)
        return out
    out["comparison"] = {**test, "challenger_log_loss": float(chall.mean()), "champion_log_loss": float(champ.mean()),
                         "same_forecast": test["p_value"] is None}
    return out
