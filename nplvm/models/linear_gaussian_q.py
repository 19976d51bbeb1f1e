"""An amortized linear-Gaussian posterior q_phi(z|x) for a FIXED factor-analysis model.

The notes (001, "B. Amortization") learn one function of x instead of one q per example:

    q_phi(z|x) = N(A x + b, diag exp(logvar)),        phi = (A (L, D), b (L,), logvar (L,))

fitted by maximising the ELBO of a fixed p_theta (here FA: p(z) = N(0, I), p(x|z) = N(W z + mu, Psi))
with the reparameterized gradient, presentation II of the ELBO:

    ELBO(x) = E_{eps ~ N(0, I)} [log p(x | z(eps))] - KL(q(z|x) || N(0, I)),
    z(eps)  = m + s * eps,   m = A x + b,   s = exp(logvar / 2).

The KL is closed form, the expectation is a Monte Carlo average over ``n_samples`` draws of eps.
Hand-derived gradient of the loss l = -ELBO for one example and one eps, with
g = d log p(x|z) / dz = W^T Psi^-1 (x - W z - mu):

    dl/dm = -g + m                        (the KL's gradient is m)
    dl/dA = (dl/dm) x^T,   dl/db = dl/dm
    dl/dlogvar = -g * eps * s / 2 + (exp(logvar) - 1) / 2

What it converges to.  The FA posterior is p(z|x) = N(V (x - mu), Sigma) with precision
Lambda = Sigma^-1 = I + W^T Psi^-1 W, and max ELBO = min KL(q || p(z|x)).  For q = N(m, diag v),

    KL(q || p(z|x)) = 1/2 [sum_i Lambda_ii v_i + (m - m*)^T Lambda (m - m*) - L - sum_i log v_i
                          + log|Sigma|],

minimised at m = m* = V (x - mu) (so A = V, b = -V mu, reachable exactly because the true
posterior mean is linear in x) and d/dv_i: Lambda_ii - 1/v_i = 0, i.e.

    v_i = 1 / Lambda_ii            the optimal diagonal variances (not Sigma_ii!)

Since 1/Lambda_ii <= Sigma_ii, the mean-field q is over-confident whenever the posterior is
correlated; the remaining gap is KL(q* || p(z|x)) = 1/2 [sum_i log Lambda_ii - log|Lambda|] >= 0.

Model contract: ``params`` {"A", "b", "logvar"}, ``loss(x, rng) -> (mean -ELBO, grads)``,
``kind`` "fa-amortized-q", ``config`` (rebuilds it, FA parameters included).
"""
from __future__ import annotations

import numpy as np

from ..backend import check_dtype
from ..checks import (DataError, check_array, check_finite, nonneg_int, positive_float, positive_int,
                      seed_value)
from ..optim import Adam
from . import register
from .fa import LOG_2PI, fa_posterior


