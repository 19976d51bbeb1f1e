"""Hand-written neural-network layers: every forward has a backward derived by hand.

No autograd.  Each layer is a pair of functions, forward and backward, with a thin object on top
that owns the parameters:

    y, cache = module.forward(x)          # cache: exactly what backward needs, nothing more
    dx = module.backward(dy, cache)       # dy = dL/dy, dx = dL/dx; parameter grads ACCUMULATE

The forward *returns* its cache instead of keeping it inside the object.  That is what lets one
module be used several times before any backward: the VRNN applies the same GRU cell at every
time step (backpropagation through time), the GMVAE runs one encoder on several inputs.  Each
call gets its own cache, and each backward adds (+=) its contribution to ``Parameter.grad``, so
the gradient of a reused module is the sum over its uses, as the chain rule says.  Call
``zero_grad()`` before a new loss.

Shapes: a batch is a 2-D array ``(N, D)``, one example per row.  A layer ``x -> x W + b`` stores
``W`` as ``(n_in, n_out)``, so the code reads like the row-vector equations.

Initialisation (from a seeded ``numpy.random.Generator``; an int seed is accepted too):

* Glorot/Xavier uniform for ``identity``, ``tanh`` and ``sigmoid`` layers:
  ``W ~ U(-a, a)``, ``a = sqrt(6 / (n_in + n_out))`` (Var W = 2 / (n_in + n_out)),
* He uniform for ``relu``, ``elu`` and ``softplus`` layers:
  ``W ~ U(-a, a)``, ``a = sqrt(6 / n_in)`` (Var W = 2 / n_in, He et al. 2015),
* biases zero.

Weights are drawn in float64 and then cast, so a float32 and a float64 module built from the same
seed hold the same numbers up to rounding.

Public API
----------
Parameter(value)                      .value, .grad
Module                                parameters(), param_arrays(), grad_arrays(), zero_grad(),
                                      release_grads(), take_grads(prefix), astype(dtype),
                                      load_param_arrays(arrays)
Linear(n_in, n_out, rng, dtype, activation, init)   fused y = act(x W + b) (kernels.linear_*)
ReLU, Tanh, Sigmoid, Softplus, ELU, Identity        standalone activations, no parameters
<act>_forward(x) -> y, <act>_backward(dy, y) -> dx  the functional pairs behind them
MLP(sizes, activation, rng, dtype, out_activation)  a stack of fused Linear layers
GRUCell(n_in, n_hidden, rng, dtype)                 one GRU step, h_new, cache = forward(x, h)
gru_forward(params, x, h), gru_backward(params, grads, dh_new, cache)   the functional GRU
gru_fuse(params) -> fused                   W (3, n_in, H), U (3, H, H), b (3, 1, H): gates r, u, c stacked
gru_input_side(fused, x, out=None) -> a     x W_g + b_g (3, M, H), e.g. for all steps at once
gru_step_forward(fused, a, h, rh=None) -> h_new            one step given its input side
gru_step_backward(fused, dh_new, h, gates, da=None) -> (da, dh)   recurrent products only
gru_input_grad(fused, da, add_to=None) -> dx    dL/dx = sum_g da_g W_g^T
gru_fused_grads(grads, x, h, rh, da)        parameter grads of many steps, one product each
"""
from __future__ import annotations

import numpy as np

import kernels
from kernels.reference import ACTIVATIONS, activate, activation_grad_from_output

from .backend import check_dtype, rng as make_rng, xp_of
from .checks import DataError, check_array

__all__ = [
    "Parameter", "Module", "Linear", "MLP", "GRUCell",
    "Identity", "ReLU", "Tanh", "Sigmoid", "Softplus", "ELU",
    "identity_forward", "identity_backward", "relu_forward", "relu_backward",
    "tanh_forward", "tanh_backward", "sigmoid_forward", "sigmoid_backward",
    "softplus_forward", "softplus_backward", "elu_forward", "elu_backward",
    "ACTIVATION_FUNCTIONS", "GRU_PARAM_NAMES", "gru_forward", "gru_backward",
    "gru_fuse", "gru_input_side", "gru_step_forward", "gru_step_backward",
    "gru_input_grad", "gru_fused_grads",
    "glorot_uniform", "he_uniform", "default_init",
]


# ----------------------------------------------------------------------------------------------
# Parameters and modules
# ----------------------------------------------------------------------------------------------

class Parameter:
    """A trainable array and the gradient accumulated for it.

    ``value``: the array (the optimiser updates it in place).  ``grad``: dL/dvalue, same shape and
    dtype, zero-initialised; backward passes add to it, ``zero_grad`` resets it.
    """

    __slots__ = ("value", "grad")

    def __init__(self, value):
        check_array(value, "parameter value")
        check_dtype(value.dtype)
        self.value = value
        self.grad = xp_of(value).zeros_like(value)

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    def add_grad(self, g):
        """grad += g.  After ``Module.release_grads`` (grad None) g itself becomes the gradient:
        g must then be an array this call made (a layer's fresh dW), never a view of another."""
        if self.grad is None:
            self.grad = g
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={tuple(self.value.shape)}, dtype={self.value.dtype})"


