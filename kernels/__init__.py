"""Hot numeric kernels behind one API, in three implementations.

    reference  NumPy, the definition (kernels/reference.py)
    cpu        Numba @njit, fused single-pass kernels (kernels/cpu.py)
    cuda       CuPy, for arrays that live on a GPU (kernels/cuda.py, imported lazily)

Dispatch follows the array type: CuPy arrays go to ``cuda``; NumPy arrays go to ``cpu`` when
Numba is installed, else to ``reference``.  Override it for one call with ``backend=...`` or for
the whole process with the environment variable ``NPLVM_KERNELS`` (``reference``, ``cpu``,
``cuda`` or ``auto``).  Every kernel's signature and meaning is documented in reference.py.

``cuda`` needs CuPy arrays: asking for it with NumPy arrays is an error that says so (CuPy is
only ever imported when a CuPy array shows up, so nplvm runs without cupy, or without a GPU).
The shapes and dtypes of the inputs are checked here, once, for every backend.
``matmul_tiled`` is the hand-tiled matmul of each backend (a teaching kernel; BLAS is faster).
"""
from __future__ import annotations

import importlib
import os

import numpy as np

from . import reference

BACKENDS = ("reference", "cpu", "cuda")
KERNELS = ("bernoulli_nll", "gaussian_kl_std", "gaussian_kl", "matmul", "matmul_tiled",
           "linear_forward", "linear_backward", "adam_step")

_modules = {"reference": reference}
_import_errors: dict[str, BaseException] = {}


def _module(name):
    """Import a backend module once; None (and the error remembered) if it cannot load."""
    if name in _modules:
        return _modules[name]
    if name in _import_errors:
        return None
    try:
        mod = importlib.import_module(f"kernels.{name}")
    except Exception as e:  # numba or cupy missing, or no GPU
        _import_errors[name] = e
        return None
    _modules[name] = mod
    return mod


def _is_cupy(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def resolve_backend(*arrays, backend=None) -> str:
    """The backend name a call with these arrays would use."""
    choice = backend or os.environ.get("NPLVM_KERNELS", "auto")
    if choice not in BACKENDS + ("auto",):
        raise ValueError(f"unknown kernel backend {choice!r}; expected one of {BACKENDS + ('auto',)}")
    on_gpu = any(_is_cupy(a) for a in arrays)
    if choice == "auto":
        if not on_gpu:
            return "cpu" if _module("cpu") is not None else "reference"
        choice = "cuda"                         # imported below, like an explicit backend="cuda"
    if on_gpu and choice != "cuda":
        raise TypeError(f"kernel backend {choice!r} was requested but the arrays are CuPy arrays")
    if choice == "cuda" and not on_gpu:
        raise TypeError("kernel backend 'cuda' needs CuPy arrays (cupy.asarray(...)), got NumPy "
                        "arrays; use backend='cpu' or 'reference', or NPLVM_KERNELS=auto")
    if choice != "reference" and _module(choice) is None:
        raise ImportError(f"kernel backend {choice!r} is unavailable: {_import_errors[choice]!r}")
    return choice


def get(name, *arrays, backend=None):
    """The implementation of kernel ``name`` that a call on ``arrays`` dispatches to."""
    be = resolve_backend(*arrays, backend=backend)
    fn = getattr(_modules[be], name, None)
    # A backend may leave a kernel to the reference (say, matmul where BLAS measures faster).
    if fn is None:
        fn = reference.matmul if name == "matmul_tiled" else getattr(reference, name)
    return fn


def _check_rows(names, arrays, weight=None):
    """All arrays (N, D) of one shape, the first of a float dtype; weight None, scalar or (N,)."""
    a0 = arrays[0]
    if getattr(a0, "ndim", None) != 2:
        raise ValueError(f"expected {names[0]} of shape (N, D), got shape {getattr(a0, 'shape', type(a0).__name__)}")
    if a0.dtype.kind != "f":
        raise TypeError(f"expected {names[0]} with dtype float32 or float64, got {a0.dtype}")
    for name, a in zip(names[1:], arrays[1:]):
        if getattr(a, "shape", None) != a0.shape:
            raise ValueError(f"expected {name} of shape {tuple(a0.shape)} like {names[0]}, "
                             f"got {getattr(a, 'shape', type(a).__name__)}")
    if weight is not None:
        shape = getattr(weight, "shape", ())
        if shape not in ((), (a0.shape[0],)):
            raise ValueError(f"expected weight to be a scalar or of shape ({a0.shape[0]},), got {shape}")


def _check_act(act):
    if not isinstance(act, str) or act not in reference.ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; act must be one of {', '.join(reference.ACTIVATIONS)}")


def _check_number(name, value, low, high=None, low_open=False, integer=False):
    """A finite real (or integer) in [low, high) -- or (low, ...) with low_open; bools refused.
    (kernels sits below nplvm, so nplvm.checks is not used here.)"""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, (bool, np.bool_)) and np.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        kind = "an integer" if integer else "a finite number"
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be {kind} in {rng}, got {value!r}")


