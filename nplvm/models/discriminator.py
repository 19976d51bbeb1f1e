r"""A discriminator T_psi(h): the second player of density-ratio models, and the density-ratio trick.

Density-ratio estimation = class-probability estimation (lecture notes 002, "Optimal prior")
--------------------------------------------------------------------------------------------
Label samples of a distribution q(h) with y = 1 and samples of p(h) with y = 0, as many of each
(pi = p*(y = 1) = 1/2).  Bayes' rule gives

    q(h) / p(h) = p*(y=1|h) / p*(y=0|h) * (1 - pi) / pi = D(h) / (1 - D(h)),   D(h) = p*(y=1|h).

A classifier D(h) = sigmoid(T_psi(h)) trained with the logistic loss

    max_psi  E_q[ln sigmoid(T_psi(h))] + E_p[ln(1 - sigmoid(T_psi(h)))]                      (DR)

reaches, pointwise, sigmoid(T*) = q / (p + q), i.e.

    T*(h) = ln q(h) / p(h),                                                                    (T*)

so the logit of the best classifier IS the log density ratio.  With ln sigmoid(t) = -softplus(-t)
and ln(1 - sigmoid(t)) = -softplus(t), the loss minimised here is the negative of (DR) on the two
sample sets h^q_1..h^q_n (y = 1) and h^p_1..h^p_m (y = 0):

    loss = (1/n) sum_i softplus(-T(h^q_i)) + (1/m) sum_j softplus(T(h^p_j))                   (L)
    dloss/dT(h^q_i) = -sigmoid(-T(h^q_i)) / n = (D(h^q_i) - 1) / n
    dloss/dT(h^p_j) =  sigmoid(T(h^p_j)) / m  =  D(h^p_j) / m

and these flow down the MLP by backpropagation (nn.MLP.backward) to psi -- and, when a model
backpropagates a term E_q[T(h)] into its encoder (the density-ratio prior, drvae.py), down to
the input h as well: ``backward(dT, cache)`` returns dT/dh.

Where the answer is known: for two Gaussians q = N(m_q, s_q^2), p = N(m_p, s_p^2) in one
dimension, ln q/p is a quadratic in h (``gaussian_log_ratio``); logistic regression on the
features (1, h, h^2) contains it, so its maximum-likelihood coefficients converge to the closed
form (``logistic_regression``, checked in tests/test_discriminator.py and lesson 18).

The contract of a second player (README, "Model contract")
-----------------------------------------------------------
``Discriminator`` has ``params`` (name -> live arrays its optimiser updates), ``loss(x, rng,
grad=True) -> (loss, grads)`` where x is the model's data minibatch and grads are fresh arrays the
caller owns, ``lr`` (its learning rate in ``nplvm.train.fit``) and ``config``.  It draws the two
sample sets through ``samples(x, rng) -> (h_q, h_p)``, a callable handed to the constructor --
typically a bound method of the model that owns it, so it holds its model: the density-ratio VAE
passes (z ~ q(z|x_batch), z ~ N(0, I)); a FactorVAE would pass (z ~ q(z|x), z with every column
permuted across the batch).  A model exposes it as ``model.discriminator``; ``fit`` steps it after
every model step on the same batch with its own optimiser and checkpoints it.

Public API
----------
Discriminator(samples, in_dim, hidden=(256, 256), activation="softplus", lr=None, dtype, seed)
    .forward(h) -> (T (N,), cache);  .backward(dT (N,), cache, need_dh=True) -> dT/dh (N, in_dim)
    .log_ratio(h) -> T(h) (N,), the estimate of ln q(h)/p(h);  .prob(h) -> D(h) = sigmoid(T(h))
    .loss_on(h_q, h_p, grad=True) -> (loss, grads)    (L) on given samples
    .loss(x, rng, grad=True) -> (loss, grads)         (L) on samples(x, rng): the contract
logistic_loss(t_q, t_p) -> (loss, dt_q, dt_p)          (L) and its gradient w.r.t. the logits
gaussian_log_ratio(h, m_q, v_q, m_p, v_p)             ln N(h|m_q,v_q) / N(h|m_p,v_p), the quadratic
quadratic_coefficients(m_q, v_q, m_p, v_p) -> (c0, c1, c2)   of that quadratic
logistic_regression(f_q, f_p, iters=50) -> (w, cov)   Newton's method on (L) with a linear T = f w
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import check_dtype, rng as make_rng
from ..checks import DataError, check_array, check_finite
from ..nn import MLP, sigmoid_forward, softplus_forward

__all__ = ["Discriminator", "logistic_loss", "gaussian_log_ratio", "quadratic_coefficients",
           "logistic_regression"]


def logistic_loss(t_q, t_p):
    """(L) on logits t_q (n,) of samples of q (label 1) and t_p (m,) of p (label 0).

    Returns (loss, dloss/dt_q (n,), dloss/dt_p (m,)):
        loss = mean softplus(-t_q) + mean softplus(t_p)          (= -[E_q ln D + E_p ln(1 - D)])
        dt_q = -sigmoid(-t_q) / n,   dt_p = sigmoid(t_p) / m.
    softplus and sigmoid are the overflow-free forms of nplvm.nn, so |t| = 1e4 is fine.
    """
    n, m = t_q.shape[0], t_p.shape[0]
    loss = float(np.mean(softplus_forward(-t_q)) + np.mean(softplus_forward(t_p)))
    dt_q = -sigmoid_forward(-t_q) / n                       # d softplus(-t)/dt = -sigmoid(-t)
    dt_p = sigmoid_forward(t_p) / m                         # d softplus(t)/dt = sigmoid(t)
    return loss, dt_q, dt_p


class Discriminator:
    """T_psi(h): an MLP in_dim -> hidden... -> 1 whose output is the logit of D(h) = p*(y=1|h).

    samples: callable (x, rng) -> (h_q (n, in_dim), h_p (m, in_dim)), the two sample sets
    (label 1 and label 0) for a data minibatch x; may be None for a stand-alone classifier used
    through ``loss_on``.  in_dim: size of h.  hidden: widths of the hidden layers.  activation:
    of the hidden layers (softplus by default: T and dT/dh are then smooth, which the encoder
    gradient through T of the density-ratio prior prefers).  lr: learning rate ``fit`` gives its
    optimiser (None: the model's).  dtype, seed: as for the models.
    """

    def __init__(self, samples, in_dim, hidden=(256, 256), activation="softplus", lr=None,
                 dtype="float32", seed=0):
        if samples is not None and not callable(samples):
            raise ValueError(f"expected samples to be a callable (x, rng) -> (h_q, h_p) or None, "
                             f"got {type(samples).__name__}")
        if int(in_dim) != in_dim or in_dim < 1:
            raise ValueError(f"expected a positive integer in_dim, got {in_dim!r}")
        hidden = [int(h) for h in hidden]
        if any(h < 1 for h in hidden):
            raise ValueError(f"expected positive hidden widths, got {hidden}")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"expected a positive finite lr (or None), got {lr!r}")
        self.samples = samples
        self.model = getattr(samples, "__self__", None)      # the model a bound method belongs to
        self.in_dim, self.hidden, self.activation = int(in_dim), hidden, activation
        self.lr = None if lr is None else float(lr)
        self.dtype = check_dtype(dtype)
        self.config = {"in_dim": self.in_dim, "hidden": hidden, "activation": activation,
                       "lr": self.lr, "dtype": self.dtype.name, "seed": int(seed)}
        self.net = MLP([self.in_dim, *hidden, 1], activation, make_rng(int(seed)), self.dtype)
        ps = self.net.parameters()
        self.params = {name: p.value for name, p in ps.items()}

    def __repr__(self):
        return f"Discriminator({self.net!r}, lr={self.lr})"

    def _check_h(self, h, name="h"):
        check_array(h, name, ndim=2, shape=(None, self.in_dim))
        return np.ascontiguousarray(h, dtype=self.dtype)

    # -- T_psi and its backward -------------------------------------------------------------------
    def forward(self, h):
        """h (N, in_dim) -> (T(h) (N,), cache).  No input checks beyond the MLP's (hot path)."""
        t, cache = self.net.forward(h)
        return t[:, 0], cache

    def backward(self, dT, cache, need_dh=True):
        """dT = dL/dT (N,) -> dL/dh (N, in_dim) (None when need_dh is False).

        The parameter gradients are ADDED to the network's (nn convention); ``loss`` and
        ``loss_on`` start from fresh ones (``release_grads``), so a model that backpropagates
        through T (and thereby adds to them) does not disturb the discriminator's own step.
        """
        return self.net.backward(dT.reshape(-1, 1), cache, need_dx=need_dh)

    def log_ratio(self, h):
        """T_psi(h) (N,): the estimate of ln q(h) / p(h), (T*)."""
        return self.forward(self._check_h(h))[0].copy()

    def prob(self, h):
        """D(h) = sigmoid(T_psi(h)) (N,): the estimated p*(y = 1 | h)."""
        return sigmoid_forward(self.log_ratio(h))

    # -- the logistic loss --------------------------------------------------------------------------
    def loss_on(self, h_q, h_p, grad=True):
        """(L) on given samples h_q (n, in_dim) of q (label 1) and h_p (m, in_dim) of p (label 0).

        Returns (loss, grads): grads name -> fresh arrays (the caller owns them); (loss, None) with
        grad=False.  Both sets go through the MLP in one pass (rows stacked).
        """
        h_q, h_p = self._check_h(h_q, "h_q"), self._check_h(h_p, "h_p")
        if h_q.shape[0] == 0 or h_p.shape[0] == 0:
            raise DataError(f"expected two non-empty sample sets, got {h_q.shape[0]} and {h_p.shape[0]} rows")
        n = h_q.shape[0]
        t, cache = self.forward(np.concatenate([h_q, h_p], axis=0))
        loss, dt_q, dt_p = logistic_loss(t[:n], t[n:])
        if not grad:
            return loss, None
        self.net.release_grads()                           # this call's grads: new arrays
        self.backward(np.concatenate([dt_q, dt_p]), cache, need_dh=False)
        return loss, self.net.take_grads()

    def loss(self, x, rng, grad=True):
        """The contract: (L) on ``samples(x, rng)``, the two sample sets drawn for minibatch x."""
        if self.samples is None:
            raise ValueError("this Discriminator has no samples callable; use loss_on(h_q, h_p)")
        h_q, h_p = self.samples(x, make_rng(rng))
        return self.loss_on(h_q, h_p, grad)


# ----------------------------------------------------------------------------------------------
# Where the answer is known: two Gaussians
# ----------------------------------------------------------------------------------------------

def quadratic_coefficients(m_q, v_q, m_p, v_p):
    """(c0, c1, c2) with ln N(h|m_q, v_q) - ln N(h|m_p, v_p) = c0 + c1 h + c2 h^2 (1-D, variances v).

        ln N(h|m, v) = -1/2 ln(2 pi v) - (h - m)^2 / (2 v), so
        c2 = 1/(2 v_p) - 1/(2 v_q),   c1 = m_q / v_q - m_p / v_p,
        c0 = m_p^2 / (2 v_p) - m_q^2 / (2 v_q) + 1/2 ln(v_p / v_q).
    """
    for name, v in (("v_q", v_q), ("v_p", v_p)):
        if not v > 0:
            raise ValueError(f"expected a positive variance {name}, got {v!r}")
    c2 = 0.5 / v_p - 0.5 / v_q
    c1 = m_q / v_q - m_p / v_p
    c0 = 0.5 * m_p * m_p / v_p - 0.5 * m_q * m_q / v_q + 0.5 * math.log(v_p / v_q)
    return c0, c1, c2


def gaussian_log_ratio(h, m_q, v_q, m_p, v_p):
    """ln q(h)/p(h) for q = N(m_q, v_q), p = N(m_p, v_p) in one dimension, at h (any shape)."""
    c0, c1, c2 = quadratic_coefficients(m_q, v_q, m_p, v_p)
    return c0 + c1 * h + c2 * h * h


def logistic_regression(f_q, f_p, iters=50, tol=1e-12):
    """Maximum-likelihood logistic regression with T(h) = f(h) w: Newton's method on (L).

    f_q (n, F), f_p (m, F): features of the samples of q (label 1) and of p (label 0), float64.
    Minimises sum_i softplus(-f_q,i w) + sum_j softplus(f_p,j w) (the sum, so the Hessian is the
    observed Fisher information): gradient g = -f_q^T sigmoid(-f_q w) + f_p^T sigmoid(f_p w),
    Hessian H = sum_i s_i (1 - s_i) f_i f_i^T over all rows (s = sigmoid(f w)).
    Returns (w (F,), cov (F, F) = H^-1 at w, the asymptotic covariance of the estimate).
    """
    f_q, f_p = np.asarray(f_q, np.float64), np.asarray(f_p, np.float64)
    for name, f in (("f_q", f_q), ("f_p", f_p)):
        check_array(f, name, ndim=2)
        check_finite(f, name)
    if f_q.shape[1] != f_p.shape[1]:
        raise DataError(f"expected f_q and f_p with the same number of features, got {f_q.shape[1]} and {f_p.shape[1]}")
    f = np.concatenate([f_q, f_p])
    w = np.zeros(f.shape[1])
    for _ in range(int(iters)):
        s = sigmoid_forward(f @ w)
        g = -f_q.T @ (1 - s[:len(f_q)]) + f_p.T @ s[len(f_q):]
        H = (f * (s * (1 - s))[:, None]).T @ f
        step = np.linalg.solve(H, g)
        w -= step
        if np.max(np.abs(step)) < tol:
            break
    s = sigmoid_forward(f @ w)
    H = (f * (s * (1 - s))[:, None]).T @ f
    return w, np.linalg.inv(H)
