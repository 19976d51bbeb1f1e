"""Array namespace, dtype policy and seeded randomness.

Everything numeric in nplvm goes through three small ideas:

* ``xp_of(*arrays)``: the array module (``numpy`` or ``cupy``) that owns the arrays, so the same
  code runs on the CPU and on a GPU.  CuPy is imported lazily: nplvm works without it.
* a dtype policy: train in float32 (``DEFAULT_DTYPE``), check gradients in float64.
* ``rng(seed)``: every source of randomness is a ``numpy.random.Generator`` built from a seed.
"""
from __future__ import annotations

import sys

import numpy as np

DEFAULT_DTYPE = np.float32   # training
CHECK_DTYPE = np.float64     # finite-difference checks
FLOAT_DTYPES = (np.float32, np.float64)


def is_cupy_array(a) -> bool:
    """True for a cupy.ndarray, without importing cupy."""
    return type(a).__module__.split(".")[0] == "cupy"


def xp_of(*arrays):
    """The array module of the arrays: ``cupy`` if any is a cupy array, else ``numpy``."""
    for a in arrays:
        if is_cupy_array(a):
            return sys.modules["cupy"]
    return np


def to_numpy(a):
    """A NumPy copy (or view) of a NumPy or CuPy array."""
    return a.get() if is_cupy_array(a) else np.asarray(a)


def rng(seed) -> np.random.Generator:
    """A seeded ``numpy.random.Generator``; pass a Generator through unchanged."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("a seed is required: nplvm draws every random number from a seeded Generator")
    from .checks import nonneg_int               # checks imports this module: imported on use
    if isinstance(seed, (list, tuple)):
        seed = [nonneg_int(f"seed[{i}]", s) for i, s in enumerate(seed)]
    else:
        seed = nonneg_int("seed", seed)
    return np.random.default_rng(seed)


def check_dtype(dtype):
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise a clear error."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"expected dtype float32 or float64, got {dtype!r}") from None
    if dt not in [np.dtype(d) for d in FLOAT_DTYPES]:
        raise TypeError(f"expected dtype float32 or float64, got {dt}")
    return dt
