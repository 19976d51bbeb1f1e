r"""The VampPrior VAE (Tomczak & Welling, 2018): the prior is a mixture of the variational posteriors
at K learned pseudo-inputs, an approximation of the optimal prior, the aggregated posterior.

Why this prior (lecture notes 002, "Optimal prior")
---------------------------------------------------
Averaged over the data, the ELBO's KL term splits (``kl_decomposition``, lesson 18) as

    E_pD[KL(q(z|x) || p(z))] = I_q(x; z) + KL(q(z) || p(z)),     q(z) = E_pD[q(z|x)],      (KLD)

and only the second term depends on p: the prior that maximises the ELBO is the aggregated
posterior p*(z) = q(z) = (1/N) sum_n q(z|x_n).  A mixture over all N training points is too costly
and overfits; the VampPrior replaces the N data points by K << N learned pseudo-inputs u_k:

    p_lambda(z) = (1/K) sum_k q_phi(z | u_k) = (1/K) sum_k N(z | m_k, diag exp(s_k)),
    (m_k, s_k) = encoder(u_k),    u_k = sigmoid(a_k) in (0, 1)^D     (a_k: the parameter "pseudo")

The prior shares the encoder with q: the pseudo-inputs are images the encoder reads.

Generative model and objective
------------------------------
    z ~ p_lambda(z),    x | z ~ prod_d Bern(x_d | sigmoid(decoder(z)_d))
    q_phi(z|x) = N(mu, diag exp(logvar)),  z = mu + exp(logvar/2) eps        (reparameterization)
    loss = mean_n [ -log p(x_n|z_n) + log q(z_n|x_n) - log p_lambda(z_n) ]     (-ELBO, one z_n)

The KL has no closed form: it is estimated by Monte Carlo from the same z,

    KL ~= log q(z|x) - log p_lambda(z),
    log q(z|x)      = -1/2 sum_l (log 2 pi + logvar_l + eps_l^2)                  ((z - mu)^2/sigma^2 = eps^2)
    log p_lambda(z) = logsumexp_k A_k - log K,
    A_k             = log N(z | m_k, e^{s_k}) = -1/2 sum_l (log 2 pi + s_kl + (z_l - m_kl)^2 e^{-s_kl})

Gradient (the derivation ``log_mixture_backward`` implements; homework ``vampprior-gradient``).
With responsibilities r_k = softmax_k(A_k) = d logsumexp / dA_k and p_k = e^{-s_k}:

    d log p(z) / dz    = sum_k r_k (m_k - z) p_k
    d log p(z) / dm_k  = r_k (z - m_k) p_k
    d log p(z) / ds_k  = r_k ((z - m_k)^2 p_k - 1) / 2

For a batch with upstream weights g_n = dloss / dlog p(z_n) = -1/N, every sum over (n, k) is a
matrix product (r is (N, K)): e.g. sum_n g_n r_nk z_n = (g r)^T z.  Then the chain continues:

    dz    += -(1/N) d log p(z)/dz                 -> the reparameterization into (mu, logvar)
    dlogvar += -1/(2N)                             (log q's -1/2 logvar, eps fixed)
    (dm, ds) -> encoder.backward at the pseudo-inputs -> du -> da = du u (1 - u)

KL warm-up.  The prior is made of the encoder's own outputs, so the KL term alone is minimised by an
encoder that ignores x (q(z|x) = q(z|u_k) for every x: KL = 0): measured here, with beta = 1 from
the first step the model stalls at that collapse (~206.5 nats on MNIST) while the N(0, I) VAE does
not.  Tomczak & Welling train every model with a warm-up, the KL weighted by beta rising from 0 to 1;
``beta`` is that weight (``nplvm.bench.optimal_prior`` ramps it over the first epochs), and
``warmup`` = W ramps it for ``nplvm.train.fit`` (and so the CLI): beta * min(1, epoch / W).

The encoder runs twice per step, on x and on u; each call keeps its own cache and the two
backwards add their parameter gradients (nn's convention), as the chain rule asks.

Importance sampling: log w = log p(x|z) + log p_lambda(z) - log q(z|x) (``log_weights``).

Public API
----------
VampPrior(x_dim=784, hidden=(300, 300), latent=40, activation="tanh", n_pseudo=500, beta=1.0, warmup=0,
          dtype, seed)
    .params: "enc.*", "dec.*", "pseudo" (K, D) (logits of the pseudo-inputs)
    .loss(x, rng, grad=True) -> (loss, grads);  .log_weights(x, K, rng) -> (K, N)
    .pseudo_inputs() -> u (K, D);  .prior_components() -> (m, s) (K, L) each
    .log_prior(z) -> (M,) log p_lambda(z);  .sample(n, rng) -> (n, D) Bernoulli means
    .init_pseudo_inputs(x, rng) -> start the u_k at random training images (optional)
log_mixture(z, m, s) -> (log (1/K) sum_k N(z|m_k, e^s_k) (M,), responsibilities r (M, K))
log_mixture_backward(g, z, m, s, r) -> (dz, dm, ds)    the gradient of sum_n g_n log p(z_n)
kl_decomposition(mu, logvar, log_prior, S, rng)        (KLD), each term estimated from one sample set
active_units(mu, threshold=0.01)                       dims with Cov_x(E_q[z_d]) > threshold
"""
from __future__ import annotations

