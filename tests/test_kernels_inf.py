"""kernels.bernoulli_nll at logits of +-inf: the exact limits on every backend.

-log Bern(x | sigmoid(l)) = softplus(l) - x l tends to 0 for a possible pixel (x = 1 as
l -> +inf, x = 0 as l -> -inf) and to +inf for an impossible one; the gradient sigmoid(l) - x
tends to 0 or +-1.  The textbook form gives inf - inf or 0 * inf = NaN there.  Checked like the
+-1e4 cases of tests/test_kernels.py: the reference, the Numba kernels (serial and threaded,
float32 and float64), the CUDA kernel's math strings evaluated by NumPy (the same strings NVRTC
compiles, tests/test_kernels_cuda.py) and, where a GPU exists, the CUDA kernel itself.
"""
import numpy as np
import pytest

import kernels
from kernels import cpu
from kernels import cuda as K
from kernels import reference as ref

DTYPES = (np.float32, np.float64)
INF = np.inf

# (x, l) -> (nll, dnll/dl)
CASES = [(1.0, INF, 0.0, 0.0), (0.0, -INF, 0.0, 0.0),        # possible pixels
         (0.0, INF, INF, 1.0), (1.0, -INF, INF, -1.0)]       # impossible pixels


def _one_per_row(dtype, n_rows=1, width=1):
    """Each case on its own row (so an inf in one cannot hide another's NaN), padded with finite
    logits that add a known value."""
    x = np.zeros((len(CASES) * n_rows, width), dtype)
    l = np.zeros_like(x)
    for i, (xv, lv, _, _) in enumerate(CASES * n_rows):
        x[i, 0], l[i, 0] = xv, lv
    want_nll = np.array([c[2] for c in CASES] * n_rows) + (width - 1) * np.log(2.0)   # l = 0: log 2
    want_dl = np.zeros(x.shape)
    want_dl[:, 0] = [c[3] for c in CASES] * n_rows
    want_dl[:, 1:] = 0.5                                              # sigmoid(0) - 0
    return x, l, want_nll, want_dl


def _check(nll, dl, want_nll, want_dl, dtype):
    nll, dl = np.asarray(nll, np.float64), np.asarray(dl, np.float64)
    assert not np.isnan(nll).any() and not np.isnan(dl).any()
    assert np.array_equal(np.isinf(nll), np.isinf(want_nll))
    fin = np.isfinite(want_nll)
    tol = 1e-12 if dtype == np.float64 else 4e-6
    np.testing.assert_allclose(nll[fin], want_nll[fin], rtol=tol, atol=tol)
    np.testing.assert_array_equal(dl, want_dl)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bernoulli_nll_at_infinite_logits(backend, dtype):
    x, l, want_nll, want_dl = _one_per_row(dtype, width=5)
    nll, dl = kernels.bernoulli_nll(x, l, backend=backend)
    assert nll.dtype == dtype and dl.dtype == dtype
    _check(nll, dl, want_nll, want_dl, dtype)
    # the +-1e4 cases of test_kernels.py, alongside: finite and near the same limits
    big = np.where(np.isinf(l), np.sign(l) * 1e4, l).astype(dtype)
    nll_big, _ = kernels.bernoulli_nll(x, big, backend=backend)
    assert np.all(np.isfinite(nll_big))
    np.testing.assert_allclose(nll_big[np.isfinite(want_nll)], want_nll[np.isfinite(want_nll)], atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_nll_at_infinite_logits_threaded(dtype):
    """The parallel Numba kernels (rows split between threads) give the same limits."""
    x, l, want_nll, want_dl = _one_per_row(dtype, n_rows=20, width=512)    # 80 x 512 > 2^15
    previous = cpu.set_num_threads(2)
    try:
        assert cpu._parallel(x.size, cpu._PARALLEL_MIN_ELEMENTS)
        nll, dl = kernels.bernoulli_nll(x, l, 0.5, backend="cpu")
    finally:
        cpu.set_num_threads(previous)
    _check(nll, dl, want_nll, 0.5 * want_dl, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_math_at_infinite_logits(dtype):
    """The CUDA kernel's per-element math, evaluated with NumPy from the strings it compiles."""
    x, l, want_nll, want_dl = _one_per_row(dtype, width=3)
    nll, dl = K.evaluate_row_kernel("bernoulli_nll", [x, l], None, dtype)
    _check(nll, dl, want_nll, want_dl, dtype)


def test_cuda_kernel_at_infinite_logits_on_gpu():
    cp = pytest.importorskip("cupy")
    if not cp.is_available():
        pytest.skip("cupy is installed but no CUDA device is available (cupy.is_available() is False)")
    for dtype in DTYPES:
        x, l, want_nll, want_dl = _one_per_row(dtype, n_rows=3, width=300)
        nll, dl = kernels.bernoulli_nll(cp.asarray(x), cp.asarray(l), backend="cuda")
        _check(cp.asnumpy(nll), cp.asnumpy(dl), want_nll, want_dl, dtype)


def test_reference_softplus_minus_xl_equals_the_textbook_form_for_finite_logits():
    rng = np.random.default_rng(0)
    l = rng.uniform(-30, 30, (50, 40))
    x = (rng.random(l.shape) < 0.5).astype(np.float64)
    np.testing.assert_allclose(ref.softplus_minus_xl(x, l), ref.softplus(l) - x * l, rtol=1e-14, atol=1e-14)
    soft = rng.random(l.shape)                                   # targets in [0, 1]
    np.testing.assert_allclose(ref.softplus_minus_xl(soft, l), ref.softplus(l) - soft * l,
                               rtol=1e-13, atol=1e-13)


def test_auto_dispatch_of_cupy_arrays_imports_the_cuda_backend():
    """A CuPy array with the default backend ("auto") reaches kernels/cuda.py: the module is
    imported on first use (it was looked up before being imported, a KeyError on the GPU)."""
    FakeCupy = type("ndarray", (), {"__module__": "cupy._core.core"})
    kernels._modules.pop("cuda", None)
    assert kernels.resolve_backend(FakeCupy()) == "cuda"
    assert kernels.get("bernoulli_nll", FakeCupy()) is K.bernoulli_nll


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_logit_stays_nan_and_finite_rows_are_unchanged(dtype):
    """The limits apply to +-inf only: a NaN logit still gives a NaN row (a diverged model must
    show), and the rows without an infinite logit are bit for bit what the formula gives."""
    rng = np.random.default_rng(3)
    l = (4 * rng.standard_normal((6, 50))).astype(dtype)
    x = (rng.random(l.shape) < 0.5).astype(dtype)
    plain = {b: kernels.bernoulli_nll(x, l, backend=b)[0] for b in ("reference", "cpu")}
    l[1, 3], l[2, 7], l[4, 0] = np.nan, np.inf, -np.inf
    for b in ("reference", "cpu"):
        nll, _ = kernels.bernoulli_nll(x, l, backend=b)
        assert np.isnan(nll[1]) and not np.isnan(np.delete(nll, 1)).any()
        np.testing.assert_array_equal(nll[[0, 3, 5]], plain[b][[0, 3, 5]])
    got = K.evaluate_row_kernel("bernoulli_nll", [x, l], None, dtype)[0]
    assert np.isnan(got[1]) and not np.isnan(np.delete(got, 1)).any()
