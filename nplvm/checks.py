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


class UsageError(ValueError):
    """A user's mistake outside the data: a flag value, a path that cannot be used, a run folder
    that holds another run.  The command-line tools print ``error: <message>`` and exit 2."""


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


# ----------------------------------------------------------------------------------------------
# Argument validators: one line per constructor argument, a ValueError that names the argument,
# what was expected and what was given.  Booleans are not numbers here (``True`` as a layer width
# is a mistake), and an integer argument refuses a float with a fractional part (``seed=1.5``)
# instead of truncating it.
# ----------------------------------------------------------------------------------------------

def _given(value):
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, (int, float, str)) else repr(value)


def integer(name, value, minimum=None, maximum=None):
    """``value`` as a Python int; integral floats (2.0) pass, bools, None, 1.5 and strings do not.

    ``minimum`` / ``maximum`` are inclusive bounds."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok and isinstance(value, (float, np.floating)) and np.isfinite(value) and value == int(value):
        ok = True
    want = ("a positive integer (>= 1)" if minimum == 1 and maximum is None
            else "an integer" + _range(minimum, maximum))
    if not ok:
        raise ValueError(f"{name} must be {want}, got {_given(value)}")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ValueError(f"{name} must be {want}, got {_given(value)}")
    return v


def positive_int(name, value):
    """An integer >= 1 (a size, a count, a number of samples)."""
    return integer(name, value, minimum=1)


def nonneg_int(name, value):
    """An integer >= 0 (a seed, a number of epochs)."""
    return integer(name, value, minimum=0)


def _range(minimum, maximum, lo_open=False, hi_open=False):
    if minimum == 0 and maximum is None:
        return " > 0 (positive)" if lo_open else " >= 0"
    if minimum is not None and maximum is not None:
        return f" in {'(' if lo_open else '['}{minimum}, {maximum}{')' if hi_open else ']'}"
    if minimum is not None:
        return f" {'>' if lo_open else '>='} {minimum}"
    if maximum is not None:
        return f" {'<' if hi_open else '<='} {maximum}"
    return ""


def real(name, value, minimum=None, maximum=None, lo_open=False, hi_open=False):
    """``value`` as a finite Python float in the given range (bounds inclusive unless *_open);
    bools, None, strings, NaN and inf are refused."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    want = f"{name} must be a finite number{_range(minimum, maximum, lo_open, hi_open)}"
    if not ok:
        raise ValueError(f"{want}, got {_given(value)}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{want}, got {v!r}")
    if minimum is not None and (v < minimum or (lo_open and v == minimum)):
        raise ValueError(f"{want}, got {v!r}")
    if maximum is not None and (v > maximum or (hi_open and v == maximum)):
        raise ValueError(f"{want}, got {v!r}")
    return v


def finite(name, value):
    """Any finite number."""
    return real(name, value)


def positive_float(name, value):
    """A finite number > 0 (a learning rate, a tolerance, a step)."""
    return real(name, value, minimum=0, lo_open=True)


def nonneg_float(name, value):
    """A finite number >= 0 (a weight that may switch a term off)."""
    return real(name, value, minimum=0)


def unit_interval(name, value, hi_open=True):
    """A number in [0, 1) (a momentum, a decay rate); [0, 1] with hi_open=False."""
    return real(name, value, minimum=0, maximum=1, hi_open=hi_open)


def optional(check, name, value, *args, **kw):
    """None, or what ``check(name, value, ...)`` accepts."""
    return None if value is None else check(name, value, *args, **kw)


def one_of(name, value, choices):
    """``value`` if it is one of ``choices`` (compared by equality; strings only match strings)."""
    try:
        ok = any(isinstance(value, str) == isinstance(c, str) and isinstance(value, bool) == isinstance(c, bool)
                 and value == c for c in choices)
    except (TypeError, ValueError):                    # an array compared with a string, ...
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {_given(value)}")
    return value


def int_tuple(name, value, minimum=1, allow_empty=True):
    """A tuple of integers >= minimum from a tuple/list (or one integer): (512, 256).

    Refuses None, strings, bools, non-integral floats and nested sequences, naming the entry."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise ValueError(f"{name} must be a tuple of integers >= {minimum} such as (64, 32), "
                         f"got {_given(value)}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must hold at least one integer >= {minimum}, got {tuple(value)!r}")
    out = []
    for i, v in enumerate(value):
        try:
            out.append(integer(f"{name}[{i}]", v, minimum=minimum))
        except ValueError as e:
            raise ValueError(f"{name} must be a tuple of integers >= {minimum}; {e}") from None
    return tuple(out)


def seed_value(name, value):
    """A seed: an integer >= 0, a list/tuple of them (a seed sequence), or a numpy Generator
    (returned as it is)."""
    if isinstance(value, np.random.Generator):
        return value
    if isinstance(value, (list, tuple)) and value:
        return [nonneg_int(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return nonneg_int(name, value)
