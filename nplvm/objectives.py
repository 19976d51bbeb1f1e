"""Objectives and estimators that every latent variable model shares.

Everything here works on **log importance weights**

    log w(x, z) = log p_theta(x, z) - log q_phi(z|x),        z ~ q_phi(z|x),

which a model hands over through its method ``log_weights(x, K, rng) -> (K, N)`` (K samples per
row of x, one column per example).  With them, bounds and likelihood estimates need no knowledge
of the model:

    ELBO        L_1(x) = E_q[log w]                                  (Jensen on log E_q[w])
    IWAE bound  L_k(x) = E[log (1/k) sum_{i=1}^k w_i] ,  z_i ~ q iid  (Burda et al., 2016)
                L_1 <= L_k <= L_{k+1} <= log p(x),  and L_k -> log p(x) as k -> infinity
    IS estimate log p(x) ~= log (1/K) sum_{i=1}^K w_i   for K in the thousands

One draw of ``log (1/k) sum_i w_i`` is an unbiased estimate of L_k, never of log p(x) itself:
the importance-sampled log-likelihood is a (consistent) *lower bound in expectation*.

Public API
----------
iwae_bound(log_w, axis=0)                  log (1/k) sum_i w_i, stable (log-mean-exp)
normalized_weights(log_w, axis=0)          w~_i = w_i / sum_j w_j (a softmax of the log weights)
effective_sample_size(log_w, axis=0)       1 / sum_i w~_i^2, between 1 and k
bounds_for_ks(log_w, ks)                   unbiased estimates of L_k for several k from one draw
importance_sampled_log_px(model, x, K, batch, rng, max_rows)   (N,) IS estimates, memory bounded
sample_log_weights(model, x, K, rng, max_rows)   all (K, N) log weights, drawn in bounded chunks
nelbo(model, x, rng, batch)                mean -L_1 from log_weights with K = 1
mean_loss(model, x, rng, batch)            the training objective averaged over a data set
elbo_presentations(log_px_z, log_pz, log_qz, ...)   the three ways to write the ELBO, numerically
score_function_gradient(f, eps, logvar)    REINFORCE / log-derivative estimator, Gaussian q
reparameterization_gradient(df_dz, eps, logvar)     the pathwise estimator, Gaussian q
estimator_summary(samples)                 mean, variance and standard error of per-draw estimates
"""
from __future__ import annotations

import math

import numpy as np

from .backend import rng as make_rng
from .backend import to_numpy
from .checks import DataError, check_array
from .distributions import logsumexp, reparameterize_backward, softmax

__all__ = [
    "iwae_bound", "normalized_weights", "effective_sample_size", "bounds_for_ks",
    "importance_sampled_log_px", "sample_log_weights", "nelbo", "mean_loss", "elbo_presentations",
    "score_function_gradient", "reparameterization_gradient", "estimator_summary",
]


# ----------------------------------------------------------------------------------------------
# Bounds from log weights
# ----------------------------------------------------------------------------------------------

def _check_log_w(log_w, name="log_w"):
    check_array(log_w, name)
    if log_w.ndim < 1 or log_w.shape[0] < 1:
        raise DataError(f"expected {name} of shape (k, ...) with k >= 1 samples, got {tuple(log_w.shape)}")
    return log_w


def iwae_bound(log_w, axis=0):
    """The k-sample bound for one draw: log (1/k) sum_i exp(log_w_i) along ``axis``.

    log_w: (k, N) log weights log p(x, z_i) - log q(z_i|x).  Returns (N,).  Computed as
    max + log mean exp(log_w - max), so weights of e^-300 or e^+300 neither underflow nor overflow.
    With k = 1 it returns log_w[0] itself: the single-sample ELBO.
    """
    _check_log_w(log_w)
    k = log_w.shape[axis]
    return logsumexp(log_w, axis=axis) - math.log(k)