class Module:
    """Base class: finds its Parameters and sub-Modules among its attributes.

    Attributes that are a ``Parameter``, a ``Module``, or a list/tuple/dict of Modules are
    collected in the order they were assigned, with dotted names for nested modules:
    an MLP's first weight is ``"layers.0.W"``.  A Parameter shared by two sub-modules is listed
    once, under the first name found.
    """

    def parameters(self) -> dict[str, Parameter]:
        """name -> Parameter, dotted names for nested modules."""
        out: dict[str, Parameter] = {}
        seen: set[int] = set()
        self._collect("", out, seen)
        return out

    def _collect(self, prefix, out, seen):
        for attr, v in vars(self).items():
            if isinstance(v, Parameter):
                if id(v) not in seen:
                    seen.add(id(v))
                    out[prefix + attr] = v
            elif isinstance(v, Module):
                v._collect(f"{prefix}{attr}.", out, seen)
            elif isinstance(v, (list, tuple)) and v and all(isinstance(m, Module) for m in v):
                for i, m in enumerate(v):
                    m._collect(f"{prefix}{attr}.{i}.", out, seen)
            elif isinstance(v, dict) and v and all(isinstance(m, Module) for m in v.values()):
                for k, m in v.items():
                    m._collect(f"{prefix}{attr}.{k}.", out, seen)

    def param_arrays(self) -> dict[str, np.ndarray]:
        """name -> the live ``.value`` array (update it in place to change the module).

        Fetch it again after ``astype``, which replaces the arrays.
        """
        return {k: p.value for k, p in self.parameters().items()}

    def grad_arrays(self) -> dict[str, np.ndarray]:
        """name -> the live ``.grad`` array, the same keys as ``param_arrays``."""
        return {k: p.grad for k, p in self.parameters().items()}

    def zero_grad(self):
        """Set every gradient to zero in place (arrays from ``grad_arrays`` stay valid)."""
        for p in self.parameters().values():
            if p.grad is None:
                p.grad = xp_of(p.value).zeros_like(p.value)
            else:
                p.grad[...] = 0
        return self

    def release_grads(self):
        """Forget the gradients without touching their arrays: the next backward writes into new
        arrays (``Parameter.add_grad``), so gradients a caller took from an earlier call stay as
        they were.  This is how a model's ``loss`` returns gradient arrays the caller owns, with
        no copy and no zero fill.  Collect them with ``take_grads``."""
        for p in self.parameters().values():
            p.grad = None
        return self

    def take_grads(self, prefix=""):
        """name -> this call's gradient (zeros for a parameter no backward reached), keyed like
        ``param_arrays`` with ``prefix`` in front, handed over: the module lets go of them
        (``release_grads``), so no later backward can add to arrays the caller holds."""
        out = {}
        for k, p in self.parameters().items():
            out[prefix + k] = xp_of(p.value).zeros_like(p.value) if p.grad is None else p.grad
            p.grad = None
        return out

    def astype(self, dtype):
        """Cast every parameter (value and grad) to float32 or float64, in place; returns self."""
        dt = check_dtype(dtype)
        for p in self.parameters().values():
            p.value = p.value.astype(dt)
            p.grad = None if p.grad is None else p.grad.astype(dt)
        return self

    class _ParamDtype:
        """``module.dtype``: the dtype of its first parameter (None if it has none).

        Read-only in spirit but a non-data descriptor, so a subclass that assigns its own
        ``self.dtype = ...`` simply shadows it instead of failing.
        """

        def __get__(self, obj, objtype=None):
            if obj is None:
                return self
            p = next(iter(obj.parameters().values()), None)
            return None if p is None else p.value.dtype

    dtype = _ParamDtype()

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return int(sum(p.value.size for p in self.parameters().values()))

    def load_param_arrays(self, arrays):
        """Copy values from a dict like ``param_arrays()`` into the parameters, in place.

        Every name must be present with the same shape; the dtype is converted to the module's.
        """
        params = self.parameters()
        missing = sorted(set(params) - set(arrays))
        extra = sorted(set(arrays) - set(params))
        if missing or extra:
            raise DataError(f"parameter names do not match: missing {missing}, unexpected {extra}")
        for k, p in params.items():
            a = arrays[k]
            if tuple(a.shape) != tuple(p.value.shape):
                raise DataError(f"expected parameter {k!r} of shape {tuple(p.value.shape)}, "
                                f"got {tuple(a.shape)}")
            p.value[...] = a
        return self


def _check_input(x, name, n_features, dtype):
    """x must be (N, n_features) of the parameters' dtype; a DataError names expected vs got."""
    check_array(x, name, ndim=2, shape=(None, n_features))
    if x.dtype != dtype:
        raise DataError(f"expected {name} of dtype {dtype} (the dtype of the module's parameters), "
                        f"got {x.dtype}; cast the input with .astype({dtype}) or the module with "
                        f".astype({x.dtype})")
    return x


def _check_grad(dy, name, like):
    """An upstream gradient must have exactly the shape and dtype of the output it belongs to."""
    check_array(dy, name)
    if tuple(dy.shape) != tuple(like.shape):
        raise DataError(f"expected {name} of shape {tuple(like.shape)} (the forward output's), "
                        f"got {tuple(dy.shape)}")
    if dy.dtype != like.dtype:
        raise DataError(f"expected {name} of dtype {like.dtype} (the forward output's), got {dy.dtype}")
    return dy


