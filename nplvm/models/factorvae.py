r"""FactorVAE (Kim & Mnih, 2018): a VAE that penalises the total correlation of its code.

Lecture notes, seed 002 ("beta-VAE", "total correlation")
---------------------------------------------------------
The beta-VAE pushes q(z|x) towards the factorised prior with weight beta on the whole KL.  Averaged
over the data that KL splits into the mutual information I(x; z) and KL(q(z) || p(z)), and the
latter again into the total correlation of the aggregate posterior q(z) = E_pD[q(z|x)] plus the
dimension-wise KLs:

    KL(q(z) || p(z)) = KL(q(z) || prod_j q(z_j))  +  sum_j KL(q(z_j) || p(z_j))
                       \_______ TC(z) _________/

A large beta penalises I(x; z) too, and reconstructions suffer.  FactorVAE keeps the ELBO and
adds the TC alone, with its own weight gamma:

    loss = mean_n [ -log p(x_n|z_n) + KL(q(z|x_n) || N(0, I)) ]  +  gamma TC(z)             (FV)

TC has no closed form for q(z), so it is estimated by the density-ratio trick
(nplvm/models/discriminator.py, nplvm/disentanglement.py): a discriminator D = sigmoid(T_psi)
learns to tell samples of q(z) (z ~ q(z|x) for data x, label 1) from samples of prod_j q(z_j)
(the same kind of samples with every dimension permuted across the batch, label 0), so that
T_psi(z) -> log q(z) / prod_j q(z_j) and

    TC(z) = E_q(z)[ log q(z) / prod_j q(z_j) ] ~= (1/N) sum_n T_psi(z_n),   z_n ~ q(z|x_n).

Gradients (eps fixed; psi held fixed inside (FV), since the discriminator is the other player)
----------------------------------------------------------------------------------------------
    dlogits = (sigmoid(l) - x) / N                                (kernels.bernoulli_nll)
    dz      = decoder.backward(dlogits)  +  gamma / N * dT/dz      (the TC term, through T_psi)
    dmu, dlogvar = dz, dz * eps * sigma / 2                        (reparameterization)
            + the KL's own (mu / N, (e^logvar - 1) / (2N))
    encoder.backward([dmu, dlogvar])

The discriminator's own loss and gradient are the logistic loss of discriminator.py on the two
sample sets drawn by ``FactorVAE.tc_samples``; ``nplvm.train.fit`` steps it after every model
step (``model.discriminator``).

Public API
----------
FactorVAE(x_dim=4096, hidden=(512, 256), latent=10, activation="relu", gamma=10.0,
          disc_hidden=(256, 256), disc_lr=1e-4, dtype="float32", seed=0)
    .params, .loss(x, rng, grad=True) -> (loss, grads)   (FV); grads are fresh arrays
    .discriminator                                        the second player (params, loss, lr)
    .tc_samples(x, rng) -> (z_q, z_perm)                  what the discriminator classifies
    .tc_estimate(x, rng) -> float                         (1/N) sum_n T(z_n), z_n ~ q(z|x_n)
    .encode(x) -> (mu, logvar);  .decode(z);  .sample(n, rng);  .log_weights(x, K, rng)
      (the generative model is the VAE's: p(z) = N(0, I), Bernoulli p(x|z))
"""
from __future__ import annotations

import numpy as np

import kernels

from ..backend import rng as make_rng
from ..disentanglement import permute_dims
from ..objectives import reparameterization_gradient
from . import register
from .discriminator import Discriminator
from .vae import VAE

__all__ = ["FactorVAE"]