def normalized_weights(log_w, axis=0):
    """w~_i = w_i / sum_j w_j, the self-normalized importance weights; (k, N) -> (k, N).

    They are what the gradient of the IWAE bound averages over (see models/vae.py):
    grad L_k = E[ sum_i w~_i grad log w_i ].  Each column sums to 1.
    """
    _check_log_w(log_w)
    return softmax(log_w, axis=axis)


def effective_sample_size(log_w, axis=0):
    """ESS = 1 / sum_i w~_i^2 along ``axis``: k when the weights are equal, 1 when one dominates."""
    w = normalized_weights(log_w, axis=axis)
    return 1.0 / np.sum(w * w, axis=axis)


def bounds_for_ks(log_w, ks):
    """Unbiased estimates of L_k for every k in ``ks`` from one (K, N) draw of log weights.

    The K samples are cut into floor(K / k) disjoint groups of k; each group gives one draw of
    log (1/k) sum_{i in group} w_i, and their average estimates L_k.  Returns a dict
    k -> (N,) float64 array.  Every k must be between 1 and K.
    """
    _check_log_w(log_w)
    log_w = np.asarray(to_numpy(log_w), dtype=np.float64)
    K = log_w.shape[0]
    out = {}
    for k in ks:
        k = int(k)
        if not 1 <= k <= K:
            raise ValueError(f"expected every k between 1 and K = {K}, got k = {k}")
        groups = K // k
        lw = log_w[: groups * k].reshape(groups, k, *log_w.shape[1:])
        out[k] = np.mean(logsumexp(lw, axis=1) - math.log(k), axis=0)
    return out


# ----------------------------------------------------------------------------------------------
# Evaluation over a data set
# ----------------------------------------------------------------------------------------------

def _batches(n, batch):
    if int(batch) != batch or batch < 1:
        raise ValueError(f"expected a positive integer batch size, got {batch!r}")
    for start in range(0, n, int(batch)):
        yield slice(start, min(start + int(batch), n))


