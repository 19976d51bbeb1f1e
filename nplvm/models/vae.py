r"""The variational autoencoder (Kingma & Welling, 2014) and its importance weighted bound (IWAE).

Generative story (lecture notes: E = x the evidence, H = z the hidden variable)
---------------------------------------------------------------------------------
    z ~ p(z) = N(0, I_L)                                    prior, L = ``latent``
    x | z ~ p_theta(x|z) = prod_d Bern(x_d | sigmoid(l_d)),   l = decoder(z)     (D = ``x_dim``)

Recognition model (amortised inference)
---------------------------------------
    q_phi(z|x) = N(mu, diag exp(logvar)),   (mu, logvar) = encoder(x)
    z = g_phi(eps, x) = mu + exp(logvar / 2) * eps,   eps ~ N(0, I)      (reparameterization)

Objective with k = 1: the ELBO, minimised as a loss in nats per example
-----------------------------------------------------------------------
    ELBO(x) = E_q[log p_theta(x|z)] - beta KL(q_phi(z|x) || p(z))          (presentation II)
    loss    = mean_n [ -log p_theta(x_n | z_n) + beta KL_n ],  one z_n per example.

``kl="analytic"`` (the default) uses the closed form KL = 1/2 sum (e^logvar + mu^2 - 1 - logvar);
``kl="mc"`` estimates it from the same draw, KL ~= log q(z|x) - log p(z) = 1/2 sum (z^2 - eps^2 - logvar)
(the 2 pi terms cancel and (z - mu)^2 / sigma^2 = eps^2).  Both have the same expectation; the
analytic form has lower variance.  ``beta`` weights the KL (beta-VAE; beta = 1 is the ELBO).

Backward (gradients of the loss, eps held fixed)
------------------------------------------------
    dlogits = (sigmoid(l) - x) / N                                  (kernels.bernoulli_nll)
    dz      = decoder.backward(dlogits)                             (+ beta z / N with kl="mc")
    dmu, dlogvar = the chain rule through z = mu + sigma * eps (distributions.reparameterize_backward)
                   + the KL's beta mu / N and beta (e^logvar - 1) / (2N)
    encoder.backward([dmu, dlogvar])         (the MC KL: d/dlogvar of -1/2 logvar gives -beta / (2N))

Objective with k > 1: the importance weighted bound (Burda, Grosse & Salakhutdinov, 2016)
----------------------------------------------------------------------------------------------
    L_k(x) = E_{z_1..z_k ~ q}[ log (1/k) sum_i w_i ],   w_i = p_theta(x, z_i) / q_phi(z_i|x)
    log w_i = log p_theta(x|z_i) + log p(z_i) - log q_phi(z_i|x)
            = -nll_i + 1/2 sum_l (eps_il^2 + logvar_l - z_il^2)
    loss = -mean_n L_k(x_n) (one draw of the k samples per example).

Gradient of the k-sample bound (the derivation the code follows).  With eps fixed, each log w_i
is a differentiable function of the parameters, and

    grad log (1/k) sum_i w_i = (sum_i grad w_i) / (sum_j w_j) = sum_i (w_i / sum_j w_j) grad log w_i
                             = sum_i w~_i grad log w_i,      w~_i = softmax_i(log w),

using grad w_i = w_i grad log w_i.  So the IWAE gradient is the ELBO gradient of each sample,
weighted by its normalized importance weight instead of by 1/k (with k = 1, w~ = 1 and it *is*
the single-sample ELBO gradient).  For the loss -mean_n L_k, sample i of example n gets weight
g_in = w~_in / N on -grad log w_in, whose parts are:

    through the decoder:  d(-log w_i)/dl_i   = sigmoid(l_i) - x          -> dlogits_i = g_i (sigmoid(l_i) - x)
    through log p(z_i):   d(-log w_i)/dz_i  += z_i                        -> dz_i = dec.backward(..) + g_i z_i
    directly on logvar:   d(-log w_i)/dlogvar = -1/2 (from log q, eps fixed), summed: -1/2 sum_i g_i = -1/(2N)
    reparameterization:   dmu = sum_i dz_i,   dlogvar = sum_i dz_i * eps_i * sigma / 2 - 1 / (2N).

What equals what: ``IWAE(k=1).loss`` equals ``VAE(kl="mc").loss`` exactly (the same draw,
value and gradients); ``VAE(kl="analytic")`` equals both in expectation over eps.

Kinds
-----
``"vae"``  (class ``VAE``): k = 1 gives the ELBO above (analytic or MC KL, beta); k > 1 switches to
           the IWAE bound (then beta must be 1 and the KL is not a separate term).
``"iwae"`` (class ``IWAE``): the same networks, always trained on the k-sample bound, k = 1 included.

Architecture: encoder MLP x -> hidden... -> 2L (the last layer linear, split into mu and logvar);
decoder MLP z -> reversed(hidden)... -> D logits.  ``hidden=(200, 200), latent=50,
activation="tanh"`` is Burda et al.'s one-stochastic-layer model.

Public API
----------
VAE(x_dim=784, hidden=(512, 512), latent=32, activation="relu", k=1, kl=None, beta=1.0,
    dtype="float32", seed=0)
    .params                             name -> live array ("enc.layers.0.W", "dec.layers.2.b", ...)
    .loss(x, rng, grad=True) -> (loss, grads)   x: (N, x_dim) binary; grads: new arrays (None if not grad)
    .log_weights(x, K, rng) -> (K, N)    log p(x, z_i) - log q(z_i|x), z_i ~ q (for IS evaluation)
    .encode(x) -> (mu, logvar)           (N, L) each
    .decode_logits(z) -> (N, D);  .decode(z) -> Bernoulli means sigmoid(logits)
    .reconstruct(x) -> (N, D) means of p(x | z = mu(x));  .sample(n, rng, binary=False) -> (n, D)
    .elbo_terms(x, rng, S) -> dict of (S, N) / (N,) terms for ``objectives.elbo_presentations``
IWAE(..., k=5, ...)                     kind "iwae"
"""
from __future__ import annotations

