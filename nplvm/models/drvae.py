r"""The VAE with the density-ratio (implicit optimal) prior: the notes' optimal-prior ELBO with a
discriminator T_psi(z) ~ ln q(z) / p(z), trained alternately with the VAE (Takahashi et al., 2019).

The optimal-prior ELBO (lecture notes 002, "Optimal prior")
-----------------------------------------------------------
The prior maximising the data-averaged ELBO is the aggregated posterior q(z) = E_pD[q(z|x)].
With it the KL has no closed form, but it splits against the standard normal p(z) = N(0, I):

    KL(q(z|x) || q(z)) = KL(q(z|x) || p(z)) - E_q(z|x)[ ln q(z) / p(z) ]

so, with T*(z) = ln q(z) / p(z),

    L(x) = E_q(z|x)[ log p(x|z) + T*(z) ] - KL(q(z|x) || p(z))                               (OP)

where the KL is the VAE's closed form.  T* is estimated by a classifier D = sigmoid(T_psi) between
samples of q(z) (z ~ q(z|x) for the x of a minibatch: ancestral sampling of the aggregated
posterior) and of p(z) = N(0, I) (``discriminator.py``: the logit of the best classifier is T*).
Training alternates: a step of (phi, theta) on -(OP) with T_psi in place of T*, then a step of psi
on the logistic loss (``nplvm.train.fit`` does the second step, the model exposes
``model.discriminator``).

Loss (one z_n = mu_n + sigma_n eps_n per example):

    loss = mean_n [ -log p(x_n|z_n) + beta (KL(q(z|x_n) || N(0, I)) - T_psi(z_n)) ]    (beta = 1: -(OP))
    dz   = decoder.backward((sigmoid(l) - x)/N) - (beta/N) dT_psi/dz   (T_psi held fixed: psi is not a
                                                                        parameter of this loss)
    dmu  = dz + beta mu/N,   dlogvar = dz eps sigma/2 + beta (e^logvar - 1)/(2N)

(beta < 1 only during a KL warm-up, as for the VampPrior.)

Only z carries the gradient to phi: the dependence of q_phi(z) itself on phi in ln q_phi(z)/p(z) is
left out.  Averaged over the data it contributes nothing, E_pD E_q(z|x)[grad_phi ln q_phi(z)] =
E_q(z)[grad_phi ln q_phi(z)] = grad_phi int q_phi(z) dz = 0, so the gradient of the data-averaged
(OP) is what the code computes when T_psi = T*.

The model's prior, for sampling and for importance sampling
------------------------------------------------------------
(OP) is the ELBO of the prior p_T(z) = N(z|0, I) exp(T(z)) / Z_T, up to log Z_T (Z_T = 1 when
T = T* exactly, since then p_T = q(z)).  With a learned T the normaliser is not exactly 1, so
``log_weights`` uses it honestly:

    log w = log p(x|z) + log N(z|0, I) + T_psi(z) - log Z_T - log q(z|x),
    Z_T   = E_r[ N(z|0, I) exp(T_psi(z)) / r(z) ]                     (``estimate_log_normalizer``)

with the proposal r = 1/2 N(0, I) + 1/2 q_M(z), q_M the aggregated posterior of M reference images
(when given; N(0, I) alone otherwise).  The defensive half N(0, I) bounds the weights by
2 exp(T); the q_M half puts samples where exp(T) is large.  If T_psi ~ ln q(z)/N(z), then
N(z) exp(T(z)) ~ q(z) and the weights are ~2 where q_M = q: pass all the training images as the
reference (a q_M of a subset leaves regions where exp(T) is large and q_M small, whose rare
samples make the weights heavy-tailed, and log Z_T, averaged in log space, is then biased low).  The estimate is cached for the current
discriminator parameters (it is recomputed, with N(0, I) alone, when they change).

Public API
----------
DRVAE(x_dim=784, hidden=(300, 300), latent=40, activation="tanh", disc_hidden=(256, 256),
      disc_lr=5e-4, beta=1.0, warmup=0, dtype, seed)                         kind "drvae"
    .params (encoder, decoder); .discriminator (a Discriminator with its own params)
    .loss(x, rng, grad=True) -> (loss, grads);  .discriminator_samples(x, rng) -> (z_q, z_p)
    .log_prior(z) -> log N(z) + T(z) - log Z_T;  .log_weights(x, K, rng) -> (K, N)
    .estimate_log_normalizer(n_samples, rng, x_ref=None) -> (log Z_T, standard error)
    .sample(n, rng) -> (n, D): z from p_T by sampling-importance-resampling from N(0, I)
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

import kernels

from ..backend import rng as make_rng
from ..checks import check_array
from ..distributions import logsumexp, reparameterize_backward
from . import register
from .discriminator import Discriminator
from .vae import VAE, KLWarmup, _log_prior_minus_log_q, check_warmup, parse_hidden
from .vampprior import log_mixture

__all__ = ["DRVAE"]

LOG_2PI = math.log(2.0 * math.pi)


@register("drvae")
class DRVAE(KLWarmup, VAE):
    """A VAE trained on the optimal-prior ELBO (OP) with a discriminator T_psi; see the module docstring.

    x_dim, hidden, latent, activation, dtype, seed: as for the VAE; disc_hidden: hidden widths of
    the discriminator T_psi(z); disc_lr: its learning rate (the model's optimiser class); beta:
    weight of the prior term KL - E T (1: (OP)); warmup: epochs of a linear warm-up of that weight,
    beta * min(1, epoch / warmup) (``KLWarmup``; 0: none; from the CLI, ``--warmup``).
    """

    kind = "drvae"

    def __init__(self, x_dim=784, hidden=(300, 300), latent=40, activation="tanh", disc_hidden=(256, 256),
                 disc_lr=5e-4, beta=1.0, warmup=0, dtype="float32", seed=0):
        self.warmup = check_warmup(warmup)
        super().__init__(x_dim, hidden, latent, activation, k=1, kl="analytic", beta=beta, dtype=dtype, seed=seed)
        try:
            disc_hidden = parse_hidden(disc_hidden)
        except ValueError as e:
            raise ValueError(f"disc_hidden: {e}") from None
        if not (isinstance(disc_lr, (int, float)) and math.isfinite(disc_lr) and disc_lr > 0):
            raise ValueError(f"expected a positive finite disc_lr, got {disc_lr!r}")
        self.config = {"x_dim": self.x_dim, "hidden": list(self.hidden), "latent": self.latent,
                       "activation": activation, "disc_hidden": list(disc_hidden), "disc_lr": float(disc_lr),
                       "beta": self.beta, "warmup": self.warmup, "dtype": self.dtype.name, "seed": int(seed)}
        self.discriminator = Discriminator(self.discriminator_samples, self.latent, disc_hidden,
                                           activation="softplus", lr=float(disc_lr), dtype=self.dtype,
                                           seed=int(seed) + 1)
        self._log_z = None                       # (fingerprint of psi, log Z_T, standard error)
        self._z_pool = None                      # (fingerprint, shift, sum w, sum w^2, n): pooled samples
        self.last_batch_log_z = None

    def __repr__(self):
        return f"DRVAE({self.encoder!r} | {self.decoder!r}; T_psi {self.discriminator.net!r})"

    # -- the second player's data ------------------------------------------------------------------
    def discriminator_samples(self, x, rng):
        """(z_q, z_p), (N, L) each: z_q ~ q(z|x_n) for the rows of x (samples of the aggregated
        posterior q(z), label 1) and z_p ~ N(0, I) (label 0).  No gradient flows into the encoder."""
        x = self.check_input(x)
        g = make_rng(rng)
        mu, logvar, _ = self._encode(x)
        z_q = mu + np.exp(0.5 * logvar) * g.standard_normal(mu.shape, dtype=self.dtype)
        z_p = g.standard_normal(mu.shape, dtype=self.dtype)
        return z_q, z_p

    # -- the objective -----------------------------------------------------------------------------
    def loss(self, x, rng, grad=True):
        """(-(OP) with T_psi, grads of the VAE's params); fresh gradient arrays per call."""
        x = self.check_input(x)
        eps = make_rng(rng).standard_normal((x.shape[0], self.latent), dtype=self.dtype)
        N = x.shape[0]
        mu, logvar, enc_cache = self._encode(x)
        sigma = np.exp(0.5 * logvar)
        z = mu + sigma * eps                                          # z = mu + sigma eps
        logits, dec_cache = self.decoder.forward(z)
        rec, dlogits = kernels.bernoulli_nll(x, logits, 1.0 / N)     # -log p(x|z)
        beta = self.kl_weight                                         # beta, ramped during a warm-up
        w = beta / N                                                  # beta = 1: (OP); < 1: warm-up
        kl, dmu_kl, dlogvar_kl = kernels.gaussian_kl_std(mu, logvar, w)   # KL(q(z|x) || N(0, I))
        disc = self.discriminator
        t, t_cache = disc.forward(z)                                  # T_psi(z) ~ ln q(z)/p(z)
        loss = float(np.mean(rec) + beta * (np.mean(kl) - np.mean(t)))   # -(OP)
        if not grad:
            return loss, None

        self._release_grads()                                         # this call's grads: new arrays
        dz = self.decoder.backward(dlogits, dec_cache)                # through log p(x|z)
        # through -T_psi(z): dT/dz by the discriminator's backward (it adds to its own param
        # grads too; its loss zeroes them before its step, and they are not returned here)
        dz += disc.backward(np.full(N, -w, dtype=self.dtype), t_cache)
        dmu, dlogvar = reparameterize_backward(dz, eps, logvar)       # through z = mu + sigma eps
        self.encoder.backward(np.concatenate([dmu + dmu_kl, dlogvar + dlogvar_kl], axis=1), enc_cache,
                              need_dx=False)
        return loss, self._take_grads()

    # -- the prior p_T(z) = N(z) exp(T(z)) / Z_T ---------------------------------------------------
    def _fingerprint(self):
        h = hashlib.sha1()
        for name in sorted(self.discriminator.params):
            h.update(np.ascontiguousarray(self.discriminator.params[name]).tobytes())
        return h.hexdigest()

    def estimate_log_normalizer(self, n_samples=20000, rng=0, x_ref=None):
        """(log Z_T, its standard error), Z_T = int N(z|0, I) exp(T_psi(z)) dz, by importance sampling.

        Proposal r = N(0, I), or with x_ref (M, D) given r = 1/2 N(0, I) + 1/2 (1/M) sum_m q(z|x_m).
        log Z ~= logmeanexp_i [log N(z_i) + T(z_i) - log r(z_i)]; the standard error of log Z is
        std(w) / (mean(w) sqrt(n)) (the delta method).  Calls with the same psi POOL their samples (the
        weights' sum, so the pooled Z-hat stays unbiased); ``last_batch_log_z`` is this call's alone,
        and the spread of those across calls shows heavy-tailed weights the SE may understate.  The
        pooled result is cached for these psi.
        """
        g = make_rng(rng)
        n, L = int(n_samples), self.latent
        z = g.standard_normal((n, L))
        log_n = -0.5 * np.sum(LOG_2PI + z * z, axis=1)               # log N(z|0, I)
        log_r = log_n
        if x_ref is not None:
            mu, logvar = self.encode(x_ref)
            mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
            half = n // 2                                            # the second half from q_M
            k = g.integers(0, mu.shape[0], n - half)
            z[half:] = mu[k] + np.exp(0.5 * logvar[k]) * g.standard_normal((n - half, L))
            log_n = -0.5 * np.sum(LOG_2PI + z * z, axis=1)
            c = max(1, 4_000_000 // mu.shape[0])                    # rows per chunk: (c, M) at most 4e6 entries
            log_qm = np.concatenate([log_mixture(z[i:i + c], mu, logvar)[0] for i in range(0, n, c)])
            log_r = np.logaddexp(log_n, log_qm) - math.log(2.0)
        t = np.concatenate([self.discriminator.log_ratio(z[i:i + 5000].astype(self.dtype))
                            for i in range(0, n, 5000)]).astype(np.float64)
        log_w = log_n + t - log_r
        self.last_batch_log_z = float(logsumexp(log_w) - math.log(n))     # this call's samples alone
        # pool with the earlier calls' samples for the same psi (Z-hat is unbiased: pool in Z, not log Z)
        fp, m = self._fingerprint(), float(log_w.max())
        if self._z_pool is not None and self._z_pool[0] == fp:
            _, m0, s1, s2, n0 = self._z_pool
            top = max(m, m0)
            s1 = s1 * math.exp(m0 - top) + float(np.sum(np.exp(log_w - top)))
            s2 = s2 * math.exp(2 * (m0 - top)) + float(np.sum(np.exp(2 * (log_w - top))))
            n, m = n0 + n, top
        else:
            s1, s2 = float(np.sum(np.exp(log_w - m))), float(np.sum(np.exp(2 * (log_w - m))))
        self._z_pool = (fp, m, s1, s2, n)
        mean = s1 / n
        se = math.sqrt(max(s2 / n - mean * mean, 0.0) / n) / mean      # SE of log Z-hat (delta method)
        log_z = m + math.log(mean)
        self._log_z = (fp, log_z, se)
        return log_z, se

    def log_normalizer(self):
        """log Z_T for the current psi: the cached estimate, or a fresh one (N(0, I) proposal)."""
        if self._log_z is None or self._log_z[0] != self._fingerprint():
            self.estimate_log_normalizer()
        return self._log_z[1]

    def log_prior(self, z):
        """log p_T(z) = log N(z|0, I) + T_psi(z) - log Z_T, (M,) for z (M, L)."""
        check_array(z, "z", ndim=2, shape=(None, self.latent))
        z = np.asarray(z, dtype=self.dtype)
        return -0.5 * np.sum(LOG_2PI + z * z, axis=1) + self.discriminator.log_ratio(z) - self.log_normalizer()

    def sample(self, n, rng, binary=False, candidates=50):
        """n draws from p_T by sampling-importance-resampling: ``candidates`` * n draws of N(0, I),
        resampled with probabilities proportional to exp(T_psi(z)); then the decoder's means."""
        g = make_rng(rng)
        zc = g.standard_normal((int(n) * int(candidates), self.latent), dtype=self.dtype)
        t = self.discriminator.log_ratio(zc).astype(np.float64)
        p = np.exp(t - t.max())
        z = zc[g.choice(len(zc), int(n), p=p / p.sum())]
        mean = self.decode(z)
        return (g.random(mean.shape, dtype=self.dtype) < mean).astype(np.uint8) if binary else mean

    # -- evaluation --------------------------------------------------------------------------------
    def log_weights(self, x, K, rng):
        """log w_i = log p(x|z_i) + log N(z_i) + T_psi(z_i) - log Z_T - log q(z_i|x), z_i ~ q(z|x): (K, N)."""
        x = self.check_input(x)
        K, N, L = int(K), x.shape[0], self.latent
        eps = make_rng(rng).standard_normal((K, N, L), dtype=self.dtype)
        mu, logvar, _ = self._encode(x)
        z = mu + np.exp(0.5 * logvar) * eps
        zf = z.reshape(K * N, L)
        logits = self.decoder.forward(zf)[0]
        xk = np.broadcast_to(x, (K, N, self.x_dim)).reshape(K * N, self.x_dim)
        nll, _ = kernels.bernoulli_nll(xk, logits)
        t = self.discriminator.forward(zf)[0].reshape(K, N)
        return (-nll.reshape(K, N) + _log_prior_minus_log_q(z, mu, logvar) + t
                - self.dtype.type(self.log_normalizer()))
