"""The CPU backend: Numba kernels that make one pass over memory where NumPy would make several.

Every public function here has the signature and the meaning of its twin in ``reference.py``
(read that first: it is the definition).  The KL divergences have no kernel here: measured at
about 0.2% of a VAE step, the ~215 lines of Numba they took did not pay; the reference serves.  What changes is *how* the work is done:

* **Fused single pass.**  ``reference.bernoulli_nll`` walks the logits about ten times
  (abs, exp, log1p, maximum, a product, a sum, a where, ...), each pass allocating an (N, D)
  temporary.  Here one loop reads each logit once and writes the value and the gradient together.
* **Vectorizable float32 math.**  The pip build of Numba has no SVML, so ``math.exp`` inside a
  loop is a scalar libm call (~3 ns) and ``math.log1p`` worse (~10 ns): slower than NumPy's own
  SIMD ``exp``.  In float32 we therefore use ``exp32`` and ``log1p01_32`` below, short polynomials
  made only of +, *, / and a bit-cast, which LLVM turns into AVX-512 code.  Their accuracy is
  measured in tests/test_kernels.py over dense sweeps (exp32 within 1 ulp, log1p01_32 within
  3 ulp of the correctly rounded float32 result).  float64, the dtype of gradient checks, takes
  exp and log1p from NumPy's own SIMD ufuncs on whole arrays (the Bernoulli wrapper),
  then one fused Numba pass: a libm call per element made the float64 kernels slower than the
  reference (Bernoulli (128, 784): 1430 us against ~1000 us).  It matches the reference
  to ~1e-15 relative.
* **Threads.**  The products are BLAS calls and use BLAS's threads (by default one per core;
  ``threadpoolctl.threadpool_limits`` caps them).  The Numba kernels run on the calling thread
  unless asked otherwise: BLAS does ~80% of a VAE step, and a second thread pool (Numba's) on the
  same cores fights BLAS's, each pool's idle threads spinning while the other works.  Measured
  on a busy 2-core machine, 784-512-512-32 VAE at batch 128 with 2 BLAS threads: 114 ms a step
  with the Bernoulli and Adam kernels on 2 Numba threads, 50 ms with them on the calling thread.
  ``set_num_threads(n)`` (or the environment variable ``NPLVM_KERNEL_THREADS=n``) lets those two
  kernels share large arrays between n Numba threads (worth trying when BLAS is held to one
  thread, or cores are many); at 1, the default, Numba never starts its pool for them.  The
  linear layer's elementwise tails are always serial (small, and right after a
  BLAS call); ``matmul_tiled``, the teaching kernel, always uses Numba's threads.
* **BLAS for products.**  ``matmul`` and the products inside ``linear_*`` call ``np.dot``
  (OpenBLAS): it measures ~5x faster than the hand-tiled ``matmul_tiled`` below (see
  ``python -m kernels.bench``), so the layer fuses only the cheap elementwise tail (bias +
  activation forward; activation derivative + bias gradient backward) into one pass.

Compilation: ``cache=True`` stores the machine code next to this file (``__pycache__``), so only
the first run pays the JIT.  The wrappers cast every array to the float dtype of the main input,
so each kernel is only ever compiled for float32 and float64.
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

from . import reference
from .reference import ACTIVATIONS

# fastmath flags that let LLVM vectorize reductions ('reassoc') and fuse a*b+c ('contract'),
# while keeping IEEE inf/NaN semantics ('nnan'/'ninf' are absent: a NaN loss must stay a NaN
# loss).  'nsz'/'arcp' were measured to cost exp32 its accuracy (4.6 ulp instead of < 1 ulp)
# for no speed, so they are left out too.
_FAST = {"reassoc", "contract"}
# error_model="numpy": a division by zero gives inf like NumPy, instead of a Python exception
# check inside the loop (that check alone stops vectorization).
_JIT = dict(cache=True, fastmath=_FAST, error_model="numpy", nogil=True)

f32 = np.float32

# ------------------------------------------------------------------------------------------
# float32 exp and log1p from +, *, / only (vectorizable without SVML)
# ------------------------------------------------------------------------------------------
_LOG2E = f32(1.4426950408889634)
_LN2_HI = f32(0.693359375)            # ln 2 split in two so k*LN2_HI is exact (Cody & Waite)
_LN2_LO = f32(-2.12194440e-4)
_EXP_HI = f32(88.72283)               # exp(x) overflows float32 above this
_EXP_LO = f32(-87.0)                  # below this exp(x) < 1.7e-38: flushed to 0 (no denormals)


@njit(inline="always", **_JIT)
def exp32(x):
    """exp(x) in float32: exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln(2)/2.

    exp(r) by its Taylor series to r^8/8! (truncation < 6e-9 relative for |r| <= 0.347), 2^k
    built by writing k + 127 into the exponent bits.  Returns 0 for x < -87 (the true value is
    below 1.7e-38) and inf for x > 88.72; NaN in, NaN out.
    """
    k = np.floor(x * _LOG2E + f32(0.5))              # float32 (math.floor would give an int64)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = f32(1 / 5040) + r * f32(1 / 40320)          # Horner form of sum_{n<=8} r^n / n!
    p = f32(1 / 720) + r * p
    p = f32(1 / 120) + r * p
    p = f32(1 / 24) + r * p
    p = f32(1 / 6) + r * p
    p = f32(0.5) + r * p
    p = f32(1.0) + (r + (r * r) * p)                 # 1 + (r + r^2 q): the small part first
    ki = np.int32(min(max(k, f32(-126.0)), f32(127.0)))  # 2^128 is not a float32: k = 128
    two_k = np.int32((ki + 127) << 23).view(np.float32)   # (x > 88.38) is done as 2 * 2^127
    y = (p * f32(2.0) if k > f32(127.0) else p) * two_k
    y = f32(np.inf) if x > _EXP_HI else y
    return f32(0.0) if x < _EXP_LO else y


@njit(inline="always", **_JIT)
def log1p01_32(e):
    """log(1 + e) in float32 for 0 <= e <= 1, accurate to a few ulp relative even for tiny e.

    log(1 + e) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...),  s = e / (2 + e) in [0, 1/3];
    with s^2 <= 1/9 the series cut after s^15/15 errs by < 2e-9 relative.
    """
    s = e / (f32(2.0) + e)
    s2 = s * s
    q = f32(1 / 13) + s2 * f32(1 / 15)
    q = f32(1 / 11) + s2 * q
    q = f32(1 / 9) + s2 * q
    q = f32(1 / 7) + s2 * q
    q = f32(1 / 5) + s2 * q
    q = f32(1 / 3) + s2 * q
    q = f32(1.0) + s2 * q
    return f32(2.0) * s * q


@njit(**_JIT)
def _exp32_array(x, out):
    """exp32 over a 1-D array (for the accuracy tests and the benchmark)."""
    for i in range(x.shape[0]):
        out[i] = exp32(x[i])


@njit(**_JIT)
def _log1p01_32_array(x, out):
    """log1p01_32 over a 1-D array (for the accuracy tests)."""
    for i in range(x.shape[0]):
        out[i] = log1p01_32(x[i])


# ------------------------------------------------------------------------------------------
# argument handling shared by the wrappers
# ------------------------------------------------------------------------------------------
def _float_dtype(a, name):
    dt = a.dtype
    if dt != np.float32 and dt != np.float64:
        raise TypeError(f"expected {name} with dtype float32 or float64, got {dt}")
    return dt


def _as(a, dt):
    """a as an ndarray of dtype dt (no copy when it already is one)."""
    return np.asarray(a, dtype=dt)


def _row_weights(weight, n, dt):
    """weight (None, a scalar or an (N,) array) as an (N,) array of dtype dt."""
    if weight is None:
        return np.ones(n, dt)
    w = np.asarray(weight, dtype=dt)
    if w.ndim == 0:
        return np.full(n, w, dt)
    if w.shape != (n,):
        raise ValueError(f"expected weight to be a scalar or of shape ({n},), got {w.shape}")
    return w


# ------------------------------------------------------------------------------------------
# Threads of the parallel kernels (see "Threads" in the module docstring)
# ------------------------------------------------------------------------------------------
_PARALLEL_MIN_ELEMENTS = 1 << 15      # below this many elements one thread beats waking others


def _threads_from_env():
    text = os.environ.get("NPLVM_KERNEL_THREADS", "1")
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"expected NPLVM_KERNEL_THREADS to be a positive integer, got {text!r}")
    return n


_threads = None                       # read from the environment on first use


def get_num_threads():
    """Threads the Bernoulli and Adam kernels may use (1: the calling thread only)."""
    if _threads is None:
        set_num_threads(_threads_from_env())
    return _threads


def set_num_threads(n):
    """Let the Bernoulli NLL and Adam kernels share large arrays between n Numba threads.

    n = 1 (the default, or ``NPLVM_KERNEL_THREADS``): every kernel runs on the calling thread.
    n > 1: also ``numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))`` (for the
    calling thread, as Numba's setting is per thread).  Returns the previous value.
    """
    global _threads
    if int(n) != n or n < 1:
        raise ValueError(f"expected a positive integer number of threads, got {n!r}")
    previous = _threads if _threads is not None else 1
    _threads = int(n)
    if _threads > 1:
        numba.set_num_threads(min(_threads, numba.config.NUMBA_NUM_THREADS))
    return previous


def _parallel(size, min_size):
    """Whether a kernel over ``size`` elements takes its parallel form."""
    return size >= min_size and get_num_threads() > 1


# ------------------------------------------------------------------------------------------
# Bernoulli negative log-likelihood from logits
# ------------------------------------------------------------------------------------------
@njit(inline="always", **_JIT)
def _bernoulli_rows(x, l, w, nll, dl):
    """One pass over the rows of logits l (N, D), exp taken once per logit and reused:

    e = exp(-|l|) in (0, 1];  softplus(l) = max(l, 0) + log1p(e);
    sigmoid(l) = 1 / (1 + e) if l >= 0 else e / (1 + e).
    The row sum is accumulated in float64.  float32 only (exp32, log1p01_32); float64 is
    _bernoulli_nll_given_exp below.
    """
    N, D = l.shape
    zero = l.dtype.type(0.0)
    one = l.dtype.type(1.0)
    for i in range(N):
        acc = 0.0
        wi = w[i]
        for j in range(D):
            li = l[i, j]
            xi = x[i, j]
            e = exp32(-abs(li))
            t = one / (one + e)
            acc += max(li, zero) + log1p01_32(e) - xi * li                # softplus(l) - x l
            sig = t if li >= zero else e * t
            dl[i, j] = wi * (sig - xi)                               # w (sigmoid(l) - x)
        nll[i] = acc


@njit(**_JIT)
def _bernoulli_nll_f32(x, l, w, nll, dl):
    """float32, on the calling thread."""
    _bernoulli_rows(x, l, w, nll, dl)


@njit(**_JIT)
def _bernoulli_nll_given_exp(x, l, e, lp, w, nll, dl):
    """Any float dtype (used for float64), with e = exp(-|l|) and lp = log1p(e) computed by the
    caller (NumPy's SIMD exp and log1p); on the calling thread.  e may be dl itself: each e[i, j]
    is read before dl[i, j] is written.

    The same pass as _bernoulli_rows with libm exp / log1p in the loop measured 1430 us at
    (128, 784) float64, slower than the reference (~1000 us): a libm call per element does not
    vectorize.  With the two transcendental passes left to NumPy, 350 us.
    """
    N, D = l.shape
    zero = l.dtype.type(0.0)
    one = l.dtype.type(1.0)
    for i in range(N):
        acc = 0.0
        wi = w[i]
        for j in range(D):
            li = l[i, j]
            xi = x[i, j]
            ei = e[i, j]                                                 # exp(-|l|)
            t = one / (one + ei)
            acc += max(li, zero) + lp[i, j] - xi * li                   # softplus(l) - x l
            sig = t if li >= zero else ei * t
            dl[i, j] = wi * (sig - xi)                                   # w (sigmoid(l) - x)
        nll[i] = acc


_BERN_ROWS = 16           # rows per chunk of the parallel Bernoulli kernels


@njit(parallel=True, **_JIT)
def _bernoulli_nll_f32_parallel(x, l, w, nll, dl):
    """float32, chunks of _BERN_ROWS rows shared between Numba's threads."""
    N = l.shape[0]
    for c in prange((N + _BERN_ROWS - 1) // _BERN_ROWS):
        a = c * _BERN_ROWS
        b = min(a + _BERN_ROWS, N)
        _bernoulli_nll_f32(x[a:b], l[a:b], w[a:b], nll[a:b], dl[a:b])


@njit(parallel=True, **_JIT)
def _bernoulli_nll_given_exp_parallel(x, l, e, lp, w, nll, dl):
    """e, lp given (float64), chunks of _BERN_ROWS rows shared between Numba's threads."""
    N = l.shape[0]
    for c in prange((N + _BERN_ROWS - 1) // _BERN_ROWS):
        a = c * _BERN_ROWS
        b = min(a + _BERN_ROWS, N)
        _bernoulli_nll_given_exp(x[a:b], l[a:b], e[a:b], lp[a:b], w[a:b], nll[a:b], dl[a:b])


def bernoulli_nll(x, logits, weight=None):
    """-log Bern(x | sigmoid(logits)) per row and its gradient; see reference.bernoulli_nll.

    x, logits: (N, D).  Returns nll (N,), dnll/dlogits (N, D), in the dtype of logits.
    """
    dt = _float_dtype(logits, "logits")
    # Row-major copies of strided inputs: the kernel walks rows, and x gathered from a Fortran-
    # ordered data set (column stride 1 byte, row stride N) measured 11x slower (1.2 ms vs 0.11 ms
    # at (128, 784)) than the 0.05 ms a copy costs.  No copy when already C-contiguous.
    x = np.ascontiguousarray(x, dtype=dt)
    logits = np.ascontiguousarray(logits)
    N, D = logits.shape
    nll = np.empty(N, dt)
    dl = np.empty((N, D), dt)
    w = _row_weights(weight, N, dt)
    parallel = _parallel(N * D, _PARALLEL_MIN_ELEMENTS) and N > _BERN_ROWS
    if dt == np.float32:
        (_bernoulli_nll_f32_parallel if parallel else _bernoulli_nll_f32)(x, logits, w, nll, dl)
    else:                       # float64: NumPy's SIMD exp and log1p, then the fused pass
        e = np.exp(np.negative(np.abs(logits, out=dl), out=dl), out=dl)     # exp(-|l|), in dl
        lp = np.log1p(e)
        kernel = _bernoulli_nll_given_exp_parallel if parallel else _bernoulli_nll_given_exp
        kernel(x, logits, e, lp, w, nll, dl)
    return nll, dl


# ------------------------------------------------------------------------------------------
# Matrix product: BLAS, and the hand-tiled kernel a student reads to see how it is made fast
# ------------------------------------------------------------------------------------------
def matmul(a, b):
    """(M, K) @ (K, N) -> (M, N) by BLAS (np.dot): it measures faster than matmul_tiled."""
    return np.dot(a, b)


# Block sizes, in elements.  A (MC x KC) panel of A, a (KC x NC) panel of B and an (MC x NC) tile
# of C are worked on together; NC float32 = 512 bytes per row, so four rows of C plus one row of
# B (5 x 512 B) sit in L1 during the innermost loop, and the B panel (KC x NC x 4 B = 128 KiB)
# stays in L2 while all MC rows of the A panel stream past it.
MC, KC, NC = 32, 256, 128
MR = 4          # rows of C updated together: each element of B loaded once feeds MR FMAs


@njit(parallel=True, **_JIT)
def _matmul_tiled_kernel(A, B, C):
    """C += A @ B, blocked for the cache hierarchy (C zeroed by the caller).

    Naive i-j-k order walks a column of B for every C[i, j]: one cache line per multiply-add.
    Here the loops are reordered to i-k-j ("for each row i of C, add A[i, k] times row k of B"),
    so the innermost loop runs along *rows* of B and C, contiguous in memory, and LLVM turns it
    into 16-wide FMA instructions.  Blocking (MC, KC, NC) keeps the working set in cache, and
    MR = 4 rows of C are updated per row of B loaded (register/L1 reuse).  The row blocks of C
    are independent, so they are shared between threads with prange.
    """
    M, K = A.shape
    N = B.shape[1]
    for ib in prange((M + MC - 1) // MC):
        i0 = ib * MC
        i1 = min(i0 + MC, M)
        for j0 in range(0, N, NC):
            j1 = min(j0 + NC, N)
            nc = j1 - j0
            for k0 in range(0, K, KC):
                k1 = min(k0 + KC, K)
                i = i0
                while i + MR <= i1:                         # MR rows at a time
                    c0 = C[i, j0:j1]
                    c1 = C[i + 1, j0:j1]
                    c2 = C[i + 2, j0:j1]
                    c3 = C[i + 3, j0:j1]
                    for k in range(k0, k1):
                        a0 = A[i, k]
                        a1 = A[i + 1, k]
                        a2 = A[i + 2, k]
                        a3 = A[i + 3, k]
                        b = B[k, j0:j1]
                        for j in range(nc):                 # contiguous: vectorized
                            bj = b[j]
                            c0[j] += a0 * bj
                            c1[j] += a1 * bj
                            c2[j] += a2 * bj
                            c3[j] += a3 * bj
                    i += MR
                for r in range(i, i1):                      # the < MR rows left over
                    c = C[r, j0:j1]
                    for k in range(k0, k1):
                        a = A[r, k]
                        b = B[k, j0:j1]
                        for j in range(nc):
                            c[j] += a * b[j]


def matmul_tiled(a, b):
    """(M, K) @ (K, N) -> (M, N) by the hand-tiled Numba kernel (a teaching kernel; see bench)."""
    dt = _float_dtype(a, "a")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"expected a (M, K) and b (K, N), got {a.shape} and {b.shape}")
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b, dtype=dt)
    c = np.zeros((a.shape[0], b.shape[1]), dt)
    _matmul_tiled_kernel(a, b, c)
    return c


# ------------------------------------------------------------------------------------------
# The fused linear layer: BLAS product + one pass for bias and activation (and back)
# ------------------------------------------------------------------------------------------
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
_IDENTITY, _RELU, _TANH, _SIGMOID, _SOFTPLUS, _ELU = (_ACT_CODE[a] for a in ACTIVATIONS)


def _act_code(act):
    try:
        return _ACT_CODE[act]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}") from None


@njit(inline="always", **_JIT)
def _activate_scalar(h, act, fast):
    """act(h) for one element; ``act`` is an index into ACTIVATIONS (constant across the loop)."""
    zero = type(h)(0.0)
    one = type(h)(1.0)
    if act == _RELU:
        return max(h, zero)
    if act == _TANH:
        return math.tanh(h)
    if act == _SIGMOID or act == _SOFTPLUS:
        e = exp32(-abs(h)) if fast else math.exp(-abs(h))             # e = exp(-|h|)
        if act == _SOFTPLUS:
            return max(h, zero) + (log1p01_32(e) if fast else math.log1p(e))
        t = one / (one + e)
        return t if h >= zero else e * t
    if act == _ELU:
        return h if h > zero else math.expm1(min(h, zero))
    return h


# The tails of the linear layer run on one thread: they come right after a BLAS call, whose
# worker threads keep spinning for a while afterwards, and a second Numba thread competing with
# them for 2 cores measured slower than one thread.
#
# The activation must be a compile-time constant inside the loop.  With ``act`` a run-time
# argument the loop body holds every activation's branch (libm tanh and expm1 included), LLVM
# neither unswitches nor vectorizes it, and the ReLU backward of a (128, 512) layer measured
# 0.25 ms against 0.03 ms for NumPy's dy * (y > 0) plus a column sum.  So each loop is written
# once (inline="always") and the kernels below call it with a *constant* act in each branch of
# a dispatch outside the loop: LLVM folds the other activations away and vectorizes what is
# left (the same ReLU backward: 0.009 ms; forward bias + ReLU 0.037 -> 0.004 ms).
@njit(inline="always", **_JIT)
def _bias_act_rows(h, b, act, fast):
    """h <- act(h + b) in one pass over h (N, O); b (O,).  act, fast: constants (see above)."""
    N, O = h.shape
    for i in range(N):
        for j in range(O):
            h[i, j] = _activate_scalar(h[i, j] + b[j], act, fast)


@njit(inline="always", **_JIT)
def _bias_act_dispatch(h, b, act, fast):
    """Branch on the run-time act once, outside the loop; fast is already a constant here."""
    if act == _RELU:
        _bias_act_rows(h, b, _RELU, fast)
    elif act == _TANH:
        _bias_act_rows(h, b, _TANH, fast)
    elif act == _SIGMOID:
        _bias_act_rows(h, b, _SIGMOID, fast)
    elif act == _SOFTPLUS:
        _bias_act_rows(h, b, _SOFTPLUS, fast)
    elif act == _ELU:
        _bias_act_rows(h, b, _ELU, fast)
    else:
        _bias_act_rows(h, b, _IDENTITY, fast)


@njit(**_JIT)
def _bias_act_f32(h, b, act):
    """h <- act(h + b) in float32 (exp32 / log1p01_32 for sigmoid and softplus)."""
    _bias_act_dispatch(h, b, act, True)


@njit(**_JIT)
def _bias_act_libm(h, b, act):
    """h <- act(h + b) with libm exp / log1p (float64)."""
    _bias_act_dispatch(h, b, act, False)


def _bias_act_inplace(h, b, act, fast):
    """h <- act(h + b) in place; h (N, O), b (O,), act an index into ACTIVATIONS."""
    (_bias_act_f32 if fast else _bias_act_libm)(h, b, act)


@njit(inline="always", **_JIT)
def _act_grad_scalar(y, act):
    """d act(h)/dh from the output y = act(h) (see reference.activation_grad_from_output)."""
    zero = type(y)(0.0)
    one = type(y)(1.0)
    if act == _RELU:
        return one if y > zero else zero
    if act == _TANH:
        return one - y * y
    if act == _SIGMOID:
        return y * (one - y)
    if act == _SOFTPLUS:
        return -math.expm1(-y)
    if act == _ELU:
        return one if y > zero else y + one
    return one


@njit(inline="always", **_JIT)
def _act_backward_rows(dy, y, act, dh, db):
    """dh = dy * act'(y) and db += sum_n dh in one pass, row by row (both loops contiguous:
    the inner loop runs along a row of dy, y, dh and along db, so it vectorizes).  act: constant."""
    N, O = dy.shape
    for i in range(N):
        for j in range(O):
            g = dy[i, j] * _act_grad_scalar(y[i, j], act)
            dh[i, j] = g
            db[j] += g


@njit(**_JIT)
def _act_backward(dy, y, act, dh, db):
    """dh = dy * act'(y) and the bias gradient db = sum_n dh (accumulated in float64) in one pass.

    The run-time ``act`` picks one of six loops, each compiled with its activation constant.
    """
    if act == _RELU:
        _act_backward_rows(dy, y, _RELU, dh, db)
    elif act == _TANH:
        _act_backward_rows(dy, y, _TANH, dh, db)
    elif act == _SIGMOID:
        _act_backward_rows(dy, y, _SIGMOID, dh, db)
    elif act == _SOFTPLUS:
        _act_backward_rows(dy, y, _SOFTPLUS, dh, db)
    elif act == _ELU:
        _act_backward_rows(dy, y, _ELU, dh, db)
    else:
        _act_backward_rows(dy, y, _IDENTITY, dh, db)


def linear_forward(x, W, b, act="identity"):
    """y = act(x @ W + b); see reference.linear_forward.  x: (N, I), W: (I, O), b: (O,) -> (N, O)."""
    code = _act_code(act)
    dt = _float_dtype(x, "x")
    h = np.dot(x, _as(W, dt))                       # BLAS
    if code == _TANH:
        # NumPy's SIMD tanh measured ~3x faster than a fused pass calling libm tanh per element
        h += b
        return np.tanh(h, out=h)
    _bias_act_inplace(h, _as(b, dt), code, dt == np.float32)
    return h


def linear_backward(dy, x, W, y, act="identity", need_dx=True):
    """(dx, dW, db) of the fused layer; see reference.linear_backward.

    dy, y: (N, O); x: (N, I); W: (I, O).  Returns dx (N, I) or None, dW (I, O), db (O,).
    """
    # TWIN layer-backward: return reference.linear_backward(dy, x, W, y, act, need_dx)
    code = _act_code(act)
    dt = _float_dtype(dy, "dy")
    x, W = _as(x, dt), _as(W, dt)
    if code == _IDENTITY:
        dh = dy
        db = dy.sum(axis=0)
    else:
        N, O = dy.shape
        dh = np.empty((N, O), dt)
        db64 = np.zeros(O, np.float64)
        _act_backward(dy, _as(y, dt), code, dh, db64)
        db = db64.astype(dt)
    dW = np.dot(x.T, dh)                            # BLAS: h = x W + b  =>  dW = x^T dh
    dx = np.dot(dh, W.T) if need_dx else None       # dx = dh W^T
    return dx, dW, db
    # END TWIN


# ------------------------------------------------------------------------------------------
# Adam
# ------------------------------------------------------------------------------------------
@njit(inline="always", **_JIT)
def _adam_range(p, g, m, v, beta1, beta2, c1, c2, step, eps_hat, tiny, start, stop):
    """The Adam update of entries start..stop-1 of flat p, g, m, v; see reference.adam_step.

    c1 = 1 - beta1 and c2 = 1 - beta2 come in precomputed in float64: 1 - 0.999 in float32
    is off by 1.3e-5 relative (0.999 is not a float32), a bias every step would inherit.
    """
    zero = p.dtype.type(0.0)
    for i in range(start, stop):
        gi = g[i]
        mi = beta1 * m[i] + c1 * gi                 # m <- b1 m + (1 - b1) g
        vi = beta2 * v[i] + c2 * (gi * gi)          # v <- b2 v + (1 - b2) g^2
        mi = zero if abs(mi) < tiny else mi         # flush denormals to zero
        vi = zero if vi < tiny else vi
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (math.sqrt(vi) + eps_hat)


_ADAM_CHUNK = 1 << 14     # below this many parameters one thread is faster than waking another


@njit(**_JIT)
def _adam_serial(p, g, m, v, beta1, beta2, c1, c2, step, eps_hat, tiny):
    """The update of all of p on one thread (small parameters, e.g. biases; or one chunk)."""
    _adam_range(p, g, m, v, beta1, beta2, c1, c2, step, eps_hat, tiny, 0, p.shape[0])


@njit(parallel=True, **_JIT)
def _adam_parallel(p, g, m, v, beta1, beta2, c1, c2, step, eps_hat, tiny):
    """Chunks of _ADAM_CHUNK entries shared between threads, each chunk by ``_adam_serial``.

    The chunk is handed to the separately compiled serial kernel as slices, not inlined into
    the prange body: inlined there, the loop did not vectorize and a (784, 512) update took
    1.2 ms on one thread against 0.12 ms for the serial kernel (Numba 0.68).
    """
    P = p.shape[0]
    for c in prange((P + _ADAM_CHUNK - 1) // _ADAM_CHUNK):
        a = c * _ADAM_CHUNK
        b = min(a + _ADAM_CHUNK, P)
        _adam_serial(p[a:b], g[a:b], m[a:b], v[a:b], beta1, beta2, c1, c2, step, eps_hat, tiny)


def adam_step(p, g, m, v, lr, beta1, beta2, eps, t):
    """One in-place Adam update with denormal flushing; see reference.adam_step.

    p, g, m, v: arrays of one shape and float dtype; p, m, v are updated in place.
    Falls back to the reference for arrays that are not C-contiguous (no flat view exists).
    """
    dt = _float_dtype(p, "p")
    if not all(isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous for a in (p, m, v)) \
            or g.shape != p.shape:
        return reference.adam_step(p, g, m, v, lr, beta1, beta2, eps, t)
    bc2 = math.sqrt(1.0 - beta2 ** t)               # sqrt of the bias correction of v
    step = lr * bc2 / (1.0 - beta1 ** t)
    ty = dt.type
    kernel = _adam_parallel if _parallel(p.size, 2 * _ADAM_CHUNK) else _adam_serial
    kernel(p.reshape(-1), np.ascontiguousarray(g, dtype=dt).reshape(-1), m.reshape(-1),
                 v.reshape(-1), ty(beta1), ty(beta2), ty(1.0 - beta1), ty(1.0 - beta2), ty(step), ty(eps * bc2), ty(np.finfo(dt).tiny))