import math

import numpy as np

import kernels

from ..backend import rng as make_rng
from ..checks import check_array
from ..distributions import logsumexp, reparameterize_backward, softmax
from ..nn import sigmoid_forward
from . import register
from .vae import VAE, KLWarmup, check_warmup

__all__ = ["VampPrior", "log_mixture", "log_mixture_backward", "kl_decomposition", "active_units"]

LOG_2PI = math.log(2.0 * math.pi)


def _component_log_densities(z, m, s):
    """A (M, K): A_mk = log N(z_m | m_k, diag e^{s_k}) by matrix products.

    sum_l (z_l - m_kl)^2 p_kl = (z^2) p_k^T - 2 z (m_k p_k)^T + sum_l m_kl^2 p_kl,  p = e^{-s}:
    three (M, L) x (L, K) products instead of an (M, K, L) array.
    """
    p = np.exp(-s)                                            # (K, L) precisions
    quad = (z * z) @ p.T - 2.0 * (z @ (m * p).T) + np.sum(m * m * p, axis=1)
    return -0.5 * (quad + np.sum(s, axis=1) + z.shape[1] * LOG_2PI)


def log_mixture(z, m, s):
    """log p(z) = log (1/K) sum_k N(z | m_k, diag e^{s_k}) for each row of z, stable (log-sum-exp).

    z (M, L); m, s (K, L).  Returns (log p (M,), r (M, K) = softmax_k A_mk, the responsibilities).
    """
    A = _component_log_densities(z, m, s)
    return logsumexp(A, axis=1) - math.log(m.shape[0]), softmax(A, axis=1)


def log_mixture_backward(g, z, m, s, r):
    """Gradients of sum_n g_n log p(z_n), p the mixture of ``log_mixture``: (dz (M, L), dm (K, L), ds (K, L)).

    g (M,): upstream weights; r (M, K): the responsibilities ``log_mixture`` returned.
    """
    # SOLUTION vampprior-gradient: the gradient of the mixture log-density log (1/K) sum_k N(z|m_k, e^s_k) w.r.t. z, m, s
    # HINT d logsumexp_k A_k / dA_k = r_k; A_k = -1/2 sum_l (log 2 pi + s_kl + (z_l - m_kl)^2 exp(-s_kl)).
    # HINT Weight r by g (gr = g[:, None] * r, (M, K)); every sum over rows n is then a matrix product, e.g. gr.T @ z.
    p = np.exp(-s)                                            # (K, L) precisions
    gr = g[:, None] * r                                       # (M, K): g_n r_nk
    dz = gr @ (m * p) - z * (gr @ p)                          # sum_k g r_k (m_k - z) p_k
    Rk = gr.sum(axis=0)[:, None]                              # (K, 1): sum_n g_n r_nk
    Gz = gr.T @ z                                             # (K, L): sum_n g_n r_nk z_n
    dm = p * (Gz - Rk * m)                                    # sum_n g r_nk (z_n - m_k) p_k
    sq = gr.T @ (z * z) - 2.0 * m * Gz + Rk * m * m           # sum_n g r_nk (z_n - m_k)^2
    ds = 0.5 * (p * sq - Rk)                                  # sum_n g r_nk ((z_n - m_k)^2 p_k - 1) / 2
    return dz, dm, ds
    # END SOLUTION