@register("factorvae")
class FactorVAE:
    """VAE + gamma * TC(z), the TC estimated by a discriminator; see the module docstring.

    x_dim, hidden, latent, activation, dtype, seed: as for the VAE (MLP encoder and decoder,
    Bernoulli likelihood, N(0, I) prior).  gamma: weight of the total correlation (gamma = 0 is
    the VAE).  disc_hidden: hidden widths of the discriminator's MLP; disc_lr: its learning rate.
    """

    kind = "factorvae"

    def __init__(self, x_dim=4096, hidden=(512, 256), latent=10, activation="relu", gamma=10.0,
                 disc_hidden=(256, 256), disc_lr=1e-4, dtype="float32", seed=0):
        if isinstance(gamma, bool) or not np.isfinite(gamma) or gamma < 0:
            raise ValueError(f"expected gamma, the weight of the total correlation, to be a finite "
                             f"number >= 0, got {gamma!r}")
        # the VAE carries the networks, the generative model and its evaluation (log_weights)
        self.vae = VAE(x_dim=x_dim, hidden=hidden, latent=latent, activation=activation,
                       dtype=dtype, seed=seed)
        self.x_dim, self.latent, self.dtype = self.vae.x_dim, self.vae.latent, self.vae.dtype
        self.gamma = float(gamma)
        self.discriminator = Discriminator(self.tc_samples, self.latent, hidden=disc_hidden,
                                           activation="softplus", lr=disc_lr, dtype=self.dtype,
                                           seed=int(seed) + 1)
        self.config = {"x_dim": self.x_dim, "hidden": list(self.vae.hidden), "latent": self.latent,
                       "activation": activation, "gamma": self.gamma,
                       "disc_hidden": list(self.discriminator.hidden), "disc_lr": float(disc_lr),
                       "dtype": self.dtype.name, "seed": int(seed)}
        self._modules = (("enc.", self.vae.encoder), ("dec.", self.vae.decoder))
        self.params = {p + n: par.value for p, net in self._modules for n, par in net.parameters().items()}

    def __repr__(self):
        return f"FactorVAE(gamma={self.gamma}; {self.vae!r}; {self.discriminator!r})"

    # -- the generative model and the encoder are the VAE's ---------------------------------------
    def encode(self, x):
        """q(z|x) parameters: mu (N, L), logvar (N, L)."""
        return self.vae.encode(x)

    def decode(self, z):
        """Bernoulli means sigmoid(decoder(z)), (N, D)."""
        return self.vae.decode(z)

    def sample(self, n, rng):
        """n draws z ~ N(0, I) pushed through the decoder: Bernoulli means (n, D)."""
        return self.vae.sample(n, rng)

    def log_weights(self, x, K, rng):
        """log p(x, z_i) - log q(z_i|x), z_i ~ q(z|x): (K, N), for importance sampling."""
        return self.vae.log_weights(x, K, rng)

    # -- the total correlation --------------------------------------------------------------------
    def _draw_z(self, x, rng):
        """z ~ q(z|x) for each row of x (no gradients kept)."""
        mu, logvar = self.vae.encode(x)
        return mu + np.exp(0.5 * logvar) * make_rng(rng).standard_normal(mu.shape, dtype=self.dtype)

    def tc_samples(self, x, rng):
        """The discriminator's two sample sets for a minibatch x (N rows, N >= 4):
        z ~ q(z|x) of the first half (label 1: samples of q(z)), and the second half's z with every
        dimension permuted across those rows (label 0: samples of prod_j q(z_j))."""
        g = make_rng(rng)
        z = self._draw_z(x, g)
        half = z.shape[0] // 2
        if half < 2:
            raise ValueError(f"expected a minibatch of at least 4 rows to estimate the total "
                             f"correlation, got {z.shape[0]}")
        return z[:half], permute_dims(z[half:], g)

    def tc_estimate(self, x, rng):
        """TC(z) ~= (1/N) sum_n T_psi(z_n), z_n ~ q(z|x_n): the current discriminator's estimate."""
        return float(np.mean(self.discriminator.log_ratio(self._draw_z(x, rng))))

    # -- the objective (FV) -----------------------------------------------------------------------
    def loss(self, x, rng, grad=True):
        """(loss, grads) of (FV) in nats per example; x (N, x_dim) binary; rng seeds eps.

        grads: name -> fresh arrays (the caller owns them); (loss, None) with grad=False.
        """
        x = self.vae.check_input(x)
        N, L = x.shape[0], self.latent
        eps = make_rng(rng).standard_normal((N, L), dtype=self.dtype)
        h, enc_cache = self.vae.encoder.forward(x)
        mu, logvar = h[:, :L], h[:, L:]
        z = mu + np.exp(0.5 * logvar) * eps                            # z = mu + sigma eps
        logits, dec_cache = self.vae.decoder.forward(z)
        rec, dlogits = kernels.bernoulli_nll(x, logits, 1.0 / N)        # -log p(x|z), (sigmoid(l) - x)/N
        kl, dmu_kl, dlogvar_kl = kernels.gaussian_kl_std(mu, logvar, 1.0 / N)
        t, t_cache = self.discriminator.forward(z)                      # T(z) ~ log q(z)/prod_j q(z_j)
        loss = float(np.mean(rec) + np.mean(kl) + self.gamma * np.mean(t))
        if not grad:
            return loss, None

        for _, net in self._modules:
            net.release_grads()                                         # this call's grads: new arrays
        dz = self.vae.decoder.backward(dlogits, dec_cache)             # through -log p(x|z)
        # SOLUTION factorvae-tc-gradient: the gradient of gamma * (1/N) sum_n T(z_n) with respect to z, through the discriminator
        # HINT d/dT_n of gamma * mean(T) is gamma / N for every n; self.discriminator.backward(dT, t_cache)
        # HINT returns dL/dz (N, L) for a given dL/dT (N,).  Add the result to dz.
        dz += self.discriminator.backward(np.full(N, self.gamma / N, dtype=self.dtype), t_cache)
        # END SOLUTION
        dmu, dlogvar = reparameterization_gradient(dz, eps, logvar)     # dz/dmu = 1, dz/dlogvar = eps sigma/2
        self.vae.encoder.backward(np.concatenate([dmu + dmu_kl, dlogvar + dlogvar_kl], axis=1),
                                  enc_cache, need_dx=False)
        return loss, {k: g for prefix, net in self._modules for k, g in net.take_grads(prefix).items()}
