"""Factor analysis (FA) and probabilistic PCA (PPCA), fitted by closed-form EM.

Generative story (lecture notes 000/001, "Models: FA"), for one example x in R^D with L factors:

    z ~ N(0, I_L)                                   the prior p(z)
    x = W z + mu + eps,   eps ~ N(0, Psi)           the likelihood p(x|z) = N(W z + mu, Psi)
    Psi = diag(psi) (FA)   or   Psi = sigma^2 I (PPCA)

so the marginal is p(x) = N(mu, C) with C = W W^T + Psi, and the posterior is Gaussian:

    p(z|x) = N(V (x - mu), Sigma),   Sigma = (I + W^T Psi^-1 W)^-1,   V = Sigma W^T Psi^-1.   (E)

Everything here works with L x L matrices and D x L products only: the marginal log-likelihood
uses the matrix determinant lemma and the Woodbury identity,

    log|C| = log|Psi| + log|I + W^T Psi^-1 W| = sum_d log psi_d - log|Sigma|,              (MDL)
    C^-1   = Psi^-1 - Psi^-1 W Sigma W^T Psi^-1 = Psi^-1 - Psi^-1 W V,                    (WB)

never a D x D inverse or determinant.

EM.  With S = (1/N) sum_n (x_n - mu)(x_n - mu)^T the sample covariance (mu = the sample mean, the
maximum-likelihood mean), the expected sufficient statistics of the E-step are

    (1/N) sum_n (x_n - mu) E[z_n]^T = S V^T,
    (1/N) sum_n E[z_n z_n^T]       = Sigma + V S V^T,

and the M-step maximises the expected complete-data log-likelihood:

    W_new   = S V^T (Sigma + V S V^T)^-1                                                     (M-W)
    psi_new = diag(S - W_new V S)          (FA)     sigma^2_new = (1/D) tr(S - W_new V S)  (M-psi)

Only ``S V^T`` (D x L) is ever needed, so one EM iteration costs O(D^2 L) from the D x D
covariance (used when N >= D) or O(N D L) from the centred data itself (used when N < D).

The ELBO for a Gaussian q(z|x) = N(m, S_q), in the three presentations of the notes (001), is
available in closed form through ``FactorAnalysis.elbo``:

    I   E_q[log p(x, z)] + H[q]
    II  E_q[log p(x|z)] - KL(q || p(z))
    III log p(x) - KL(q || p(z|x))

Public API
----------
fa_posterior(W, psi) -> (V, Sigma)                        the E-step
fa_m_step(S_Vt, diag_S, V, Sigma) -> (W, psi)             the M-step (FA; PPCA averages psi)
ppca_closed_form(S, n_components) -> (W, sigma2)          Tipping & Bishop's ML solution
FactorAnalysis(n_components, ...)                         scikit-learn-like face; fitted by EM (.fit)
PPCA(n_components, method="em" | "closed_form", ...)      (not a CLI kind: see nplvm.models)
gaussian_entropy(S_q), gaussian_kl(m1, S1, m2, S2)        full-covariance Gaussian helpers
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve, eigh, solve

from ..checks import (DataError, as_float64_matrix, check_array, check_finite, nonneg_float, one_of,
                      optional, positive_float, positive_int, seed_value)
from ..distributions import LOG_2PI


# ----------------------------------------------------------------------------------------------
# The two EM steps, as plain functions of the parameters (the homework regions)
# ----------------------------------------------------------------------------------------------

def fa_posterior(W, psi):
    """The E-step: the posterior p(z|x) = N(V (x - mu), Sigma) of factor analysis, eq. (E).

    W: (D, L) loadings; psi: (D,) noise variances (all > 0).
    Returns V (L, D) and Sigma (L, L), with Sigma = (I + W^T Psi^-1 W)^-1 and
    V = Sigma W^T Psi^-1; the posterior covariance Sigma is the same for every x.
    """
    # SOLUTION fa-estep: the E-step: posterior covariance Sigma and mean V (x - mu)
    # HINT: Psi is diagonal, so Psi^-1 W is W / psi[:, None]; invert only L x L matrices.
    L = W.shape[1]
    Psi_inv_W = W / psi[:, None]                          # Psi^-1 W                     (D, L)
    Lambda = np.eye(L) + W.T @ Psi_inv_W                  # posterior precision I + W^T Psi^-1 W
    Sigma = cho_solve(cho_factor(Lambda), np.eye(L))      # Sigma = Lambda^-1            (L, L)
    Sigma = 0.5 * (Sigma + Sigma.T)                       # exactly symmetric
    V = Sigma @ Psi_inv_W.T                               # V = Sigma W^T Psi^-1         (L, D)
    # END SOLUTION
    return V, Sigma


def fa_m_step(S_Vt, diag_S, V, Sigma):
    """The M-step of FA from the expected sufficient statistics, eqs. (M-W) and (M-psi).

    S_Vt: (D, L) = S V^T, i.e. (1/N) sum_n (x_n - mu) E[z_n]^T; diag_S: (D,) the diagonal of S;
    V: (L, D) and Sigma: (L, L) from the E-step (so (1/N) sum_n E[z z^T] = Sigma + V S V^T).
    Returns W_new (D, L) and psi_new (D,) (before any noise floor is applied).
    """
    # SOLUTION fa-mstep: the M-step: new W and psi from the expected sufficient statistics
    # HINT: W_new = S V^T (Sigma + V S V^T)^-1 and psi_new = diag(S - W_new V S); never form S V^T V.
    Ezz = Sigma + V @ S_Vt                                # (1/N) sum_n E[z_n z_n^T]     (L, L)
    W_new = solve(Ezz, S_Vt.T, assume_a="pos").T          # S V^T (Sigma + V S V^T)^-1   (D, L)
    psi_new = diag_S - np.einsum("dl,dl->d", W_new, S_Vt)  # diag(S - W_new V S)          (D,)
    # END SOLUTION
    return W_new, psi_new


def fa_mean_loglik(W, psi, V, Sigma, S_Vt, diag_S):
    """Mean log p(x) over a data set with sample covariance S about mu, via (MDL) and (WB).

    (1/N) sum_n log N(x_n; mu, C) = -1/2 [D log 2 pi + log|C| + tr(C^-1 S)], with
    log|C| = sum log psi - log|Sigma| and tr(C^-1 S) = sum_d S_dd / psi_d - tr(Psi^-1 W V S).
    The arguments are those of the E-step at (W, psi) and S V^T for that step's V.
    """
    D = W.shape[0]
    logdet_C = np.sum(np.log(psi)) - _logdet_pd(Sigma)                        # (MDL)
    tr_Cinv_S = np.sum(diag_S / psi) - np.sum((W / psi[:, None]) * S_Vt)      # (WB) traced with S
    return -0.5 * (D * LOG_2PI + logdet_C + tr_Cinv_S)


def ppca_closed_form(S, n_components):
    """Tipping & Bishop (1999): the maximum-likelihood PPCA parameters from the covariance S.

    S: (D, D) sample covariance.  With S = U diag(lambda) U^T (lambda descending):
        sigma^2 = (1 / (D - L)) sum_{j > L} lambda_j       (mean of the discarded eigenvalues)
        W       = U_L (diag(lambda_1..L) - sigma^2 I)^{1/2}  (up to a rotation R, taken as I)
    Returns W (D, L) and sigma2 (float).  Needs L < D.
    """
    S = np.asarray(S, dtype=np.float64)
    D = S.shape[0]
    L = int(n_components)
    if not 1 <= L < D:
        raise ValueError(f"closed-form PPCA needs 1 <= n_components < D = {D}, got {L}")
    lam, U = eigh(S)                                        # ascending
    lam, U = lam[::-1], U[:, ::-1]
    sigma2 = float(np.mean(lam[L:]))                        # mean of the D - L discarded eigenvalues
    W = U[:, :L] * np.sqrt(np.maximum(lam[:L] - sigma2, 0.0))
    return W, sigma2


# ----------------------------------------------------------------------------------------------
# Gaussian helpers with full covariances (closed-form ELBO terms)
# ----------------------------------------------------------------------------------------------

def _logdet_pd(A):
    """log|A| of a symmetric positive-definite matrix (or a stack of them) via Cholesky."""
    return 2.0 * np.sum(np.log(np.diagonal(np.linalg.cholesky(A), axis1=-2, axis2=-1)), axis=-1)


def gaussian_entropy(S_q):
    """H[N(m, S_q)] = 1/2 [L (1 + log 2 pi) + log|S_q|]; S_q: (L, L) or (N, L, L)."""
    L = S_q.shape[-1]
    return 0.5 * (L * (1.0 + LOG_2PI) + _logdet_pd(S_q))


def gaussian_kl(m1, S1, m2, S2):
    """KL(N(m1, S1) || N(m2, S2)) = 1/2 [tr(S2^-1 S1) + d^T S2^-1 d - L + log|S2| - log|S1|].

    m1, m2: (N, L) or (L,); S1, S2: (L, L) or (N, L, L); d = m2 - m1.  Returns (N,) (or scalar).
    """
    m1, m2 = np.asarray(m1, float), np.asarray(m2, float)
    L = m1.shape[-1]
    chol2 = np.linalg.cholesky(S2)
    d = (m2 - m1)[..., None]
    y = np.linalg.solve(chol2, d)[..., 0]                                    # L2^-1 d
    maha = np.sum(y * y, axis=-1)
    M = np.linalg.solve(chol2, S1)                                           # L2^-1 S1
    M = np.linalg.solve(chol2, np.swapaxes(M, -1, -2))                        # L2^-1 S1 L2^-T
    tr = np.trace(M, axis1=-2, axis2=-1)                                      # tr(S2^-1 S1)
    logdet2 = 2.0 * np.sum(np.log(np.diagonal(chol2, axis1=-2, axis2=-1)), axis=-1)
    return 0.5 * (tr + maha - L + logdet2 - _logdet_pd(S1))


# ----------------------------------------------------------------------------------------------
# Sufficient statistics: S V^T from the covariance or from the data
# ----------------------------------------------------------------------------------------------

class _SuffStats:
    """What EM needs of the centred data X_c (N, D): diag(S) and products S M for M (D, L).

    Holds S = X_c^T X_c / N (D x D) when ``use_cov`` (cost N D^2 once, then D^2 L per product),
    else X_c itself (2 N D L per product, no D x D memory).
    """

    def __init__(self, Xc, use_cov):
        self.n = Xc.shape[0]
        if use_cov:
            self.S = (Xc.T @ Xc) / self.n                  # (D, D)
            self.Xc = None
            self.diag_S = np.diag(self.S).copy()
        else:
            self.S = None
            self.Xc = Xc
            self.diag_S = np.einsum("nd,nd->d", Xc, Xc) / self.n

    def S_times(self, M):
        """S @ M for M: (D, L)."""
        if self.S is not None:
            return self.S @ M
        return self.Xc.T @ (self.Xc @ M) / self.n

    def covariance(self):
        return self.S if self.S is not None else (self.Xc.T @ self.Xc) / self.n


# ----------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------

class FactorAnalysis:
    """Factor analysis x = W z + mu + eps, z ~ N(0, I_L), eps ~ N(0, diag(psi)), fitted by EM.

    Parameters
    ----------
    n_components : L, the number of factors (1 <= L <= D).
    noise_floor : lower bound on every noise variance psi_d after each M-step (> 0).  It keeps
        a constant feature (psi -> 0, log-likelihood -> +inf) finite; 1e-12 is scikit-learn's.
    tol : stop when the mean log-likelihood per example rises by less than tol nats.
    max_iter : the most M-steps.
    init : "random" (seeded W rows scaled by each feature's standard deviation, psi = diag S)
        or "ppca" (the closed-form PPCA solution, one D x D eigendecomposition).
    suff_stats : "auto" (the D x D covariance when N >= D, else the data), "covariance" or "data".
    seed : seeds the random initialisation and ``loss``'s (unused) noise.
    n_features : D; when given, ``params`` exist before ``fit`` (W random, mu 0, psi 1).

    Attributes after ``fit`` (scikit-learn names): ``components_`` (L, D) = W^T,
    ``noise_variance_`` (D,) = psi, ``mean_`` (D,), ``n_iter_`` (M-steps run), ``loglik_``
    (mean log-likelihood per example in nats of the parameters before the first and after every
    M-step; never decreasing; ``loglik_[-1]`` equals ``score`` on the training data),
    ``converged_``.

    Model contract: ``params`` = {"W": (D, L), "mu": (D,), "log_psi": (D,)} and
    ``loss(x, rng) -> (-mean log p(x), grads)``, the exact negative marginal log-likelihood
    (no sampling; ``rng`` is accepted and unused).
    """

    kind = "fa"
    isotropic = False

    def __init__(self, n_components, noise_floor=1e-6, tol=1e-4, max_iter=1000, init="random",
                 suff_stats="auto", seed=0, n_features=None):
        self.n_components = positive_int("n_components", n_components)
        self.noise_floor = positive_float("noise_floor (a variance floor)", noise_floor)
        self.tol = nonneg_float("tol", tol)
        self.max_iter = positive_int("max_iter", max_iter)
        self.init = one_of("init", init, ("random", "ppca"))
        self.suff_stats = one_of("suff_stats", suff_stats, ("auto", "covariance", "data"))
        self.seed = seed_value("seed", seed)
        self.n_features = optional(positive_int, "n_features", n_features)
        self.params = {}
        self.loglik_ = []
        self.n_iter_ = 0
        self.converged_ = False
        if self.n_features is not None:
            D, L = self.n_features, self.n_components
            self._check_L(D)
            rng = np.random.default_rng(seed)
            self._set_params(rng.standard_normal((D, L)) / np.sqrt(L), np.zeros(D), np.ones(D))

    # -- model contract ------------------------------------------------------------------------

    @property
    def config(self):
        return {"n_components": self.n_components, "noise_floor": self.noise_floor,
                "tol": self.tol, "max_iter": self.max_iter, "init": self.init,
                "suff_stats": self.suff_stats, "seed": self.seed, "n_features": self.n_features}

    def _set_params(self, W, mu, psi):
        """Store W, mu and psi in ``params`` (psi as its log)."""
        self.params = {"W": np.array(W, dtype=np.float64), "mu": np.array(mu, dtype=np.float64),
                       "log_psi": np.log(np.asarray(psi, dtype=np.float64))}
        self.n_features = self.params["W"].shape[0]

    def loss(self, x, rng=None):
        """-mean_n log p(x_n) for a batch x (B, D) and its exact gradients w.r.t. ``params``.

        With x_c = x - mu, r_n = C^-1 x_c,n = Psi^-1 (x_c,n - W V x_c,n) (WB) and
        G = dL/dC = 1/2 (C^-1 - mean_n r_n r_n^T):
            dL/dW = 2 G W = V^T - mean_n r_n (r_n^T W)        (C^-1 W = Psi^-1 W Sigma = V^T)
            dL/dpsi_d = G_dd,   dL/dlog psi = psi * G_dd,   dL/dmu = -mean_n r_n.
        """
        self._require_params()
        W, mu, psi = self.params["W"], self.params["mu"], self.psi
        x = self._check_x(x, "x")
        B = x.shape[0]
        V, Sigma = fa_posterior(W, psi)
        Xc = x - mu                                                    # (B, D)
        R = (Xc - (Xc @ V.T) @ W.T) / psi                              # rows r_n = C^-1 x_c,n
        quad = np.einsum("nd,nd->n", Xc, R)                            # x_c^T C^-1 x_c
        logdet_C = np.sum(np.log(psi)) - _logdet_pd(Sigma)             # (MDL)
        loss = 0.5 * (W.shape[0] * LOG_2PI + logdet_C + np.mean(quad))
        dW = V.T - R.T @ (R @ W) / B
        Cinv_diag = 1.0 / psi - np.einsum("dl,ld->d", W / psi[:, None], V)
        dpsi = 0.5 * (Cinv_diag - np.mean(R * R, axis=0))              # G_dd
        grads = {"W": dW, "mu": -np.mean(R, axis=0)}
        grads.update(self._noise_grad(dpsi))
        return float(loss), grads

    def _noise_grad(self, dpsi):
        return {"log_psi": dpsi * self.psi}

    # -- fitted quantities ---------------------------------------------------------------------

    @property
    def psi(self):
        """The noise variances (D,)."""
        self._require_params()
        return np.exp(self.params["log_psi"]) * np.ones(self.n_features)

    @property
    def components_(self):
        self._require_params()
        return self.params["W"].T

    @property
    def noise_variance_(self):
        return self.psi

    @property
    def mean_(self):
        self._require_params()
        return self.params["mu"]

    @property
    def loglike_(self):
        """scikit-learn's name for the per-iteration log-likelihood (here per example)."""
        return self.loglik_

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, X, y=None, callback=None):
        """Fit W, mu, psi by EM.  X: (N, D) with N >= 2.  ``callback(n_iter, loglik)`` is called
        after each E-step (n_iter = M-steps so far).  Returns self."""
        X = self._check_fit_data(X)
        N, D = X.shape
        mu = X.mean(axis=0)                                   # the ML mean, fixed during EM
        use_cov = self.suff_stats == "covariance" or (self.suff_stats == "auto" and N >= D)
        stats = _SuffStats(X - mu, use_cov)
        W, psi = self._initial_W_psi(stats, D)
        self.loglik_, self.converged_ = [], False
        V, Sigma = fa_posterior(W, psi)                       # E-step
        S_Vt = stats.S_times(V.T)
        ll = fa_mean_loglik(W, psi, V, Sigma, S_Vt, stats.diag_S)
        self.loglik_.append(float(ll))
        if callback is not None:
            callback(0, float(ll))
        it = 0
        for it in range(1, self.max_iter + 1):
            W, psi = fa_m_step(S_Vt, stats.diag_S, V, Sigma)   # M-step
            psi = self._noise_update(psi)
            V, Sigma = fa_posterior(W, psi)                   # E-step
            S_Vt = stats.S_times(V.T)
            ll_new = fa_mean_loglik(W, psi, V, Sigma, S_Vt, stats.diag_S)
            self.loglik_.append(float(ll_new))
            if callback is not None:
                callback(it, float(ll_new))
            if ll_new - ll < self.tol:
                self.converged_ = True
                break
            ll = ll_new
        self.n_iter_ = it
        self._set_params(W, mu, psi)
        return self

    def _noise_update(self, psi_new):
        """The noise variances after the M-step, floored: FA keeps one per feature."""
        return np.maximum(psi_new, self.noise_floor)

    def _initial_W_psi(self, stats, D):
        L = self.n_components
        if self.init == "ppca":
            W, sigma2 = ppca_closed_form(stats.covariance(), L) if L < D else (None, None)
            if W is not None:
                return W, self._noise_update(np.full(D, sigma2))
        rng = np.random.default_rng(self.seed)
        sd = np.sqrt(stats.diag_S)                            # a constant feature gets a zero row
        W = sd[:, None] * rng.standard_normal((D, L)) / np.sqrt(L)
        return W, self._noise_update(stats.diag_S.copy())

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    # -- inference, scoring, sampling ----------------------------------------------------------

    def posterior(self, X):
        """p(z|x) = N(V (x - mu), Sigma): returns means (N, L) and the shared Sigma (L, L)."""
        X = self._check_x(X, "X")
        V, Sigma = fa_posterior(self.params["W"], self.psi)
        return (X - self.params["mu"]) @ V.T, Sigma

    def transform(self, X):
        """The posterior means E[z|x] = V (x - mu), (N, L)."""
        return self.posterior(X)[0]

    def score_samples(self, X):
        """log p(x_n) = log N(x_n; mu, W W^T + Psi) per row, (N,), via (MDL) and (WB)."""
        X = self._check_x(X, "X")
        W, psi = self.params["W"], self.psi
        V, Sigma = fa_posterior(W, psi)
        Xc = X - self.params["mu"]
        # x^T C^-1 x = x^T Psi^-1 x - (W^T Psi^-1 x)^T (V x)                         (WB)
        quad = np.sum(Xc * Xc / psi, axis=1) - np.sum((Xc @ (W / psi[:, None])) * (Xc @ V.T), axis=1)
        logdet_C = np.sum(np.log(psi)) - _logdet_pd(Sigma)             # (MDL)
        return -0.5 * (W.shape[0] * LOG_2PI + logdet_C + quad)

    def score(self, X, y=None):
        """Mean log-likelihood per example."""
        return float(np.mean(self.score_samples(X)))

    def get_covariance(self):
        """The model covariance C = W W^T + Psi (D, D) (formed only because it is asked for)."""
        self._require_params()
        W = self.params["W"]
        return W @ W.T + np.diag(self.psi)

    def get_precision(self):
        """C^-1 = Psi^-1 - Psi^-1 W V (D, D) by Woodbury, without a D x D inversion."""
        self._require_params()
        W, psi = self.params["W"], self.psi
        V, _ = fa_posterior(W, psi)
        return np.diag(1.0 / psi) - (W / psi[:, None]) @ V

    def sample(self, n_samples, seed=0, return_latent=False):
        """Draw x = W z + mu + sqrt(psi) * eps.  Returns x (n, D) (and z (n, L) if asked)."""
        self._require_params()
        n_samples = positive_int("n_samples", n_samples)
        rng = np.random.default_rng(seed_value("seed", seed)) if not isinstance(seed, np.random.Generator) else seed
        W = self.params["W"]
        z = rng.standard_normal((int(n_samples), W.shape[1]))
        x = z @ W.T + self.params["mu"] + np.sqrt(self.psi) * rng.standard_normal((int(n_samples), W.shape[0]))
        return (x, z) if return_latent else x

    # -- the ELBO in closed form ---------------------------------------------------------------

    def elbo(self, X, q_mean, q_cov):
        """The ELBO of a Gaussian q(z|x_n) = N(q_mean[n], q_cov), in closed form, three ways.

        X: (N, D); q_mean: (N, L); q_cov: (L, L) shared or (N, L, L).  Returns a dict of (N,)
        arrays (nats per example):
            joint_plus_entropy            I   E_q[log p(x|z)] + E_q[log p(z)] + H[q]
            expected_loglik_minus_kl      II  E_q[log p(x|z)] - KL(q || N(0, I))
            loglik_minus_kl_posterior     III log p(x) - KL(q || p(z|x))
            log_px, kl_posterior, gap     log p(x), KL(q || p(z|x)), log p(x) - (I)
        using, with r = x - W m - mu,
            E_q[log p(x|z)] = -1/2 [sum_d log(2 pi psi_d) + r^T Psi^-1 r + tr(W^T Psi^-1 W S_q)]
            E_q[log p(z)]   = -1/2 [L log 2 pi + m^T m + tr S_q]
        """
        X = self._check_x(X, "X")
        W, mu, psi = self.params["W"], self.params["mu"], self.psi
        L = W.shape[1]
        m = np.asarray(q_mean, dtype=np.float64)
        Sq = np.asarray(q_cov, dtype=np.float64)
        if m.shape != (X.shape[0], L):
            raise DataError(f"expected q_mean of shape ({X.shape[0]}, {L}), got {m.shape}")
        if Sq.shape not in ((L, L), (X.shape[0], L, L)):
            raise DataError(f"expected q_cov of shape ({L}, {L}) or ({X.shape[0]}, {L}, {L}), got {Sq.shape}")
        r = X - m @ W.T - mu
        WtPW = W.T @ (W / psi[:, None])
        tr_Sq = np.trace(Sq, axis1=-2, axis2=-1)
        e_loglik = -0.5 * (np.sum(LOG_2PI + np.log(psi)) + np.sum(r * r / psi, axis=1)
                           + np.einsum("ij,...ji->...", WtPW, Sq))
        e_logprior = -0.5 * (L * LOG_2PI + np.sum(m * m, axis=1) + tr_Sq)
        entropy = gaussian_entropy(Sq)
        kl_prior = 0.5 * (tr_Sq + np.sum(m * m, axis=1) - L - _logdet_pd(Sq))
        post_mean, Sigma = self.posterior(X)
        kl_post = gaussian_kl(m, Sq, post_mean, Sigma)
        log_px = self.score_samples(X)
        elbo_1 = e_loglik + e_logprior + entropy
        return {"joint_plus_entropy": elbo_1,
                "expected_loglik_minus_kl": e_loglik - kl_prior,
                "loglik_minus_kl_posterior": log_px - kl_post,
                "log_px": log_px, "kl_posterior": kl_post, "gap": log_px - elbo_1}

    # -- input checks --------------------------------------------------------------------------

    def _check_L(self, D):
        if self.n_components > D:
            raise ValueError(f"n_components={self.n_components} factors is more than the "
                             f"number of features D={D}; use at most {D}")

    def _check_fit_data(self, X):
        X = as_float64_matrix(X, "X")
        N, D = X.shape
        if N < 2:
            raise DataError(f"need at least 2 examples (rows of X) to fit, got {N}")
        self._check_L(D)
        return X

    def _check_x(self, x, name):
        self._require_params()
        if not isinstance(x, np.ndarray):
            raise DataError(f"expected {name} to be an array, got {type(x).__name__}")
        check_array(x, name, shape=(None, self.n_features), dtype_kind="fiub")
        x = np.asarray(x, dtype=np.float64)
        return check_finite(x, name)

    def _require_params(self):
        if not self.params:
            raise RuntimeError(f"this {type(self).__name__} has no parameters yet: call fit(X) "
                               "first (or build it with n_features=D)")


