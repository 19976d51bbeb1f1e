"""Gaussian mixture model fitted by EM, entirely in log space.

Generative story, K components, x in R^D:

    y ~ Categorical(pi)                     (one-hot y, or the index k)
    x | y = k ~ N(mu_k, Sigma_k)            Sigma_k full or diagonal

EM is the coordinate ascent of the notes (000, "II. Optimization") with an exact E-step, since
the posterior p(y|x) is available in closed form (the responsibilities):

    log r_nk = log pi_k + log N(x_n; mu_k, Sigma_k) - logsumexp_j [log pi_j + log N(x_n; mu_j, Sigma_j)]
    log p(x_n) = logsumexp_k [log pi_k + log N(x_n; mu_k, Sigma_k)]                         (E)

    N_k = sum_n r_nk,  pi_k = N_k / N,  mu_k = (1/N_k) sum_n r_nk x_n,
    Sigma_k = (1/N_k) sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T  (+ reg_covar I)                 (M)

Each Gaussian log-density goes through a Cholesky factor (full) or log-variances (diagonal), and
responsibilities through log-sum-exp, so nothing under- or overflows.  With ``reg_covar = 0``
the M-step is the exact maximiser and the log-likelihood never decreases; a small positive
``reg_covar`` (the default) keeps components from collapsing onto a point.

Public API
----------
gaussian_log_prob(X, mean, cov, covariance_type) -> (N,)
GaussianMixture(n_components, covariance_type="full" | "diag", tol, max_iter, reg_covar, seed)
    .fit(X) .predict_proba(X) .predict(X) .score_samples(X) .score(X) .sample(n, seed)
    attributes weights_ (K,), means_ (K, D), covariances_ (K, D, D) or (K, D), loglik_, n_iter_
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

from ..checks import (DataError, as_float64_matrix, check_array, check_finite, nonneg_float, one_of,
                      positive_int, seed_value)
from ..distributions import LOG_2PI, logsumexp


def gaussian_log_prob(X, mean, cov, covariance_type="full"):
    """log N(x_n; mean, cov) per row.  X: (N, D); mean: (D,); cov: (D, D) full or (D,) diagonal."""
    D = X.shape[1]
    Xc = X - mean
    if covariance_type == "diag":
        return -0.5 * (D * LOG_2PI + np.sum(np.log(cov)) + np.sum(Xc * Xc / cov, axis=1))
    chol = np.linalg.cholesky(cov)                                   # cov = L L^T
    y = solve_triangular(chol, Xc.T, lower=True)                     # L^-1 (x - mu)    (D, N)
    logdet = 2.0 * np.sum(np.log(np.diag(chol)))
    return -0.5 * (D * LOG_2PI + logdet + np.sum(y * y, axis=0))


class GaussianMixture:
    """A K-component Gaussian mixture fitted by EM in log space (see the module docstring).

    n_components: K >= 1; covariance_type: "full" or "diag"; tol: stop when the mean
    log-likelihood per example rises by less than tol; max_iter: the most EM iterations;
    reg_covar: added to every variance in the M-step (>= 0); seed: chooses the initial means
    (K distinct data points) -- initial covariances are the data covariance, weights uniform.

    ``loglik_`` holds the mean log-likelihood per example of the initial parameters and after
    every M-step (``loglik_[-1]`` = ``score`` on the training data).
    """

    kind = "gmm"

    def __init__(self, n_components, covariance_type="full", tol=1e-6, max_iter=200,
                 reg_covar=1e-6, seed=0):
        self.n_components = positive_int("n_components", n_components)
        self.covariance_type = one_of("covariance_type", covariance_type, ("full", "diag"))
        self.tol = nonneg_float("tol", tol)
        self.max_iter = positive_int("max_iter", max_iter)
        self.reg_covar = nonneg_float("reg_covar", reg_covar)
        self.seed = seed_value("seed", seed)
        self.loglik_ = []
        self.n_iter_ = 0
        self.converged_ = False
        self.weights_ = self.means_ = self.covariances_ = None

    @property
    def config(self):
        return {"n_components": self.n_components, "covariance_type": self.covariance_type,
                "tol": self.tol, "max_iter": self.max_iter, "reg_covar": self.reg_covar,
                "seed": self.seed}

    # -- EM ------------------------------------------------------------------------------------

    def _log_joint(self, X):
        """log pi_k + log N(x_n; mu_k, Sigma_k): (N, K)."""
        return np.stack([np.log(self.weights_[k]) + gaussian_log_prob(
            X, self.means_[k], self.covariances_[k], self.covariance_type)
            for k in range(self.n_components)], axis=1)

    def _e_step(self, X):
        """Responsibilities in log space and the mean log-likelihood, eq. (E)."""
        log_joint = self._log_joint(X)                       # (N, K)
        log_px = logsumexp(log_joint, axis=1)                # (N,)
        log_resp = log_joint - log_px[:, None]               # log r_nk
        return log_resp, float(np.mean(log_px))

    def _m_step(self, X, log_resp):
        """pi, mu, Sigma from the responsibilities, eq. (M)."""
        N, D = X.shape
        resp = np.exp(log_resp)                              # (N, K)
        Nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).tiny    # guards an empty component
        self.weights_ = Nk / N
        self.means_ = (resp.T @ X) / Nk[:, None]             # (K, D)
        if self.covariance_type == "diag":
            # E_r[x^2] - mu^2, computed about the mean for accuracy
            self.covariances_ = np.stack([
                (resp[:, k] @ (X - self.means_[k]) ** 2) / Nk[k] for k in range(self.n_components)
            ]) + self.reg_covar
        else:
            covs = np.empty((self.n_components, D, D))
            for k in range(self.n_components):
                Xc = X - self.means_[k]
                covs[k] = (resp[:, k, None] * Xc).T @ Xc / Nk[k]
                covs[k] = 0.5 * (covs[k] + covs[k].T)
                covs[k].flat[::D + 1] += self.reg_covar
            self.covariances_ = covs

    def _init(self, X):
        N, D = X.shape
        rng = np.random.default_rng(self.seed)
        idx = rng.choice(N, size=self.n_components, replace=False)
        self.means_ = X[idx].copy()
        self.weights_ = np.full(self.n_components, 1.0 / self.n_components)
        var = X.var(axis=0) + self.reg_covar
        if np.any(var <= 0):
            raise DataError("X has a constant feature and reg_covar=0: its variance would be 0; "
                            "set reg_covar > 0 or drop the feature")
        if self.covariance_type == "diag":
            self.covariances_ = np.tile(var, (self.n_components, 1))
        else:
            cov = np.cov(X, rowvar=False, bias=True).reshape(D, D)
            cov.flat[::D + 1] += self.reg_covar
            self.covariances_ = np.tile(cov, (self.n_components, 1, 1))

    def fit(self, X, y=None):
        """Fit by EM.  X: (N, D) with N >= n_components.  Returns self."""
        X = self._check_fit_data(X)
        self._init(X)
        log_resp, ll = self._e_step(X)
        self.loglik_, self.converged_ = [ll], False
        it = 0
        for it in range(1, self.max_iter + 1):
            self._m_step(X, log_resp)
            log_resp, ll_new = self._e_step(X)
            self.loglik_.append(ll_new)
            if ll_new - ll < self.tol:
                self.converged_ = True
                break
            ll = ll_new
        self.n_iter_ = it
        return self

    # -- inference, scoring, sampling ----------------------------------------------------------

    def predict_proba(self, X):
        """Responsibilities p(y = k | x_n), (N, K)."""
        return np.exp(self._e_step(self._check_x(X))[0])

    def predict(self, X):
        return np.argmax(self._log_joint(self._check_x(X)), axis=1)

    def score_samples(self, X):
        """log p(x_n) per row, (N,)."""
        return logsumexp(self._log_joint(self._check_x(X)), axis=1)

    def score(self, X, y=None):
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples, seed=0):
        """Draw (x (n, D), y (n,)) from the fitted mixture."""
        self._require_fit()
        n_samples = positive_int("n_samples", n_samples)
        rng = np.random.default_rng(seed_value("seed", seed)) if not isinstance(seed, np.random.Generator) else seed
        y = rng.choice(self.n_components, size=int(n_samples), p=self.weights_ / self.weights_.sum())
        D = self.means_.shape[1]
        eps = rng.standard_normal((int(n_samples), D))
        if self.covariance_type == "diag":
            x = self.means_[y] + np.sqrt(self.covariances_[y]) * eps
        else:
            chol = np.linalg.cholesky(self.covariances_)
            x = self.means_[y] + np.einsum("nij,nj->ni", chol[y], eps)
        return x, y

    # -- checks --------------------------------------------------------------------------------

    def _check_fit_data(self, X):
        X = as_float64_matrix(X, "X")
        if X.shape[0] < max(2, self.n_components):
            raise DataError(f"need at least max(2, n_components={self.n_components}) examples to "
                            f"fit, got {X.shape[0]}")
        return X

    def _check_x(self, X):
        self._require_fit()
        if not isinstance(X, np.ndarray):
            raise DataError(f"expected X to be an array, got {type(X).__name__}")
        check_array(X, "X", shape=(None, self.means_.shape[1]), dtype_kind="fiub")
        X = np.asarray(X, dtype=np.float64)
        return check_finite(X, "X")

    def _require_fit(self):
        if self.means_ is None:
            raise RuntimeError("this GaussianMixture is not fitted yet: call fit(X) first")