def kl_decomposition(mu, logvar, log_prior, S=1, rng=0):
    """The terms of (KLD) for the empirical data distribution of the N rows of (mu, logvar).

    q(z|x_n) = N(mu_n, diag e^{logvar_n}); q(z) = (1/N) sum_n q(z|x_n) exactly (the aggregated
    posterior of these N points); log_prior(z (M, L)) -> (M,).  With S draws z_sn ~ q(z|x_n):

        mean_kl     E_n[KL(q(z|x_n) || p)]       E[log q(z|x) - log p(z)]
        mutual_info I(x; z)                      E[log q(z|x) - log q(z)]      (<= log N)
        marginal_kl KL(q(z) || p)                E[log q(z) - log p(z)]

    All three from the same draws, so mean_kl = mutual_info + marginal_kl holds draw by draw; the
    closed-form E_n KL(q(z|x_n) || N(0, I)) is returned too ("mean_kl_exact", for p = N(0, I)), and
    the per-draw values of each term ("*_draws", (S*N,)) give standard errors.
    """
    N, L = mu.shape
    eps = make_rng(rng).standard_normal((S, N, L))
    z = (mu + np.exp(0.5 * logvar) * eps).reshape(S * N, L)
    log_qzx = (-0.5 * (LOG_2PI + logvar + eps * eps).sum(axis=-1)).reshape(S * N)
    log_qz, _ = log_mixture(z, mu, logvar)                    # log (1/N) sum_m q(z | x_m)
    log_pz = np.asarray(log_prior(z), dtype=np.float64)
    mi, mk, kl = log_qzx - log_qz, log_qz - log_pz, log_qzx - log_pz
    kl_exact, _, _ = kernels.reference.gaussian_kl_std(mu, logvar)
    return {"mean_kl": float(kl.mean()), "mutual_info": float(mi.mean()), "marginal_kl": float(mk.mean()),
            "mean_kl_exact": float(np.mean(kl_exact)), "log_N": math.log(N),
            "mean_kl_draws": kl, "mutual_info_draws": mi, "marginal_kl_draws": mk}


def active_units(mu, threshold=0.01):
    """Burda et al.'s active units: the number of latent dimensions d with Cov_x(E_q[z_d|x]) > threshold.

    mu (N, L): encoder means over a data set.  Returns (count, per-dimension variances (L,)).
    """
    var = np.var(np.asarray(mu, dtype=np.float64), axis=0)
    return int(np.sum(var > threshold)), var


