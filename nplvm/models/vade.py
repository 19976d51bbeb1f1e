r"""Variational Deep Embedding (VaDE; Jiang, Zheng, Tan, Tang & Zhou, IJCAI 2017): clustering with
a mixture-of-Gaussians prior on the VAE's latent space.

Generative process (notes, seed 002, "The Generative Process of VaDE"; h = z, e = x there):

    c ~ Cat(pi)                                   pi = softmax(a), a the logits (K,)
    z | c ~ N(mu_c, diag exp(logvar_c))            mu_c, logvar_c (K, L)
    x | z ~ Bern(sigmoid(decoder(z)))              Bernoulli decoder, logits (N, D)

Mean-field posterior q(z, c | x) = q(z|x) q(c|x):

    q(z|x) = N(mu~, diag exp(logvar~)),  [mu~, logvar~] = encoder(x)
    q(c|x) = gamma(x) = p(c|z) = pi_c N(z; mu_c, var_c) / sum_c' pi_c' N(z; mu_c', var_c')      (G)

gamma is NOT a separate classifier network: it is the mixture's posterior over c at the sampled
z = mu~ + exp(logvar~/2) eps (the paper's eq. 16), so it depends on the encoder (through z) and on
every mixture parameter.

The ELBO (the paper's eq. 12, Gaussian terms in closed form, one sample of z for log p(x|z)):

    ELBO(x) = log p(x|z) - sum_c gamma_c KL(q(z|x) || p(z|c)) - KL(gamma || pi)
    KL(q(z|x) || p(z|c)) = 1/2 sum_l [logvar_cl - logvar~_l + exp(logvar~_l - logvar_cl)
                                      + (mu~_l - mu_cl)^2 exp(-logvar_cl) - 1]
    KL(gamma || pi)      = sum_c gamma_c (log gamma_c - log pi_c)

(expand the KLs and this is the paper's eq. 12 term by term; its L/2 log 2 pi terms cancel).
The loss is the batch mean of -ELBO in nats.

The gradient, by hand (per example; the batch mean divides by N):

    loss = nll(x, z) + sum_c gamma_c k_c + sum_c gamma_c (log gamma_c - log pi_c),  k_c = KL_c above
    through the weights:   g_c = dloss/dgamma_c = k_c + log gamma_c - log pi_c + 1
                           ds  = gamma * (g - sum_c gamma_c g_c)       softmax backward, s = log p(c, z)
    s_c = log pi_c + log N(z; mu_c, var_c):
        ds_c/dz       = -(z - mu_c) exp(-logvar_c)
        ds_c/dmu_c    =  (z - mu_c) exp(-logvar_c)
        ds_c/dlogvar_c = -1/2 (1 - (z - mu_c)^2 exp(-logvar_c))
        ds_c/dlog pi_c = 1;   and -sum_c gamma_c log pi_c adds -gamma_c directly;
        log pi = log_softmax(a): da = dlogpi - pi sum_c dlogpi_c
    the closed-form KLs (kernels.gaussian_kl), each weighted by gamma_c:
        dk_c/dmu~ = (mu~ - mu_c) / var_c,  dk_c/dlogvar~ = (exp(logvar~ - logvar_c) - 1)/2, and their
        mixture-side twins
    reparameterization: dmu~ = dz + sum_c gamma_c dk_c/dmu~,
                        dlogvar~ = dz * eps * exp(logvar~/2) / 2 + sum_c gamma_c dk_c/dlogvar~.

Also here: ``pretrain_loss`` (the deterministic autoencoder x -> mu~(x) -> decoder that VaDE
pretrains), ``init_mixture`` (pi, mu_c, var_c from a GMM fitted to the codes), ``responsibilities``
and ``predict`` (gamma at z = mu~(x): the clustering), ``log_weights`` (importance weights with the
mixture prior, for log p(x)), ``sample`` and ``sample_per_cluster``.  The whole training recipe
(pretraining, GMM initialisation, the ELBO phase with its schedules) is ``nplvm.clustering``.
"""
from __future__ import annotations


