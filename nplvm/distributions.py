"""Distributions with their gradients: diagonal Gaussian, Bernoulli and Categorical (from logits).

Every quantity comes with its gradient, written by hand and checked by finite differences in
tests/test_distributions.py.  No autograd: a model's backward pass calls the ``*_grad`` /
``*_backward`` functions here the way it calls ``Linear.backward``.

Conventions (README):

* a Gaussian is parameterised by its mean ``mu`` and log-variance ``logvar``;
  ``std = exp(logvar / 2)``, ``var = exp(logvar)``;
* Bernoulli and Categorical are parameterised by logits (never probabilities), so every log
  density is computed in a stable form (softplus, log-softmax);
* noise for the reparameterization is drawn *outside* and passed in (``rsample(eps)``), so a loss
  is a deterministic function of the parameters given the noise and finite differences apply;
* the last axis is the event axis (D or K); any leading axes are batch axes, e.g. ``(N, D)`` or
  ``(K, N, D)`` for K importance samples.  Values are summed over the event axis;
* gradients are of the quantity itself (log_prob, entropy, KL), not of the loss.  An optional
  ``weight`` of the batch shape (or a scalar) multiplies each row's gradient: it is how a caller
  folds in the upstream gradient (1/N of a mean, importance weights, q(y|x)).

The hot KL and Bernoulli terms go through ``kernels`` (fused value + gradient); the functions
``kl_std_normal`` etc. state the same math in plain NumPy for reading and for homework.
"""
from __future__ import annotations

import math

import numpy as np

import kernels
from kernels.reference import sigmoid, softplus

from .backend import xp_of
from .checks import DataError, check_array, check_binary

LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "LOG_2PI", "logsumexp", "logsumexp_backward", "logmeanexp", "softmax", "softmax_backward",
    "log_softmax", "log_softmax_backward", "one_hot", "std_normal_log_prob",
    "std_normal_log_prob_grad", "kl_std_normal", "kl_diag_gaussians", "DiagGaussian", "Bernoulli", "Categorical",
]


# ---------------------------------------------------------------------------------------------
# log-sum-exp and softmax
# ---------------------------------------------------------------------------------------------

def _finite_shift(m):
    """The max used to shift a log-sum-exp, replaced by 0 where it is +-inf.

    A slice that is all -inf (an impossible event) must give -inf, not exp(-inf - -inf) = NaN;
    a slice holding +inf gives +inf.  Shifting those by 0 does exactly that.
    """
    xp = xp_of(m)
    return xp.where(xp.isfinite(m), m, xp.zeros_like(m))


def logsumexp(a, axis=-1, keepdims=False):
    """log sum_i exp(a_i) along ``axis``, stable: m + log sum_i exp(a_i - m) with m = max_i a_i.

    Exact for huge logits (+-1e4: no overflow, no underflow to log 0), -inf entries are dropped
    (exp(-inf) = 0), and a slice that is all -inf gives -inf without warnings.
    ``axis=None`` reduces over every axis.  Gradient: ``logsumexp_backward``.
    """
    xp = xp_of(a)
    m = _finite_shift(xp.max(a, axis=axis, keepdims=True))
    with np.errstate(divide="ignore"):                       # log 0 = -inf for all -inf slices
        out = xp.log(xp.sum(xp.exp(a - m), axis=axis, keepdims=True)) + m
    if keepdims:
        return out
    return out.reshape(()) if axis is None else xp.squeeze(out, axis=axis)


