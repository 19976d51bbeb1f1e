r"""The conditional VAE (Sohn, Lee & Yan, 2015): structured output prediction, with the GSNN,
the hybrid objective and the deterministic baseline.

Notation (lecture notes 002, "Variants of VAE with conditional probability", write the
conditional ELBO as L = -KL(q(h|e, y) || p(h|y)) + E_q[log p(e|y, h)] with e the evidence, y the
condition and h the latent; this file follows Sohn's paper: x the input/condition, y the output
to predict, z the latent):

    prior network          p_theta(z|x)    = N(mu_p, diag e^logvar_p),   (mu_p, logvar_p) = prior(x)
    recognition network    q_phi(z|x, y)   = N(mu_q, diag e^logvar_q),   (mu_q, logvar_q) = recog([x, y])
    generation network     p_theta(y|x, z) = prod_d Bern(y_d | sigmoid(l_d)),   l = gen([x, z])

(For quadrant completion the recognition network reads the whole image, x with y filled in: the
same information as [x, y] for a fixed layout, with fewer inputs.)

The CVAE objective: the conditional ELBO (the notes' derivation with every density conditioned on x)
--------------------------------------------------------------------------------------------------
    log p(y|x) >= E_{q(z|x,y)}[log p(y|x, z)] - KL(q(z|x, y) || p(z|x))                   (C)
    loss_CVAE  = mean_n [ -log p(y_n|x_n, z_n) + KL_n ],   z_n = mu_q + sigma_q * eps_n

Both Gaussians of the KL are learned, so its gradient reaches the recognition AND the prior network
(``kernels.gaussian_kl``, whose reference version is the homework 'kl-gradient' / 'cvae-kl-gradient'):

    KL = 1/2 sum_d [ logvar_p - logvar_q + (e^logvar_q + (mu_q - mu_p)^2) e^-logvar_p - 1 ].

The GSNN and the hybrid (Sohn et al., section 4.2)
--------------------------------------------------
At test time z comes from the prior p(z|x), not from q(z|x, y) (y is what we predict), and the
CVAE's training never draws z from the prior.  The Gaussian stochastic neural network trains the
prior path directly: q = p(z|x), the KL vanishes, and

    L_GSNN = E_{p(z|x)}[log p(y|x, z)] <= log p(y|x)                       (Jensen)
    loss_GSNN = mean_n -log p(y_n|x_n, z'_n),   z'_n = mu_p + sigma_p * eps'_n.

The hybrid objective is  loss = alpha loss_CVAE + (1 - alpha) loss_GSNN  (eps and eps' independent).
Every objective draws eps then eps' (both (N, L)) from the Generator, so with the same parameters
and seed hybrid(alpha) = alpha CVAE + (1 - alpha) GSNN exactly (tests/test_cvae.py).

The deterministic baseline (kind "cvae-baseline", class ``BaselineNet``) is the generation
network without z: l = net(x), trained by the cross-entropy -log p(y|x) = sum_d BCE(y_d, l_d).

Backward (eps, eps' fixed; w_c = weight of the CVAE term, w_g = 1 - w_c of the GSNN term)
------------------------------------------------------------------------------------------
    dl       = w (sigmoid(l) - y) / N       per row, w = w_c for the q-sample, w_g for the p-sample
    [., dz]  = gen.backward(dl)             (the x columns of gen's input gradient are dropped)
    dmu_q    = dz_q + w_c/N dKL/dmu_q,      dlogvar_q = dz_q eps sigma_q / 2 + w_c/N dKL/dlogvar_q
    dmu_p    = dz_p + w_c/N dKL/dmu_p,      dlogvar_p = dz_p eps' sigma_p / 2 + w_c/N dKL/dlogvar_p
    recog.backward([dmu_q, dlogvar_q]);  prior.backward([dmu_p, dlogvar_p])

Conditional log-likelihood by importance sampling (``log_weights``)
-------------------------------------------------------------------
    log p(y|x) ~= log (1/K) sum_k w_k,   w_k = p(y|x, z_k) p(z_k|x) / q(z_k|x, y),   z_k ~ q(z|x, y)

with q(z|x, y) as the proposal (the GSNN, which has no recognition network, uses its prior:
w_k = p(y|x, z_k)).  ``log_weights(x, K, rng)`` returns log w (K, N), so ``python -m nplvm
evaluate`` and ``objectives.importance_sampled_log_px`` report, for these models, the CONDITIONAL
negative log-likelihood -log p(y|x) (the "CLL" of Sohn et al.): nats per image, summed over the
unobserved pixels only.  The baseline's log p(y|x) is exact (its K weights are equal).

Quadrant layout (Sohn et al.; Pyro's tutorial)
----------------------------------------------
``quadrants`` observed: 1 = the bottom-left quadrant; 2 = the left half; 3 = all but the
bottom-right quadrant.  The model's input x is the whole image with its unobserved pixels set to
``MISSING = -1`` (never a pixel value, so "unobserved" is not "black"); its output y is the
unobserved pixels in raster order.  ``loss(images, rng)`` takes full (N, x_dim) binary images.

Label-conditioned generation (class ``LabelCVAE``, not a command-line kind): x = the one-hot digit,
y = the whole image; its data rows are [image | one-hot label] (``with_labels``).

Public API
----------
CVAE(x_dim=784, hidden=(500, 500), latent=32, quadrants=1, objective="cvae", alpha=0.5,
     activation="relu", dtype="float32", seed=0)                     kind "cvae"
    .loss(images, rng, grad=True) -> (loss, grads)     .log_weights(images, K, rng) -> (K, N)
    .split(images) -> (x, y)      .complete(images, rng, n_samples=1) -> (n_samples, N, x_dim) means
    .elbo_terms(images, rng) -> dict: (N,) "nll_q", "nll_p", "kl" with the loss's draw, and "loss"
    .prior_params(x), .predict_y(x, rng, n_samples), .sample(n, rng, x)
BaselineNet(x_dim=784, hidden=(500, 500), quadrants=1, activation="relu", ...)   kind "cvae-baseline"
LabelCVAE(x_dim=784, n_classes=10, hidden=(500, 500), latent=32, objective="cvae", ...)  (Python only)
observed_mask, split_quadrants, merge_quadrants, with_labels        (the masking helpers)
"""
from __future__ import annotations

