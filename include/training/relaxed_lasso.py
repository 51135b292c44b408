"""The relaxed lasso for multinomial logistic regression, as a scikit-learn classifier.

Meinshausen (2007), "Relaxed Lasso", Computational Statistics & Data Analysis 52(1), 374-393:
an L1-penalised fit chooses the features, and a second fit on those features alone estimates
their coefficients with less (here almost no) shrinkage. This is the end of Meinshausen's family
where the second stage's penalty goes to zero, the post-lasso estimator (Belloni & Chernozhukov
2013, "Least squares after model selection in high-dimensional sparse models", Bernoulli 19(2),
521-547), with a light L2 penalty so that the refit stays finite on separable rows. Both stages
are scikit-learn's ``LogisticRegression``: the first with the ``saga`` solver and ``l1_ratio=1``
(the lasso), the second with ``lbfgs`` and an L2 penalty ``refit_C`` (inverse strength) that
barely binds on standardised features of thousands of rows.

Kept apart from :mod:`include.training.logistic` so that importing the family's module does not
import scikit-learn; registered models pickle this class by its module path.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted, validate_data


class RelaxedLassoLogisticRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression: the lasso's features, refitted without its shrinkage.

    Args:
        C: inverse L1 penalty of the selecting fit (scikit-learn's ``C``).
        refit_C: inverse L2 penalty of the refit on the selected features; ``None`` keeps the
            lasso's coefficients (the plain lasso).
        tol, max_iter: the selecting ``saga`` fit's stopping rule.
        random_state: seed of ``saga``'s sample order.

    Attributes (after :meth:`fit`):
        classes_: class labels, ``(n_classes,)``.
        support_: indices of the selected features, ascending, ``(n_selected,)``; empty when
            the penalty zeroes every coefficient (the refit is then the intercept-only model: the
            training class frequencies).
        coef_: ``(n_classes, n_features)`` for three or more classes (``(1, n_features)`` for
            two), zero outside ``support_``; with ``intercept_`` the decision function is
            ``X @ coef_.T + intercept_``, as ``LogisticRegression``'s.
        intercept_: ``(n_classes,)`` (``(1,)`` for two classes).

    The selecting fit's ``ConvergenceWarning`` is raised to the caller like ``LogisticRegression``'s.
    """

    def __init__(self, C: float = 1.0, refit_C: float | None = 1.0, tol: float = 1e-3, max_iter: int = 2000,
                 random_state: int | None = None):
        self.C = C
        self.refit_C = refit_C
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def _lasso(self, **extra) -> LogisticRegression:
        return LogisticRegression(C=self.C, l1_ratio=1.0, solver="saga", tol=self.tol, max_iter=self.max_iter,
                                  random_state=self.random_state, **extra)

    def fit(self, X, y) -> RelaxedLassoLogisticRegression:
        """Fit both stages on ``X`` ``(n_rows, n_features)`` (dense, finite, typically
        standardised) and labels ``y`` ``(n_rows,)``.

        Raises:
            ValueError: from scikit-learn, for non-finite input or a single class.
            TypeError: from scikit-learn, for sparse input.
        """
        X, y = validate_data(self, X, y, reset=True)
        return self._relax(self._lasso().fit(X, y), X, y)

    def _relax(self, lasso: LogisticRegression, X, y) -> RelaxedLassoLogisticRegression:
        """Take ``lasso`` (fitted on ``X, y``) as the first stage and fit the second."""
        X = np.asarray(X, dtype="float64")
        self.classes_ = lasso.classes_
        self.n_features_in_ = X.shape[1]
        self.support_ = np.flatnonzero(np.abs(lasso.coef_).sum(axis=0) > 0)
        if self.refit_C is None:
            self.coef_, self.intercept_ = lasso.coef_.copy(), lasso.intercept_.copy()
            return self
        if len(self.support_) == 0:
            # The refit on no features is the intercept-only maximum-likelihood fit: the log class
            # frequencies (saga stops the lasso's intercepts short of them at its tolerance).
            log_freq = np.log(np.unique(np.asarray(y), return_counts=True)[1] / len(y))
            self.coef_ = np.zeros_like(lasso.coef_)
            self.intercept_ = (np.array([log_freq[1] - log_freq[0]]) if len(log_freq) == 2
                               else log_freq - log_freq.mean())
            return self
        # lbfgs on a handful of standardised features converges well inside max_iter; a stop at
        # the cap is reported by scikit-learn's ConvergenceWarning.
        refit = LogisticRegression(C=self.refit_C, solver="lbfgs", max_iter=1000).fit(X[:, self.support_], y)
        self.coef_ = np.zeros((refit.coef_.shape[0], X.shape[1]))
        self.coef_[:, self.support_] = refit.coef_
        self.intercept_ = refit.intercept_.copy()
        return self

    def decision_function(self, X) -> np.ndarray:
        """``X @ coef_.T + intercept_``: ``(n_rows, n_classes)``, or ``(n_rows,)`` for two classes."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``(n_rows, n_classes)`` in :attr:`classes_` order: the softmax of
        the decision function (the logistic function for two classes)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            up = expit(scores)
            return np.c_[1.0 - up, up]
        return softmax(scores, axis=1)

    def predict(self, X) -> np.ndarray:
        """The most probable class per row, ``(n_rows,)``."""
        check_is_fitted(self, "coef_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def relaxed_path(X_fit, y_fit, grid, *, refit_C: float | None, tol: float, max_iter: int,
                 random_state: int | None):
    """Yield ``(C, fitted RelaxedLassoLogisticRegression)`` along ``grid`` (ascending ``C``),
    each selecting fit warm-started from the last (the lasso path's usual speed-up; Friedman,
    Hastie & Tibshirani 2010, "Regularization paths for generalized linear models via
    coordinate descent", JSS 33(1)). ``saga`` stopped at ``max_iter`` is used as it stands."""
    base = RelaxedLassoLogisticRegression(refit_C=refit_C, tol=tol, max_iter=max_iter, random_state=random_state)
    lasso = base._lasso(warm_start=True)
    for c in grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lasso.set_params(C=c).fit(X_fit, y_fit)
        yield c, RelaxedLassoLogisticRegression(C=c, refit_C=refit_C, tol=tol, max_iter=max_iter,
                                                random_state=random_state)._relax(lasso, X_fit, y_fit)
