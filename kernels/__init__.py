"""Hot numeric kernels behind one API, in three implementations.

    reference  NumPy, the definition (kernels/reference.py)
    cpu        Numba @njit, fused single-pass kernels (kernels/cpu.py)
    cuda       CuPy, for arrays that live on a GPU (kernels/cuda.py, imported lazily)

Dispatch follows the array type: CuPy arrays go to ``cuda``; NumPy arrays go to ``cpu`` when
Numba is installed, else to ``reference``.  Override it for one call with ``backend=...`` or for
the whole process with the environment variable ``NPLVM_KERNELS`` (``reference``, ``cpu``,
``cuda`` or ``auto``).  Every kernel's signature and meaning is documented in reference.py.
"""
from __future__ import annotations

import importlib
import os

from . import reference

BACKENDS = ("reference", "cpu", "cuda")
KERNELS = ("bernoulli_nll", "gaussian_kl_std", "gaussian_kl", "matmul",
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
        return "cuda" if on_gpu else ("cpu" if _module("cpu") is not None else "reference")
    if on_gpu and choice != "cuda":
        raise TypeError(f"kernel backend {choice!r} was requested but the arrays are CuPy arrays")
    if choice != "reference" and _module(choice) is None:
        raise ImportError(f"kernel backend {choice!r} is unavailable: {_import_errors[choice]!r}")
    return choice


def get(name, *arrays, backend=None):
    """The implementation of kernel ``name`` that a call on ``arrays`` dispatches to."""
    be = resolve_backend(*arrays, backend=backend)
    fn = getattr(_modules[be], name, None)
    # A backend may leave a kernel to the reference (say, matmul where BLAS measures faster).
    return fn if fn is not None else getattr(reference, name)


def bernoulli_nll(x, logits, weight=None, *, backend=None):
    """-log Bern(x | sigmoid(logits)) per row and its gradient; see reference.bernoulli_nll."""
    return get("bernoulli_nll", x, logits, backend=backend)(x, logits, weight)


def gaussian_kl_std(mu, logvar, weight=None, *, backend=None):
    """KL(N(mu, e^logvar) || N(0, I)) per row and its gradients; see reference.gaussian_kl_std."""
    return get("gaussian_kl_std", mu, logvar, backend=backend)(mu, logvar, weight)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, weight=None, *, backend=None):
    """KL between two diagonal Gaussians per row and its four gradients; see reference.gaussian_kl."""
    return get("gaussian_kl", mu_q, logvar_q, mu_p, logvar_p, backend=backend)(
        mu_q, logvar_q, mu_p, logvar_p, weight)


def matmul(a, b, *, backend=None):
    """(M, K) @ (K, N); see reference.matmul."""
    return get("matmul", a, b, backend=backend)(a, b)


def linear_forward(x, W, b, act="identity", *, backend=None):
    """y = act(x @ W + b); see reference.linear_forward."""
    return get("linear_forward", x, W, b, backend=backend)(x, W, b, act)


def linear_backward(dy, x, W, y, act="identity", need_dx=True, *, backend=None):
    """(dx, dW, db) of the fused layer; see reference.linear_backward."""
    return get("linear_backward", dy, x, W, y, backend=backend)(dy, x, W, y, act, need_dx)


def adam_step(p, g, m, v, lr, beta1, beta2, eps, t, *, backend=None):
    """One in-place Adam update with denormal flushing; see reference.adam_step."""
    return get("adam_step", p, g, m, v, backend=backend)(p, g, m, v, lr, beta1, beta2, eps, t)
