"""Sparse multinomial logistic regression on standardised features (scikit-learn).

The linear member of the ensemble: where a market's edge is a linear function of a few features
(an AR(1) in returns is one in ``returns_1``; a funding-rate edge one in the funding z-score), it
is estimated with a handful of coefficients instead of many tree splits, and its probabilities
are close to calibrated by construction (the fit minimises log loss). Missing values are imputed
with the training rows' medians (``SimpleImputer``) and every feature is standardised on the
training rows (``StandardScaler``) before the fit, so the penalty treats the features alike.

The penalty is L1 (the lasso; Tibshirani 1996, "Regression shrinkage and selection via the
lasso", JRSS B 58(1)): it sets the coefficients of features that carry nothing to exactly zero,
where an L2 penalty only shrinks them, so an edge carried by one feature of twenty is estimated
nearly as if that feature were the only one. Its strength ``C`` (inverse penalty) is chosen per
fit by :func:`best_params` on the inner validation split of the training rows (their last rows,
after the purge + embargo gap; :meth:`include.evaluation.WalkForward.inner_split`), so a market
without an edge mostly gets a penalty that zeroes all or nearly all coefficients: close to the
class prior (a validation split is itself noisy, and sometimes prefers a weaker penalty). scikit-learn's
``saga`` solver fits the multinomial L1 loss (user guide, "Logistic regression").

The lasso's penalty also shrinks the coefficients it keeps, so an edge it finds is forecast
weaker than it is. The family is therefore the *relaxed* lasso (Meinshausen 2007, "Relaxed
Lasso", Computational Statistics & Data Analysis 52(1), 374-393) at the end of its family where
the second stage is (almost) unpenalised, the post-lasso
(:class:`~include.training.relaxed_lasso.RelaxedLassoLogisticRegression`): the L1 fit at ``C``
chooses the features, and a light L2 fit on those features alone, at ``refit_C``, estimates their
coefficients. ``C`` is chosen by the validation log loss of the two-stage fit. ``refit_C=None``
keeps the lasso's own coefficients.
"""

from __future__ import annotations

from typing import Any

from include.errors import ConfigError

#: ``C`` used when nothing chooses it (a fit outside the weekly training's inner split); ``tol``
#: and ``max_iter`` let saga converge on about 20,000 standardised rows of ~20 features;
#: ``refit_C`` is the refit's inverse L2 penalty (``None``: the plain lasso).
DEFAULT_PARAMS: dict[str, Any] = {
    "C": 0.01,
    "refit_C": 1.0,
    "tol": 1e-3,
    "max_iter": 2000,
}
#: The inverse L1 penalties :func:`best_params` chooses from, smallest (most features zeroed)
#: first. At 3e-4 every coefficient is zero on a market without an edge; at 0.1 the penalty
#: barely binds on ~20,000 rows.
C_GRID: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def _preprocess():
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler())])


def build(random_state: int, n_jobs: int, **overrides: Any):
    """An unfitted ``sklearn.pipeline.Pipeline``: median imputation, standardisation, then
    :class:`~include.training.relaxed_lasso.RelaxedLassoLogisticRegression` with the defaults
    above. ``n_jobs`` is accepted for the family interface; both stages fit in one thread.

    Raises:
        ConfigError: an override that is not a hyperparameter of the model (a tuned set or
            search space naming one); the message names it.
    """
    from sklearn.pipeline import Pipeline

    from include.training.relaxed_lasso import RelaxedLassoLogisticRegression

    params = {**DEFAULT_PARAMS, **overrides}
    known = sorted(RelaxedLassoLogisticRegression().get_params())
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"logistic family: unknown hyperparameter(s) {unknown}; it takes {known}")
    return Pipeline([*_preprocess().steps, ("model", RelaxedLassoLogisticRegression(random_state=random_state,
                                                                                    **params))])


def best_params(X_fit, y_fit, X_val, y_val, *, random_state: int, n_jobs: int, **overrides: Any) -> dict[str, Any]:
    """The ``C`` of :data:`C_GRID` at the best validation multi-class log loss of the two-stage
    fit (the lasso's features, refitted at ``refit_C``).

    Fits along the grid from the strongest penalty, each selecting fit warm-started from the
    last (:func:`~include.training.relaxed_lasso.relaxed_path`). The validation rows must come
    from the training window only (the caller's inner split).

    Args:
        X_fit, y_fit: rows fitted, ``(n_fit, n_features)`` and ``(n_fit,)``.
        X_val, y_val: validation rows after them.
        overrides: hyperparameters that replace the defaults; one that sets ``C`` (a tuned set)
            is kept, and nothing is chosen.

    Returns:
        ``{"C": best}``, or ``{}`` when ``overrides`` fix ``C``.
    """
    if "C" in overrides:
        return {}
    from sklearn.metrics import log_loss

    from include.training.relaxed_lasso import relaxed_path

    params = {**DEFAULT_PARAMS, **overrides}
    prep = _preprocess().fit(X_fit)
    z_fit, z_val = prep.transform(X_fit), prep.transform(X_val)
    losses = {c: log_loss(y_val, model.predict_proba(z_val), labels=model.classes_)
              for c, model in relaxed_path(z_fit, y_fit, sorted(C_GRID), refit_C=params["refit_C"],
                                           tol=params["tol"], max_iter=params["max_iter"],
                                           random_state=random_state)}
    return {"C": min(losses, key=lambda c: (losses[c], c))}
