"""Optimisers: SGD (with momentum), Adam, Adagrad; and gradient clipping.

Common API (the model contract gives ``params`` and ``grads`` as dicts name -> array):

    opt.step(params, grads)        update every array of params IN PLACE; state keyed by name
    opt.state_dict()               flat dict of scalars and arrays (save with np.savez)
    opt.load_state_dict(d)         restore it; continuing gives bit-identical updates
    clip_grad_norm(grads, max_norm) -> total norm before clipping (scales grads in place)

Clipping belongs before the update: either call ``clip_grad_norm`` yourself before ``step`` or
give the optimiser ``max_grad_norm``, and it clips inside ``step`` (``last_grad_norm`` then
holds the norm it saw).
"""
from __future__ import annotations

import math

import numpy as np

import kernels

from .backend import to_numpy, xp_of
from .checks import optional, positive_float, unit_interval

__all__ = ["Optimizer", "SGD", "Adam", "Adagrad", "clip_grad_norm", "global_grad_norm"]


def global_grad_norm(grads):
    """sqrt(sum over every array g of sum_i g_i^2), accumulated in float64 (a Python float)."""
    total = 0.0
    for g in grads.values():
        xp = xp_of(g)
        total += float(xp.sum(xp.square(g.astype(np.float64, copy=False))))
    return math.sqrt(total)


def clip_grad_norm(grads, max_norm):
    """Rescale all gradients together so their global norm is at most ``max_norm``.

    ||g|| = sqrt(sum over parameters of sum g^2).  If ||g|| > max_norm every array is multiplied
    in place by max_norm / ||g|| (the direction is kept).  Returns ||g|| before clipping.  A NaN or
    inf norm is returned as is and nothing is scaled: the caller decides (skip the step, stop).
    """
    max_norm = positive_float("max_norm", max_norm)
    total = global_grad_norm(grads)
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / total
        for g in grads.values():
            g *= g.dtype.type(scale)
    return total