def logsumexp_backward(dout, a, axis=-1, keepdims=False):
    """Gradient of ``logsumexp(a, axis)`` given the upstream gradient ``dout`` (its output shape).

    d logsumexp(a) / d a_i = exp(a_i - logsumexp(a)) = softmax(a)_i; a slice that is all -inf
    (a constant -inf) gets gradient 0.  Returns da with the shape of a.
    """
    xp = xp_of(a)
    if axis is None:
        axis = tuple(range(a.ndim))
    lse = logsumexp(a, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        w = xp.exp(a - lse)                                   # softmax(a) along axis
    w = xp.where(xp.isfinite(lse), w, xp.zeros_like(w))
    if not keepdims:
        dout = xp.expand_dims(dout, axis)
    return dout * w


def logmeanexp(a, axis=-1, keepdims=False):
    """log (1/n) sum_i exp(a_i) = logsumexp(a) - log n along ``axis`` (the IWAE bound's average)."""
    n = a.size if axis is None else np.prod([a.shape[ax] for ax in np.atleast_1d(axis)])
    return logsumexp(a, axis=axis, keepdims=keepdims) - math.log(n)


def softmax(logits, axis=-1):
    """softmax(l)_k = exp(l_k - max l) / sum_j exp(l_j - max l) along ``axis``.

    -inf logits get probability 0.  A slice that is all -inf has no distribution: it gives NaN.
    """
    xp = xp_of(logits)
    e = xp.exp(logits - _finite_shift(xp.max(logits, axis=axis, keepdims=True)))
    with np.errstate(invalid="ignore"):
        return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(dprobs, probs, axis=-1):
    """Backward of p = softmax(l): dl_k = p_k (dp_k - sum_j p_j dp_j), from p itself.

    dprobs, probs: same shape (..., K).  Used by the GMVAE for the gradient through q(y|x).
    """
    xp = xp_of(probs)
    return probs * (dprobs - xp.sum(probs * dprobs, axis=axis, keepdims=True))


def log_softmax(logits, axis=-1):
    """log softmax(l)_k = l_k - logsumexp(l), exact for huge logits; -inf logits give -inf."""
    return logits - logsumexp(logits, axis=axis, keepdims=True)


def log_softmax_backward(dlogp, logp, axis=-1):
    """Backward of logp = log_softmax(l): dl_k = dlogp_k - softmax(l)_k sum_j dlogp_j."""
    xp = xp_of(logp)
    return dlogp - xp.exp(logp) * xp.sum(dlogp, axis=axis, keepdims=True)


def one_hot(labels, K, dtype=np.float64):
    """Integer labels (...,) in {0..K-1} -> one-hot (..., K) of ``dtype``."""
    xp = xp_of(labels)
    labels = xp.asarray(labels)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= K):
        raise DataError(f"expected labels in 0..{K - 1}, got values from {int(labels.min())} "
                        f"to {int(labels.max())}")
    return (labels[..., None] == xp.arange(K)).astype(dtype)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _sum_to(g, shape):
    """Sum a gradient over the axes that broadcasting added, so it gets ``shape`` back."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _row_weight(weight, batch_shape, dtype):
    """A weight (None, a scalar or an array broadcastable to the batch shape) as the kernels take it:
    None, a Python float, or a 1-D array with one entry per flattened row."""
    if weight is None or np.ndim(weight) == 0:
        return None if weight is None else float(weight)
    xp = xp_of(weight)
    try:
        w = xp.broadcast_to(xp.asarray(weight, dtype=dtype), batch_shape)
    except ValueError:
        raise DataError(f"expected weight of the batch shape {tuple(batch_shape)} (or a scalar), "
                        f"got shape {tuple(np.shape(weight))}") from None
    return xp.ascontiguousarray(w).reshape(-1)


def _expand_weight(weight, batch_shape):
    """A row weight as a multiplier of (..., D) gradients: 1.0, a scalar, or (..., 1)."""
    if weight is None:
        return 1.0
    if np.ndim(weight) == 0:
        return float(weight)
    xp = xp_of(weight)
    try:
        return xp.broadcast_to(weight, batch_shape)[..., None]
    except ValueError:
        raise DataError(f"expected weight of the batch shape {tuple(batch_shape)} (or a scalar), "
                        f"got shape {tuple(np.shape(weight))}") from None


def _check_event(x, name, event_shape, like):
    """x must end with ``event_shape`` and broadcast against ``like`` (a (..., D) shape)."""
    if x.ndim < len(event_shape) or tuple(x.shape[x.ndim - len(event_shape):]) != tuple(event_shape):
        raise DataError(f"expected {name} of shape (..., {', '.join(map(str, event_shape))}), "
                        f"got {tuple(x.shape)}")
    try:
        return np.broadcast_shapes(x.shape, like)
    except ValueError:
        raise DataError(f"{name} of shape {tuple(x.shape)} does not broadcast against the "
                        f"distribution's shape {tuple(like)}") from None


# ---------------------------------------------------------------------------------------------
# the standard normal prior p(z) = N(0, I)
# ---------------------------------------------------------------------------------------------

def std_normal_log_prob(z):
    """log N(z | 0, I) = -1/2 sum_d (log 2 pi + z_d^2), summed over the last axis: (...,)."""
    xp = xp_of(z)
    return -0.5 * xp.sum(LOG_2PI + z * z, axis=-1)


def std_normal_log_prob_grad(z):
    """d log N(z | 0, I) / dz = -z, shape of z."""
    return -z


def kl_std_normal(mu, logvar):
    """KL(N(mu, diag e^logvar) || N(0, I)) per row, and its gradients, in plain NumPy.

    mu, logvar: (..., D).  Returns kl (...,), dkl/dmu (..., D), dkl/dlogvar (..., D).

    With sigma^2 = e^logvar, the closed form (Kingma & Welling 2014, appendix B) is

        KL = 1/2 sum_d (sigma_d^2 + mu_d^2 - 1 - log sigma_d^2),
        dKL/dmu_d = mu_d,     dKL/dlogvar_d = 1/2 (sigma_d^2 - 1).

    This is the readable definition; ``DiagGaussian.kl_std`` calls the fused kernel
    ``kernels.gaussian_kl_std`` that computes the same thing in one pass.
    """
    # SOLUTION kl-gradient: KL(N(mu, e^logvar) || N(0, I)) and its gradients w.r.t. mu and logvar
    # HINT: var = np.exp(logvar); sum over the last axis; return kl (...,), dmu (..., D), dlogvar (..., D)
    var = np.exp(logvar)                                        # sigma^2 = e^logvar
    kl = 0.5 * np.sum(var + mu * mu - 1.0 - logvar, axis=-1)    # 1/2 sum_d (s^2 + mu^2 - 1 - log s^2)
    dmu = mu                                                    # d/dmu_d     (1/2 mu_d^2)
    dlogvar = 0.5 * (var - 1.0)                                 # d/dlogvar_d (1/2 (e^logvar - logvar))
    return kl, dmu, dlogvar
    # END SOLUTION


def kl_diag_gaussians(mu_q, logvar_q, mu_p, logvar_p):
    """KL(q || p) between two diagonal Gaussians, per row, with its gradients to BOTH, in plain NumPy.

    q = N(mu_q, diag e^logvar_q), p = N(mu_p, diag e^logvar_p); all four arrays (..., D) of one
    shape.  Returns kl (...,) and dKL/dmu_q, dKL/dlogvar_q, dKL/dmu_p, dKL/dlogvar_p (..., D).

    The closed form (summed over d):

        KL = 1/2 sum_d [ logvar_p - logvar_q + (e^logvar_q + (mu_q - mu_p)^2) e^-logvar_p - 1 ].

    In the CVAE both Gaussians are learned: q(z|x, y) is the recognition network and p(z|x) the
    prior network, so the KL sends gradient into both networks (with p = N(0, I) it reduces to
    ``kl_std_normal``).  ``DiagGaussian.kl`` computes the same in the fused kernel
    ``kernels.gaussian_kl``; this is the readable definition, and the CVAE's loss calls it.
    """
    # SOLUTION cvae-kl-gradient: KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) and its gradients w.r.t. all four inputs
    # HINT Work with r = var_q / var_p = np.exp(logvar_q - logvar_p) and the squared distance scaled by
    # HINT 1 / var_p; sum the KL over the last axis; return kl (...,), dmu_q, dlogvar_q, dmu_p, dlogvar_p (..., D).
    inv_var_p = np.exp(-logvar_p)                                 # 1 / sigma_p^2
    ratio = np.exp(logvar_q - logvar_p)                           # sigma_q^2 / sigma_p^2, never forming either
    diff = mu_q - mu_p
    d2 = diff * diff * inv_var_p                                  # (mu_q - mu_p)^2 / sigma_p^2
    kl = 0.5 * np.sum(logvar_p - logvar_q + ratio + d2 - 1.0, axis=-1)
    dmu_q = diff * inv_var_p                                      # d/dmu_q of 1/2 (mu_q - mu_p)^2 / sigma_p^2
    dmu_p = -dmu_q                                                # the same term, opposite sign
    dlogvar_q = 0.5 * (ratio - 1.0)                               # d/dlogvar_q of 1/2 (e^(lq - lp) - lq)
    dlogvar_p = 0.5 * (1.0 - ratio - d2)                          # d/dlogvar_p: + lp, e^-lp twice
    return kl, dmu_q, dlogvar_q, dmu_p, dlogvar_p
    # END SOLUTION


# ---------------------------------------------------------------------------------------------
# diagonal Gaussian
# ---------------------------------------------------------------------------------------------

class DiagGaussian:
    """N(z | mu, diag(exp(logvar))), e.g. the encoder's q_phi(z|x) or a prior p_theta(z|y).

    mu, logvar: (..., D) arrays of one float dtype (typically (N, D)).  The leading axes are
    batch axes; every value is summed over the last (event) axis D.
    """

    def __init__(self, mu, logvar):
        check_array(mu, "mu")
        check_array(logvar, "logvar")
        if mu.ndim < 1:
            raise DataError("expected mu of shape (..., D), got a scalar")
        if mu.shape != logvar.shape:
            raise DataError(f"expected mu and logvar of the same shape, got {tuple(mu.shape)} "
                            f"and {tuple(logvar.shape)}")
        if mu.dtype != logvar.dtype:
            raise DataError(f"expected mu and logvar of one dtype, got {mu.dtype} and {logvar.dtype}")
        self.mu, self.logvar = mu, logvar

    def __repr__(self):
        return f"DiagGaussian(shape={tuple(self.shape)}, dtype={self.mu.dtype})"

    @property
    def shape(self):
        """(..., D)."""
        return self.mu.shape

    @property
    def batch_shape(self):
        return self.mu.shape[:-1]

    @property
    def std(self):
        """sigma = exp(logvar / 2)."""
        return xp_of(self.logvar).exp(0.5 * self.logvar)

    @property
    def var(self):
        """sigma^2 = exp(logvar)."""
        return xp_of(self.logvar).exp(self.logvar)

    # -- the reparameterization -----------------------------------------------------------------
    def rsample(self, eps):
        """z = mu + exp(logvar / 2) * eps, with eps ~ N(0, I) drawn by the caller.

        eps: (..., D) broadcasting against mu, e.g. (K, N, D) for K samples per row.
        Returns z with the broadcast shape.  Backward: ``rsample_backward``.
        """
        _check_event(eps, "eps", self.shape[-1:], self.shape)
        return self.mu + self.std * eps

    def rsample_backward(self, dz, eps):
        """(dmu, dlogvar) from the upstream gradient dz of z = mu + exp(logvar/2) eps.

        dz/dmu = 1, dz/dlogvar = 1/2 exp(logvar/2) eps; extra sample axes of dz are summed.
        """
        _check_event(dz, "dz", self.shape[-1:], self.shape)
        dmu = _sum_to(dz, self.shape)
        dlogvar = _sum_to(dz * eps, self.shape) * (0.5 * self.std)
        return dmu, dlogvar

    def sample(self, rng, sample_shape=()):
        """A draw z = mu + sigma eps with eps from ``rng`` (a numpy Generator); shape sample_shape + (..., D)."""
        xp = xp_of(self.mu)
        eps = rng.standard_normal(tuple(sample_shape) + tuple(self.shape), dtype=self.mu.dtype)
        return self.rsample(xp.asarray(eps))

    # -- densities --------------------------------------------------------------------------------
    def log_prob(self, z):
        """log N(z | mu, sigma^2) = -1/2 sum_d (log 2 pi + logvar_d + (z_d - mu_d)^2 e^-logvar_d).

        z: (..., D) broadcasting against mu.  Returns (...,), summed over D.
        """
        _check_event(z, "z", self.shape[-1:], self.shape)
        xp = xp_of(z, self.mu)
        diff = z - self.mu
        return -0.5 * xp.sum(LOG_2PI + self.logvar + diff * diff * xp.exp(-self.logvar), axis=-1)

    def log_prob_grad(self, z, weight=None):
        """Gradients of sum(weight * log_prob(z)) w.r.t. z, mu and logvar: (dz, dmu, dlogvar).

        d/dz = -(z - mu) e^-logvar,  d/dmu = (z - mu) e^-logvar,
        d/dlogvar = 1/2 ((z - mu)^2 e^-logvar - 1).
        dz has z's broadcast shape; dmu, dlogvar have mu's shape (sample axes summed).
        """
        shape = _check_event(z, "z", self.shape[-1:], self.shape)
        xp = xp_of(z, self.mu)
        w = _expand_weight(weight, shape[:-1])
        inv_var = xp.exp(-self.logvar)
        diff = z - self.mu
        dmu_full = diff * inv_var * w                          # (z - mu) / sigma^2
        dlogvar = 0.5 * (diff * diff * inv_var - 1.0) * w
        return -dmu_full, _sum_to(dmu_full, self.shape), _sum_to(dlogvar, self.shape)

    def entropy(self):
        """H[N(mu, sigma^2)] = 1/2 sum_d (1 + log 2 pi + logvar_d), shape (...,)."""
        xp = xp_of(self.logvar)
        return 0.5 * xp.sum(1.0 + LOG_2PI + self.logvar, axis=-1)

    def entropy_grad(self, weight=None):
        """d sum(weight * entropy) / d logvar = weight / 2, shape (..., D).  (d/dmu = 0.)"""
        xp = xp_of(self.logvar)
        return xp.full(self.shape, 0.5, dtype=self.logvar.dtype) * _expand_weight(weight, self.batch_shape)

    # -- KL divergences ---------------------------------------------------------------------------
    def kl_std(self, weight=None):
        """KL(self || N(0, I)) per row with its gradients, via ``kernels.gaussian_kl_std``.

        Returns kl (...,), weight * dkl/dmu (..., D), weight * dkl/dlogvar (..., D).
        (The math, in plain NumPy: ``kl_std_normal``.)
        """
        D = self.shape[-1]
        kl, dmu, dlogvar = kernels.gaussian_kl_std(
            self.mu.reshape(-1, D), self.logvar.reshape(-1, D),
            _row_weight(weight, self.batch_shape, self.mu.dtype))
        return kl.reshape(self.batch_shape), dmu.reshape(self.shape), dlogvar.reshape(self.shape)

    def kl(self, other, weight=None):
        """KL(self || other) per row with gradients, via ``kernels.gaussian_kl``.

        KL(N(m, e^s) || N(n, e^t)) = 1/2 sum_d (t - s + (e^s + (m - n)^2) e^-t - 1).
        The two shapes broadcast (e.g. q (N, 1, D) against p (1, K, D) gives (N, K)).
        Returns kl (batch,), and weight * the gradients w.r.t. self.mu, self.logvar, other.mu,
        other.logvar, each summed back to its own shape.
        """
        if not isinstance(other, DiagGaussian):
            raise TypeError(f"expected a DiagGaussian, got {type(other).__name__}")
        if other.mu.dtype != self.mu.dtype:
            raise DataError(f"expected both Gaussians of one dtype, got {self.mu.dtype} and {other.mu.dtype}")
        try:
            shape = np.broadcast_shapes(self.shape, other.shape)
        except ValueError:
            raise DataError(f"the Gaussians' shapes {tuple(self.shape)} and {tuple(other.shape)} "
                            "do not broadcast") from None
        xp = xp_of(self.mu)
        D = shape[-1]

        def flat(a):
            return a.reshape(-1, D) if a.shape == shape else xp.broadcast_to(a, shape).reshape(-1, D)

        kl, dmq, dsq, dmp, dsp = kernels.gaussian_kl(
            flat(self.mu), flat(self.logvar), flat(other.mu), flat(other.logvar),
            _row_weight(weight, shape[:-1], self.mu.dtype))
        return (kl.reshape(shape[:-1]),
                _sum_to(dmq.reshape(shape), self.shape), _sum_to(dsq.reshape(shape), self.shape),
                _sum_to(dmp.reshape(shape), other.shape), _sum_to(dsp.reshape(shape), other.shape))


# ---------------------------------------------------------------------------------------------
# Bernoulli from logits
# ---------------------------------------------------------------------------------------------

class Bernoulli:
    """Bern(x | sigmoid(l)) per entry, independent over the last axis, e.g. the decoder p_theta(x|z).

    logits: (..., D) float.  log Bern(x | sigmoid(l)) = x l - softplus(l), computed in the
    softplus form so it is finite and exact for any finite logit.
    """

    def __init__(self, logits):
        check_array(logits, "logits")
        if logits.ndim < 1:
            raise DataError("expected logits of shape (..., D), got a scalar")
        self.logits = logits

    def __repr__(self):
        return f"Bernoulli(shape={tuple(self.logits.shape)}, dtype={self.logits.dtype})"

    @property
    def batch_shape(self):
        return self.logits.shape[:-1]

    @property
    def mean(self):
        """p = sigmoid(l), without overflow."""
        return sigmoid(self.logits)

    def _x(self, x, validate):
        """x as the kernels want it: the logits' shape and dtype (binary values are exact)."""
        check_array(x, "x", dtype_kind="fiub")
        _check_event(x, "x", self.logits.shape[-1:], self.logits.shape)
        if validate:
            check_binary(x, "x")
        xp = xp_of(self.logits)
        x = x.astype(self.logits.dtype, copy=False)
        return x if x.shape == self.logits.shape else xp.broadcast_to(x, self.logits.shape)

    def nll_and_grad(self, x, weight=None, validate=True):
        """-log Bern(x | sigmoid(l)) per row (...,) and weight * its gradient (sigmoid(l) - x) w.r.t. logits.

        A passthrough to ``kernels.bernoulli_nll`` (one fused pass).  ``validate=False`` skips the
        check that x is binary (for hot loops over data already checked once).
        """
        x = self._x(x, validate)
        D = self.logits.shape[-1]
        nll, dlogits = kernels.bernoulli_nll(
            x.reshape(-1, D), self.logits.reshape(-1, D),
            _row_weight(weight, self.batch_shape, self.logits.dtype))
        return nll.reshape(self.batch_shape), dlogits.reshape(self.logits.shape)

    def log_prob(self, x, validate=True):
        """log Bern(x | sigmoid(l)) = sum_d x_d l_d - softplus(l_d), shape (...,)."""
        return -self.nll_and_grad(x, validate=validate)[0]

    def log_prob_grad(self, x, weight=None, validate=True):
        """d sum(weight * log_prob(x)) / d logits = weight * (x - sigmoid(l)), shape (..., D)."""
        return -self.nll_and_grad(x, weight=weight, validate=validate)[1]

    def sample(self, rng, sample_shape=()):
        """Binary draws x = [u < sigmoid(l)], u ~ U(0, 1) from ``rng``; shape sample_shape + logits.shape."""
        xp = xp_of(self.logits)
        u = xp.asarray(rng.random(tuple(sample_shape) + tuple(self.logits.shape)))
        return (u < self.mean).astype(self.logits.dtype)

    def entropy(self):
        """H = sum_d softplus(-|l_d|) + |l_d| sigmoid(-|l_d|), shape (...,).

        This equals softplus(l) - l sigmoid(l) = -p log p - (1 - p) log(1 - p), written with |l|
        so both terms are positive and nothing cancels for large |l|.
        """
        xp = xp_of(self.logits)
        a = xp.abs(self.logits)
        return xp.sum(softplus(-a) + a * sigmoid(-a), axis=-1)

    def entropy_grad(self, weight=None):
        """d sum(weight * entropy) / d logits = -weight * l sigmoid(l) sigmoid(-l), shape (..., D)."""
        l = self.logits
        return -l * sigmoid(l) * sigmoid(-l) * _expand_weight(weight, self.batch_shape)