import math

import numpy as np

import kernels

from ..backend import check_dtype
from ..backend import rng as make_rng
from ..checks import DataError, check_array, check_binary, check_finite, one_of, positive_int
from ..distributions import reparameterize_backward
from ..nn import MLP
from . import register
from .vae import parse_hidden

__all__ = ["CVAE", "BaselineNet", "LabelCVAE", "MISSING", "OBJECTIVES", "observed_mask",
           "split_quadrants", "merge_quadrants", "with_labels"]

MISSING = -1.0                          # the value of an unobserved input pixel
OBJECTIVES = ("cvae", "gsnn", "hybrid")


# ----------------------------------------------------------------------------------------------
# Quadrant masking (Sohn's layout)
# ----------------------------------------------------------------------------------------------

def _side(x_dim):
    side = int(round(math.sqrt(x_dim)))
    if side * side != x_dim or side % 2:
        raise ValueError(f"expected x_dim to be the pixel count of a square image with an even side "
                         f"(784 = 28 x 28), got {x_dim!r}")
    return side


def _check_quadrants(quadrants):
    if isinstance(quadrants, bool) or int(quadrants) != quadrants or quadrants not in (1, 2, 3):
        raise ValueError(f"expected quadrants (the number of observed quadrants) to be 1, 2 or 3, "
                         f"got {quadrants!r}")
    return int(quadrants)