class Optimizer:
    """Shared machinery: hyperparameters, per-parameter state, checkpoints, clipping."""

    kind = "optimizer"
    hyper: tuple[str, ...] = ("lr",)     # scalar hyperparameters saved in state_dict
    slots: tuple[str, ...] = ()          # per-parameter state arrays, e.g. ("m", "v")

    def __init__(self, lr, max_grad_norm=None):
        self.lr = positive_float("lr (learning rate)", lr)
        self.max_grad_norm = optional(positive_float, "max_grad_norm", max_grad_norm)
        self.t = 0                                     # number of steps taken
        self.state: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slots}
        self.last_grad_norm = None

    def __repr__(self):
        hp = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyper)
        return f"{type(self).__name__}({hp})"

    # -- the update ---------------------------------------------------------------------------------
    def _slot(self, slot, name, p):
        """The state array ``slot`` of parameter ``name``, created as zeros on first use."""
        s = self.state[slot]
        xp = xp_of(p)
        if name not in s:
            s[name] = xp.zeros_like(p)
        elif xp_of(s[name]) is not xp:                 # loaded from a checkpoint onto another device
            s[name] = xp.asarray(s[name])
        if s[name].shape != p.shape or s[name].dtype != p.dtype:
            raise ValueError(f"optimiser state {slot}[{name!r}] has shape {s[name].shape} "
                             f"{s[name].dtype}, parameter {p.shape} {p.dtype}")
        return s[name]

    def step(self, params, grads):
        """One update of every parameter, in place.  grads: a dict with the keys of params."""
        missing = [k for k in params if k not in grads]
        if missing:
            raise KeyError(f"no gradient for parameter(s) {missing}")
        for k, p in params.items():
            if grads[k].shape != p.shape:
                raise ValueError(f"gradient of {k!r} has shape {tuple(grads[k].shape)}, "
                                 f"parameter {tuple(p.shape)}")
        if self.max_grad_norm is not None:
            self.last_grad_norm = clip_grad_norm({k: grads[k] for k in params}, self.max_grad_norm)
        self.t += 1
        for k, p in params.items():
            g = grads[k]
            if g.dtype != p.dtype:
                g = g.astype(p.dtype)
            self._update(k, p, g)

    def _update(self, name, p, g):
        raise NotImplementedError

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self):
        """Flat dict: "kind", "t", the hyperparameters, and "<slot>/<parameter>" arrays (copies)."""
        d = {"kind": self.kind, "t": self.t}
        d.update({k: getattr(self, k) for k in self.hyper})
        for slot, arrays in self.state.items():
            for name, a in arrays.items():
                d[f"{slot}/{name}"] = to_numpy(a).copy()
        return d

    def load_state_dict(self, d):
        """Restore from ``state_dict()`` (or an np.load of it: 0-d arrays are accepted).

        State arrays are copied; they move to the parameters' device on the next step if needed.
        """
        kind = str(np.asarray(d["kind"])) if "kind" in d else None
        if kind != self.kind:
            raise ValueError(f"expected a state dict of a {self.kind} optimiser, got kind {kind!r}")
        self.t = int(np.asarray(d["t"]))
        for k in self.hyper:
            setattr(self, k, float(np.asarray(d[k])))
        self.state = {s: {} for s in self.slots}
        for key, a in d.items():
            if "/" in key:
                slot, name = key.split("/", 1)
                if slot not in self.state:
                    raise ValueError(f"unknown state {key!r} for a {self.kind} optimiser")
                self.state[slot][name] = np.array(a, copy=True)


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (heavy-ball) momentum.

        v <- momentum * v + g
        p <- p - lr * v

    (momentum = 0: p <- p - lr * g.)
    """

    kind = "sgd"
    hyper = ("lr", "momentum")
    slots = ("velocity",)

    def __init__(self, lr, momentum=0.0, max_grad_norm=None):
        super().__init__(lr, max_grad_norm)
        self.momentum = unit_interval("momentum", momentum)

    def _update(self, name, p, g):
        if self.momentum == 0.0:
            p -= p.dtype.type(self.lr) * g
            return
        v = self._slot("velocity", name, p)
        v *= p.dtype.type(self.momentum)
        v += g                                          # v <- mu v + g
        p -= p.dtype.type(self.lr) * v                  # p <- p - lr v


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), through the fused kernel ``kernels.adam_step``.

        m <- b1 m + (1 - b1) g,            v <- b2 v + (1 - b2) g^2
        m_hat = m / (1 - b1^t),            v_hat = v / (1 - b2^t)
        p <- p - lr m_hat / (sqrt(v_hat) + eps)

    The kernel flushes moments below the dtype's smallest normal number to 0: a parameter whose
    gradient stays zero would otherwise decay into denormals, which slow float32 training.
    """

    kind = "adam"
    hyper = ("lr", "beta1", "beta2", "eps")
    slots = ("m", "v")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, max_grad_norm=None):
        super().__init__(lr, max_grad_norm)
        self.beta1 = unit_interval("beta1", beta1)
        self.beta2 = unit_interval("beta2", beta2)
        self.eps = positive_float("eps", eps)

    def _update(self, name, p, g):
        m = self._slot("m", name, p)
        v = self._slot("v", name, p)
        kernels.adam_step(p, g, m, v, self.lr, self.beta1, self.beta2, self.eps, self.t)


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011), the optimiser of the AEVB paper (Kingma & Welling, 2014).

        G <- G + g^2
        p <- p - lr g / (sqrt(G) + eps)
    """

    kind = "adagrad"
    hyper = ("lr", "eps")
    slots = ("G",)

    def __init__(self, lr, eps=1e-10, max_grad_norm=None):
        super().__init__(lr, max_grad_norm)
        self.eps = positive_float("eps", eps)

    def _update(self, name, p, g):
        xp = xp_of(p)
        G = self._slot("G", name, p)
        G += g * g                                          # G <- G + g^2
        p -= p.dtype.type(self.lr) * g / (xp.sqrt(G) + p.dtype.type(self.eps))
