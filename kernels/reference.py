"""The reference kernels, in plain NumPy: the *definition* every other backend is checked against.

Each kernel returns its value and its gradient together, the way a training step uses them.
All inputs are 2-D ``(N, D)`` arrays of one float dtype (float32 or float64); outputs keep it.

Sign convention: the Bernoulli and KL kernels return terms of the *loss* (-ELBO), so their
gradients are the ones backpropagation needs directly.  ``weight`` (a scalar or an ``(N,)``
array) multiplies the gradient of each row, never the value: it is how a caller folds in the
1/N of a mean, the importance weights of IWAE or the q(y|x) weights of a GMVAE in the same pass.

The Bernoulli formula, with l the logits, sigma(l) = 1 / (1 + exp(-l)) and
softplus(l) = log(1 + exp(l)):

    bernoulli_nll:     -log Bern(x | sigmoid(l)) = softplus(l) - x l        d/dl = sigma(l) - x

summed over D to give one value per row.  The KL between diagonal Gaussians and the fused
layer's backward are derived in their functions (``gaussian_kl``, ``linear_backward``).
"""
from __future__ import annotations

import numpy as np

ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid", "softplus", "elu")


def _weighted(g, weight):
    """g (N, D) times the row weights: None, a scalar or an (N,) array (NumPy or CuPy)."""
    if weight is None:
        return g
    if getattr(weight, "ndim", 0) == 0:
        return g * g.dtype.type(weight)
    return g * weight.astype(g.dtype, copy=False)[:, None]


def sigmoid(l):
    """Logistic function without overflow: exp is only ever taken of -|l|."""
    e = np.exp(-np.abs(l))
    return np.where(l >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(l.dtype, copy=False)


def softplus(l):
    """log(1 + exp(l)) = max(l, 0) + log1p(exp(-|l|)), finite for every finite l."""
    return np.maximum(l, 0) + np.log1p(np.exp(-np.abs(l)))


def bernoulli_nll(x, logits, weight=None):
    """Negative Bernoulli log-likelihood from logits, per row, and its gradient.

    x: (N, D) in {0, 1}; logits: (N, D).
    Returns nll (N,) = sum_d softplus(l) - x l, and dnll/dlogits (N, D) = weight * (sigmoid(l) - x).
    """
    nll = np.sum(softplus(logits) - x * logits, axis=1)
    return nll, _weighted(sigmoid(logits) - x, weight)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, weight=None):
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p))) per row, with gradients.

    All inputs (N, D).  Returns kl (N,), and the gradients w.r.t. mu_q, logvar_q, mu_p, logvar_p,
    each (N, D) and multiplied by the row's weight.  The one KL of the library: every model and
    ``gaussian_kl_std`` below call it (NumPy or CuPy arrays; no backend has a faster twin).
    """
    # SOLUTION kl-gradient: the KL between two diagonal Gaussians (N,) and its gradients w.r.t. mu_q, logvar_q, mu_p, logvar_p
    # HINT: with s = logvar_q, t = logvar_p: KL = 1/2 sum_d (t - s + (e^s + (mu_q - mu_p)^2) e^-t - 1).
    # HINT: form e^(s - t) directly (never e^s or e^t alone: they overflow); _weighted(g, weight) scales rows.
    inv_var_p = np.exp(-logvar_p)
    ratio = np.exp(logvar_q - logvar_p)          # var_q / var_p, without forming either alone
    diff = mu_q - mu_p
    d2 = diff * diff * inv_var_p                 # (mu_q - mu_p)^2 / var_p
    kl = 0.5 * np.sum(logvar_p - logvar_q + ratio + d2 - 1.0, axis=1)
    dmu_q = diff * inv_var_p
    dlogvar_q = 0.5 * (ratio - 1.0)
    dlogvar_p = 0.5 * (1.0 - ratio - d2)
    return (kl, _weighted(dmu_q, weight), _weighted(dlogvar_q, weight),
            _weighted(-dmu_q, weight), _weighted(dlogvar_p, weight))
    # END SOLUTION


def gaussian_kl_std(mu, logvar, weight=None):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row, with gradients w.r.t. mu and logvar.

    mu, logvar: (N, D).  Returns kl (N,), dkl/dmu (N, D), dkl/dlogvar (N, D): ``gaussian_kl``
    with mu_p = logvar_p = 0, that is 1/2 sum (e^logvar + mu^2 - 1 - logvar), mu, (e^logvar - 1)/2.
    """
    zero = np.zeros_like(mu)
    kl, dmu, dlogvar, _, _ = gaussian_kl(mu, logvar, zero, zero, weight)
    return kl, dmu, dlogvar


def matmul(a, b):
    """(M, K) @ (K, N) -> (M, N)."""
    return a @ b


def activate(h, act):
    """Apply an activation elementwise: one of ``ACTIVATIONS``."""
    if act == "identity":
        return h
    if act == "relu":
        return np.maximum(h, 0)
    if act == "tanh":
        return np.tanh(h)
    if act == "sigmoid":
        return sigmoid(h)
    if act == "softplus":
        return softplus(h)
    if act == "elu":                              # alpha = 1
        return np.where(h > 0, h, np.expm1(np.minimum(h, 0)))
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def activation_grad_from_output(y, act):
    """d act(h) / dh written in terms of the output y = act(h), so backward need not keep h."""
    if act == "identity":
        return np.ones_like(y)
    if act == "relu":
        return (y > 0).astype(y.dtype)
    if act == "tanh":
        return 1.0 - y * y
    if act == "sigmoid":
        return y * (1.0 - y)
    if act == "softplus":                         # sigma(h) = 1 - exp(-softplus(h))
        return -np.expm1(-y)
    if act == "elu":                              # h <= 0: exp(h) = y + 1
        return np.where(y > 0, 1.0, y + 1.0).astype(y.dtype)
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def linear_forward(x, W, b, act="identity"):
    """The fused layer y = act(x @ W + b).  x: (N, I), W: (I, O), b: (O,) -> y: (N, O)."""
    return activate(x @ W + b, act)


def linear_backward(dy, x, W, y, act="identity", need_dx=True):
    """Backward of ``linear_forward`` from the upstream gradient dy (N, O) and the saved x, y.

    Returns dx (N, I) (None if not need_dx), dW (I, O), db (O,).
    """
    # SOLUTION layer-backward: the fused layer's backward: dh = dy * act'(h) from y, dW = x^T dh, db = sum_n dh, dx = dh W^T (None unless need_dx)
    # HINT activation_grad_from_output(y, act) is act'(h), written in terms of the output y alone.
    # HINT h = x W + b: each of dW, db, dx is one line of NumPy; return them as (dx, dW, db).
    dh = dy * activation_grad_from_output(y, act)     # through the activation
    dW = x.T @ dh                                      # h = x W + b
    db = dh.sum(axis=0)
    dx = dh @ W.T if need_dx else None
    return dx, dW, db
    # END SOLUTION


def adam_step(p, g, m, v, lr, beta1, beta2, eps, t):
    """One Adam update (Kingma & Ba, 2015) in place on p, m, v; t is the 1-based step count.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    Moments smaller than the dtype's smallest normal number are flushed to zero: a parameter
    whose gradient stays zero would otherwise decay into denormals, which are very slow on CPUs.
    """
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * (g * g)
    tiny = np.finfo(p.dtype).tiny
    m[np.abs(m) < tiny] = 0.0
    v[v < tiny] = 0.0
    step = lr * np.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    p -= step * m / (np.sqrt(v) + eps * np.sqrt(1.0 - beta2 ** t))