# ---------------------------------------------------------------------------------------------
# Categorical from logits
# ---------------------------------------------------------------------------------------------

class Categorical:
    """Cat(y | softmax(l)) over the last axis, e.g. the GMVAE's q_phi(y|x) or prior p(y).

    logits: (..., K) float; -inf logits are allowed (probability exactly 0).
    """

    def __init__(self, logits):
        check_array(logits, "logits")
        if logits.ndim < 1 or logits.shape[-1] < 1:
            raise DataError(f"expected logits of shape (..., K) with K >= 1, got {tuple(logits.shape)}")
        self.logits = logits

    def __repr__(self):
        return f"Categorical(shape={tuple(self.logits.shape)}, dtype={self.logits.dtype})"

    softmax_backward = staticmethod(softmax_backward)

    @property
    def K(self):
        return self.logits.shape[-1]

    @property
    def batch_shape(self):
        return self.logits.shape[:-1]

    @property
    def probs(self):
        """pi = softmax(l), shape (..., K)."""
        return softmax(self.logits)

    @property
    def log_probs(self):
        """log pi = log_softmax(l), shape (..., K)."""
        return log_softmax(self.logits)

    def _one_hot(self, y, validate):
        """y as a one-hot (..., K) array in the logits' dtype, from integer labels or one-hot."""
        xp = xp_of(self.logits)
        if not (isinstance(y, np.ndarray) or type(y).__module__.split(".")[0] == "cupy"):
            raise DataError(f"expected y to be an array, got {type(y).__name__}")
        if y.dtype.kind in "iu" and y.shape == self.batch_shape:
            if not validate:
                return (y[..., None] == xp.arange(self.K)).astype(self.logits.dtype)
            return one_hot(y, self.K, self.logits.dtype)
        if y.dtype.kind in "fiub" and y.shape == self.logits.shape:
            if validate:
                check_binary(y, "y")
                if not bool(xp.all(y.sum(axis=-1) == 1)):
                    raise DataError("expected y one-hot: each row must hold exactly one 1")
            return y.astype(self.logits.dtype, copy=False)
        raise DataError(f"expected y as integer labels of shape {tuple(self.batch_shape)} or one-hot "
                        f"of shape {tuple(self.logits.shape)}, got {y.dtype} of shape {tuple(y.shape)}")

    def log_prob(self, y, validate=True):
        """log pi_y = sum_k y_k log pi_k for integer labels (...,) or one-hot y (..., K); shape (...,)."""
        xp = xp_of(self.logits)
        logp = self.log_probs
        if y.dtype.kind in "iu" and y.shape == self.batch_shape:      # labels: gather, no 0 * -inf
            if validate:
                one_hot(y, self.K)                                     # raises on out-of-range labels
            return xp.take_along_axis(logp, y[..., None].astype(np.int64), axis=-1)[..., 0]
        yk = self._one_hot(y, validate)
        return xp.sum(yk * xp.where(yk != 0, logp, 0.0), axis=-1)      # 0 log 0 = 0, no 0 * -inf

    def log_prob_grad(self, y, weight=None, validate=True):
        """d sum(weight * log_prob(y)) / d logits = weight * (onehot(y) - pi), shape (..., K)."""
        return (self._one_hot(y, validate) - self.probs) * _expand_weight(weight, self.batch_shape)

    def entropy(self):
        """H = -sum_k pi_k log pi_k (0 log 0 = 0), shape (...,)."""
        xp = xp_of(self.logits)
        p, logp = self.probs, self.log_probs
        return -xp.sum(p * xp.where(p > 0, logp, 0.0), axis=-1)          # 0 log 0 = 0, no 0 * -inf

    def entropy_grad(self, weight=None):
        """d sum(weight * entropy) / d logits: dH/dl_k = -pi_k (log pi_k + H), shape (..., K).

        (Softmax backward of dH/dpi_k = -(log pi_k + 1); the constant 1 drops out.)
        """
        xp = xp_of(self.logits)
        p = self.probs
        logp = xp.where(p > 0, self.log_probs, 0.0)                     # p_k = 0 contributes 0
        H = -xp.sum(p * logp, axis=-1, keepdims=True)
        g = -p * (logp + H)
        return g * _expand_weight(weight, self.batch_shape)

    def kl(self, other, weight=None):
        """KL(self || other) = sum_k q_k (log q_k - log p_k) with gradients w.r.t. both logits.

        With q = softmax(l), p = softmax(m):
            dKL/dl_k = q_k (log q_k - log p_k - KL),      dKL/dm_k = p_k - q_k.
        Shapes broadcast.  Returns kl (batch,), weight * dKL/dl, weight * dKL/dm (each summed
        back to its own shape).
        """
        if not isinstance(other, Categorical):
            raise TypeError(f"expected a Categorical, got {type(other).__name__}")
        if other.K != self.K:
            raise DataError(f"expected two Categoricals over the same K, got {self.K} and {other.K}")
        xp = xp_of(self.logits)
        try:
            shape = np.broadcast_shapes(self.logits.shape, other.logits.shape)
        except ValueError:
            raise DataError(f"the Categoricals' shapes {tuple(self.logits.shape)} and "
                            f"{tuple(other.logits.shape)} do not broadcast") from None
        q, logq = self.probs, self.log_probs
        p, logp = other.probs, other.log_probs
        with np.errstate(invalid="ignore"):
            r = xp.where(q > 0, logq - logp, 0.0)                 # log q/p where q > 0 (0 log 0 = 0)
        kl = xp.sum(q * r, axis=-1)
        w = _expand_weight(weight, shape[:-1])
        dl = q * (r - kl[..., None]) * w
        dm = (p - q) * w
        return kl, _sum_to(dl, self.logits.shape), _sum_to(dm, other.logits.shape)

    def sample(self, rng, sample_shape=()):
        """Integer labels (sample_shape + batch_shape) by the Gumbel-max trick with ``rng``.

        y = argmax_k (l_k + g_k), g_k ~ Gumbel(0, 1) i.i.d., is exactly a draw from softmax(l);
        a category with logit -inf is never drawn.
        """
        xp = xp_of(self.logits)
        g = xp.asarray(rng.gumbel(size=tuple(sample_shape) + tuple(self.logits.shape)))
        return xp.argmax(self.logits + g.astype(self.logits.dtype), axis=-1).astype(np.int64)