import math

import numpy as np

import kernels

from ..backend import check_dtype
from ..backend import rng as make_rng
from ..checks import (DataError, check_array, check_binary, check_finite, int_tuple, nonneg_float,
                      nonneg_int, one_of, positive_int)
from ..distributions import (DiagGaussian, gaussian_log_prob, logsumexp, reparameterize_backward, softmax,
                             std_normal_log_prob)
from ..nn import MLP
from . import register

__all__ = ["VAE", "IWAE", "parse_hidden"]

KL_MODES = ("analytic", "mc")


def parse_hidden(text):
    """'512,512' -> [512, 512]; '' or 'none' -> [] (no hidden layer)."""
    if isinstance(text, (list, tuple)):
        return list(int_tuple("hidden", text))
    text = str(text).strip().lower()
    if text in ("", "none"):
        return []
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"expected hidden sizes like '512,512', got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise ValueError(f"expected positive hidden sizes, got {text!r}")
    return sizes


def _log_prior_minus_log_q(z, mu, logvar):
    """log N(z | 0, I) - log N(z | mu, diag e^logvar) summed over L: (...,).

    z: (..., L) broadcasting with mu, logvar (N, L).  The one Gaussian log-density of
    ``nplvm.distributions``; with z = mu + sigma eps the 2 pi terms cancel and the difference is
    1/2 sum (eps^2 + logvar - z^2), which the gradient code uses.
    """
    return std_normal_log_prob(z) - gaussian_log_prob(z, mu, logvar)