import numpy as np

import kernels

from ..backend import check_dtype, rng as make_rng
from ..checks import DataError, check_array, check_binary, check_finite
from ..distributions import (LOG_2PI, log_softmax, log_softmax_backward, logsumexp, reparameterize_backward,
                             softmax_backward)
from ..nn import MLP, Module, Parameter
from . import register
from .vae import parse_hidden


def log_gaussian_components(z, mu_c, logvar_c):
    """log N(z_n; mu_c, diag exp(logvar_c)) for every row and component: (N, K).

    z: (N, L); mu_c, logvar_c: (K, L).  Also returns the (N, K, L) scaled residual
    r = (z - mu_c) exp(-logvar_c) its gradients are made of.
    """
    diff = z[:, None, :] - mu_c[None, :, :]                          # (N, K, L)
    inv_var = np.exp(-logvar_c)[None, :, :]
    r = diff * inv_var                                               # (z - mu_c) / var_c
    logp = -0.5 * np.sum(LOG_2PI + logvar_c[None, :, :] + diff * r, axis=2)
    return logp, diff, r


@register("vade")
class VaDE(Module):
    """VaDE: a VAE whose prior p(z) = sum_c pi_c N(z; mu_c, diag var_c) is a learned mixture.

    Args (all JSON-serialisable; ``VaDE(**model.config)`` rebuilds the architecture):
        x_dim:        D, the number of binary pixels (784 for MNIST).
        hidden:       encoder widths; the decoder mirrors them (the paper: 500, 500, 2000).
        latent:       L, the dimension of z (the paper: 10).
        n_components: K, the number of clusters c.
        activation:   hidden-layer activation ("relu", "tanh", ...).
        dtype:        "float32" to train, "float64" to check gradients.
        seed:         initialisation seed.

    Parameters (``params``): enc.* and dec.* (MLP weights), pi_logits (K,) (pi = softmax),
    mu_c (K, L), logvar_c (K, L).  Before ``init_mixture`` the mixture starts at pi uniform,
    mu_c ~ N(0, I), var_c = 1.
    """

    def __init__(self, x_dim=784, hidden=(500, 500, 2000), latent=10, n_components=10,
                 activation="relu", dtype="float32", seed=0):
        hidden = parse_hidden(hidden if not isinstance(hidden, int) else [hidden])
        for name, v in (("x_dim", x_dim), ("latent", latent), ("n_components", n_components)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"expected {name} to be a positive integer, got {v!r}")
        if int(n_components) < 2:
            raise ValueError(f"expected n_components >= 2 (a mixture), got {n_components!r}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"expected hidden to be one or more positive widths, got {hidden!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"expected seed to be an integer, got {seed!r}")
        try:
            self.dtype = check_dtype(dtype)
        except TypeError as e:
            raise ValueError(f"dtype: {e}") from None
        self.x_dim, self.latent, self.n_components = int(x_dim), int(latent), int(n_components)
        self.hidden, self.activation, self.seed = hidden, activation, int(seed)
        D, L, K = self.x_dim, self.latent, self.n_components
        g = make_rng(self.seed)
        self.encoder = MLP([D, *hidden, 2 * L], activation, g, self.dtype)     # [mu~, logvar~]
        self.decoder = MLP([L, *reversed(hidden), D], activation, g, self.dtype)  # logits of p(x|z)
        self.pi_logits = Parameter(np.zeros(K, dtype=self.dtype))             # a: pi = softmax(a)
        self.mu_c = Parameter(g.standard_normal((K, L)).astype(self.dtype))   # mu_c (K, L)
        self.logvar_c = Parameter(np.zeros((K, L), dtype=self.dtype))         # logvar_c (K, L)
        self.config = {"x_dim": D, "hidden": list(hidden), "latent": L, "n_components": K,
                       "activation": activation, "dtype": self.dtype.name, "seed": self.seed}
        self.params = {**{"enc." + k: v for k, v in self.encoder.param_arrays().items()},
                       **{"dec." + k: v for k, v in self.decoder.param_arrays().items()},
                       **{name: getattr(self, name).value for name in ("pi_logits", "mu_c", "logvar_c")}}

    def __repr__(self):
        return (f"VaDE(x_dim={self.x_dim}, hidden={self.hidden}, latent={self.latent}, "
                f"n_components={self.n_components}, activation={self.activation!r}, "
                f"dtype={self.dtype.name})")

    def num_parameters(self):
        return int(sum(a.size for a in self.params.values()))

    def _grads(self):
        """This call's gradients keyed like ``params``, handed over (``nn.Module.take_grads``): arrays
        the caller owns, zeros for a parameter no backward reached."""
        out = {**self.encoder.take_grads("enc."), **self.decoder.take_grads("dec.")}
        for name in ("pi_logits", "mu_c", "logvar_c"):
            p = getattr(self, name)
            out[name] = np.zeros_like(p.value) if p.grad is None else p.grad
            p.grad = None
        return out

    def check_input(self, x, name="x"):
        """x: (N, D) binary, any real or integer dtype -> the parameters' dtype."""
        check_array(x, name, ndim=2, shape=(None, self.x_dim), dtype_kind="fuib")
        if x.shape[0] == 0:
            raise DataError(f"expected {name} with at least one row, got shape {tuple(x.shape)}")
        if x.dtype.kind == "f":
            check_finite(x, name)
        if x.dtype.kind != "b" and (x.max() > 1 or x.min() < 0 or
                                    (x.dtype.kind == "f" and np.any(x * (x - 1)))):
            check_binary(x, name)
        return np.ascontiguousarray(x, dtype=self.dtype)

    # -- the pieces ------------------------------------------------------------------------------

    def _encode(self, x):
        """x (N, D) -> mu~ (N, L), logvar~ (N, L), the encoder cache."""
        out, cache = self.encoder.forward(x)
        L = self.latent
        return out[:, :L], out[:, L:], cache

    def gamma(self, z):
        """q(c|x) = p(c|z) of eq. (G) for z (N, L): gamma (N, K), log gamma, and a cache for
        ``gamma_backward``."""
        # SOLUTION vade-gamma: gamma = p(c|z) = softmax_c(log pi_c + log N(z; mu_c, var_c)), in log space
        log_pi = log_softmax(self.pi_logits.value)                           # (K,)
        log_pz_c, diff, r = log_gaussian_components(z, self.mu_c.value, self.logvar_c.value)
        s = log_pi[None, :] + log_pz_c                                       # log p(c, z)   (N, K)
        log_gamma = s - logsumexp(s, axis=1, keepdims=True)                  # log p(c|z)
        gamma = np.exp(log_gamma)
        # END SOLUTION
        return gamma, log_gamma, (log_pi, diff, r)

    def gamma_backward(self, dgamma, gamma, cache):
        """Backward of ``gamma``: dloss/dgamma (N, K) -> dloss/dz (N, L); the mixture's gradients
        (pi_logits, mu_c, logvar_c) accumulate into their ``.grad``.  (The direct -log pi_c term
        of the KL(gamma || pi) is the caller's.)"""
        # SOLUTION vade-gamma-backward: through gamma = softmax(s), s_c = log pi_c + log N(z; mu_c, var_c)
        log_pi, diff, r = cache
        ds = softmax_backward(dgamma, gamma, axis=1)                         # (N, K)
        dz = -np.einsum("nk,nkl->nl", ds, r)                                 # ds_c/dz = -(z - mu_c)/var_c
        self.mu_c.add_grad(np.einsum("nk,nkl->kl", ds, r))                   # ds_c/dmu_c = +(z - mu_c)/var_c
        self.logvar_c.add_grad(-0.5 * np.einsum("nk,nkl->kl", ds, 1.0 - diff * r))   # ds_c/dlogvar_c
        dlog_pi = ds.sum(axis=0)                                             # ds_c/dlog pi_c = 1
        self.pi_logits.add_grad(log_softmax_backward(dlog_pi, log_pi))      # through log pi = log_softmax(a)
        # END SOLUTION
        return dz

    def elbo_terms(self, x, rng, eps=None):
        """Forward of the ELBO, returning its pieces per example (no gradients): gamma (N, K),
        nll (N,) = -log p(x|z), kl_z (N, K) = KL(q(z|x) || p(z|c)), kl_c (N,) = KL(gamma || pi),
        elbo (N,)."""
        x = self.check_input(x)
        N, L = x.shape[0], self.latent
        eps = make_rng(rng).standard_normal((N, L)).astype(self.dtype) if eps is None else eps
        return self._forward(x, eps, 1.0)[0]

    def _forward(self, x, eps, weight):
        N, K = x.shape[0], self.n_components
        mu, logvar, c_enc = self._encode(x)
        std = np.exp(0.5 * logvar)
        z = mu + std * eps                                                   # reparameterization
        logits, c_dec = self.decoder.forward(z)
        nll, dlogits = kernels.bernoulli_nll(x, logits, weight)              # -log p(x|z)
        gamma, log_gamma, c_gamma = self.gamma(z)
        log_pi = c_gamma[0]
        # KL(q(z|x) || p(z|c)) for all (n, c) in one call: rows c*N + n
        mus, lvs = np.tile(mu, (K, 1)), np.tile(logvar, (K, 1))
        mcs, lvcs = np.repeat(self.mu_c.value, N, axis=0), np.repeat(self.logvar_c.value, N, axis=0)
        w_rows = (gamma.T * weight).reshape(K * N)                           # gamma_c / N per row
        kl, dmu_q, dlv_q, dmu_c, dlv_c = kernels.gaussian_kl(mus, lvs, mcs, lvcs, w_rows)
        kl_z = kl.reshape(K, N).T                                            # (N, K)
        kl_c = np.sum(gamma * (log_gamma - log_pi[None, :]), axis=1)        # KL(gamma || pi)
        elbo = -nll - np.sum(gamma * kl_z, axis=1) - kl_c
        terms = {"gamma": gamma, "nll": nll, "kl_z": kl_z, "kl_c": kl_c, "elbo": elbo, "z": z,
                 "mu": mu, "logvar": logvar}
        cache = (c_enc, c_dec, eps, std, dlogits, gamma, log_gamma, c_gamma,
                 dmu_q, dlv_q, dmu_c, dlv_c, kl_z)
        return terms, cache

    # -- the objective ---------------------------------------------------------------------------

    def loss(self, x, rng, grad=True, eps=None):
        """Mean over the batch of -ELBO (nats per example) and its gradient (fresh arrays).

        x: (N, D) binary; rng: a seed or Generator for eps (N, L) (or pass ``eps``).
        Returns (loss, grads keyed like ``params``), or (loss, None) with grad=False.
        """
        x = self.check_input(x)
        N, K, L = x.shape[0], self.n_components, self.latent
        if eps is None:
            eps = make_rng(rng).standard_normal((N, L)).astype(self.dtype)
        else:
            check_array(eps, "eps", shape=(N, L))
            eps = eps.astype(self.dtype, copy=False)
        terms, cache = self._forward(x, eps, 1.0 / N)
        loss = float(-terms["elbo"].mean())
        if not grad:
            return loss, None
        (c_enc, c_dec, eps, std, dlogits, gamma, log_gamma, c_gamma,
         dmu_q, dlv_q, dmu_c, dlv_c, kl_z) = cache
        log_pi = c_gamma[0]
        self.release_grads()                                                 # this call's grads: new arrays
        # the closed-form KLs, already weighted by gamma_c / N (kernels.gaussian_kl's weight)
        dmu = dmu_q.reshape(K, N, L).sum(axis=0)
        dlogvar = dlv_q.reshape(K, N, L).sum(axis=0)
        self.mu_c.add_grad(dmu_c.reshape(K, N, L).sum(axis=1))
        self.logvar_c.add_grad(dlv_c.reshape(K, N, L).sum(axis=1))
        # -sum_c gamma_c log pi_c, directly on log pi: -gamma_c / N, then log-softmax backward
        self.pi_logits.add_grad(log_softmax_backward(-gamma.sum(axis=0) / N, log_pi))
        # through the weights gamma: g_c = k_c + log gamma_c - log pi_c + 1, per example / N
        dgamma = (kl_z + log_gamma - log_pi[None, :] + 1.0) / N
        dz = self.gamma_backward(dgamma, gamma, c_gamma)
        dz += self.decoder.backward(dlogits, c_dec)                          # through p(x|z)
        dmu_r, dlogvar_r = reparameterize_backward(dz, eps, terms["logvar"])   # z = mu~ + std * eps
        dmu += dmu_r
        dlogvar += dlogvar_r
        self.encoder.backward(np.concatenate([dmu, dlogvar], axis=1).astype(self.dtype),
                              c_enc, need_dx=False)
        return loss, self._grads()

    def pretrain_loss(self, x, rng=None, grad=True, dropout=0.0):
        """The deterministic autoencoder VaDE pretrains: x -> z = mu~(x) -> decoder, loss the batch
        mean of -log p(x | z = mu~(x)) (cross-entropy).  The logvar~ half of the encoder's output
        and the mixture get zero gradient.  dropout > 0 makes it a denoising autoencoder: the
        encoder reads x with each pixel zeroed with that probability (mask drawn from rng), the
        loss still scores the clean x.  Returns (loss, grads keyed like ``params``)."""
        x = self.check_input(x)
        N = x.shape[0]
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {dropout!r}")
        x_in = x
        if dropout > 0:
            x_in = x * (make_rng(rng).random(x.shape) >= dropout).astype(self.dtype)
        mu, logvar, c_enc = self._encode(x_in)
        logits, c_dec = self.decoder.forward(mu)
        nll, dlogits = kernels.bernoulli_nll(x, logits, 1.0 / N)
        loss = float(nll.mean())
        if not grad:
            return loss, None
        self.release_grads()                                                 # this call's grads: new arrays
        dmu = self.decoder.backward(dlogits, c_dec)
        self.encoder.backward(np.concatenate([dmu, np.zeros_like(logvar)], axis=1), c_enc,
                              need_dx=False)
        return loss, self._grads()

    # -- the mixture -----------------------------------------------------------------------------

    def init_mixture(self, weights, means, variances):
        """Set pi (K,), mu_c (K, L) and var_c (K, L) (e.g. a diagonal GMM fitted to ``encode``'s
        codes): pi_logits <- log pi, logvar_c <- log var_c."""
        K, L = self.n_components, self.latent
        check_array(weights, "weights", shape=(K,))
        check_array(means, "means", shape=(K, L))
        check_array(variances, "variances", shape=(K, L))
        check_finite(means, "means")
        w, v = np.asarray(weights, dtype=np.float64), np.asarray(variances, dtype=np.float64)
        if not (np.all(w > 0) and np.all(v > 0)):
            raise DataError("expected mixture weights > 0 and variances > 0, got a value <= 0")
        self.pi_logits.value[...] = np.log(w / w.sum())
        self.mu_c.value[...] = means
        self.logvar_c.value[...] = np.log(v)

    @property
    def pi(self):
        """The mixture weights pi = softmax(pi_logits), (K,)."""
        return np.exp(log_softmax(self.pi_logits.value.astype(np.float64)))

    # -- evaluation and use ----------------------------------------------------------------------

    def encode(self, x, batch_size=1000):
        """mu~(x), logvar~(x): the parameters of q(z|x), (N, L) each (in batches)."""
        x = self.check_input(x)
        mus, lvs = [], []
        for i in range(0, x.shape[0], batch_size):
            mu, lv, _ = self._encode(x[i:i + batch_size])
            mus.append(mu.copy())
            lvs.append(lv.copy())
        return np.concatenate(mus), np.concatenate(lvs)

    def responsibilities(self, x, batch_size=1000):
        """gamma(x) = p(c | z = mu~(x)), (N, K): the clustering (as the paper predicts)."""
        mu, _ = self.encode(x, batch_size)
        return np.concatenate([self.gamma(mu[i:i + batch_size])[0]
                               for i in range(0, mu.shape[0], batch_size)])

    def predict(self, x, batch_size=1000):
        """The cluster of each example: argmax_c gamma_c(x), (N,) int."""
        return self.responsibilities(x, batch_size).argmax(axis=1)

    def elbo(self, x, rng, batch_size=1000):
        """Per-example ELBO (N,), one z sample each, in batches."""
        x = self.check_input(x)
        g = make_rng(rng)
        return np.concatenate([self.elbo_terms(x[i:i + batch_size], g)["elbo"]
                               for i in range(0, x.shape[0], batch_size)])

    def log_prior(self, z):
        """log p(z) = logsumexp_c [log pi_c + log N(z; mu_c, var_c)], (N,)."""
        log_pz_c, _, _ = log_gaussian_components(z, self.mu_c.value, self.logvar_c.value)
        return logsumexp(log_softmax(self.pi_logits.value)[None, :] + log_pz_c, axis=1)

    def log_weights(self, x, K, rng):
        """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x): (K, N) in the model's
        dtype, with p(z) the mixture (c summed exactly inside each weight)."""
        x = self.check_input(x)
        S, N, L = int(K), x.shape[0], self.latent
        if S < 1:
            raise ValueError(f"expected K >= 1 importance samples, got {K!r}")
        eps = make_rng(rng).standard_normal((S, N, L)).astype(self.dtype)
        mu, logvar, _ = self._encode(x)
        z = (mu + np.exp(0.5 * logvar) * eps).reshape(S * N, L)
        logits, _ = self.decoder.forward(z)
        nll, _ = kernels.bernoulli_nll(np.tile(x, (S, 1)), logits)
        log_q = -0.5 * np.sum(LOG_2PI + logvar[None] + eps * eps, axis=2).reshape(S * N)
        return (-nll + self.log_prior(z) - log_q).reshape(S, N).astype(self.dtype)

    def decode(self, z):
        """Bernoulli means sigmoid(decoder(z)), (M, D), for z (M, L)."""
        check_array(z, "z", ndim=2, shape=(None, self.latent))
        logits, _ = self.decoder.forward(np.asarray(z, dtype=self.dtype))
        return kernels.reference.sigmoid(logits)

    def sample_per_cluster(self, n, rng, clusters=None):
        """z ~ p(z|c) for each cluster c, decoded: (len(clusters), n, D) Bernoulli means."""
        comps = np.arange(self.n_components) if clusters is None else np.asarray(clusters)
        if int(n) < 1:
            raise ValueError(f"expected n >= 1 samples per cluster, got {n!r}")
        eps = make_rng(rng).standard_normal((len(comps), int(n), self.latent)).astype(self.dtype)
        z = self.mu_c.value[comps][:, None, :] + np.exp(0.5 * self.logvar_c.value[comps])[:, None, :] * eps
        return self.decode(z.reshape(-1, self.latent)).reshape(len(comps), int(n), self.x_dim)

    def sample(self, n, rng, binary=False):
        """n draws from the model: c ~ Cat(pi), z ~ p(z|c), then the Bernoulli means (or binary x)."""
        g = make_rng(rng)
        n = int(n)
        c = g.choice(self.n_components, size=n, p=self.pi / self.pi.sum())
        eps = g.standard_normal((n, self.latent)).astype(self.dtype)
        z = self.mu_c.value[c] + np.exp(0.5 * self.logvar_c.value[c]) * eps
        p = self.decode(z)
        return (g.random(p.shape) < p).astype(np.uint8) if binary else p