@register("vampprior")
class VampPrior(KLWarmup, VAE):
    """A VAE whose prior is the VampPrior (1/K) sum_k q(z|u_k); see the module docstring.

    x_dim, hidden, latent, activation, dtype, seed: as for the VAE (the same encoder and decoder);
    n_pseudo: K, the number of pseudo-inputs (Tomczak & Welling use 500 on MNIST); beta: weight of
    the KL term (1: the ELBO; below 1 during a KL warm-up, which the VampPrior needs: see the
    module docstring); warmup: epochs of a linear KL warm-up, the KL weighted by
    beta * min(1, epoch / warmup) (``KLWarmup``; 0: none; from the CLI, ``--warmup``).
    """

    kind = "vampprior"

    def __init__(self, x_dim=784, hidden=(300, 300), latent=40, activation="tanh", n_pseudo=500,
                 beta=1.0, warmup=0, dtype="float32", seed=0):
        self.warmup = check_warmup(warmup)
        if int(n_pseudo) != n_pseudo or n_pseudo < 1:
            raise ValueError(f"expected a positive integer n_pseudo (the number of pseudo-inputs K), got {n_pseudo!r}")
        super().__init__(x_dim, hidden, latent, activation, k=1, kl="mc", beta=beta, dtype=dtype, seed=seed)
        self.n_pseudo = int(n_pseudo)
        self.config = {"x_dim": self.x_dim, "hidden": list(self.hidden), "latent": self.latent,
                       "activation": activation, "n_pseudo": self.n_pseudo, "beta": self.beta,
                       "warmup": self.warmup, "dtype": self.dtype.name, "seed": int(seed)}
        # u_k = sigmoid(a_k), a_k ~ N(-2, 0.5^2): grey images of mean intensity ~0.13, MNIST's mean.
        g = make_rng([int(seed), 18])
        self.pseudo = (g.standard_normal((self.n_pseudo, self.x_dim)) * 0.5 - 2.0).astype(self.dtype)
        self.params["pseudo"] = self.pseudo

    def __repr__(self):
        return f"VampPrior({self.encoder!r} | {self.decoder!r}; K = {self.n_pseudo} pseudo-inputs)"

    def init_pseudo_inputs(self, x, rng=0, margin=0.05):
        """Start the pseudo-inputs at K random rows of x: u_k = margin + (1 - 2 margin) x_k (in place)."""
        x = self.check_input(x)
        idx = make_rng(rng).choice(x.shape[0], self.n_pseudo, replace=x.shape[0] < self.n_pseudo)
        u = margin + (1 - 2 * margin) * x[idx]
        self.pseudo[...] = np.log(u) - np.log1p(-u)          # a = logit(u)
        return self

    # -- the prior -------------------------------------------------------------------------------
    def pseudo_inputs(self):
        """u = sigmoid(a) (K, D): the pseudo-inputs as images."""
        return sigmoid_forward(self.pseudo)

    def prior_components(self):
        """(m, s) (K, L) each: the means and log-variances of q(z|u_k), the prior's components."""
        h, _ = self.encoder.forward(self.pseudo_inputs())
        return h[:, :self.latent].copy(), h[:, self.latent:].copy()

    def log_prior(self, z):
        """log p_lambda(z) (M,) for z (M, L)."""
        check_array(z, "z", ndim=2, shape=(None, self.latent))
        m, s = self.prior_components()
        return log_mixture(np.asarray(z, dtype=self.dtype), m, s)[0]

    def sample(self, n, rng, binary=False):
        """n draws: k ~ U{1..K}, z ~ q(z|u_k), then the Bernoulli means (or binary x)."""
        g = make_rng(rng)
        m, s = self.prior_components()
        k = g.integers(0, self.n_pseudo, int(n))
        z = m[k] + np.exp(0.5 * s[k]) * g.standard_normal((int(n), self.latent)).astype(self.dtype)
        p = self.decode(z)
        return (g.random(p.shape, dtype=self.dtype) < p).astype(np.uint8) if binary else p

    # -- the objective -----------------------------------------------------------------------------
    def loss(self, x, rng, grad=True):
        """(-ELBO with the MC KL against the VampPrior, grads); fresh gradient arrays per call."""
        x = self.check_input(x)
        eps = make_rng(rng).standard_normal((x.shape[0], self.latent), dtype=self.dtype)
        N, L = x.shape[0], self.latent
        mu, logvar, enc_cache = self._encode(x)
        sigma = np.exp(0.5 * logvar)
        z = mu + sigma * eps                                          # z = mu + sigma eps
        logits, dec_cache = self.decoder.forward(z)
        rec, dlogits = kernels.bernoulli_nll(x, logits, 1.0 / N)     # -log p(x|z), (sigmoid(l) - x)/N
        u = sigmoid_forward(self.pseudo)                              # u_k = sigmoid(a_k)
        hu, u_cache = self.encoder.forward(u)                         # the prior's components
        m, s = hu[:, :L], hu[:, L:]
        log_pz, r = log_mixture(z, m, s)                              # log p_lambda(z), responsibilities
        log_qz = -0.5 * np.sum(LOG_2PI + logvar + eps * eps, axis=1)  # log q(z|x)
        beta = self.kl_weight                                         # beta, ramped during a warm-up
        loss = float(np.mean(rec) + beta * np.mean(log_qz - log_pz))  # rec + beta KL
        if not grad:
            return loss, None

        self._release_grads()                                         # this call's grads: new arrays
        dz = self.decoder.backward(dlogits, dec_cache)                # through log p(x|z)
        g = np.full(N, -beta / N, dtype=self.dtype)                   # dloss / dlog p(z_n)
        dz_p, dm, ds = log_mixture_backward(g, z, m, s, r)
        dz += dz_p                                                    # -log p_lambda(z)'s path
        dmu, dlogvar = reparameterize_backward(dz, eps, logvar)       # through z = mu + sigma eps
        dlogvar -= 0.5 * beta / N                                     # + log q's -1/2 logvar, eps fixed
        self.encoder.backward(np.concatenate([dmu, dlogvar], axis=1), enc_cache, need_dx=False)
        du = self.encoder.backward(np.concatenate([dm, ds], axis=1), u_cache, need_dx=True)
        grads = self._take_grads()                                    # the encoder's grads hold both paths
        grads["pseudo"] = du * u * (1 - u)                            # du/da = u (1 - u)
        return loss, grads

    # -- evaluation --------------------------------------------------------------------------------
    def log_weights(self, x, K, rng):
        """log w_i = log p(x|z_i) + log p_lambda(z_i) - log q(z_i|x), z_i ~ q(z|x): (K, N).

        Noise drawn sample-major, eps (K, N, L), as the VAE's (chunked calls give the same draws).
        """
        x = self.check_input(x)
        K, N, L = int(K), x.shape[0], self.latent
        eps = make_rng(rng).standard_normal((K, N, L), dtype=self.dtype)
        mu, logvar, _ = self._encode(x)
        z = (mu + np.exp(0.5 * logvar) * eps).reshape(K * N, L)
        logits = self.decoder.forward(z)[0]
        xk = np.broadcast_to(x, (K, N, self.x_dim)).reshape(K * N, self.x_dim)
        nll, _ = kernels.bernoulli_nll(xk, logits)
        m, s = self.prior_components()
        log_pz, _ = log_mixture(z, m, s)
        log_qz = -0.5 * np.sum(LOG_2PI + logvar + eps * eps, axis=-1)        # (K, N)
        return -nll.reshape(K, N) + log_pz.reshape(K, N) - log_qz