def check_warmup(warmup):
    """A warm-up length in epochs: an integer >= 0 (0: no warm-up); ValueError otherwise."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or int(warmup) != warmup or warmup < 0:
        raise ValueError(f"expected warmup to be a number of epochs >= 0 (0: no warm-up), got {warmup!r}")
    return int(warmup)


def kl_warmup(epoch, warmup):
    """The linear KL warm-up: the KL weight min(1, epoch / warmup) of epoch ``epoch``, 1 when
    warmup = 0.  (Which epoch counts as 0 is the caller's convention.)"""
    if warmup < 0:
        raise ValueError(f"expected warmup >= 0, got {warmup}")
    return 1.0 if warmup == 0 else min(1.0, epoch / warmup)


class KLWarmup:
    """A linear KL warm-up for a model whose loss weights its KL term by ``self.kl_weight``.

    warmup = W > 0 epochs: kl_weight = beta * min(1, e / W) in epoch e (0-based); ``nplvm.train.fit``
    calls ``set_epoch(e)`` at the start of every epoch, so a resumed run gets the right weight.
    W = 0: kl_weight = beta throughout.  A new or rebuilt model has the full weight beta, so a loaded
    checkpoint's loss is the objective itself.  (The HVAE/LVAE keep their own schedule.)
    """

    warmup = 0
    _ramp = 1.0

    @property
    def kl_weight(self):
        """The KL term's weight now: beta times the warm-up ramp."""
        return self.beta * self._ramp

    def set_epoch(self, epoch):
        """Epoch ``epoch`` (0-based) starts: the ramp is min(1, epoch / warmup), 1 without warm-up."""
        self._ramp = kl_warmup(int(epoch), self.warmup)


@register("vae")
class VAE:
    """A VAE with MLP encoder and decoder, Bernoulli likelihood, N(0, I) prior; see the module docstring.

    x_dim: D; hidden: hidden layer sizes of the encoder (the decoder mirrors them); latent: L;
    activation: of the hidden layers ("relu", "tanh", ...); k: samples per example (1: the ELBO,
    > 1: the IWAE bound); kl: "analytic" or "mc" (k = 1 only; None means "analytic" for k = 1);
    beta: weight of the KL (k = 1 only); dtype: "float32" to train, "float64" to check
    gradients; seed: initialises the weights.
    """

    kind = "vae"
    always_iwae = False          # IWAE sets this: the k-sample bound even for k = 1

    def __init__(self, x_dim=784, hidden=(512, 512), latent=32, activation="relu", k=1, kl=None,
                 beta=1.0, dtype="float32", seed=0):
        hidden = parse_hidden(hidden)
        for name, v in (("x_dim", x_dim), ("latent", latent), ("k", k)):
            positive_int(name, v)
        one_of("activation", activation, kernels.reference.ACTIVATIONS)
        nonneg_float("beta", beta)
        nonneg_int("seed", seed)
        if kl is not None and kl not in KL_MODES:
            raise ValueError(f"expected kl to be one of {KL_MODES} (or None), got {kl!r}")
        iwae = self.always_iwae or k > 1
        if iwae and kl == "analytic":
            raise ValueError(f"kl='analytic' needs k = 1 and the ELBO objective; the k-sample bound "
                             f"(k = {k}) has no separate KL term; leave kl=None")
        if iwae and float(beta) != 1.0:
            raise ValueError(f"beta = {beta} weights the KL of the ELBO; the k-sample bound needs beta = 1")
        self.dtype = check_dtype(dtype)
        self.x_dim, self.latent, self.k = int(x_dim), int(latent), int(k)
        self.hidden, self.activation = hidden, activation
        self.kl_mode = "mc" if iwae else (kl or "analytic")
        self.beta = float(beta)
        self.iwae = iwae
        self.config = {"x_dim": self.x_dim, "hidden": list(hidden), "latent": self.latent,
                       "activation": activation, "k": self.k, "kl": kl, "beta": self.beta,
                       "dtype": self.dtype.name, "seed": int(seed)}
        g = make_rng(int(seed))
        L = self.latent
        self.encoder = MLP([self.x_dim, *hidden, 2 * L], activation, g, self.dtype)
        self.decoder = MLP([L, *reversed(hidden), self.x_dim], activation, g, self.dtype)
        # Live arrays, fetched once (Module.parameters() walks the attributes on every call).
        self.params = {}
        for prefix, net in (("enc.", self.encoder), ("dec.", self.decoder)):
            for name, p in net.parameters().items():
                self.params[prefix + name] = p.value

    def __repr__(self):
        obj = f"IWAE bound k={self.k}" if self.iwae else f"ELBO, kl={self.kl_mode}, beta={self.beta}"
        return f"{type(self).__name__}({self.encoder!r} | {self.decoder!r}; {obj})"

    def num_parameters(self):
        return int(sum(a.size for a in self.params.values()))

    # -- input checks ------------------------------------------------------------------------------
    def check_input(self, x, name="x"):
        """Validate x (N, x_dim), binary and finite, and return it in the model's dtype.

        uint8 / bool input is checked with a single max(); float input with x (x - 1) == 0, which
        holds exactly for 0 and 1 only (NaN and inf fail it too); the slow checks run only to name
        the culprit.  The result is row-major (C-contiguous): rows gathered from a Fortran-ordered
        data set come out column-major, and the kernels that walk rows are several times slower
        on them (no copy when x already is a row-major array of the model's dtype).
        """
        check_array(x, name, ndim=2, shape=(None, self.x_dim), dtype_kind="fuib")
        if x.shape[0] == 0:
            raise DataError(f"expected {name} with at least one row, got shape {tuple(x.shape)}")
        if x.dtype.kind in "ui":
            if x.max() > 1 or x.min() < 0:
                check_binary(x, name)
        elif x.dtype.kind == "f" and np.any(x * (x - 1)):   # nonzero unless 0 or 1 (NaN, inf too)
            check_finite(x, name)
            check_binary(x, name)
        return np.ascontiguousarray(x, dtype=self.dtype)

    # -- the networks ------------------------------------------------------------------------------
    def _encode(self, x):
        h, cache = self.encoder.forward(x)                  # (N, 2L)
        L = self.latent
        return h[:, :L], h[:, L:], cache                    # mu, logvar (views)

    def encode(self, x):
        """q(z|x) parameters: mu (N, L), logvar (N, L)."""
        mu, logvar, _ = self._encode(self.check_input(x))
        return mu.copy(), logvar.copy()

    def decode_logits(self, z):
        """Decoder logits l (N, D) of p(x|z) = Bern(sigmoid(l)); z: (N, L)."""
        check_array(z, "z", ndim=2, shape=(None, self.latent))
        return self.decoder.forward(np.asarray(z, dtype=self.dtype))[0]

    def decode(self, z):
        """Bernoulli means sigmoid(decoder(z)), (N, D): the picture of p(x|z)."""
        return kernels.reference.sigmoid(self.decode_logits(z))

    def reconstruct(self, x):
        """Means of p(x | z = mu(x)), (N, D): the encoder's mean pushed through the decoder."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    def sample(self, n, rng, binary=False):
        """n draws from the model: z ~ N(0, I), then the Bernoulli means (or binary x ~ p(x|z)), (n, D)."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"expected n to be a positive integer, got {n!r}")
        g = make_rng(rng)
        z = g.standard_normal((int(n), self.latent), dtype=self.dtype)
        p = self.decode(z)
        return (g.random(p.shape, dtype=self.dtype) < p).astype(np.uint8) if binary else p

    def _release_grads(self):
        """The backward that follows writes into new arrays (see ``nn.Module.release_grads``)."""
        self.encoder.release_grads()
        self.decoder.release_grads()

    def _take_grads(self):
        """This call's gradients, keyed like ``params``: arrays the caller owns."""
        return {**self.encoder.take_grads("enc."), **self.decoder.take_grads("dec.")}

    # -- the objective -----------------------------------------------------------------------------
    def loss(self, x, rng, grad=True):
        """(loss, grads): the mean negative ELBO (k = 1) or negative k-sample bound, in nats/example.

        x: (N, x_dim) binary; rng: a seed or Generator (eps drawn from it, so the same seed gives the
        same loss).  grads: name -> d loss / d param, new arrays each call (the caller owns them);
        with ``grad=False`` the backward pass is skipped and grads is None.
        """
        x = self.check_input(x)
        g = make_rng(rng)
        if self.iwae:
            return self._iwae_loss(x, g.standard_normal((self.k, x.shape[0], self.latent), dtype=self.dtype),
                                   grad)
        return self._elbo_loss(x, g.standard_normal((x.shape[0], self.latent), dtype=self.dtype), grad)

    def _elbo_loss(self, x, eps, grad=True):
        """-ELBO with one sample per example; eps: (N, L) standard normal noise."""
        N = x.shape[0]
        mu, logvar, enc_cache = self._encode(x)
        sigma = np.exp(0.5 * logvar)
        z = mu + sigma * eps                                          # z = mu + sigma * eps
        logits, dec_cache = self.decoder.forward(z)
        w = self.beta / N
        # -log p(x|z) per row and d(mean)/dlogits = (sigmoid(l) - x) / N, in one fused pass
        rec, dlogits = kernels.bernoulli_nll(x, logits, 1.0 / N)
        if self.kl_mode == "analytic":
            # KL = 1/2 sum (e^logvar + mu^2 - 1 - logvar); grads mu and (e^logvar - 1)/2, times beta/N
            kl, dmu_kl, dlogvar_kl = kernels.gaussian_kl_std(mu, logvar, w)
        else:
            kl = -_log_prior_minus_log_q(z, mu, logvar)              # log q(z|x) - log p(z)
            dmu_kl, dlogvar_kl = 0.0, -0.5 * w                        # direct d/dlogvar of -1/2 logvar
        loss = float(np.mean(rec) + self.beta * np.mean(kl))
        if not grad:
            return loss, None

        self._release_grads()
        dz = self.decoder.backward(dlogits, dec_cache)                # d loss / dz through log p(x|z)
        if self.kl_mode == "mc":
            dz += w * z                                               # d(-log p(z))/dz = z
        # z = mu + exp(logvar / 2) * eps: the reparameterization's chain rule (homework
        # 'vae-reparam-gradient', in nplvm.distributions)
        dmu, dlogvar = reparameterize_backward(dz, eps, logvar)
        dh = np.concatenate([dmu + dmu_kl, dlogvar + dlogvar_kl], axis=1)
        self.encoder.backward(dh, enc_cache, need_dx=False)          # no dx for the data
        return loss, self._take_grads()

    def _iwae_loss(self, x, eps, grad=True):
        """-L_k: eps (k, N, L) holds k samples per example; see the module docstring for the gradient."""
        k, N, L = eps.shape
        mu, logvar, enc_cache = self._encode(x)
        sigma = np.exp(0.5 * logvar)
        z = mu + sigma * eps                                          # (k, N, L)
        logits, dec_cache = self.decoder.forward(z.reshape(k * N, L))
        xk = np.broadcast_to(x, (k, N, self.x_dim)).reshape(k * N, self.x_dim)
        nll, dlogits = kernels.bernoulli_nll(xk, logits)              # unweighted: sigmoid(l) - x
        # log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)
        log_w = -nll.reshape(k, N) + _log_prior_minus_log_q(z, mu, logvar)     # (k, N)
        bound = logsumexp(log_w, axis=0) - math.log(k)                # log (1/k) sum_i w_i
        loss = float(-np.mean(bound))
        if not grad:
            return loss, None

        self._release_grads()
        # SOLUTION iwae-gradient: the gradient of the k-sample bound through the normalized importance weights
        # HINT d loss / d log w_in = -w~_in / N with w~ = softmax of log_w over the k samples (axis 0).
        # HINT Scale dlogits in place, backpropagate the decoder, add log p(z)'s path term, then sum the
        # HINT reparameterization over the k samples into dmu, dlogvar (N, L); log q's -logvar/2 is direct.
        g = softmax(log_w, axis=0) / N                                # w~_in / N: weight of -grad log w_in
        dlogits *= g.reshape(k * N, 1)                                # g_i (sigmoid(l_i) - x)
        dz = self.decoder.backward(dlogits, dec_cache).reshape(k, N, L)
        dz += g[:, :, None] * z                                       # -log p(z_i) contributes z_i
        dmu, dlogvar = reparameterize_backward(dz, eps, logvar)      # per sample i, (k, N, L)
        dmu, dlogvar = dmu.sum(axis=0), dlogvar.sum(axis=0)           # z_i = mu + sigma eps_i for every i
        dlogvar -= 0.5 * g.sum(axis=0)[:, None]                       # log q's -1/2 logvar, eps fixed
        # END SOLUTION
        self.encoder.backward(np.concatenate([dmu, dlogvar], axis=1), enc_cache, need_dx=False)
        return loss, self._take_grads()

    # -- evaluation --------------------------------------------------------------------------------
    def log_weights(self, x, K, rng):
        """log w_i = log p(x, z_i) - log q(z_i|x) for K draws z_i ~ q(z|x) per row: (K, N).

        The noise is drawn sample-major, eps of shape (K, N, L), so K draws made in chunks from
        one Generator are the same draws as one call with all K (objectives relies on it).
        """
        x = self.check_input(x)
        K, N, L = int(K), x.shape[0], self.latent
        eps = make_rng(rng).standard_normal((K, N, L), dtype=self.dtype)
        mu, logvar, _ = self._encode(x)
        z = mu + np.exp(0.5 * logvar) * eps
        logits = self.decoder.forward(z.reshape(K * N, L))[0]
        xk = np.broadcast_to(x, (K, N, self.x_dim)).reshape(K * N, self.x_dim)
        nll, _ = kernels.bernoulli_nll(xk, logits)
        return -nll.reshape(K, N) + _log_prior_minus_log_q(z, mu, logvar)          # model dtype

    def elbo_terms(self, x, rng, S=1):
        """Monte Carlo and closed-form pieces of the ELBO for S draws per example.

        Returns a dict: "log_px_z", "log_pz", "log_qz" (S, N) values at z_s ~ q(z|x), and the
        closed forms "entropy" H[q(z|x)] and "kl" KL(q(z|x) || N(0, I)), (N,) each.
        Feed it to ``objectives.elbo_presentations``.
        """
        x = self.check_input(x)
        S, N, L = int(S), x.shape[0], self.latent
        eps = make_rng(rng).standard_normal((S, N, L), dtype=self.dtype)
        mu, logvar, _ = self._encode(x)
        q = DiagGaussian(mu, logvar)
        z = q.rsample(eps)
        logits = self.decoder.forward(z.reshape(S * N, L))[0]
        xk = np.broadcast_to(x, (S, N, self.x_dim)).reshape(S * N, self.x_dim)
        nll, _ = kernels.bernoulli_nll(xk, logits)
        log_pz = std_normal_log_prob(z)
        kl, _, _ = kernels.gaussian_kl_std(mu, logvar)
        return {"log_px_z": -nll.reshape(S, N), "log_pz": log_pz, "log_qz": q.log_prob(z),
                "entropy": q.entropy(), "kl": kl}

@register("iwae")
class IWAE(VAE):
    """The IWAE: a VAE trained on the k-sample bound L_k for every k (k = 1 gives the MC-KL ELBO)."""

    kind = "iwae"
    always_iwae = True

    def __init__(self, x_dim=784, hidden=(512, 512), latent=32, activation="relu", k=5, kl=None,
                 beta=1.0, dtype="float32", seed=0):
        super().__init__(x_dim, hidden, latent, activation, k, kl, beta, dtype, seed)
