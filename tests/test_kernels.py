"""Parity of the kernel backends with kernels/reference.py, and the dispatch rules.

Tolerances (stated once, used everywhere):
  float64: every output matches the reference to 1e-12 relative (absolute 1e-12 times the
           array's scale, for entries that cancel to ~0).
  float32: compared with the *float64* reference evaluated on the same float32 inputs, every
           output is within 8 eps32 (|true| + scale), eps32 = 1.19e-7 and scale the largest
           magnitude of that output (or of the summed terms, for row values): i.e. a few ulps
           of the quantities involved, never a loose 1e-3.  One exception is stated where it is
           used: exp(s - t) of a float32 difference inherits its rounding, |s - t| eps32 / 2
           relative, so the two-Gaussian KL's float32 tolerance is scaled by 1 + max|s - t| / 2.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kernels
from kernels import reference as ref

cpu = pytest.importorskip("kernels.cpu", reason="numba is not installed")

EPS32 = float(np.finfo(np.float32).eps)
DTYPES = (np.float32, np.float64)
BACKENDS = ("reference", "cpu")


def assert_close(got, want64, dtype, scale=None, what="", cond=1.0):
    """got (dtype) against want64 (the float64 truth) under the tolerances in the module docstring."""
    got = np.asarray(got, np.float64)
    want64 = np.asarray(want64, np.float64)
    assert got.shape == want64.shape, what
    fin = np.isfinite(want64)
    np.testing.assert_array_equal(got[~fin], want64[~fin], err_msg=f"{what}: non-finite entries")
    if scale is None:
        scale = np.max(np.abs(want64[fin]), initial=0.0)
    if dtype == np.float64:
        tol = 1e-12 * (np.abs(want64[fin]) + scale)
    else:
        tol = 8 * EPS32 * cond * (np.abs(want64[fin]) + scale)
    err = np.abs(got[fin] - want64[fin])
    assert np.all(err <= tol), f"{what}: max error {err.max():.3g}, worst ratio {np.max(err / np.maximum(tol, 1e-300)):.3g}"


def truth(fn, *arrays, weight=None):
    """The reference in float64 on the (maybe float32) inputs."""
    args = [np.asarray(a, np.float64) for a in arrays]
    w = None if weight is None else np.asarray(weight, np.float64)
    return fn(*args, w) if fn is not ref.adam_step else None


SHAPES = [(1, 1), (3, 7), (17, 33), (128, 784), (300, 1031)]


def _bern_inputs(rng, shape, dtype, scale=4.0):
    x = (rng.random(shape) < 0.4).astype(dtype)
    logits = (scale * rng.standard_normal(shape)).astype(dtype)
    return x, logits


# ------------------------------------------------------------------------------------------
# the float32 polynomial exp and log1p
# ------------------------------------------------------------------------------------------
def _ulp_error(got32, x64, fn64):
    want = fn64(x64)
    return np.abs(got32.astype(np.float64) - want) / np.spacing(want.astype(np.float32)).astype(np.float64)


def test_exp32_within_1_ulp_and_flushes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-87.0, 88.7, 400_000), np.linspace(-1, 1, 100_001),
                        [0.0, -87.0, 88.72]]).astype(np.float32)
    out = np.empty_like(x)
    cpu._exp32_array(x, out)
    assert _ulp_error(out, x.astype(np.float64), np.exp).max() <= 1
    edge = np.array([-87.01, -1e4, -np.inf, 88.73, 1e4, np.inf, np.nan], np.float32)
    out = np.empty_like(edge)
    cpu._exp32_array(edge, out)
    np.testing.assert_array_equal(out, [0, 0, 0, np.inf, np.inf, np.inf, np.nan])


def test_log1p01_32_within_3_ulp():
    rng = np.random.default_rng(1)
    e = np.concatenate([rng.random(400_000), np.logspace(-38, 0, 100_000), [0.0, 1.0]]).astype(np.float32)
    out = np.empty_like(e)
    cpu._log1p01_32_array(e, out)
    nz = e > 0
    assert _ulp_error(out[nz], e[nz].astype(np.float64), np.log1p).max() <= 3
    assert out[~nz].tolist() == [0.0]


# ------------------------------------------------------------------------------------------
# Bernoulli NLL and the two KLs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bernoulli_nll_parity(backend, dtype, shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    x, logits = _bern_inputs(rng, shape, dtype)
    for weight in (None, 0.25, rng.random(shape[0]).astype(dtype)):
        nll, dl = kernels.bernoulli_nll(x, logits, weight, backend=backend)
        assert nll.dtype == dl.dtype == dtype and nll.shape == (shape[0],) and dl.shape == shape
        want = truth(ref.bernoulli_nll, x, logits, weight=weight)
        terms = np.abs(ref.softplus(logits.astype(np.float64))) + np.abs(x * logits.astype(np.float64))
        assert_close(nll, want[0], dtype, scale=terms.sum(axis=1).max(), what="nll")
        assert_close(dl, want[1], dtype, scale=1.0 * np.max(np.abs(weight), initial=1.0)
                     if weight is not None else 1.0, what="dnll/dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_nll_extreme_logits(dtype):
    logits = np.array([[1e4, -1e4, 88.0, -88.0, 100.0, -100.0, 0.0, 1e-30]], dtype)
    for xv in (0.0, 1.0):
        x = np.full_like(logits, xv)
        nll, dl = kernels.bernoulli_nll(x, logits, backend="cpu")
        want = truth(ref.bernoulli_nll, x, logits)
        assert np.all(np.isfinite(nll)) and np.all(np.isfinite(dl))
        assert_close(nll, want[0], dtype, what="nll")
        assert_close(dl, want[1], dtype, scale=1.0, what="grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (128, 50), (129, 33)])
def test_gaussian_kl_std_parity(backend, dtype, shape):
    rng = np.random.default_rng(7)
    mu = rng.standard_normal(shape).astype(dtype)
    logvar = rng.uniform(-50, 50, shape).astype(dtype)
    logvar.flat[0] = 50.0
    for weight in (None, 2.0, rng.random(shape[0])):
        got = kernels.gaussian_kl_std(mu, logvar, weight, backend=backend)
        want = truth(ref.gaussian_kl_std, mu, logvar, weight=weight)
        var = np.exp(logvar.astype(np.float64))
        assert_close(got[0], want[0], dtype, scale=0.5 * (var + mu.astype(float) ** 2 + 1 + np.abs(logvar)).sum(1).max())
        for g, w in zip(got[1:], want[1:]):
            assert g.dtype == dtype
            assert_close(g, w, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (4, 9), (128, 32), (131, 50)])
def test_gaussian_kl_parity(backend, dtype, shape):
    rng = np.random.default_rng(11)
    lim = 50.0 if dtype == np.float64 else 40.0      # float32: keep exp(s - t) below its overflow
    m, n = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    s, t = (rng.uniform(-lim, lim, shape).astype(dtype) for _ in range(2))
    weight = rng.random(shape[0])
    got = kernels.gaussian_kl(m, s, n, t, weight, backend=backend)
    want = truth(ref.gaussian_kl, m, s, n, t, weight=weight)
    m64, s64, n64, t64 = (a.astype(np.float64) for a in (m, s, n, t))
    terms = np.abs(t64) + np.abs(s64) + np.exp(s64 - t64) + (m64 - n64) ** 2 * np.exp(-t64) + 1
    cond = 1.0 if dtype == np.float64 else 1 + np.abs(s64 - t64).max() / 2
    assert_close(got[0], want[0], dtype, scale=0.5 * terms.sum(1).max(), what="kl", cond=cond)
    for name, g, w in zip(("dmu_q", "dlogvar_q", "dmu_p", "dlogvar_p"), got[1:], want[1:]):
        assert_close(g, w, dtype, what=name, cond=cond)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 9), d=st.integers(1, 40), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]), f64=st.booleans())
def test_bernoulli_and_kl_property(n, d, seed, scale, f64):
    """Random shapes and magnitudes: cpu == reference, and the NLL is >= 0 (a -log probability)."""
    dtype = np.float64 if f64 else np.float32
    rng = np.random.default_rng(seed)
    x, logits = _bern_inputs(rng, (n, d), dtype, scale)
    nll, dl = kernels.bernoulli_nll(x, logits, backend="cpu")
    assert np.all(nll >= 0)
    want = truth(ref.bernoulli_nll, x, logits)
    terms = np.abs(ref.softplus(logits.astype(np.float64))) + np.abs(x * logits.astype(np.float64))
    assert_close(nll, want[0], dtype, scale=terms.sum(1).max())
    assert_close(dl, want[1], dtype, scale=1.0)
    mu = (rng.standard_normal((n, d)) * min(scale, 30.0)).astype(dtype)
    logvar = rng.uniform(-min(scale, 50.0), min(scale, 50.0), (n, d)).astype(dtype)
    kl = kernels.gaussian_kl_std(mu, logvar, backend="cpu")
    assert np.all(kl[0] >= -1e-6 * d)                 # KL >= 0 up to rounding
    want = truth(ref.gaussian_kl_std, mu, logvar)
    scale_kl = 0.5 * (np.exp(logvar.astype(float)) + mu.astype(float) ** 2 + 1 + np.abs(logvar)).sum(1).max()
    assert_close(kl[0], want[0], dtype, scale=scale_kl)
    # d/dlogvar = (e^s - 1) / 2 cancels for small s: its error is a few ulp of e^s / 2, absolutely
    assert_close(kl[2], want[2], dtype, scale=0.5 * np.exp(logvar.astype(np.float64)).max())


def test_non_contiguous_views_and_int_targets():
    """mu, logvar as column slices of one (N, 2D) array (how encoders emit them), x as uint8."""
    rng = np.random.default_rng(3)
    h = rng.standard_normal((16, 20)).astype(np.float32)
    mu, logvar = h[:, :10], h[:, 10:]
    got = kernels.gaussian_kl_std(mu, logvar, backend="cpu")
    want = ref.gaussian_kl_std(mu, logvar)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    x = (rng.random((4, 6)) < 0.5).astype(np.uint8)
    logits = rng.standard_normal((4, 6))
    got = kernels.bernoulli_nll(x, logits, backend="cpu")
    want = ref.bernoulli_nll(x.astype(np.float64), logits)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------
# matmul, the tiled kernel and the fused linear layer
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mkn", [(1, 1, 1), (3, 5, 2), (33, 65, 17), (130, 300, 257), (64, 784, 512)])
def test_matmul_and_matmul_tiled(dtype, mkn):
    M, K, N = mkn
    rng = np.random.default_rng(M + K + N)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    want = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.sqrt(K) * np.abs(a).max() * np.abs(b).max()    # a bound on the size of the partial sums
    for backend in BACKENDS:
        for fn in (kernels.matmul, kernels.matmul_tiled):
            got = fn(a, b, backend=backend)
            assert got.dtype == dtype and got.shape == (M, N)
            tol = (1e-13 if dtype == np.float64 else 8 * EPS32) * np.sqrt(K) * scale
            assert np.abs(got - want).max() <= tol, (backend, fn.__name__)


@pytest.mark.parametrize("act", ref.ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nio", [(1, 1, 1), (37, 19, 23), (128, 64, 70)])
def test_linear_forward_backward_parity(act, dtype, nio):
    N, I, O = nio
    rng = np.random.default_rng(N * I + O)
    x = rng.standard_normal((N, I)).astype(dtype)
    W = (rng.standard_normal((I, O)) * 2 / np.sqrt(I)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    dy = rng.standard_normal((N, O)).astype(dtype)
    y = kernels.linear_forward(x, W, b, act, backend="cpu")
    x64, W64, b64 = (a.astype(np.float64) for a in (x, W, b))
    y64 = ref.linear_forward(x64, W64, b64, act)
    hscale = (np.abs(x64) @ np.abs(W64) + np.abs(b64)).max()
    assert y.dtype == dtype
    assert_close(y, y64, dtype, scale=np.sqrt(I) * hscale, what="y")
    # backward from the same saved y the layer would keep
    dx, dW, db = kernels.linear_backward(dy, x, W, y, act, backend="cpu")
    rdx, rdW, rdb = ref.linear_backward(dy.astype(np.float64), x64, W64, y.astype(np.float64), act)
    for name, g, w, k in (("dx", dx, rdx, O), ("dW", dW, rdW, N), ("db", db, rdb, N)):
        assert g.dtype == dtype
        assert_close(g, w, dtype, scale=np.sqrt(k) * np.abs(w).max() + np.abs(dy).max(), what=name)
    assert kernels.linear_backward(dy, x, W, y, act, need_dx=False, backend="cpu")[0] is None


def _vector_types_in_fresh_compile(kernel, *args):
    """The LLVM vector types (e.g. '<16 x float>') in an uncached compile of a cpu kernel.

    Cached machine code cannot be inspected, so the kernel's Python source is compiled again
    with the same options minus the cache; a loop that vectorized shows up as vector types."""
    import re
    from numba import njit
    opts = dict(cpu._JIT, cache=False)
    fresh = njit(**opts)(kernel.py_func)
    fresh(*args)
    ir = fresh.inspect_llvm(fresh.signatures[0])
    return set(re.findall(r"<\d+ x (?:float|double)>", ir))


def test_linear_tails_vectorize():
    """The fused bias + activation pass and the activation backward + bias gradient must compile
    to SIMD code for float32.  Written with the activation a run-time argument inside the loop
    they did not (ReLU backward at (128, 512): 0.25 ms against 0.03 ms for NumPy); the kernels
    now dispatch on it outside the loop, with the activation a constant in each copy."""
    a = np.zeros((4, 16), np.float32)
    vb = _vector_types_in_fresh_compile(cpu._act_backward, a, a, cpu._RELU, a.copy(), np.zeros(16))
    vf = _vector_types_in_fresh_compile(cpu._bias_act_f32, a.copy(), np.zeros(16, np.float32), cpu._RELU)
    assert any("float" in v for v in vb), f"_act_backward did not vectorize: {vb}"
    assert any("float" in v for v in vf), f"_bias_act_f32 did not vectorize: {vf}"


def test_bernoulli_nll_fortran_ordered_input():
    """x gathered from a Fortran-ordered data set (as np.load returns one saved that way): the
    wrapper hands the kernel row-major copies, and the result is the same."""
    rng = np.random.default_rng(4)
    x = np.asfortranarray((rng.random((9, 13)) < 0.5).astype(np.float32))
    logits = np.asfortranarray(rng.standard_normal((9, 13)).astype(np.float32))
    got = kernels.bernoulli_nll(x, logits, 0.5, backend="cpu")
    want = kernels.bernoulli_nll(np.ascontiguousarray(x), np.ascontiguousarray(logits), 0.5, backend="cpu")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------------------
# Adam
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (7, 5), (784, 512)])
def test_adam_step_parity(dtype, shape):
    rng = np.random.default_rng(5)
    p = rng.standard_normal(shape).astype(dtype)
    states = {be: (p.copy(), np.zeros_like(p), np.zeros_like(p)) for be in BACKENDS}
    for t in range(1, 6):
        g = rng.standard_normal(shape).astype(dtype)
        for be, (pp, m, v) in states.items():
            kernels.adam_step(pp, g, m, v, 1e-2, 0.9, 0.999, 1e-8, t, backend=be)
    tol = 1e-12 if dtype == np.float64 else 8 * EPS32
    for a, b in zip(states["cpu"], states["reference"]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(initial=1.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_flushes_denormal_moments(backend, dtype):
    """A gradient that stays zero makes m and v decay geometrically: they must reach exactly 0,
    never a denormal (|m| < tiny), because denormal arithmetic is very slow on CPUs."""
    tiny = np.finfo(dtype).tiny
    p = np.ones(2 * (1 << 15) + 3, dtype)           # large enough for the parallel cpu path (if on)
    m = np.full_like(p, 8 * tiny)
    m[::2] *= -1
    v = np.full_like(p, 8 * tiny)
    g = np.zeros_like(p)
    seen_zero = False
    for t in range(1, 8):
        kernels.adam_step(p, g, m, v, 1e-3, 0.5, 0.5, 1e-8, t, backend=backend)
        for a in (m, v):
            assert np.all((a == 0) | (np.abs(a) >= tiny)), f"denormal after step {t}"
        seen_zero = seen_zero or bool(np.all(m == 0))
    assert seen_zero and np.all(v == 0) and np.all(np.isfinite(p))


def test_adam_non_contiguous_falls_back_to_reference():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((6, 8))
    p, m, v = base[:, ::2].copy(order="F"), np.zeros((6, 4)), np.zeros((6, 4))
    p2, m2, v2 = np.ascontiguousarray(p), m.copy(), v.copy()
    g = rng.standard_normal((6, 4))
    kernels.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1, backend="cpu")
    ref.adam_step(p2, g, m2, v2, 1e-3, 0.9, 0.999, 1e-8, 1)
    np.testing.assert_allclose(p, p2, rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_kernels_equal_the_serial_ones(dtype):
    """With set_num_threads(2) the Bernoulli and Adam kernels take their prange forms on large
    arrays: chunks of rows / entries, each by the serial code, so the results are bit for bit
    those of the serial kernels (under the test suite's NUMBA_NUM_THREADS=1 the chunks run on
    one thread, but through the same code)."""
    rng = np.random.default_rng(8)
    x, logits = _bern_inputs(rng, (300, 1031), dtype)
    p0 = rng.standard_normal((784, 512)).astype(dtype)
    grads = [rng.standard_normal(p0.shape).astype(dtype) for _ in range(3)]
    out = {}
    for threads in (1, 2):
        previous = cpu.set_num_threads(threads)
        try:
            assert cpu._parallel(p0.size, 2 * cpu._ADAM_CHUNK) == (threads > 1)
            nll, dl = cpu.bernoulli_nll(x, logits, 0.25)
            p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
            for t, g in enumerate(grads, 1):
                cpu.adam_step(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, t)
        finally:
            cpu.set_num_threads(previous)
        out[threads] = (nll, dl, p, m, v)
    for a, b in zip(out[1], out[2]):
        np.testing.assert_array_equal(a, b)


def test_kernel_threads_setting_is_checked(monkeypatch):
    with pytest.raises(ValueError, match="positive integer number of threads, got 0"):
        cpu.set_num_threads(0)
    monkeypatch.setattr(cpu, "_threads", None)
    monkeypatch.setenv("NPLVM_KERNEL_THREADS", "two")
    with pytest.raises(ValueError, match="NPLVM_KERNEL_THREADS to be a positive integer, got 'two'"):
        cpu.get_num_threads()
    monkeypatch.setenv("NPLVM_KERNEL_THREADS", "1")
    assert cpu.get_num_threads() == 1


# ------------------------------------------------------------------------------------------
# dispatch and errors
# ------------------------------------------------------------------------------------------
def test_dispatch_default_env_and_argument(monkeypatch):
    a = np.zeros((2, 3))
    monkeypatch.delenv("NPLVM_KERNELS", raising=False)
    assert kernels.resolve_backend(a) == "cpu"
    assert kernels.get("bernoulli_nll", a) is cpu.bernoulli_nll
    monkeypatch.setenv("NPLVM_KERNELS", "reference")
    assert kernels.resolve_backend(a) == "reference"
    assert kernels.get("bernoulli_nll", a) is ref.bernoulli_nll
    assert kernels.resolve_backend(a, backend="cpu") == "cpu"     # the argument wins
    monkeypatch.setenv("NPLVM_KERNELS", "fastest")
    with pytest.raises(ValueError, match="unknown kernel backend 'fastest'"):
        kernels.resolve_backend(a)


def test_cuda_backend_needs_cupy_arrays():
    a = np.zeros((2, 3))
    with pytest.raises(TypeError, match="needs CuPy arrays"):
        kernels.gaussian_kl_std(a, a, backend="cuda")


def test_bad_inputs_have_clear_errors():
    a = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"expected x of shape \(4, 3\)"):
        kernels.bernoulli_nll(np.zeros((4, 2)), a)
    with pytest.raises(ValueError, match=r"expected logits of shape \(N, D\)"):
        kernels.bernoulli_nll(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"weight to be a scalar or of shape \(4,\)"):
        kernels.gaussian_kl_std(a, a, np.ones(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.gaussian_kl_std(a.astype(int), a)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        kernels.linear_forward(a, np.zeros((3, 2)), np.zeros(2), "gelu", backend="cpu")
    with pytest.raises(ValueError, match=r"expected b of shape \(2,\)"):
        kernels.linear_forward(a, np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="expected a"):
        kernels.matmul_tiled(a, a)
    with pytest.raises(ValueError, match="expected m of shape"):
        kernels.adam_step(a, a, np.zeros(3), a, 1e-3, 0.9, 0.999, 1e-8, 1)


def test_bench_helpers_and_table():
    """The benchmark's timer, triad floor and table (the full run is `python -m kernels.bench`)."""
    from kernels import bench
    us = bench.timeit(lambda: np.zeros(10), repeats=2)
    assert 0 < us < 1e5
    assert bench.triad_bandwidth(3 * 8 * 4096, np.float64, repeats=2) > 0
    rec = dict(kernel="bernoulli_nll", backend="cpu", shape="128x784", dtype="float32",
               us_per_call=100.0, speedup_vs_naive_numpy=7.0, floor_fraction=0.2)
    table = bench.format_table([rec, dict(rec, kernel="matmul_tiled", gflops=16.0)])
    assert "bernoulli_nll" in table and "x naive" in table and "(16.0 GF/s)" in table
