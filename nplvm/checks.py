"""Input validation with errors that say what was expected.

A student who passes the wrong thing should read "expected x of shape (N, 784), got (784,)",
not a broadcasting traceback from deep inside NumPy.  Every public entry point that takes data
calls these first.
"""
from __future__ import annotations

import numpy as np

from .backend import is_cupy_array, xp_of


class DataError(ValueError):
    """Bad input data: wrong shape or dtype, NaN/inf, values outside the model's support."""


def check_array(x, name="x", ndim=None, shape=None, dtype_kind="f"):
    """Check x is an array with the given ndim / shape and a float (or given-kind) dtype.

    ``shape`` may hold None for free dimensions, e.g. (None, 784).  Returns x unchanged.
    """
    if not (isinstance(x, np.ndarray) or is_cupy_array(x)):
        raise DataError(f"expected {name} to be an array, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        want = f"shape {_fmt(shape)}" if shape is not None else f"{ndim} dimensions"
        raise DataError(f"expected {name} with {want}, got shape {tuple(x.shape)}")
    if shape is not None:
        if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            raise DataError(f"expected {name} of shape {_fmt(shape)}, got {tuple(x.shape)}")
    if dtype_kind is not None and x.dtype.kind not in dtype_kind:
        kinds = {"f": "floating", "u": "unsigned integer", "i": "integer", "b": "boolean"}
        want = " or ".join(kinds.get(k, k) for k in dtype_kind)
        raise DataError(f"expected {name} with a {want} dtype, got {x.dtype}")
    return x


def check_finite(x, name="x"):
    """Raise if x holds NaN or inf, saying how many and where the first one is."""
    xp = xp_of(x)
    bad = ~xp.isfinite(x)
    if bool(bad.any()):
        first = tuple(int(i) for i in np.argwhere(np.asarray(bad.get() if is_cupy_array(bad) else bad))[0])
        raise DataError(f"{name} contains {int(bad.sum())} NaN/inf value(s), the first at index {first}")
    return x


def check_binary(x, name="x"):
    """Raise unless every entry of x is exactly 0 or 1 (a Bernoulli likelihood needs that)."""
    xp = xp_of(x)
    bad = (x != 0) & (x != 1)
    if bool(bad.any()):
        vals = xp.unique(x[bad])[:5]
        raise DataError(
            f"{name} must be binary (0/1) for a Bernoulli likelihood, but holds other values "
            f"such as {list(np.asarray(vals.get() if is_cupy_array(vals) else vals).tolist())}; "
            "binarize it first (nplvm.data.binarize)")
    return x


def _fmt(shape):
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def as_float64_matrix(X, name="X"):
    """X as a finite float64 (N, D) NumPy array (the classical models' EM works in float64).

    Accepts float, integer, unsigned or boolean data; raises DataError for anything else, for
    a wrong number of dimensions, and for NaN/inf.
    """
    if not isinstance(X, np.ndarray):
        raise DataError(f"expected {name} to be an array, got {type(X).__name__}")
    check_array(X, name, ndim=2, dtype_kind="fiub")
    return check_finite(np.asarray(X, dtype=np.float64), name)
