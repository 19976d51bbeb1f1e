r"""The Neural Variational Document Model (Miao, Yu & Blunsom, 2016): a VAE for bags of words.

Lecture notes (seed 002, "Neural Variational Document Model"): the input is the bag of words of a
document and the decoder changes to a softmax over the vocabulary of V words,

    p_theta(e_i | h) = exp(-E(e_i; h)) / sum_{j=1}^V exp(-E(e_j; h)),   E(e_i; h) = -h^T R e_i - b_{e_i}

where e_i is the one-hot vector of word i, R (L, V) holds one L-dimensional vector per word (the
"semantic space" the notes plot) and b (V,) a bias per word.  In this file h is z, the latent.

Generative story of document d, with n_dv = how often word v occurs and N_d = sum_v n_dv
------------------------------------------------------------------------------------------
    z ~ N(0, I_L)
    l = z R + b                                         (V,) logits: l_v = -E(e_v; z)
    each of the N_d words w ~ Categorical(softmax(l))
    log p(d | z) = sum_v n_dv log softmax(l)_v = sum_v n_dv l_v - N_d logsumexp(l)      (1)

(the words' order is not modelled: no multinomial coefficient, as in the paper).

Recognition model: an MLP on the counts (the paper: 500 tanh units), a Gaussian latent
    (mu, logvar) = encoder(n_d),  q(z|d) = N(mu, diag e^logvar),  z = mu + e^{logvar/2} eps

Objective: the ELBO with the counts, minimised as the loss (nats per document)
    ELBO_d = log p(d | z) - KL(q(z|d) || N(0, I)),   KL = 1/2 sum_l (e^logvar + mu^2 - 1 - logvar)
    loss   = (1/B) sum_d -ELBO_d                       one z per document of the minibatch

Backward (eps fixed).  dl = d loss / dl (B, V) is the gradient of (1) through the log-sum-exp,
weighted by the counts: the homework ``nvdm-softmax-gradient`` (``softmax_counts_nll``).  Then

    dR  = z^T dl,   db = sum_d dl,   dz = dl R^T                  the linear map l = z R + b
    dmu = dz + mu / B,   dlogvar = dz * eps * sigma / 2 + (e^logvar - 1) / (2B)
    encoder.backward([dmu, dlogvar])

Perplexity (``nplvm.data.text.perplexity``): exp(-(1/D) sum_d ELBO_d / N_d) over held-out documents,
or with the importance-sampled log p(d) from ``log_weights`` in place of the ELBO.

Public API
----------
NVDM(x_dim=2000, hidden=(500,), latent=50, activation="tanh", dtype="float32", seed=0)
    .params                              "enc.layers.0.W", ..., "R" (L, V), "b" (V,)
    .loss(x, rng, grad=True) -> (loss, grads)   x: (B, V) counts; grads are new arrays per call
    .elbo(x, rng) -> (B,) ELBO_d, one sample each;  .log_weights(x, K, rng) -> (K, B)
    .encode(x) -> (mu, logvar);  .word_probs(z) -> (n, V) softmax(z R + b)
    .sample(n, rng, n_words=None) -> word distributions (n, V), or counts with n_words words each
    .init_bias(x_train)                  b = log unigram frequencies (optional warm start)
    .word_vectors() -> R^T (V, L)        the word vectors of the semantic space
    .load_data(source) (classmethod) -> nplvm.data.text.TextDataset: the CLI's data hook
"""
from __future__ import annotations

import numpy as np

import kernels

from ..backend import check_dtype
from ..backend import rng as make_rng
from ..checks import DataError, check_array
from ..data.text import check_counts, load_text_dataset
from ..distributions import logsumexp, reparameterize_backward, softmax
from ..nn import MLP, Parameter, glorot_uniform
from . import register
from .vae import parse_hidden

__all__ = ["NVDM", "softmax_counts_nll"]


def softmax_counts_nll(x, logits, scale=1.0, grad=True):
    """-log p(d | z) of (1) per row and its gradient w.r.t. the logits, times ``scale``.

    x: (B, V) counts n_dv; logits: (B, V).  Returns (nll (B,), dlogits (B, V) or None) with
    nll_d = N_d logsumexp(l_d) - sum_v n_dv l_dv (stable: logsumexp shifts by the row max).
    """
    lse = logsumexp(logits, axis=1)                                   # log sum_j exp(l_j)  (B,)
    n_words = x.sum(axis=1)                                           # N_d
    nll = n_words * lse - np.sum(x * logits, axis=1)                  # -sum_v n_dv log softmax(l)_v
    if not grad:
        return nll, None
    # SOLUTION nvdm-softmax-gradient: d(-log p(d|z))/dlogits for the softmax decoder with counts, times scale
    # HINT -log p(d|z) = N_d logsumexp(l_d) - sum_v n_dv l_dv with N_d = n_words[d];
    # HINT d logsumexp(l)/dl_v = softmax(l)_v.  Define dlogits (B, V), multiplied by scale.
    dlogits = softmax(logits, axis=1) * n_words[:, None]              # expected counts N_d p_v
    dlogits -= x                                                      # minus observed counts n_dv
    dlogits *= scale
    # END SOLUTION
    return nll, dlogits