@register("fa-amortized-q")
class LinearGaussianQ:
    """q_phi(z|x) = N(A x + b, diag exp(logvar)) for the fixed FA model (W (D, L), mu (D,), psi (D,)).

    n_samples: eps draws per example in ``loss``; seed: initialises A (small random), b = 0,
    logvar = 0 (q starts at the prior).  ``dtype`` float64 (checks) or float32.
    """

    kind = "fa-amortized-q"

    def __init__(self, W, mu, psi, n_samples=1, seed=0, dtype="float64"):
        W = np.asarray(W, dtype=np.float64)
        mu = np.asarray(mu, dtype=np.float64)
        psi = np.asarray(psi, dtype=np.float64)
        if W.ndim != 2:
            raise DataError(f"expected W of shape (D, L), got {W.shape}")
        D, L = W.shape
        if mu.shape != (D,) or psi.shape != (D,):
            raise DataError(f"expected mu and psi of shape ({D},), got {mu.shape} and {psi.shape}")
        if not np.all(psi > 0):
            raise DataError("every noise variance psi must be > 0")
        self.W, self.mu, self.psi = W, mu, psi
        self.n_samples = positive_int("n_samples", n_samples)
        self.seed = seed_value("seed", seed)
        self.dtype = check_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.params = {"A": (0.01 * rng.standard_normal((L, D))).astype(self.dtype),
                       "b": np.zeros(L, dtype=self.dtype),
                       "logvar": np.zeros(L, dtype=self.dtype)}

    @classmethod
    def for_model(cls, fa, **kw):
        """The amortized q of a fitted ``FactorAnalysis`` / ``PPCA``."""
        return cls(fa.params["W"], fa.params["mu"], fa.psi, **kw)

    @property
    def config(self):
        return {"W": self.W.tolist(), "mu": self.mu.tolist(), "psi": self.psi.tolist(),
                "n_samples": self.n_samples, "seed": self.seed, "dtype": self.dtype.name}

    # -- q itself ------------------------------------------------------------------------------

    def mean(self, x):
        """m = A x + b per row: (N, L)."""
        return self._check_x(x) @ self.params["A"].T + self.params["b"]

    def cov(self):
        """diag(exp(logvar)) (L, L), shared by every x."""
        return np.diag(np.exp(self.params["logvar"].astype(np.float64)))

    # -- the model contract --------------------------------------------------------------------

    def loss(self, x, rng, grad=True):
        """Mean over examples (and eps draws) of -ELBO, reparameterized; and its gradients.

        x: (B, D).  eps ~ N(0, I) of shape (n_samples, B, L) comes from ``rng``.
        """
        x = self._check_x(x).astype(self.dtype, copy=False)
        A, b, logvar = self.params["A"], self.params["b"], self.params["logvar"]
        W, mu, psi = (a.astype(self.dtype, copy=False) for a in (self.W, self.mu, self.psi))
        B, (D, L), S = x.shape[0], W.shape, self.n_samples
        eps = rng.standard_normal((S, B, L)).astype(self.dtype)
        m = x @ A.T + b                                           # (B, L)   m = A x + b
        s = np.exp(0.5 * logvar)                                  # (L,)     s = exp(logvar / 2)
        z = m + s * eps                                           # (S, B, L) reparameterization
        resid = x - z @ W.T - mu                                  # (S, B, D) x - W z - mu
        # log p(x|z) = -1/2 [sum_d log(2 pi psi_d) + sum_d resid_d^2 / psi_d]
        log_lik = -0.5 * (np.sum(np.log(psi)) + D * LOG_2PI + np.sum(resid * resid / psi, axis=-1))
        # KL(N(m, diag e^logvar) || N(0, I)) = 1/2 sum (e^logvar + m^2 - 1 - logvar)
        kl = 0.5 * np.sum(np.exp(logvar) + m * m - 1.0 - logvar, axis=-1)       # (B,)
        loss = float(np.mean(-np.mean(log_lik, axis=0) + kl))
        if not grad:
            return loss, None
        # backward: g = d log p(x|z)/dz = W^T Psi^-1 (x - W z - mu)
        g = (resid / psi) @ W                                     # (S, B, L)
        dm = (-np.mean(g, axis=0) + m) / B                        # dl/dm, with the 1/B of the mean
        # dl/dlogvar = mean_n [-mean_eps (g * eps) * s / 2] + (e^logvar - 1) / 2  (KL's term)
        dlogvar = -np.sum(np.mean(g * eps, axis=0), axis=0) * 0.5 * s / B + 0.5 * (np.exp(logvar) - 1.0)
        grads = {"A": dm.T @ x, "b": dm.sum(axis=0), "logvar": dlogvar}
        return loss, grads

    def fit(self, X, n_steps=2000, batch_size=100, lr=1e-2, lr_final=1e-4, seed=0, log_every=0):
        """Adam on the reparameterized ELBO: ``lr`` for the first half of the steps, then decayed
        geometrically to ``lr_final`` (the decay averages out the gradient noise of the samples).

        X: (N, D).  Returns the list of minibatch losses.
        """
        n_steps = positive_int("n_steps", n_steps)
        batch_size = positive_int("batch_size", batch_size)
        lr, lr_final = positive_float("lr", lr), positive_float("lr_final", lr_final)
        log_every = nonneg_int("log_every", log_every)
        X = self._check_x(X).astype(self.dtype, copy=False)
        rng = np.random.default_rng(seed_value("seed", seed))
        opt = Adam(lr=lr)
        n_const = n_steps // 2
        decay = (lr_final / lr) ** (1.0 / max(n_steps - n_const - 1, 1))
        losses = []
        N = X.shape[0]
        for t in range(n_steps):
            idx = rng.choice(N, size=min(batch_size, N), replace=False)
            loss, grads = self.loss(X[idx], rng)
            opt.lr = lr * decay ** max(t - n_const, 0)
            opt.step(self.params, grads)
            losses.append(loss)
            if log_every and (t + 1) % log_every == 0:
                print(f"  step {t + 1:5d}  -ELBO {loss:.4f}")
        return losses

    # -- the targets ---------------------------------------------------------------------------

    def exact_targets(self):
        """What the ELBO's maximiser is: A* = V, b* = -V mu, v* = 1 / diag(Lambda).

        Returns (A* (L, D), b* (L,), var* (L,)) with Lambda = I + W^T Psi^-1 W.
        """
        V, Sigma = fa_posterior(self.W, self.psi)
        return V, -V @ self.mu, optimal_diagonal_variances(self.W, self.psi)

    def _check_x(self, x):
        if not isinstance(x, np.ndarray):
            raise DataError(f"expected x to be an array, got {type(x).__name__}")
        check_array(x, "x", shape=(None, self.W.shape[0]), dtype_kind="fiub")
        return check_finite(np.asarray(x, dtype=np.float64), "x")


def optimal_diagonal_variances(W, psi):
    """1 / Lambda_ii, Lambda = I + W^T Psi^-1 W: the variances of the best diagonal Gaussian q
    for the FA posterior (the minimiser of KL(q || p(z|x)) over diagonal covariances).  (L,)"""
    Lambda = np.eye(W.shape[1]) + W.T @ (W / psi[:, None])
    return 1.0 / np.diag(Lambda)