def importance_sampled_log_px(model, x, K=5000, batch=100, rng=0, max_rows=20000, progress=None):
    """log p(x) ~= log (1/K) sum_{i=1}^K w_i per example, with memory bounded by ``max_rows``.

    model: anything with ``log_weights(x, K, rng) -> (K, N)``.  x: (N, D) (or the model's input
    shape).  K: samples per example (5000 in Burda et al.).  batch: examples per call.
    max_rows: at most this many (sample, example) pairs per ``log_weights`` call, so the decoder
    never sees more than ``max_rows`` rows at once; the K samples of a batch come in chunks of
    c = max(1, max_rows // batch).
    rng: a seed or Generator.  Returns (N,) float64 estimates (nats; -mean is the "NLL").

    Across chunks the log-mean-exp is accumulated stably: keeping m = max so far and
    s = sum_i exp(log_w_i - m), a new chunk with max m' gives m* = max(m, m') and
    s <- s exp(m - m*) + sum_chunk exp(log_w - m*).  At the end, log p(x) ~= m + log s - log K.
    The samples are drawn chunk after chunk from one Generator, so for a model that draws its
    noise sample-major (shape (K, N, ...)) the result does not depend on the chunk size.
    """
    if int(K) != K or K < 1:
        raise ValueError(f"expected a positive integer number of samples K, got {K!r}")
    if int(max_rows) != max_rows or max_rows < 1:
        raise ValueError(f"expected a positive integer max_rows, got {max_rows!r}")
    K = int(K)
    g = make_rng(rng)
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    for sl in _batches(n, batch):
        xb = x[sl]
        nb = xb.shape[0]
        chunk = max(1, min(K, int(max_rows) // nb))
        m = np.full(nb, -np.inf)
        s = np.zeros(nb)
        done = 0
        while done < K:
            c = min(chunk, K - done)
            lw = np.asarray(to_numpy(model.log_weights(xb, c, g)), dtype=np.float64)   # (c, nb)
            if lw.shape != (c, nb):
                raise DataError(f"expected log_weights to return shape ({c}, {nb}), got {lw.shape}")
            m_new = np.maximum(m, lw.max(axis=0))
            # rescale the running sum to the new shift, then add this chunk's terms
            with np.errstate(invalid="ignore"):
                s = s * np.exp(m - m_new) + np.sum(np.exp(lw - m_new), axis=0)
            m = m_new
            done += c
        out[sl] = m + np.log(s) - math.log(K)
        if progress is not None:
            progress(sl.stop, n)
    return out


def sample_log_weights(model, x, K, rng=0, max_rows=20000):
    """All K log weights per example, (K, N) float64, from ``log_weights`` calls of at most
    ``max_rows`` (sample, example) rows each; the same draws as one call with all K (sample-major
    noise).  Keep N small: the result itself is K x N."""
    g = make_rng(rng)
    n = x.shape[0]
    chunk = max(1, int(max_rows) // max(n, 1))
    parts, done = [], 0
    while done < K:
        c = min(chunk, K - done)
        parts.append(np.asarray(to_numpy(model.log_weights(x, c, g)), dtype=np.float64))
        done += c
    return np.concatenate(parts, axis=0)


def nelbo(model, x, rng=0, batch=500):
    """-ELBO in nats per example, averaged over x, from one sample per example: -mean log_weights(x, 1).

    This is the single-sample Monte Carlo ELBO (the KL estimated by sampling too), unbiased for
    any model with ``log_weights``, whatever objective it was trained with.
    """
    g = make_rng(rng)
    total = 0.0
    for sl in _batches(x.shape[0], batch):
        lw = np.asarray(to_numpy(model.log_weights(x[sl], 1, g)), dtype=np.float64)
        total += -float(lw.sum())
    return total / x.shape[0]


def mean_loss(model, x, rng=0, batch=500):
    """The model's own objective ``loss(x, rng, grad=False)[0]`` averaged over x in batches
    (weighted by size), without gradients."""
    g = make_rng(rng)
    total = 0.0
    for sl in _batches(x.shape[0], batch):
        value, _ = model.loss(x[sl], g, grad=False)
        total += float(value) * (sl.stop - sl.start)
    return total / x.shape[0]


# ----------------------------------------------------------------------------------------------
# The three presentations of the ELBO (lecture notes, "different presentations of the ELBO")
# ----------------------------------------------------------------------------------------------

def elbo_presentations(log_px_z, log_pz, log_qz, entropy=None, kl=None, log_px=None):
    """The ELBO written three ways, from S Monte Carlo draws z_s ~ q(z|x) per example.

    log_px_z, log_pz, log_qz: (S, N) values of log p(x|z_s), log p(z_s), log q(z_s|x).
    entropy, kl: optional (N,) closed forms of H[q(z|x)] and KL(q(z|x) || p(z)); when given they
    replace their Monte Carlo estimates in presentations I and II.  log_px: optional (N,) estimate
    of log p(x) (e.g. ``importance_sampled_log_px``).  Returns a dict of (N,) float64 arrays:

      "joint_plus_entropy"          I.   E_q[log p(x, z)] + H[q]
      "likelihood_minus_kl"         II.  E_q[log p(x|z)] - KL(q(z|x) || p(z))
      "evidence_minus_posterior_kl" III. log p(x) - KL(q(z|x) || p(z|x))   (when log_px is given)
      "posterior_kl"                KL(q(z|x) || p(z|x)) = log p(x) - ELBO >= 0 (when log_px is given)

    III uses KL(q || p(z|x)) = E_q[log q(z|x) - log p(x, z)] + log p(x), so it equals the MC
    ELBO identically; its content is the gap: log p(x) - ELBO is the posterior KL, never negative.
    """
    arrs = [np.asarray(to_numpy(a), dtype=np.float64) for a in (log_px_z, log_pz, log_qz)]
    for name, a in zip(("log_px_z", "log_pz", "log_qz"), arrs):
        if a.ndim != 2 or a.shape != arrs[0].shape:
            raise DataError(f"expected {name} of shape (S, N) like log_px_z {arrs[0].shape}, got {a.shape}")
    lpxz, lpz, lqz = arrs
    H = -lqz.mean(axis=0) if entropy is None else np.asarray(to_numpy(entropy), dtype=np.float64)
    KL = (lqz - lpz).mean(axis=0) if kl is None else np.asarray(to_numpy(kl), dtype=np.float64)
    out = {
        "joint_plus_entropy": (lpxz + lpz).mean(axis=0) + H,          # E_q log p(x,z) + H[q]
        "likelihood_minus_kl": lpxz.mean(axis=0) - KL,                # E_q log p(x|z) - KL(q||p)
    }
    if log_px is not None:
        lp = np.asarray(to_numpy(log_px), dtype=np.float64)
        post_kl = lp - (lpxz + lpz - lqz).mean(axis=0)                # E_q[log q - log p(x,z)] + log p(x)
        out["posterior_kl"] = post_kl
        out["evidence_minus_posterior_kl"] = lp - post_kl             # log p(x) - KL(q || p(z|x))
    return out


# ----------------------------------------------------------------------------------------------
# Gradient estimators for a diagonal Gaussian q(z) = N(mu, diag exp(logvar)), z = mu + sigma eps
# ----------------------------------------------------------------------------------------------

def score_function_gradient(f, eps, logvar, baseline=0.0):
    """Per-draw score-function (log-derivative, REINFORCE) estimates of grad E_q[f(z)].

    grad_xi E_q[f(z)] = E_q[f(z) grad_xi log q(z|xi)]   (grad q = q grad log q), and for the
    Gaussian, with z = mu + sigma eps:
        d log q / d mu     = (z - mu) / sigma^2 = eps / sigma
        d log q / d logvar = 1/2 ((z - mu)^2 / sigma^2 - 1) = 1/2 (eps^2 - 1)
    Subtracting a constant ``baseline`` b keeps it unbiased (E_q[grad log q] = 0) and can lower
    the variance.  f: (S, ...) values f(z_s) (one per draw, summed over the event axis already);
    eps: (S, ..., L); logvar: (..., L).  Returns (g_mu, g_logvar), each (S, ..., L).
    Needs only values of f: works for non-differentiable f, at the price of a high variance.
    """
    sigma = np.exp(0.5 * logvar)
    fb = (np.asarray(f) - baseline)[..., None]
    return fb * eps / sigma, fb * 0.5 * (eps * eps - 1.0)


def reparameterization_gradient(df_dz, eps, logvar):
    """Per-draw reparameterization (pathwise) estimates of grad E_q[f(z)].

    E_q[f(z)] = E_eps[f(mu + sigma eps)], so grad = E_eps[f'(z) dz/dxi] with
        dz/dmu = 1,  dz/dlogvar = 1/2 sigma eps.
    df_dz: (S, ..., L) gradients f'(z_s); eps like it; logvar (..., L).
    Returns (g_mu, g_logvar), each (S, ..., L).  Needs f differentiable in z.
    """
    return reparameterize_backward(df_dz, eps, logvar)


def estimator_summary(samples, axis=0):
    """mean, variance and standard error of the mean of per-draw estimates along ``axis``.

    Returns a dict of arrays: "mean", "var" (unbiased, ddof=1), "se" = sqrt(var / S), "n" = S.
    """
    a = np.asarray(samples, dtype=np.float64)
    S = a.shape[axis]
    if S < 2:
        raise ValueError(f"expected at least 2 draws to estimate a variance, got {S}")
    var = a.var(axis=axis, ddof=1)
    return {"mean": a.mean(axis=axis), "var": var, "se": np.sqrt(var / S), "n": S}