@register("nvdm")
class NVDM:
    """The NVDM: MLP encoder on word counts, Gaussian latent, softmax decoder l = z R + b.

    x_dim: V, the vocabulary size; hidden: encoder widths (the paper: (500,)); latent: L
    (the paper: 50 or 200); activation: of the encoder's hidden layers (the paper: tanh);
    dtype: "float32" to train, "float64" to check gradients; seed: initialises the weights.
    The encoder's logvar head starts at zero weight (q starts at unit variance, as in the
    authors' code); R is Glorot uniform, b zero.
    """

    kind = "nvdm"

    def __init__(self, x_dim=2000, hidden=(500,), latent=50, activation="tanh", dtype="float32",
                 seed=0):
        hidden = parse_hidden(hidden)
        if not hidden:
            raise ValueError("expected at least one hidden layer in hidden, got none (e.g. hidden=(500,))")
        for name, v in (("x_dim", x_dim), ("latent", latent)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"expected a positive integer {name}, got {v!r}")
        if int(x_dim) < 2:
            raise ValueError(f"expected x_dim (the vocabulary size) >= 2, got {x_dim!r}")
        try:
            self.dtype = check_dtype(dtype)
        except TypeError as e:
            raise ValueError(f"dtype: {e}") from None
        self.x_dim, self.latent, self.hidden, self.activation = int(x_dim), int(latent), hidden, activation
        self.config = {"x_dim": self.x_dim, "hidden": list(hidden), "latent": self.latent,
                       "activation": activation, "dtype": self.dtype.name, "seed": int(seed)}
        g = make_rng(int(seed))
        L, V = self.latent, self.x_dim
        # encoder: counts -> hidden (activation) -> ... -> [mu, logvar] (linear)
        self.encoder = MLP([V, *hidden, 2 * L], activation, g, self.dtype)
        self.encoder.layers[-1].W.value[:, L:] = 0                    # logvar head starts at 0
        # decoder: the word vectors R (L, V) and biases b (V,) of the energy E(e_i; z)
        self.R = Parameter(glorot_uniform(L, V, g, self.dtype))
        self.b = Parameter(np.zeros(V, dtype=self.dtype))
        self.params = {"enc." + k: p.value for k, p in self.encoder.parameters().items()}
        self.params.update({"R": self.R.value, "b": self.b.value})

    def __repr__(self):
        return (f"NVDM(encoder {self.encoder!r}; latent {self.latent}; softmax decoder R "
                f"{self.latent}x{self.x_dim})")

    def num_parameters(self):
        return int(sum(a.size for a in self.params.values()))

    # -- data ------------------------------------------------------------------------------------
    @classmethod
    def load_data(cls, source=None, seed=0):
        """The CLI's data hook: a ``nplvm.data.text.TextDataset`` (offline Reuters, or a .feat corpus)."""
        return load_text_dataset(source, seed=seed)

    def check_input(self, x, name="x"):
        """x (B, V) of non-negative integer counts with at least one row, in the model's dtype."""
        check_array(x, name, ndim=2, shape=(None, self.x_dim), dtype_kind="fuib")
        if x.shape[0] == 0:
            raise DataError(f"expected {name} with at least one document, got shape {tuple(x.shape)}")
        check_counts(x, name)
        return np.ascontiguousarray(x, dtype=self.dtype)

    # -- the networks ----------------------------------------------------------------------------
    def _encode(self, x):
        h, cache = self.encoder.forward(x)                            # (B, 2L)
        L = self.latent
        return h[:, :L], h[:, L:], cache

    def encode(self, x):
        """q(z|d): mu (B, L), logvar (B, L)."""
        mu, logvar, _ = self._encode(self.check_input(x))
        return mu.copy(), logvar.copy()

    def logits(self, z):
        """l = z R + b, (n, V): l_v = -E(e_v; z)."""
        return z @ self.R.value + self.b.value

    def word_probs(self, z):
        """p(w = v | z) = softmax(z R + b), (n, V)."""
        check_array(z, "z", ndim=2, shape=(None, self.latent))
        return softmax(self.logits(np.asarray(z, dtype=self.dtype)), axis=1)

    def sample(self, n, rng, n_words=None):
        """n documents from the model: z ~ N(0, I), then the word distributions softmax(z R + b)
        (n, V), or, with ``n_words``, counts of n_words words drawn from them (int64)."""
        g = make_rng(rng)
        p = self.word_probs(g.standard_normal((int(n), self.latent)).astype(self.dtype))
        if n_words is None:
            return p
        p64 = p.astype(np.float64)
        return g.multinomial(int(n_words), p64 / p64.sum(axis=1, keepdims=True))

    # -- the objective ---------------------------------------------------------------------------
    def loss(self, x, rng, grad=True):
        """(loss, grads): (1/B) sum_d -ELBO_d in nats per document, one z per document.

        x: (B, V) counts; rng: a seed or Generator (eps ~ N(0, I) drawn from it).  grads: name ->
        d loss / d param, new arrays on every call; (loss, None) with grad=False.
        """
        x = self.check_input(x)
        eps = make_rng(rng).standard_normal((x.shape[0], self.latent)).astype(self.dtype)
        return self._loss(x, eps, grad)

    def _loss(self, x, eps, grad=True):
        B = x.shape[0]
        mu, logvar, enc_cache = self._encode(x)
        sigma = np.exp(0.5 * logvar)
        z = mu + sigma * eps                                          # reparameterization
        logits = self.logits(z)                                       # l = z R + b
        nll, dlogits = softmax_counts_nll(x, logits, 1.0 / B, grad)   # -log p(d|z), eq. (1)
        kl, dmu_kl, dlogvar_kl = kernels.gaussian_kl_std(mu, logvar, 1.0 / B)   # KL(q(z|d) || N(0, I))
        loss = float(np.mean(nll + kl))
        if not grad:
            return loss, None
        self.encoder.release_grads()                                  # this call's grads: new arrays
        dR = z.T @ dlogits                                            # l = z R + b
        db = dlogits.sum(axis=0)
        dz = dlogits @ self.R.value.T
        dmu, dlogvar = reparameterize_backward(dz, eps, logvar)       # through z = mu + sigma eps
        self.encoder.backward(np.concatenate([dmu + dmu_kl, dlogvar + dlogvar_kl], axis=1), enc_cache,
                              need_dx=False)
        grads = self.encoder.take_grads("enc.")
        grads.update({"R": dR, "b": db})
        return loss, grads

    # -- evaluation ------------------------------------------------------------------------------
    def elbo(self, x, rng):
        """(B,) ELBO_d with one z ~ q per document and the KL in closed form (float64)."""
        x = self.check_input(x)
        eps = make_rng(rng).standard_normal((x.shape[0], self.latent)).astype(self.dtype)
        mu, logvar, _ = self._encode(x)
        z = mu + np.exp(0.5 * logvar) * eps
        nll, _ = softmax_counts_nll(x, self.logits(z), grad=False)
        kl = 0.5 * np.sum(np.exp(logvar) + mu * mu - 1.0 - logvar, axis=1)
        return -(nll.astype(np.float64) + kl)

    def log_weights(self, x, K, rng):
        """log w_k = log p(d | z_k) + log p(z_k) - log q(z_k | d), z_k ~ q: (K, B).

        eps is drawn sample-major, (K, B, L), so chunked calls reproduce one call with all K.
        """
        x = self.check_input(x)
        K, B, L = int(K), x.shape[0], self.latent
        eps = make_rng(rng).standard_normal((K, B, L)).astype(self.dtype)
        mu, logvar, _ = self._encode(x)
        z = mu + np.exp(0.5 * logvar) * eps                          # (K, B, L)
        logits = self.logits(z.reshape(K * B, L))
        xk = np.broadcast_to(x, (K, B, self.x_dim)).reshape(K * B, self.x_dim)
        nll, _ = softmax_counts_nll(xk, logits, grad=False)
        # log p(z) - log q(z|d) = 1/2 sum_l (eps^2 + logvar - z^2)  (the 2 pi terms cancel)
        return -nll.reshape(K, B) + 0.5 * np.sum(eps * eps + logvar - z * z, axis=-1)

    def init_bias(self, x):
        """Set b = log p_unigram(v), add-one smoothed frequencies of the counts x (D, V): with z
        near 0 the decoder starts as the unigram model instead of uniform.  Returns self."""
        c = np.asarray(check_counts(x, "x", self.x_dim), dtype=np.float64).sum(axis=0) + 1.0
        self.b.value[...] = np.log(c / c.sum())
        return self

    def word_vectors(self):
        """R^T (V, L): the vector of each word in the semantic space (a copy)."""
        return self.R.value.T.copy()