class PPCA(FactorAnalysis):
    """Probabilistic PCA: factor analysis with isotropic noise Psi = sigma^2 I.

    ``method="em"`` runs EM (the M-step's sigma^2 is the mean of FA's psi update,
    sigma^2 = (1/D) tr(S - W_new V S)); ``method="closed_form"`` uses Tipping & Bishop's
    eigen-solution (``ppca_closed_form``).  Both reach the same maximum log-likelihood.
    ``params`` hold "log_sigma2" (1,) instead of "log_psi".
    """

    kind = "ppca"
    isotropic = True

    def __init__(self, n_components, method="em", noise_floor=1e-6, tol=1e-4, max_iter=1000,
                 init="random", suff_stats="auto", seed=0, n_features=None):
        if method not in ("em", "closed_form"):
            raise ValueError(f"method must be 'em' or 'closed_form', got {method!r}")
        self.method = method
        super().__init__(n_components, noise_floor=noise_floor, tol=tol, max_iter=max_iter,
                         init=init, suff_stats=suff_stats, seed=seed, n_features=n_features)

    @property
    def config(self):
        return {**super().config, "method": self.method}

    def _set_params(self, W, mu, psi):
        sigma2 = float(np.mean(psi))
        self.params = {"W": np.array(W, dtype=np.float64), "mu": np.array(mu, dtype=np.float64),
                       "log_sigma2": np.array([np.log(sigma2)])}
        self.n_features = self.params["W"].shape[0]

    @property
    def psi(self):
        self._require_params()
        return np.full(self.n_features, np.exp(self.params["log_sigma2"][0]))

    @property
    def sigma2(self):
        return float(self.psi[0])

    def _noise_grad(self, dpsi):
        return {"log_sigma2": np.array([np.sum(dpsi) * self.sigma2])}

    def _noise_update(self, psi_new):
        """sigma^2 = (1/D) tr(S - W_new V S): the mean of FA's update, floored."""
        return np.full(psi_new.shape, max(float(np.mean(psi_new)), self.noise_floor))

    def fit(self, X, y=None, callback=None):
        if self.method == "em":
            return super().fit(X, callback=callback)
        X = self._check_fit_data(X)
        N, D = X.shape
        if self.n_components >= D:
            raise ValueError(f"closed-form PPCA needs n_components < D={D}, got {self.n_components}")
        mu = X.mean(axis=0)
        stats = _SuffStats(X - mu, use_cov=True)
        W, sigma2 = ppca_closed_form(stats.S, self.n_components)
        psi = self._noise_update(np.full(D, sigma2))
        V, Sigma = fa_posterior(W, psi)
        ll = fa_mean_loglik(W, psi, V, Sigma, stats.S_times(V.T), stats.diag_S)
        self.loglik_, self.n_iter_, self.converged_ = [float(ll)], 0, True
        self._set_params(W, mu, psi)
        return self