# ----------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------

def glorot_uniform(n_in, n_out, rng, dtype=np.float32):
    """W ~ U(-a, a) with a = sqrt(6 / (n_in + n_out)), so Var W = 2 / (n_in + n_out). (n_in, n_out)"""
    a = np.sqrt(6.0 / (n_in + n_out))
    return make_rng(rng).uniform(-a, a, size=(n_in, n_out)).astype(check_dtype(dtype))


def he_uniform(n_in, n_out, rng, dtype=np.float32):
    """W ~ U(-a, a) with a = sqrt(6 / n_in), so Var W = 2 / n_in (He et al. 2015). (n_in, n_out)"""
    a = np.sqrt(6.0 / n_in)
    return make_rng(rng).uniform(-a, a, size=(n_in, n_out)).astype(check_dtype(dtype))


_INITS = {"glorot": glorot_uniform, "he": he_uniform}


def default_init(activation) -> str:
    """'he' for relu, elu and softplus layers; 'glorot' for identity, tanh and sigmoid."""
    return "he" if activation in ("relu", "elu", "softplus") else "glorot"


# ----------------------------------------------------------------------------------------------
# Activations: functional pairs.  Backward is written in terms of the saved OUTPUT y = act(x),
# so a layer keeps y (which the next layer needs anyway) and not its pre-activation.  The one
# table of activations and their derivatives is ``kernels.reference.activate`` /
# ``activation_grad_from_output`` (the Numba and CUDA layer kernels are its compiled twins,
# checked against it); the pairs below name its entries.
# ----------------------------------------------------------------------------------------------

def _pair(name, forward_doc, backward_doc):
    def forward(x):
        return activate(x, name)

    def backward(dy, y):
        return dy * activation_grad_from_output(y, name)

    forward.__name__, backward.__name__ = f"{name}_forward", f"{name}_backward"
    forward.__doc__, backward.__doc__ = forward_doc, backward_doc
    return forward, backward


identity_forward, identity_backward = _pair("identity", "y = x.", "dx = dy.")
relu_forward, relu_backward = _pair(
    "relu", "y = max(x, 0).",
    "dx = dy * [x > 0] = dy * [y > 0]  (the subgradient 0 is taken at the kink x = 0).")
tanh_forward, tanh_backward = _pair("tanh", "y = tanh(x).", "dx = dy * (1 - tanh(x)^2) = dy * (1 - y^2).")
sigmoid_forward, sigmoid_backward = _pair(
    "sigmoid", "y = sigma(x) = 1 / (1 + exp(-x)), computed with exp(-|x|) only, so it never overflows.",
    "dx = dy * sigma(x) (1 - sigma(x)) = dy * y (1 - y).")
softplus_forward, softplus_backward = _pair(
    "softplus", "y = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), finite for every finite x.",
    "dx = dy * sigma(x), and sigma(x) = 1 - exp(-softplus(x)) = -expm1(-y).")
elu_forward, elu_backward = _pair(
    "elu", "y = x for x > 0, exp(x) - 1 for x <= 0 (alpha = 1).",
    "dx = dy * 1 for x > 0, dy * exp(x) = dy * (y + 1) for x <= 0.")