def observed_mask(quadrants, x_dim=784):
    """(x_dim,) bool: True where a pixel is observed (an input) with ``quadrants`` observed quadrants.

    1: the bottom-left quadrant;  2: the left half;  3: everything but the bottom-right quadrant.
    """
    q, side = _check_quadrants(quadrants), _side(int(x_dim))
    h = side // 2
    obs = np.zeros((side, side), dtype=bool)
    obs[h:, :h] = True                                  # bottom-left: observed in every layout
    if q >= 2:
        obs[:h, :h] = True                              # + top-left: the left half
    if q == 3:
        obs[:h, h:] = True                              # + top-right: all but the bottom-right
    return obs.reshape(-1)


def split_quadrants(images, quadrants, dtype=np.float32):
    """Full images (N, D) -> (x, y): x (N, D) the image with the unobserved pixels set to MISSING,
    y (N, D_y) the unobserved pixels (the output to predict), both of ``dtype``."""
    obs = observed_mask(quadrants, images.shape[1])
    x = np.where(obs, images, MISSING).astype(dtype)     # -1 marks "not observed", not black
    y = np.ascontiguousarray(images[:, ~obs], dtype=dtype)
    return x, y


def merge_quadrants(x, y, quadrants):
    """Inverse of ``split_quadrants``: the observed pixels of x (..., D) with y (..., D_y) in the
    unobserved ones -> (..., D).  y may carry extra leading axes (samples) that x broadcasts over."""
    obs = observed_mask(quadrants, x.shape[-1])
    shape = np.broadcast_shapes(x.shape[:-1], y.shape[:-1]) + (x.shape[-1],)
    out = np.empty(shape, dtype=np.result_type(x.dtype, y.dtype))
    out[...] = x
    out[..., ~obs] = y
    return out