def _check_linear(x, W, b):
    if getattr(x, "ndim", None) != 2 or getattr(W, "ndim", None) != 2 or x.shape[1] != W.shape[0]:
        raise ValueError(f"expected x (N, I) and W (I, O), got {getattr(x, 'shape', None)} and "
                         f"{getattr(W, 'shape', None)}")
    if b is not None and getattr(b, "shape", None) != (W.shape[1],):
        raise ValueError(f"expected b of shape ({W.shape[1]},), got {getattr(b, 'shape', None)}")


def bernoulli_nll(x, logits, weight=None, *, backend=None):
    """-log Bern(x | sigmoid(logits)) per row and its gradient; see reference.bernoulli_nll."""
    _check_rows(("logits", "x"), (logits, x), weight)
    return get("bernoulli_nll", x, logits, backend=backend)(x, logits, weight)


def gaussian_kl_std(mu, logvar, weight=None, *, backend=None):
    """KL(N(mu, e^logvar) || N(0, I)) per row and its gradients; see reference.gaussian_kl_std."""
    _check_rows(("mu", "logvar"), (mu, logvar), weight)
    return get("gaussian_kl_std", mu, logvar, backend=backend)(mu, logvar, weight)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, weight=None, *, backend=None):
    """KL between two diagonal Gaussians per row and its four gradients; see reference.gaussian_kl."""
    _check_rows(("mu_q", "logvar_q", "mu_p", "logvar_p"), (mu_q, logvar_q, mu_p, logvar_p), weight)
    return get("gaussian_kl", mu_q, logvar_q, mu_p, logvar_p, backend=backend)(
        mu_q, logvar_q, mu_p, logvar_p, weight)


def matmul(a, b, *, backend=None):
    """(M, K) @ (K, N); see reference.matmul."""
    return get("matmul", a, b, backend=backend)(a, b)


def matmul_tiled(a, b, *, backend=None):
    """(M, K) @ (K, N) by the backend's hand-tiled kernel (the reference has none: a @ b)."""
    if getattr(a, "ndim", None) != 2 or getattr(b, "ndim", None) != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"expected a (M, K) and b (K, N), got {getattr(a, 'shape', None)} and "
                         f"{getattr(b, 'shape', None)}")
    return get("matmul_tiled", a, b, backend=backend)(a, b)


def linear_forward(x, W, b, act="identity", *, backend=None):
    """y = act(x @ W + b); see reference.linear_forward."""
    _check_linear(x, W, b)
    _check_act(act)
    return get("linear_forward", x, W, b, backend=backend)(x, W, b, act)


def linear_backward(dy, x, W, y, act="identity", need_dx=True, *, backend=None):
    """(dx, dW, db) of the fused layer; see reference.linear_backward."""
    _check_linear(x, W, None)
    _check_act(act)
    if getattr(dy, "shape", None) != (x.shape[0], W.shape[1]) or getattr(y, "shape", None) != dy.shape:
        raise ValueError(f"expected dy and y of shape ({x.shape[0]}, {W.shape[1]}), got "
                         f"{getattr(dy, 'shape', None)} and {getattr(y, 'shape', None)}")
    return get("linear_backward", dy, x, W, y, backend=backend)(dy, x, W, y, act, need_dx)


def adam_step(p, g, m, v, lr, beta1, beta2, eps, t, *, backend=None):
    """One in-place Adam update with denormal flushing; see reference.adam_step."""
    for name, a in (("g", g), ("m", m), ("v", v)):
        if getattr(a, "shape", None) != p.shape:
            raise ValueError(f"expected {name} of shape {p.shape} like p, got {getattr(a, 'shape', None)}")
    _check_number("lr", lr, 0, low_open=True)
    _check_number("beta1", beta1, 0, 1)
    _check_number("beta2", beta2, 0, 1)
    _check_number("eps", eps, 0, low_open=True)
    _check_number("t (the step number, from 1)", t, 1, integer=True)
    return get("adam_step", p, g, m, v, backend=backend)(p, g, m, v, lr, beta1, beta2, eps, t)