ACTIVATION_FUNCTIONS = {
    "identity": (identity_forward, identity_backward),
    "relu": (relu_forward, relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "softplus": (softplus_forward, softplus_backward),
    "elu": (elu_forward, elu_backward),
}
assert set(ACTIVATION_FUNCTIONS) == set(ACTIVATIONS)


def _check_activation(activation):
    if activation not in ACTIVATION_FUNCTIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {tuple(ACTIVATION_FUNCTIONS)}")
    return activation


class _Activation(Module):
    """An elementwise activation as a module: no parameters; the cache is the output y."""

    name = "identity"

    def forward(self, x):
        """x: any shape, float -> (y same shape, cache = y)."""
        check_array(x, "x")
        y = ACTIVATION_FUNCTIONS[self.name][0](x)
        return y, y

    def backward(self, dy, cache):
        """dL/dy -> dL/dx (same shape)."""
        y = cache
        _check_grad(dy, "dy", y)
        return ACTIVATION_FUNCTIONS[self.name][1](dy, y)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Identity(_Activation):
    name = "identity"


class ReLU(_Activation):
    name = "relu"


class Tanh(_Activation):
    name = "tanh"


class Sigmoid(_Activation):
    name = "sigmoid"


class Softplus(_Activation):
    name = "softplus"


class ELU(_Activation):
    name = "elu"


# ----------------------------------------------------------------------------------------------
# The fused affine + activation layer
# ----------------------------------------------------------------------------------------------

class Linear(Module):
    """The fused layer y = act(x W + b).

    x: (N, n_in), W: (n_in, n_out), b: (n_out,), y: (N, n_out).  ``activation`` is one of
    identity, relu, tanh, sigmoid, softplus, elu.  ``init``: "auto" (He for relu/elu/softplus,
    Glorot otherwise; see the module docstring), "glorot" or "he"; the bias starts at zero.
    Forward and backward run the fused kernels ``kernels.linear_forward`` / ``linear_backward``.
    """

    def __init__(self, n_in, n_out, rng, dtype=np.float32, activation="identity", init="auto"):
        if int(n_in) != n_in or int(n_out) != n_out or n_in < 1 or n_out < 1:
            raise ValueError(f"expected positive integer sizes, got n_in={n_in!r}, n_out={n_out!r}")
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.activation = _check_activation(activation)
        self.init = default_init(activation) if init == "auto" else init
        if self.init not in _INITS:
            raise ValueError(f"unknown init {init!r}; expected 'auto', 'glorot' or 'he'")
        dt = check_dtype(dtype)
        self.W = Parameter(_INITS[self.init](self.n_in, self.n_out, make_rng(rng), dt))
        self.b = Parameter(np.zeros(self.n_out, dtype=dt))

    def forward(self, x):
        """x (N, n_in) -> y = act(x W + b) (N, n_out), cache = (x, y)."""
        _check_input(x, "x", self.n_in, self.W.value.dtype)
        y = kernels.linear_forward(x, self.W.value, self.b.value, self.activation)
        return y, (x, y)

    def backward(self, dy, cache, need_dx=True):
        """dy = dL/dy (N, n_out) -> dL/dx (N, n_in), or None when ``need_dx`` is False.

        With h = x W + b and y = act(h):  dh = dy * act'(h),  dL/dW = x^T dh,  dL/db = sum_n dh,
        dL/dx = dh W^T.  dL/dW and dL/db are ADDED to ``W.grad`` and ``b.grad``.
        """
        x, y = cache
        _check_grad(dy, "dy", y)
        # The math is kernels.reference.linear_backward (homework 'layer-backward'), the one
        # function that holds it (the Numba and CUDA kernels are its fast twins); it returns
        # this call's dW and db, which are added: a reused layer sums its gradients.
        dx, dW, db = kernels.linear_backward(dy, x, self.W.value, y, self.activation, need_dx)
        self.W.add_grad(dW)                           # dL/dW = x^T dh, summed over uses
        self.b.add_grad(db)                           # dL/db = sum_n dh
        return dx                                     # dL/dx = dh W^T

    def __repr__(self):
        return (f"Linear({self.n_in} -> {self.n_out}, activation={self.activation!r}, "
                f"init={self.init!r}, dtype={self.W.value.dtype})")


class MLP(Module):
    """A stack of fused Linear layers: sizes = [D_0, D_1, ..., D_L] gives L layers.

    Layers 1..L-1 use ``activation``, the last uses ``out_activation``.  Parameters are named
    ``layers.<l>.W`` and ``layers.<l>.b`` (l from 0).  x: (N, D_0) -> y: (N, D_L).
    """

    def __init__(self, sizes, activation, rng, dtype=np.float32, out_activation="identity"):
        sizes = list(sizes)
        if len(sizes) < 2 or any(int(s) != s or s < 1 for s in sizes):
            raise ValueError(f"expected sizes = [n_in, ..., n_out] of at least two positive integers, got {sizes}")
        _check_activation(activation)
        _check_activation(out_activation)
        g = make_rng(rng)
        self.sizes = [int(s) for s in sizes]
        self.activation, self.out_activation = activation, out_activation
        L = len(sizes) - 1
        self.layers = [Linear(sizes[l], sizes[l + 1], g, dtype,
                              activation if l < L - 1 else out_activation) for l in range(L)]

    @property
    def n_in(self):
        return self.sizes[0]

    @property
    def n_out(self):
        return self.sizes[-1]

    def forward(self, x):
        """x (N, D_0) -> y (N, D_L), cache = the list of the layers' caches."""
        caches = []
        for layer in self.layers:
            x, c = layer.forward(x)
            caches.append(c)
        return x, caches

    def backward(self, dy, cache, need_dx=True):
        """dy = dL/dy (N, D_L) -> dL/dx (N, D_0), or None when ``need_dx`` is False.

        Backpropagation: the layers' backwards in reverse order, each passing dL/d(its input)
        down as the upstream gradient of the layer below; the first layer skips its dx matmul
        when it is not needed.  Parameter grads accumulate.
        """
        for l in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[l].backward(dy, cache[l], need_dx=need_dx or l > 0)
        return dy

    def __repr__(self):
        acts = [layer.activation for layer in self.layers]
        body = " -> ".join(f"{s} ({a})" for s, a in zip(self.sizes[1:], acts))
        return f"MLP({self.sizes[0]} -> {body}, dtype={self.layers[0].W.value.dtype})"


# ----------------------------------------------------------------------------------------------
# The GRU cell
# ----------------------------------------------------------------------------------------------

GRU_PARAM_NAMES = ("W_r", "U_r", "b_r", "W_u", "U_u", "b_u", "W_c", "U_c", "b_c")


def gru_forward(params, x, h):
    """One GRU step (Cho et al. 2014), row-vector form:

        r     = sigma(x W_r + h U_r + b_r)            reset gate
        u     = sigma(x W_u + h U_u + b_u)            update gate
        c     = tanh(x W_c + (r * h) U_c + b_c)       candidate state
        h_new = (1 - u) * h + u * c

    params: dict with W_* (n_in, H), U_* (H, H), b_* (H,) for * in r, u, c.
    x: (N, n_in), h: (N, H).  Returns h_new (N, H) and cache = (x, h, r, u, c).
    """
    W_r, U_r, b_r = params["W_r"], params["U_r"], params["b_r"]
    W_u, U_u, b_u = params["W_u"], params["U_u"], params["b_u"]
    W_c, U_c, b_c = params["W_c"], params["U_c"], params["b_c"]
    n_in, H = W_r.shape
    _check_input(x, "x", n_in, W_r.dtype)
    _check_input(h, "h", H, W_r.dtype)
    if h.shape[0] != x.shape[0]:
        raise DataError(f"expected h of shape ({x.shape[0]}, {H}) (one row per row of x), got {tuple(h.shape)}")
    r = sigmoid_forward(x @ W_r + h @ U_r + b_r)          # reset gate
    u = sigmoid_forward(x @ W_u + h @ U_u + b_u)          # update gate
    c = tanh_forward(x @ W_c + (r * h) @ U_c + b_c)       # candidate
    h_new = (1 - u) * h + u * c                           # interpolate old state and candidate
    return h_new, (x, h, r, u, c)


def gru_backward(params, grads, dh_new, cache):
    """Backward of one GRU step.

    dh_new = dL/dh_new (N, H); cache from ``gru_forward``.  Adds dL/dparam to ``grads[name]``
    (arrays shaped like ``params``, updated in place) and returns (dL/dx (N, n_in), dL/dh (N, H)).

    With a_r, a_u, a_c the pre-activations of r, u, c:
        dc = dh_new * u,   du = dh_new * (c - h),   dh = dh_new * (1 - u)  (the direct path)
        da_c = dc * (1 - c^2);  dW_c = x^T da_c,  dU_c = (r * h)^T da_c,  db_c = sum_n da_c
        d(r * h) = da_c U_c^T;  dr = d(r * h) * h,  dh += d(r * h) * r
        da_u = du * u (1 - u),  da_r = dr * r (1 - r);  dW_g = x^T da_g, dU_g = h^T da_g, db_g = sum_n da_g
        dx = da_r W_r^T + da_u W_u^T + da_c W_c^T,  dh += da_r U_r^T + da_u U_u^T
    """
    x, h, r, u, c = cache
    _check_grad(dh_new, "dh_new", h)
    # SOLUTION gru-backward: the GRU cell's backward pass (dx, dh and the parameter gradients)
    # HINT Work backwards: h_new = (1 - u) h + u c first, then c, then u and r (c depends on r).
    # HINT tanh_backward(dc, c) and sigmoid_backward(du, u) take the saved outputs; h reaches
    # HINT h_new directly, through r * h, and through both gates: its gradient has four terms.
    W_r, U_r = params["W_r"], params["U_r"]
    W_u, U_u = params["W_u"], params["U_u"]
    W_c, U_c = params["W_c"], params["U_c"]
    # h_new = (1 - u) * h + u * c
    dc = dh_new * u
    du = dh_new * (c - h)
    dh = dh_new * (1 - u)
    # c = tanh(a_c), a_c = x W_c + (r * h) U_c + b_c
    da_c = tanh_backward(dc, c)
    rh = r * h
    grads["W_c"] += x.T @ da_c
    grads["U_c"] += rh.T @ da_c
    grads["b_c"] += da_c.sum(axis=0)
    drh = da_c @ U_c.T
    dr = drh * h
    dh += drh * r
    # u = sigma(a_u), a_u = x W_u + h U_u + b_u
    da_u = sigmoid_backward(du, u)
    grads["W_u"] += x.T @ da_u
    grads["U_u"] += h.T @ da_u
    grads["b_u"] += da_u.sum(axis=0)
    # r = sigma(a_r), a_r = x W_r + h U_r + b_r
    da_r = sigmoid_backward(dr, r)
    grads["W_r"] += x.T @ da_r
    grads["U_r"] += h.T @ da_r
    grads["b_r"] += da_r.sum(axis=0)
    # x and h feed all three pre-activations
    dx = da_r @ W_r.T + da_u @ W_u.T + da_c @ W_c.T
    dh += da_r @ U_r.T + da_u @ U_u.T
    return dx, dh
    # END SOLUTION


# The GRU over a whole sequence, fused.  ``gru_forward`` / ``gru_backward`` above are one step
# written gate by gate, the equations as printed; BPTT calls them T times, and at small batch
# much of their time is NumPy overhead around many small products.  The functions below compute
# the same numbers with the gates stacked on a leading axis, g = 0, 1, 2 for r, u, c:
#
#   * the input side x W_g + b_g of all three gates is one stacked product, which the caller can
#     run for ALL steps before the loop when the inputs are known in advance;
#   * the h-side products h U_r, h U_u are one stacked product (U_c acts on r * h, so it waits);
#   * the backward returns da = dL/d[a_r, a_u, a_c] per step and leaves the weight gradients to
#     one product over all steps after the loop, sum_t x_t^T da_t = X^T dA (rows stacked over t),
#     so only the recurrent products stay inside the loop;
#   * each gate is a contiguous (N, H) block, and the elementwise work runs in place.

def _sigmoid_inplace(a):
    """a <- sigma(a) in place, as sigma(a) = (1 + tanh(a / 2)) / 2: an exact identity, no exp
    that could overflow, absolute error ~ machine epsilon, and NumPy's SIMD tanh is fast."""
    a *= 0.5
    xp_of(a).tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


def gru_fuse(params):
    """Stack the GRU's parameters gate by gate (copies: build again after the parameters change,
    once per loss evaluation is enough).

    params: the dict of ``gru_forward``.  Returns a dict with
        W (3, n_in, H) = [W_r, W_u, W_c],   U (3, H, H) = [U_r, U_u, U_c],   b (3, 1, H) = [b_r, b_u, b_c].
    """
    missing = [k for k in GRU_PARAM_NAMES if k not in params]
    if missing:
        raise DataError(f"expected GRU parameters {GRU_PARAM_NAMES}, missing {missing}")
    xp = xp_of(params["W_r"])
    return {"W": xp.stack([params["W_r"], params["W_u"], params["W_c"]]),
            "U": xp.stack([params["U_r"], params["U_u"], params["U_c"]]),
            "b": xp.stack([params["b_r"], params["b_u"], params["b_c"]])[:, None, :]}


def gru_input_side(fused, x, out=None):
    """The input side of all three gates, x W_g + b_g, stacked: x (M, n_in) -> (3, M, H).

    M may be T*N rows of every step at once; ``gru_step_forward`` takes one step's (3, N, H).
    ``out``: an optional (3, M, H) array to write into.
    """
    a = xp_of(x).matmul(x, fused["W"], out=out)
    a += fused["b"]
    return a


def gru_step_forward(fused, a, h, rh=None):
    """One GRU step given its input side; the same h_new as ``gru_forward``.

    fused: from ``gru_fuse``.  a: (3, N, H), the input-side pre-activations x W_g + b_g of
    g = r, u, c (``gru_input_side``); it is OVERWRITTEN in place with the gates [r, u, c], the
    backward's cache.  h: h_{t-1} (N, H).  rh: optional (N, H) array that receives r * h
    (``gru_fused_grads`` needs it for dU_c).  Returns h_new (N, H).
    """
    U = fused["U"]
    H = U.shape[1]
    if a.ndim != 3 or h.ndim != 2 or a.shape != (3, h.shape[0], H) or h.shape[1] != H:
        raise DataError(f"expected a of shape (3, N, {H}) and h of shape (N, {H}) with the same N, "
                        f"got a {tuple(a.shape)} and h {tuple(h.shape)}")
    if a.dtype != U.dtype or h.dtype != U.dtype:
        raise DataError(f"expected a and h of dtype {U.dtype} (the parameters'), got {a.dtype} and {h.dtype}")
    xp = xp_of(h)
    a_ru, a_c = a[:2], a[2]
    a_ru += xp.matmul(h, U[:2])                        # a_g = x W_g + h U_g + b_g,  g = r, u
    r, u = _sigmoid_inplace(a_ru)                      # r, u = sigma(a_r), sigma(a_u)
    rh = xp.multiply(r, h, out=rh)                     # r * h
    a_c += rh @ U[2]                                   # a_c = x W_c + (r * h) U_c + b_c
    c = xp.tanh(a_c, out=a_c)                          # c = tanh(a_c)
    h_new = c - h                                      # h_new = (1 - u) h + u c = h + u (c - h)
    h_new *= u
    h_new += h
    return h_new


def gru_step_backward(fused, dh_new, h, gates, da=None):
    """Backward of ``gru_step_forward`` through the recurrence only.

    dh_new = dL/dh_new (N, H); h = h_{t-1} (N, H); gates = [r, u, c] (3, N, H), the array the
    forward overwrote.  Writes da = dL/d[a_r, a_u, a_c] into ``da`` (3, N, H; a new array if None)
    and returns (da, dL/dh (N, H)).  Nothing accumulates here: dL/dx = sum_g da_g W_g^T and the
    parameter gradients (``gru_fused_grads``) are products the caller batches over steps.
    The equations are ``gru_backward``'s:
        da_c = dh_new * u * (1 - c^2),  da_u = dh_new * (c - h) * u (1 - u)
        d(r * h) = da_c U_c^T,  da_r = d(r * h) * h * r (1 - r)
        dh = dh_new * (1 - u) + d(r * h) * r + da_r U_r^T + da_u U_u^T
    """
    U = fused["U"]
    H = U.shape[1]
    if gates.shape != (3, h.shape[0], H) or dh_new.shape != h.shape:
        raise DataError(f"expected gates of shape (3, N, {H}) and dh_new shaped like h {tuple(h.shape)}, "
                        f"got gates {tuple(gates.shape)} and dh_new {tuple(dh_new.shape)}")
    xp = xp_of(h)
    if da is None:
        da = xp.empty_like(gates)
    # SOLUTION gru-backward: the fused GRU step's backward (the same math as gru_backward, gates stacked)
    r, u, c = gates
    da_r, da_u, da_c = da
    one_minus_u = xp.subtract(1, u)                    # reused by sigma'(a_u) and the direct path
    # h_new = h + u (c - h):  dc = dh_new * u,  du = dh_new * (c - h)
    xp.multiply(c, c, out=da_c)                        # da_c = dh_new * u * (1 - c^2)
    xp.subtract(1, da_c, out=da_c)
    da_c *= u
    da_c *= dh_new
    xp.subtract(c, h, out=da_u)                        # da_u = dh_new * (c - h) * u (1 - u)
    da_u *= dh_new
    da_u *= u
    da_u *= one_minus_u
    drh = da_c @ U[2].T                                # d(r * h) = da_c U_c^T
    xp.subtract(1, r, out=da_r)                        # da_r = d(r * h) * h * r (1 - r)
    da_r *= r
    da_r *= h
    da_r *= drh
    dh = da_r @ U[0].T                                 # through both gates: da_r U_r^T + da_u U_u^T
    dh += da_u @ U[1].T
    one_minus_u *= dh_new                              # the direct path: dh_new * (1 - u)
    dh += one_minus_u
    drh *= r                                           # through r * h: d(r * h) * r
    dh += drh
    return da, dh
    # END SOLUTION


def gru_input_grad(fused, da, add_to=None):
    """dL/dx = sum_g da_g W_g^T from da = dL/d[a_r, a_u, a_c]: (3, M, H) -> (M, n_in).

    Pass ``{"W": fused["W"][:, cols]}`` for the gradient of some input columns only.
    ``add_to``: an (M, n_in) array to add the result to (in place, returned) instead of a new one.
    """
    W = fused["W"]
    dx = da[0] @ W[0].T
    if add_to is not None:
        add_to += dx
        dx = add_to
    dx += da[1] @ W[1].T
    dx += da[2] @ W[2].T
    return dx


def gru_fused_grads(grads, x, h, rh, da):
    """Add the parameter gradients of many GRU steps at once, rows stacked over the steps.

    grads: dict like the params of ``gru_forward`` (updated in place, +=).  With M rows (T*N):
    x: the inputs (M, n_in); h: h_{t-1} (M, H); rh: r * h (M, H); da: dL/d[a_r, a_u, a_c]
    (3, M, H).  Since a_g = x W_g + h U_g + b_g at every step (U_c acting on r * h),
        dW_g = x^T da_g,  dU_g = h^T da_g (g = r, u),  dU_c = (r * h)^T da_c,  db_g = sum_m da_g.
    """
    n_in, H = grads["W_r"].shape
    M = x.shape[0]
    if x.shape != (M, n_in) or h.shape != (M, H) or rh.shape != (M, H) or da.shape != (3, M, H):
        raise DataError(f"expected x of shape (M, {n_in}), h and rh of shape (M, {H}) and da of shape "
                        f"(3, M, {H}), got x {tuple(x.shape)}, h {tuple(h.shape)}, rh {tuple(rh.shape)} "
                        f"and da {tuple(da.shape)}")
    # SOLUTION gru-backward: the fused GRU's parameter gradients over many steps
    for g, gate in enumerate(("r", "u", "c")):
        grads[f"W_{gate}"] += x.T @ da[g]
        grads[f"U_{gate}"] += (rh if gate == "c" else h).T @ da[g]
        grads[f"b_{gate}"] += da[g].sum(axis=0)
    return grads
    # END SOLUTION

class GRUCell(Module):
    """One step of a gated recurrent unit; see ``gru_forward`` for the equations.

    Parameters W_r, W_u, W_c (n_in, H), U_r, U_u, U_c (H, H): Glorot uniform; b_r, b_u, b_c (H,):
    zero.  Reuse the cell across time steps, keep each step's cache, and call ``backward`` from the
    last step to the first: the parameter gradients sum over the steps (BPTT).
    """

    def __init__(self, n_in, n_hidden, rng, dtype=np.float32):
        if int(n_in) != n_in or int(n_hidden) != n_hidden or n_in < 1 or n_hidden < 1:
            raise ValueError(f"expected positive integer sizes, got n_in={n_in!r}, n_hidden={n_hidden!r}")
        self.n_in, self.n_hidden = int(n_in), int(n_hidden)
        g, dt, H = make_rng(rng), check_dtype(dtype), int(n_hidden)
        for gate in ("r", "u", "c"):
            setattr(self, f"W_{gate}", Parameter(glorot_uniform(self.n_in, H, g, dt)))
            setattr(self, f"U_{gate}", Parameter(glorot_uniform(H, H, g, dt)))
            setattr(self, f"b_{gate}", Parameter(np.zeros(H, dtype=dt)))

    def initial_state(self, n):
        """h_0 = 0, shape (n, H), the parameters' dtype."""
        return xp_of(self.W_r.value).zeros((n, self.n_hidden), dtype=self.W_r.value.dtype)

    def forward(self, x, h):
        """x (N, n_in), h (N, H) -> h_new (N, H), cache."""
        return gru_forward(self.param_arrays(), x, h)

    def backward(self, dh_new, cache):
        """dL/dh_new (N, H) -> (dL/dx (N, n_in), dL/dh (N, H)); parameter grads accumulate."""
        for p in self.parameters().values():
            if p.grad is None:                        # after release_grads: fresh zeros
                p.grad = xp_of(p.value).zeros_like(p.value)
        return gru_backward(self.param_arrays(), self.grad_arrays(), dh_new, cache)

    def __repr__(self):
        return f"GRUCell({self.n_in} -> {self.n_hidden}, dtype={self.W_r.value.dtype})"


# ----------------------------------------------------------------------------------------------
# Batch normalisation (Ioffe & Szegedy, 2015); appended here, listed in __all__ below
# ----------------------------------------------------------------------------------------------

class BatchNorm(Module):
    """Batch normalisation of the columns of x, with a learned scale and shift.

    Training (``train=True``): with the batch mean and (biased) variance of each column,

        m = (1/N) sum_n x_n,   v = (1/N) sum_n (x_n - m)^2,   s = 1 / sqrt(v + eps)
        x^_n = (x_n - m) s,    y_n = gamma * x^_n + beta

    and the running statistics move towards the batch's (``momentum`` rho):

        running_mean <- (1 - rho) running_mean + rho m
        running_var  <- (1 - rho) running_var  + rho v N / (N - 1)      (unbiased)

    Evaluation (``train=False``): the same affine map with m, v replaced by the running
    statistics, so each row is normalised on its own (a batch of one, or K importance samples
    of one image, gives the same output per row as any other batch).

    Backward in training mode (m and v depend on every row of the batch):

        dgamma = sum_n dy_n x^_n,   dbeta = sum_n dy_n
        dx_n   = gamma s / N * (N dy_n - sum_k dy_k - x^_n sum_k dy_k x^_k)

    In evaluation mode m and v are constants: dx = dy gamma s.
    Shapes: x, y (N, n); gamma, beta, running_mean, running_var (n,).  Parameters ``gamma``
    (ones) and ``beta`` (zeros); the running statistics are buffers (plain arrays, updated in
    place), not Parameters: no gradient reaches them.
    """

    def __init__(self, n, dtype=np.float32, momentum=0.1, eps=1e-5):
        if int(n) != n or n < 1:
            raise ValueError(f"expected a positive integer number of features n, got {n!r}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"expected momentum in (0, 1], got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"expected eps > 0, got {eps!r}")
        dt = check_dtype(dtype)
        self.n, self.momentum, self.eps = int(n), float(momentum), float(eps)
        self.gamma = Parameter(np.ones(self.n, dtype=dt))
        self.beta = Parameter(np.zeros(self.n, dtype=dt))
        self.running_mean = np.zeros(self.n, dtype=dt)
        self.running_var = np.ones(self.n, dtype=dt)

    def astype(self, dtype):
        super().astype(dtype)
        dt = check_dtype(dtype)
        self.running_mean = self.running_mean.astype(dt)
        self.running_var = self.running_var.astype(dt)
        return self

    def forward(self, x, train=True):
        """x (N, n) -> y (N, n), cache.  ``train``: batch statistics (and update the running
        ones) or the running statistics (evaluation)."""
        _check_input(x, "x", self.n, self.gamma.value.dtype)
        xp = xp_of(x)
        if train:
            N = x.shape[0]
            if N < 2:
                raise DataError(f"expected at least 2 rows for batch statistics, got x of shape "
                                f"{tuple(x.shape)}; use train=False (running statistics) for one row")
            m = x.mean(axis=0)                                   # m = (1/N) sum_n x_n
            xc = x - m
            v = (xc * xc).mean(axis=0)                           # v = (1/N) sum_n (x_n - m)^2
            rho = self.momentum
            self.running_mean *= 1 - rho                         # in place: arrays others hold
            self.running_mean += rho * m
            self.running_var *= 1 - rho
            self.running_var += rho * v * (N / (N - 1))
        else:
            xc = x - self.running_mean
            v = self.running_var
        s = 1 / xp.sqrt(v + self.eps)                            # s = 1 / sqrt(v + eps)
        xhat = xc * s                                            # x^ = (x - m) s
        y = self.gamma.value * xhat + self.beta.value            # y = gamma x^ + beta
        return y, (xhat, s, train)

    def backward(self, dy, cache):
        """dy = dL/dy (N, n) -> dL/dx (N, n); dgamma and dbeta are ADDED to the grads."""
        xhat, s, train = cache
        _check_grad(dy, "dy", xhat)
        dgamma = (dy * xhat).sum(axis=0)                         # dgamma = sum_n dy_n x^_n
        dbeta = dy.sum(axis=0)                                   # dbeta = sum_n dy_n
        gs = self.gamma.value * s
        if train:
            # dx_n = gamma s / N (N dy_n - sum_k dy_k - x^_n sum_k dy_k x^_k)
            dx = (gs / dy.shape[0]) * (dy.shape[0] * dy - dbeta - xhat * dgamma)
        else:
            dx = dy * gs                                         # constants m, v: dx = dy gamma s
        self.gamma.add_grad(dgamma)                              # (fresh arrays: add_grad may keep them)
        self.beta.add_grad(dbeta)
        return dx

    def __repr__(self):
        return f"BatchNorm({self.n}, momentum={self.momentum}, eps={self.eps}, dtype={self.gamma.value.dtype})"


__all__.append("BatchNorm")
