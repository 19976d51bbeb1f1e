"""The CUDA backend without a GPU, then (only where one exists) on it.

1. Every CUDA source compiles with NVRTC to a cubin for sm_75, sm_80 and sm_90, in float32
   and float64, and ptxas reports no register spills (beyond 16 bytes) and resources that fit the launch
   configuration.  A syntax, type or resource error fails here, in CI, with no GPU.
2. The per-element math strings pasted into the CUDA C are evaluated with NumPy and checked
   against kernels/reference.py (same tolerances as tests/test_kernels.py); the tiled matmul's
   block/tile/bounds logic is replayed in NumPy and checked against A @ B.
3. Launch parity tests run the kernels on a GPU; they are skipped, saying why, where
   cupy.is_available() is false.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from kernels import cuda as K
from kernels import reference as ref

EPS32 = float(np.finfo(np.float32).eps)
DTYPES = (np.float32, np.float64)


def _tol(dtype):
    return 1e-12 if dtype == np.float64 else 8 * EPS32


# ------------------------------------------------------------------------------------------
# 1. NVRTC compilation, no GPU
# ------------------------------------------------------------------------------------------
try:
    from cupy.cuda import nvrtc
except Exception:  # cupy is optional; CI installs it (requirements.txt)
    nvrtc = None
needs_nvrtc = pytest.mark.skipif(nvrtc is None, reason="cupy (with NVRTC) is not installed")

_LAUNCH_THREADS = {name: K.ROW_THREADS for name in K.ROW_KERNELS}
_LAUNCH_THREADS["matmul_tiled"] = K.TILE * K.TILE


@needs_nvrtc
@pytest.mark.parametrize("arch", K.ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_sources_compile_with_nvrtc(dtype, arch):
    try:
        cubin, log = K.nvrtc_compile(dtype, arch)
    except nvrtc.NVRTCError as e:    # the library itself missing, not a compile error
        pytest.skip(f"NVRTC unavailable: {e}")
    assert cubin[:4] == b"\x7fELF", "NVRTC did not produce a cubin"
    compiled = set(re.findall(r"Compiling entry function '(\w+)' for '(\w+)'", log))
    assert {(name, arch) for name in K.kernel_names()} <= compiled, log
    # ptxas resource report, one block of lines per kernel
    for name, block in re.findall(r"Function properties for (\w+)\n(.*?)Compile time", log, re.S):
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill", block)]
        # double exp's rare slow path may spill one 8-byte register on sm_90; more is a regression
        assert spills and max(spills) <= 16, f"{name} spills registers on {arch}: {block}"
        regs = int(re.search(r"Used (\d+) registers", block).group(1))
        threads = _LAUNCH_THREADS.get(name, K.ELEM_THREADS)
        assert regs * threads <= 65536, f"{name}: {regs} registers x {threads} threads > 64K on {arch}"
        smem = re.search(r"(\d+) bytes smem", block)
        assert smem is None or int(smem.group(1)) <= 48 * 1024, f"{name}: too much shared memory"


def test_cuda_source_rejects_other_dtypes():
    with pytest.raises(TypeError, match="float32 or float64"):
        K.cuda_source(np.float16)


# ------------------------------------------------------------------------------------------
# 2. The CUDA math and tiling, run on the CPU
# ------------------------------------------------------------------------------------------
def _truth(fn, arrays, weight):
    w = None if weight is None else np.asarray(weight, np.float64)
    return fn(*[np.asarray(a, np.float64) for a in arrays], w)


def _check(got, want, dtype, scale=None, cond=1.0):
    want = np.asarray(want, np.float64)
    scale = np.abs(want).max(initial=0.0) if scale is None else scale
    err = np.abs(np.asarray(got, np.float64) - want)
    assert np.all(err <= _tol(dtype) * cond * (np.abs(want) + scale)), err.max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 129), (128, 784)])
def test_cuda_bernoulli_math_matches_reference(dtype, shape):
    rng = np.random.default_rng(shape[1])
    x = (rng.random(shape) < 0.5).astype(dtype)
    logits = (4 * rng.standard_normal(shape)).astype(dtype)
    logits.flat[0] = 1e4
    logits.flat[-1] = -1e4
    weight = rng.random(shape[0])
    nll, dl = K.evaluate_row_kernel("bernoulli_nll", [x, logits], weight, dtype)
    want = _truth(ref.bernoulli_nll, [x, logits], weight)
    terms = np.abs(ref.softplus(logits.astype(np.float64))) + np.abs(x * logits.astype(np.float64))
    _check(nll, want[0], dtype, scale=terms.sum(1).max())
    _check(dl, want[1], dtype, scale=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kl_math_matches_reference(dtype):
    rng = np.random.default_rng(4)
    shape = (16, 50)
    lim = 50.0 if dtype == np.float64 else 40.0
    m, n = rng.standard_normal(shape), rng.standard_normal(shape)
    s, t = rng.uniform(-lim, lim, shape), rng.uniform(-lim, lim, shape)
    m, n, s, t = (a.astype(dtype) for a in (m, n, s, t))
    got = K.evaluate_row_kernel("gaussian_kl_std", [m, s], 0.5, dtype)
    want = _truth(ref.gaussian_kl_std, [m, s], 0.5)
    s64 = s.astype(np.float64)
    _check(got[0], want[0], dtype, scale=0.5 * (np.exp(s64) + m.astype(float) ** 2 + 1 + np.abs(s64)).sum(1).max())
    for g, w in zip(got[1:], want[1:]):
        _check(g, w, dtype)
    got = K.evaluate_row_kernel("gaussian_kl", [m, s, n, t], None, dtype)
    want = _truth(ref.gaussian_kl, [m, s, n, t], None)
    t64 = t.astype(np.float64)
    cond = 1.0 if dtype == np.float64 else 1 + np.abs(s64 - t64).max() / 2   # exp of a rounded s - t
    terms = np.abs(t64) + np.abs(s64) + np.exp(s64 - t64) + (m - n).astype(float) ** 2 * np.exp(-t64) + 1
    _check(got[0], want[0], dtype, scale=0.5 * terms.sum(1).max(), cond=cond)
    for g, w in zip(got[1:], want[1:]):
        _check(g, w, dtype, cond=cond)


@pytest.mark.parametrize("act", ref.ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_activation_math_matches_reference(act, dtype):
    h = np.concatenate([np.linspace(-30, 30, 601), [-1e4, 1e4, 0.0]]).astype(dtype)
    ns = K.evaluate_math(K.ACT_FORWARD[act], {"h": h}, dtype)
    want = ref.activate(h.astype(np.float64), act)
    _check(ns["y"], want, dtype, scale=0.0)
    y = ns["y"]
    grad = K.evaluate_math((("dydh", K.ACT_GRAD[act]),), {"y": y}, dtype)["dydh"]
    # act'(y) lies in [0, 1]: its rounding error is absolute, a few eps of 1
    _check(np.broadcast_to(grad, y.shape), ref.activation_grad_from_output(y.astype(np.float64), act),
           dtype, scale=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_adam_math_matches_reference(dtype):
    rng = np.random.default_rng(9)
    tiny = np.finfo(dtype).tiny
    p = rng.standard_normal(1000).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    for t in range(1, 5):
        g = rng.standard_normal(1000).astype(dtype)
        g[:10] = 0.0
        bc2 = np.sqrt(1 - b2 ** t)
        ty = np.dtype(dtype).type
        ns = K.evaluate_math(K.ADAM_LINES, dict(p=p, g=g, m=m, v=v, beta1=ty(b1), beta2=ty(b2),
                                                c1=ty(1 - b1), c2=ty(1 - b2),
                                                step=ty(lr * bc2 / (1 - b1 ** t)), eps_hat=ty(eps * bc2),
                                                tiny=ty(tiny)), dtype)
        p, m, v = ns["pn"], ns["mf"], ns["vf"]
        ref.adam_step(p2, g, m2, v2, lr, b1, b2, eps, t)
    for a, b in ((p, p2), (m, m2), (v, v2)):
        np.testing.assert_allclose(a, b, rtol=_tol(dtype), atol=_tol(dtype) * np.abs(b).max())


@pytest.mark.parametrize("mkn", [(1, 1, 1), (15, 17, 33), (32, 16, 48), (50, 100, 7)])
def test_cuda_matmul_tiling_logic(mkn):
    M, K_, N = mkn
    rng = np.random.default_rng(M)
    A = rng.standard_normal((M, K_))
    B = rng.standard_normal((K_, N))
    np.testing.assert_allclose(K.simulate_matmul_tiled(A, B), A @ B, rtol=1e-12, atol=1e-12 * np.sqrt(K_))


# ------------------------------------------------------------------------------------------
# 3. Launches, on a GPU only
# ------------------------------------------------------------------------------------------
def _gpu_reason():
    try:
        import cupy
        if cupy.is_available():
            return None
        return "cupy is installed but no CUDA device is available (cupy.is_available() is False)"
    except Exception as e:  # pragma: no cover - depends on the machine
        return f"cupy cannot be imported: {e!r}"


_NO_GPU = _gpu_reason()
gpu = pytest.mark.skipif(_NO_GPU is not None, reason=str(_NO_GPU))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_launch_parity(dtype):
    import cupy as cp

    import kernels
    rng = np.random.default_rng(0)
    N, D = 129, 785
    x = (rng.random((N, D)) < 0.5).astype(dtype)
    logits = (4 * rng.standard_normal((N, D))).astype(dtype)
    w = rng.random(N).astype(dtype)
    for got, want in zip(kernels.bernoulli_nll(cp.asarray(x), cp.asarray(logits), cp.asarray(w)),
                         ref.bernoulli_nll(x, logits, w)):
        np.testing.assert_allclose(got.get(), want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    m, s, n, t = (rng.standard_normal((N, 50)).astype(dtype) for _ in range(4))
    for got, want in zip(kernels.gaussian_kl(*(cp.asarray(a) for a in (m, s, n, t))), ref.gaussian_kl(m, s, n, t)):
        np.testing.assert_allclose(got.get(), want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    for got, want in zip(kernels.gaussian_kl_std(cp.asarray(m), cp.asarray(s)), ref.gaussian_kl_std(m, s)):
        np.testing.assert_allclose(got.get(), want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    A = rng.standard_normal((67, 129)).astype(dtype)
    B = rng.standard_normal((129, 33)).astype(dtype)
    np.testing.assert_allclose(kernels.matmul_tiled(cp.asarray(A), cp.asarray(B)).get(), A @ B,
                               rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)
    W = rng.standard_normal((129, 33)).astype(dtype) / 10
    b = rng.standard_normal(33).astype(dtype)
    dy = rng.standard_normal((67, 33)).astype(dtype)
    for act in ref.ACTIVATIONS:
        y = kernels.linear_forward(cp.asarray(A), cp.asarray(W), cp.asarray(b), act)
        np.testing.assert_allclose(y.get(), ref.linear_forward(A, W, b, act), rtol=1e-4, atol=1e-5)
        got = kernels.linear_backward(cp.asarray(dy), cp.asarray(A), cp.asarray(W), y, act)
        for g, r in zip(got, ref.linear_backward(dy, A, W, y.get(), act)):
            np.testing.assert_allclose(g.get(), r, rtol=1e-4, atol=1e-4)
    p = rng.standard_normal(1000).astype(dtype)
    g = rng.standard_normal(1000).astype(dtype)
    pg, mg, vg = cp.asarray(p), cp.zeros(1000, dtype), cp.zeros(1000, dtype)
    m0, v0 = np.zeros(1000, dtype), np.zeros(1000, dtype)
    kernels.adam_step(pg, cp.asarray(g), mg, vg, 1e-3, 0.9, 0.999, 1e-8, 1)
    ref.adam_step(p, g, m0, v0, 1e-3, 0.9, 0.999, 1e-8, 1)
    np.testing.assert_allclose(pg.get(), p, rtol=1e-6, atol=1e-7)
