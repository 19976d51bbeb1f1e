"""Check hand-written gradients against central finite differences.

Every backward pass in nplvm is derived by hand, so every one is checked here, in float64:

    numerical_grad(f, x)        d f / d x by central differences, x perturbed in place
    rel_error(a, b)             the relative error used everywhere (below)
    check_grad(f, x, analytic)  both together: one number
    check_model(model, x)       every parameter of a model that follows the model contract
    assert_model_grads(...)     the same as a test assertion that names the failing parameters

Central differences:  df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / (2 h), with error O(h^2)
from truncation plus O(u |f| / h) from rounding (u = 2.2e-16 in float64).  With h = 1e-6 a
correct gradient of a function of moderate size agrees to ~1e-8 relative; a wrong one is
off by O(1).  In float32 (u = 1.2e-7) the rounding term swamps everything: check in float64.

Relative error:  rel_error(a, b) = max_i |a_i - b_i| / max(1e-8, |a_i| + |b_i|).
Scale-free where the gradient is large, an absolute error where both entries are below ~1e-8
(so a gradient that is exactly zero is not judged on rounding noise alone).  Rules of thumb in
float64: < 1e-7 correct; 1e-7 .. 1e-4 suspicious (a kink such as ReLU at 0, or a badly scaled
loss); > 1e-4 almost certainly a bug.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import backend
from .checks import optional, positive_float, positive_int

__all__ = ["numerical_grad", "rel_error", "check_grad", "check_model", "assert_model_grads",
           "GradCheckReport", "report"]


def _scalar(value):
    """f() may return a float or (loss, grads) as model.loss does: the scalar, as a Python float."""
    if isinstance(value, tuple):
        value = value[0]
    v = np.asarray(backend.to_numpy(value))
    if v.size != 1:
        raise ValueError(f"expected f() to return a scalar, got an array of shape {v.shape}")
    return float(v.reshape(()))


def _warn_float32(x, what):
    if x.dtype != np.float64:
        warnings.warn(f"{what} has dtype {x.dtype}: finite differences are only meaningful in "
                      "float64 (cast with .astype(np.float64))", stacklevel=3)


def numerical_grad(f, x, eps=1e-6, indices=None):
    """Central-difference gradient of the scalar f() w.r.t. the array x.

    f: a function of no arguments that reads x (a live array: a parameter, an input) and returns
    a scalar (or a tuple whose first item is the scalar, like ``model.loss``).
    x: a float array, perturbed IN PLACE one entry at a time and restored exactly (the saved
    value is written back, even if f raises).
    indices: None for every entry, or flat indices into x.

    Returns an array of x's shape (indices=None) or a 1-D array, one entry per index.
    """
    eps = positive_float("eps", eps)
    if not isinstance(x, np.ndarray) and not backend.is_cupy_array(x):
        raise TypeError(f"expected x to be an array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"expected x with a float dtype, got {x.dtype}")
    if not x.flags.writeable:
        raise ValueError("x must be writeable: it is perturbed in place")
    _warn_float32(x, "x")
    flat_idx = range(x.size) if indices is None else [int(i) for i in np.asarray(indices).ravel()]
    grad = np.zeros(len(flat_idx), dtype=np.float64)
    # x.flat[i] reads and writes through any strided view, so a parameter slice works too.
    on_gpu = backend.is_cupy_array(x)
    view = x.reshape(-1) if on_gpu else x.flat   # cupy: contiguous parameters assumed
    for j, i in enumerate(flat_idx):
        if not 0 <= i < x.size:
            raise IndexError(f"flat index {i} out of range for x of size {x.size}")
        old = view[i].copy() if on_gpu else view[i]
        try:
            view[i] = old + eps
            f_plus = _scalar(f())
            view[i] = old - eps
            f_minus = _scalar(f())
        finally:
            view[i] = old                                     # restore exactly
        grad[j] = (f_plus - f_minus) / (2.0 * eps)           # (f(x + h e_i) - f(x - h e_i)) / 2h
    return grad.reshape(x.shape) if indices is None else grad


def rel_error(a, b):
    """max_i |a_i - b_i| / max(1e-8, |a_i| + |b_i|) over all entries (0.0 for empty arrays).

    Symmetric in a and b.  The floor 1e-8 turns it into an absolute error where both entries are
    tiny, so rounding noise around a true zero gradient does not count as a 100% error.
    """
    a = np.asarray(backend.to_numpy(a), dtype=np.float64)
    b = np.asarray(backend.to_numpy(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs two arrays of one shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    err = np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))
    return float(np.max(err)) if not np.isnan(err).any() else float("nan")


def _subset(size, max_entries, rng):
    """All flat indices, or ``max_entries`` of them drawn without replacement (sorted)."""
    if max_entries is not None:
        max_entries = positive_int("max_entries", max_entries)
    if max_entries is None or max_entries >= size:
        return None
    return np.sort(rng.choice(size, size=max_entries, replace=False))


def check_grad(f, x, analytic, eps=1e-6, max_entries=None, seed=0):
    """rel_error between ``analytic`` (x's shape) and the central-difference gradient of f at x.

    With ``max_entries`` smaller than x.size, only that many entries are compared, chosen at
    random with ``seed``.  Returns the relative error (a float).
    """
    analytic = backend.to_numpy(analytic)
    if tuple(analytic.shape) != tuple(x.shape):
        raise ValueError(f"expected the analytic gradient of x's shape {tuple(x.shape)}, "
                         f"got {tuple(analytic.shape)}")
    idx = _subset(x.size, max_entries, backend.rng(seed))
    num = numerical_grad(f, x, eps=eps, indices=idx)
    ana = np.asarray(analytic) if idx is None else np.asarray(analytic).reshape(-1)[idx]
    return rel_error(ana, num)


class GradCheckReport(dict):
    """``{parameter name: relative error}`` with a printable table (``report()``, ``str()``).

    Attributes: ``shapes`` and ``checked`` (entries compared) per parameter, ``tol`` (if given).
    """

    def __init__(self, errors, shapes, checked, tol=None):
        super().__init__(errors)
        self.shapes, self.checked, self.tol = dict(shapes), dict(checked), tol

    def failures(self, tol=None):
        """{name: error} for the parameters whose error exceeds tol (or is NaN)."""
        tol = self.tol if tol is None else tol
        if tol is None:
            raise ValueError("give a tolerance: failures(tol=1e-6)")
        return {k: e for k, e in self.items() if not e <= tol}

    def report(self, tol=None):
        """A table: parameter, shape, entries checked, relative error and (with tol) ok/FAIL."""
        tol = self.tol if tol is None else tol
        return report(self, tol=tol, shapes=self.shapes, checked=self.checked)

    def __str__(self):
        return self.report()


def report(errors, tol=None, shapes=None, checked=None):
    """Format ``{name: rel_error}`` as an aligned table, one parameter per line."""
    shapes, checked = shapes or {}, checked or {}
    rows = [("parameter", "shape", "checked", "rel. error") + (("",) if tol is not None else ())]
    for name, err in errors.items():
        row = (name, str(tuple(shapes[name])) if name in shapes else "",
               str(checked.get(name, "")), f"{err:.2e}")
        if tol is not None:
            row += ("ok" if err <= tol else "FAIL",)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    if tol is not None:
        n_bad = sum(1 for e in errors.values() if not e <= tol)
        lines.append(f"tolerance {tol:.0e}: " + ("all ok" if n_bad == 0 else f"{n_bad} FAILED"))
    return "\n".join(lines)


def check_model(model, x, seed=0, eps=1e-6, max_entries_per_param=20, subset_seed=0):
    """Check every gradient of a model that follows the model contract (README).

    The contract: ``model.params`` is a dict of the live arrays and ``model.loss(x, rng)``
    returns ``(loss, grads)`` with ``grads`` keyed like ``params``; the same seed gives the same
    loss.  Every evaluation calls ``model.loss(x, nplvm.backend.rng(seed))`` with a fresh
    Generator, so the noise (eps of the reparameterization, sampled labels) is held fixed and the
    loss is a deterministic function of the parameters.

    For each parameter, ``max_entries_per_param`` entries (None: all) are chosen at random with
    ``subset_seed`` and compared with central differences.  Returns a ``GradCheckReport``:
    ``{name: rel_error}``, printable as a table.  Use float64 parameters and data.
    """
    eps = positive_float("eps", eps)
    max_entries_per_param = optional(positive_int, "max_entries_per_param", max_entries_per_param)
    params = model.params
    if not isinstance(params, dict) or not params:
        raise TypeError("expected model.params to be a non-empty dict of name -> array")

    def loss_value():
        return _scalar(model.loss(x, backend.rng(seed)))

    loss0, grads = model.loss(x, backend.rng(seed))
    missing = [k for k in params if k not in grads]
    if missing:
        raise KeyError(f"model.loss returned no gradient for parameter(s) {missing}")
    # copy: a model may reuse its gradient buffers on the next call
    grads = {k: np.array(backend.to_numpy(grads[k]), dtype=np.float64) for k in params}
    loss1 = loss_value()
    if _scalar(loss0) != loss1:
        raise RuntimeError(
            f"model.loss(x, rng({seed})) gave {_scalar(loss0)!r} and then {loss1!r}: the loss must be a "
            "deterministic function of the parameters given the seed (draw all noise from rng)")

    pick = backend.rng(subset_seed)
    errors, shapes, checked = {}, {}, {}
    for name, p in params.items():
        if tuple(grads[name].shape) != tuple(p.shape):
            raise ValueError(f"gradient of {name!r} has shape {grads[name].shape}, parameter {tuple(p.shape)}")
        _warn_float32(p, f"parameter {name!r}")
        idx = _subset(p.size, max_entries_per_param, pick)
        num = numerical_grad(loss_value, p, eps=eps, indices=idx)
        ana = grads[name] if idx is None else grads[name].reshape(-1)[idx]
        errors[name] = rel_error(ana, num)
        shapes[name] = tuple(p.shape)
        checked[name] = p.size if idx is None else len(idx)
    return GradCheckReport(errors, shapes, checked)


def assert_model_grads(model, x, tol=1e-6, **kw):
    """``check_model`` as an assertion: raises AssertionError naming every parameter whose
    relative error exceeds ``tol``, with the full table.  Returns the report when all pass.

    Keyword arguments go to ``check_model`` (seed, eps, max_entries_per_param, subset_seed).
    """
    result = check_model(model, x, **kw)
    result.tol = tol
    bad = result.failures(tol)
    if bad:
        listing = ", ".join(f"{k} ({e:.2e})" for k, e in bad.items())
        raise AssertionError(f"gradient check failed (tol {tol:.0e}) for {listing}\n{result.report(tol)}")
    return result