def with_labels(images, labels, n_classes=10):
    """Rows [image | one-hot label], (N, D + n_classes) uint8: the data a ``LabelCVAE`` trains on."""
    images, labels = np.asarray(images), np.asarray(labels)
    check_array(images, "images", ndim=2, dtype_kind="fuib")
    if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
        raise DataError(f"expected integer labels of shape ({images.shape[0]},), got {labels.dtype} "
                        f"of shape {tuple(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"expected labels in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    check_binary(images, "images")
    onehot = (labels[:, None] == np.arange(n_classes)).astype(np.uint8)
    return np.concatenate([images.astype(np.uint8), onehot], axis=1)


def _check_binary_rows(data, name, n_cols, dtype):
    """(N, n_cols) binary data (uint8, bool, int or float 0/1), returned as a row-major ``dtype`` array."""
    check_array(data, name, ndim=2, shape=(None, n_cols), dtype_kind="fuib")
    if data.shape[0] == 0:
        raise DataError(f"expected {name} with at least one row, got shape {tuple(data.shape)}")
    if data.dtype.kind == "f":
        check_finite(data, name)
    check_binary(data, name)
    return np.ascontiguousarray(data, dtype=dtype)


def _check_common(hidden, latent, activation):
    """The shared arguments, validated (ValueError naming the argument); returns hidden as a list."""
    hidden = parse_hidden(hidden)
    if latent is not None:
        positive_int("latent", latent)
    one_of("activation", activation, kernels.reference.ACTIVATIONS)
    return hidden


# ----------------------------------------------------------------------------------------------
# The three networks and the objectives on (x, y) pairs
# ----------------------------------------------------------------------------------------------

class _ConditionalVAE:
    """The CVAE / GSNN / hybrid on (x, y) pairs; subclasses say how a data row becomes (x, y)."""

    conditional = "y = the unobserved pixels given x = the observed ones"   # read by `nplvm evaluate`

    def _build(self, x_in, y_dim, hidden, latent, objective, alpha, activation, dtype, seed):
        if objective not in OBJECTIVES:
            raise ValueError(f"expected objective to be one of {OBJECTIVES}, got {objective!r}")
        if not (isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0):
            raise ValueError(f"expected alpha (the CVAE term's weight in the hybrid) in [0, 1], got {alpha!r}")
        self.dtype = check_dtype(dtype)
        self.x_in, self.y_dim, self.latent = int(x_in), int(y_dim), int(latent)
        self.hidden, self.activation, self.objective = hidden, activation, objective
        self.alpha = float(alpha)
        # weights of the two terms: w_c on loss_CVAE, w_g = 1 - w_c on loss_GSNN
        self.w_cvae = {"cvae": 1.0, "gsnn": 0.0, "hybrid": self.alpha}[objective]
        g = make_rng(int(seed))
        L = self.latent
        self.prior = MLP([self.x_in, *hidden, 2 * L], activation, g, self.dtype)            # p(z|x)
        self.recognition = (MLP([self.rec_in, *hidden, 2 * L], activation, g, self.dtype)
                            if objective != "gsnn" else None)                            # q(z|x, y)
        self.generation = MLP([self.x_in + L, *reversed(hidden), self.y_dim], activation, g,
                              self.dtype)                                               # p(y|x, z)
        self._nets = tuple((prefix, net) for prefix, net in
                           (("prior.", self.prior), ("rec.", self.recognition), ("gen.", self.generation))
                           if net is not None)
        self.params = {prefix + name: p.value for prefix, net in self._nets
                       for name, p in net.parameters().items()}

    rec_in = property(lambda self: self.x_in + self.y_dim)     # the recognition network reads [x, y]

    def _recognition_input(self, x, y):
        return np.concatenate([x, y], axis=1)

    def __repr__(self):
        obj = self.objective + (f", alpha={self.alpha}" if self.objective == "hybrid" else "")
        nets = " | ".join(repr(n) for n in (self.prior, self.recognition, self.generation) if n is not None)
        return f"{type(self).__name__}({nets}; {obj})"

    def num_parameters(self):
        return int(sum(a.size for a in self.params.values()))

    # -- the networks ------------------------------------------------------------------------------
    def _gaussian(self, net, inp):
        h, cache = net.forward(inp)                          # (N, 2L)
        L = self.latent
        return h[:, :L], h[:, L:], cache                     # mu, logvar (views)

    def prior_params(self, x):
        """p(z|x): mu_p, logvar_p (N, L) each, for the model's input x (see ``split``)."""
        mu, logvar, _ = self._gaussian(self.prior, x)
        return mu.copy(), logvar.copy()

    def _generation_logits(self, x, z):
        """Logits of p(y|x, z) for z (K, N, L) and x (N, D_x) -> (K, N, D_y), no cache.

        The first layer's x-part, x W_x + b, is the same for all K samples: computed once (the
        importance sampler's inner loop then costs only z W_z and the layers above).
        """
        K, N, L = z.shape
        first = self.generation.layers[0]
        W, b = first.W.value, first.b.value
        a_x = x @ W[:self.x_in] + b                                       # (N, H)
        h = (z.reshape(K * N, L) @ W[self.x_in:]).reshape(K, N, -1)
        h += a_x
        h = kernels.reference.activate(h.reshape(K * N, -1), first.activation)
        for layer in self.generation.layers[1:]:
            h = layer.forward(h)[0]
        return h.reshape(K, N, self.y_dim)

    # -- the objective -----------------------------------------------------------------------------
    def loss(self, data, rng, grad=True):
        """(loss, grads): mean over rows of the objective (CVAE, GSNN or hybrid), nats per example.

        data: (N, ...) rows as ``split`` takes them; rng: a seed or Generator (eps, then eps', both
        (N, L), are drawn from it).  grads: name -> a fresh array (the caller owns it); with
        grad=False, (loss, None) and no backward pass.
        """
        x, y = self.split(data)
        g = make_rng(rng)
        shape = (x.shape[0], self.latent)
        eps_q = g.standard_normal(shape, dtype=self.dtype)          # for z ~ q(z|x, y)
        eps_p = g.standard_normal(shape, dtype=self.dtype)          # for z' ~ p(z|x)
        return self._loss_xy(x, y, eps_q, eps_p, grad)

    def _loss_xy(self, x, y, eps_q, eps_p, grad=True, terms=None):
        N, Dx = x.shape
        w_c = self.w_cvae                                            # weight of loss_CVAE
        w_g = 1.0 - w_c                                              # weight of loss_GSNN
        mu_p, logvar_p, prior_cache = self._gaussian(self.prior, x)  # p(z|x)
        zs, row_w = [], []
        if w_c > 0:
            mu_q, logvar_q, rec_cache = self._gaussian(self.recognition, self._recognition_input(x, y))
            sigma_q = np.exp(0.5 * logvar_q)
            zs.append(mu_q + sigma_q * eps_q)                        # z ~ q(z|x, y), reparameterized
            row_w.append(np.full(N, w_c / N, dtype=self.dtype))
            # KL(q(z|x, y) || p(z|x)) per row, with its gradient to both networks' outputs
            kl, dmu_q_kl, dlogvar_q_kl, dmu_p_kl, dlogvar_p_kl = kernels.gaussian_kl(
                mu_q, logvar_q, mu_p, logvar_p)
        if w_g > 0:
            sigma_p = np.exp(0.5 * logvar_p)
            zs.append(mu_p + sigma_p * eps_p)                        # z' ~ p(z|x): the GSNN's path
            row_w.append(np.full(N, w_g / N, dtype=self.dtype))
        S = len(zs)
        # one pass of the generation network over the S (= 1 or 2) stacked draws
        xz = np.concatenate([np.concatenate([x] * S, 0), np.concatenate(zs, 0)], axis=1)
        logits, gen_cache = self.generation.forward(xz)
        nll, dlogits = kernels.bernoulli_nll(np.concatenate([y] * S, 0), logits, np.concatenate(row_w))
        nll = nll.reshape(S, N)                                      # -log p(y|x, z) per draw
        loss = 0.0
        if w_c > 0:
            loss += w_c * (float(np.mean(nll[0])) + float(np.mean(kl)))     # -ELBO (C)
        if w_g > 0:
            loss += w_g * float(np.mean(nll[-1]))                           # -L_GSNN
        if terms is not None:                                        # for elbo_terms: the pieces
            terms.update(nll_q=nll[0] if w_c > 0 else None, nll_p=nll[-1] if w_g > 0 else None,
                         kl=kl if w_c > 0 else None)
        if not grad:
            return loss, None

        for _, net in self._nets:
            net.release_grads()                                      # this call's grads: new arrays
        dz = self.generation.backward(dlogits, gen_cache)[:, Dx:].reshape(S, N, self.latent)
        dmu_p = np.zeros_like(mu_p)
        dlogvar_p = np.zeros_like(logvar_p)
        if w_c > 0:
            k = w_c / N                                              # d loss / d KL_n
            dmu_q, dlogvar_q = reparameterize_backward(dz[0], eps_q, logvar_q)   # z = mu_q + sigma_q eps
            self.recognition.backward(np.concatenate([dmu_q + k * dmu_q_kl, dlogvar_q + k * dlogvar_q_kl], 1),
                                      rec_cache, need_dx=False)
            dmu_p += k * dmu_p_kl                                    # the KL pulls the prior too
            dlogvar_p += k * dlogvar_p_kl
        if w_g > 0:
            dmu_g, dlogvar_g = reparameterize_backward(dz[-1], eps_p, logvar_p)   # z' = mu_p + sigma_p eps'
            dmu_p += dmu_g
            dlogvar_p += dlogvar_g
        self.prior.backward(np.concatenate([dmu_p, dlogvar_p], 1), prior_cache, need_dx=False)
        return loss, {k: g for prefix, net in self._nets for k, g in net.take_grads(prefix).items()}

    # -- evaluation --------------------------------------------------------------------------------
    def log_weights(self, data, K, rng):
        """log w_k = log p(y|x, z_k) + log p(z_k|x) - log q(z_k|x, y), z_k ~ q(z|x, y): (K, N).

        The GSNN (no recognition network) samples its prior: log w_k = log p(y|x, z_k).  The noise
        is drawn sample-major, eps of shape (K, N, L), so chunked calls give the same draws.
        """
        x, y = self.split(data)
        K, N, L = int(K), x.shape[0], self.latent
        eps = make_rng(rng).standard_normal((K, N, L), dtype=self.dtype)
        mu_p, logvar_p, _ = self._gaussian(self.prior, x)
        if self.recognition is None:
            z = mu_p + np.exp(0.5 * logvar_p) * eps                  # proposal = the prior
            log_ratio = 0.0
        else:
            mu_q, logvar_q, _ = self._gaussian(self.recognition, self._recognition_input(x, y))
            z = mu_q + np.exp(0.5 * logvar_q) * eps
            # log N(z | mu_p, e^logvar_p) - log N(z | mu_q, e^logvar_q); the 2 pi terms cancel and
            # (z - mu_q)^2 / sigma_q^2 = eps^2
            d = z - mu_p
            log_ratio = 0.5 * np.sum(logvar_q + eps * eps - logvar_p - d * d * np.exp(-logvar_p), axis=-1)
        logits = self._generation_logits(x, z)
        yk = np.broadcast_to(y, (K, N, self.y_dim)).reshape(K * N, self.y_dim)
        nll, _ = kernels.bernoulli_nll(yk, logits.reshape(K * N, self.y_dim))
        return -nll.reshape(K, N) + log_ratio

    def elbo_terms(self, data, rng):
        """The pieces of the loss with the loss's own draw (same rng): dict of (N,) float arrays
        "nll_q" (-log p(y|x, z), z ~ q), "nll_p" (z' ~ p), "kl" (None where the objective lacks
        it), and "loss", the value ``loss(data, rng)`` returns."""
        x, y = self.split(data)
        g = make_rng(rng)
        shape = (x.shape[0], self.latent)
        eps_q = g.standard_normal(shape, dtype=self.dtype)
        eps_p = g.standard_normal(shape, dtype=self.dtype)
        terms = {}
        terms["loss"] = self._loss_xy(x, y, eps_q, eps_p, grad=False, terms=terms)[0]
        return terms

    def predict_y(self, x, rng, n_samples=1, binary=False):
        """n_samples draws of y for model inputs x (N, D_x): z ~ p(z|x), then the Bernoulli means
        sigmoid(gen([x, z])) (or binary y ~ p(y|x, z)): (n_samples, N, D_y)."""
        g = make_rng(rng)
        check_array(x, "x", ndim=2, shape=(None, self.x_in))
        x = np.asarray(x, dtype=self.dtype)
        mu_p, logvar_p = self.prior_params(x)
        eps = g.standard_normal((int(n_samples),) + mu_p.shape, dtype=self.dtype)
        p = kernels.reference.sigmoid(self._generation_logits(x, mu_p + np.exp(0.5 * logvar_p) * eps))
        return (g.random(p.shape, dtype=self.dtype) < p).astype(np.uint8) if binary else p


@register("cvae")
class CVAE(_ConditionalVAE):
    """The CVAE for MNIST quadrant completion; see the module docstring.

    x_dim: pixels of a full image (a square with an even side; 784); hidden: hidden widths of the
    prior and recognition networks (the generation network mirrors them); latent: L; quadrants:
    observed quadrants, 1, 2 or 3 (Sohn's layout); objective: "cvae", "gsnn" or "hybrid"; alpha:
    the hybrid's weight on the CVAE term (ignored by the other two); activation, dtype, seed.
    """

    def __init__(self, x_dim=784, hidden=(500, 500), latent=32, quadrants=1, objective="cvae",
                 alpha=0.5, activation="relu", dtype="float32", seed=0):
        hidden = _check_common(hidden, latent, activation)
        self.quadrants = _check_quadrants(quadrants)
        self.x_dim = positive_int("x_dim", x_dim)
        self.obs = observed_mask(self.quadrants, self.x_dim)
        self._build(self.x_dim, int((~self.obs).sum()), hidden, latent, objective, alpha, activation,
                    dtype, seed)
        self.config = {"x_dim": self.x_dim, "hidden": list(hidden), "latent": self.latent,
                       "quadrants": self.quadrants, "objective": objective, "alpha": self.alpha,
                       "activation": activation, "dtype": self.dtype.name, "seed": int(seed)}

    rec_in = property(lambda self: self.x_dim)

    def _recognition_input(self, x, y):
        """q(z|x, y) reads the whole image: x with y in its unobserved pixels (the same information
        as [x, y] for a fixed layout, 784 inputs instead of 784 + D_y)."""
        out = x.copy()
        out[:, ~self.obs] = y
        return out

    def split(self, images):
        """Full binary images (N, x_dim) -> (x, y): x the image with the unobserved pixels set to
        MISSING (N, x_dim), y the unobserved pixels (N, D_y); in the model's dtype."""
        images = _check_binary_rows(images, "images", self.x_dim, self.dtype)
        return split_quadrants(images, self.quadrants, self.dtype)

    def complete(self, images, rng, n_samples=1, binary=False):
        """Completions of the images' unobserved quadrants: (n_samples, N, x_dim), the observed
        pixels kept, the rest Bernoulli means (or draws) of p(y|x, z), z ~ p(z|x)."""
        x, _ = self.split(images)
        y = self.predict_y(x, rng, n_samples, binary)
        return merge_quadrants(np.where(x == MISSING, 0, x).astype(y.dtype), y, self.quadrants)

    def sample(self, n, rng, x=None):
        """n completions of ONE image ``x`` (x_dim,) (a conditional model needs its input):
        (n, x_dim), see ``complete``."""
        if x is None:
            raise ValueError("a CVAE samples y given x: pass x, the image whose unobserved quadrants "
                             "to complete (its unobserved pixels are ignored)")
        return self.complete(np.asarray(x).reshape(1, -1), rng, n_samples=n)[:, 0]


class LabelCVAE(_ConditionalVAE):
    """A CVAE that generates images given their digit: x = one-hot label, y = the image.

    Data rows are [image (x_dim pixels) | one-hot label (n_classes)], see ``with_labels``; the
    command line's data has no labels, so it is not a registered kind: train it from Python
    (lesson 15).
    """

    kind = "cvae-labels"
    conditional = "y = the image given x = its digit"

    def __init__(self, x_dim=784, n_classes=10, hidden=(500, 500), latent=32, objective="cvae",
                 alpha=0.5, activation="relu", dtype="float32", seed=0):
        hidden = _check_common(hidden, latent, activation)
        for name, v in (("x_dim", x_dim), ("n_classes", n_classes)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"expected a positive integer {name}, got {v!r}")
        self.x_dim, self.n_classes = int(x_dim), int(n_classes)
        self._build(self.n_classes, self.x_dim, hidden, latent, objective, alpha, activation, dtype, seed)
        self.config = {"x_dim": self.x_dim, "n_classes": self.n_classes, "hidden": list(hidden),
                       "latent": self.latent, "objective": objective, "alpha": self.alpha,
                       "activation": activation, "dtype": self.dtype.name, "seed": int(seed)}

    def split(self, data):
        """Rows [image | one-hot] (N, x_dim + n_classes) -> (x = one-hot (N, n_classes), y = image)."""
        if isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == self.x_dim:
            raise DataError(f"expected rows [image | one-hot label] of {self.x_dim + self.n_classes} "
                            f"columns, got images alone ({self.x_dim} columns); build the rows with "
                            "nplvm.models.cvae.with_labels(images, labels)")
        data = _check_binary_rows(data, "data", self.x_dim + self.n_classes, self.dtype)
        x = np.ascontiguousarray(data[:, self.x_dim:])
        if not np.all(x.sum(axis=1) == 1):
            raise DataError("expected the last n_classes columns of data to be one-hot labels "
                            "(exactly one 1 per row)")
        return x, np.ascontiguousarray(data[:, :self.x_dim])

    def sample(self, n, rng, labels=None, binary=False):
        """n images (n, x_dim): labels (n,) given, or drawn uniformly; z ~ p(z|label), Bernoulli means."""
        g = make_rng(rng)
        labels = g.integers(0, self.n_classes, int(n)) if labels is None else np.asarray(labels)
        if labels.shape != (int(n),):
            raise DataError(f"expected labels of shape ({int(n)},), got {tuple(labels.shape)}")
        x = (labels[:, None] == np.arange(self.n_classes)).astype(self.dtype)
        return self.predict_y(x, g, 1, binary)[0]


@register("cvae-baseline")
class BaselineNet:
    """The deterministic baseline: the CVAE's generation network without z, l = net(x), trained by
    the cross-entropy -log p(y|x) = sum_d softplus(l_d) - y_d l_d (one blurred mean per input).

    Same arguments as ``CVAE`` (no latent, no objective).
    """

    def __init__(self, x_dim=784, hidden=(500, 500), quadrants=1, activation="relu", dtype="float32",
                 seed=0):
        hidden = _check_common(hidden, None, activation)
        self.quadrants = _check_quadrants(quadrants)
        self.x_dim = positive_int("x_dim", x_dim)
        self.obs = observed_mask(self.quadrants, self.x_dim)
        self.y_dim = int((~self.obs).sum())
        self.dtype = check_dtype(dtype)
        self.hidden, self.activation = hidden, activation
        self.net = MLP([self.x_dim, *reversed(hidden), self.y_dim], activation, make_rng(int(seed)), self.dtype)
        self.params = {"net." + k: p.value for k, p in self.net.parameters().items()}
        self.config = {"x_dim": self.x_dim, "hidden": list(hidden), "quadrants": self.quadrants,
                       "activation": activation, "dtype": self.dtype.name, "seed": int(seed)}

    conditional = "y = the unobserved pixels given x = the observed ones (exact, no latent)"

    def __repr__(self):
        return f"BaselineNet({self.net!r}; quadrants={self.quadrants})"

    def num_parameters(self):
        return int(sum(a.size for a in self.params.values()))

    split = CVAE.split

    def loss(self, images, rng=None, grad=True):
        """(mean cross-entropy -log p(y|x), grads); deterministic (rng is accepted and unused)."""
        x, y = self.split(images)
        N = x.shape[0]
        logits, cache = self.net.forward(x)
        nll, dlogits = kernels.bernoulli_nll(y, logits, 1.0 / N)    # d/dl = (sigmoid(l) - y) / N
        loss = float(np.mean(nll))
        if not grad:
            return loss, None
        self.net.release_grads()                                     # this call's grads: new arrays
        self.net.backward(dlogits, cache, need_dx=False)
        return loss, self.net.take_grads("net.")

    def log_weights(self, images, K, rng=None):
        """log p(y|x) (exact: no latent) repeated K times, (K, N), so evaluation reports it as is."""
        x, y = self.split(images)
        nll, _ = kernels.bernoulli_nll(y, self.net.forward(x)[0])
        return np.broadcast_to(-nll, (int(K), x.shape[0])).copy()

    def complete(self, images, rng=None, n_samples=1):
        """The mean completion sigmoid(net(x)) in the unobserved pixels: (n_samples, N, x_dim),
        identical along the first axis (a deterministic network has one answer)."""
        x, _ = self.split(images)
        p = kernels.reference.sigmoid(self.net.forward(x)[0])
        y = np.broadcast_to(p, (int(n_samples),) + p.shape)
        return merge_quadrants(np.where(x == MISSING, 0, x).astype(p.dtype), y, self.quadrants)

    def sample(self, n, rng=None, x=None):
        """The mean completion of one image x, repeated n times: (n, x_dim)."""
        if x is None:
            raise ValueError("the baseline predicts y given x: pass x, the image to complete")
        return self.complete(np.asarray(x).reshape(1, -1), rng, n_samples=n)[:, 0]
