"""The CUDA backend: the same kernels as reference.py, as CUDA C compiled at run time by CuPy.

CuPy is imported lazily (inside the functions that launch), so this module imports, and its
sources can be compiled and checked with NVRTC, on a machine without a GPU or without cupy.

How the sources are built, so that they can be checked without a GPU:

* The per-element math of each kernel is a short list of ``(name, expression)`` pairs written in
  the common subset of C and Python: ``+ - * /``, comparisons, and the functions ``exp``,
  ``log1p``, ``expm1``, ``tanh``, ``sqrt``, ``fabs``, ``fmax``, ``fmin``, ``isinf`` and ``select(c, a, b)``
  (``c ? a : b``).  ``cuda_source`` pastes them into CUDA C as ``const real name = expr;``;
  ``evaluate_math`` evaluates the *same strings* with NumPy.  tests/test_kernels_cuda.py checks
  the NumPy evaluation against reference.py and compiles the C with NVRTC for sm_75/80/90.
* ``simulate_matmul_tiled`` replays the tiled matmul kernel's blocks, shared-memory tiles and
  bounds masks in NumPy, so the tiling logic is tested on the CPU too.

``real`` is ``float`` or ``double``: each source is compiled once per dtype (``typedef``).
Row kernels use one thread block per row of an (N, D) array: threads stride over D, then add
their partial sums in shared memory by a tree reduction.
"""
from __future__ import annotations

import functools

import numpy as np

from . import reference  # noqa: F401  (a homework copy's TWIN bodies call reference.*)
from .reference import ACTIVATIONS

ROW_THREADS = 128        # threads per block in the row kernels (a power of two for the reduction)
ELEM_THREADS = 256       # threads per block in elementwise kernels
TILE = 16                # the matmul tile: a TILE x TILE block of threads computes a TILE x TILE tile of C
ARCHS = ("sm_75", "sm_80", "sm_90")

# ------------------------------------------------------------------------------------------
# The math, as strings valid in both C and Python
# ------------------------------------------------------------------------------------------
# Row kernels: inputs (N, D), a per-row weight w, lines of math, the per-element term summed
# over the row (times `scale`) into the value, and one gradient expression per output.
ROW_KERNELS = {
    "bernoulli_nll": dict(
        inputs=("x", "l"),
        lines=(("e", "exp(-fabs(l))"),                      # e = exp(-|l|) in (0, 1]
               ("t", "one / (one + e)"),
               ("sig", "select(l >= zero, t, e * t)")),     # sigmoid(l), no overflow
        # softplus(l) - x l; at l = +-inf (where it is NaN) its limit: 0 for a possible
        # pixel, inf = |l| for an impossible one ((1 - x) > 0 at +inf, x > 0 at -inf)
        term="select(isinf(l), select(select(l > zero, one - x, x) > zero, fabs(l), zero), "
             "fmax(l, zero) + log1p(e) - x * l)",
        scale="one",
        grads=("w * (sig - x)",)),                          # d/dl
    # TWIN kl-gradient:
    "gaussian_kl_std": dict(
        inputs=("m", "s"),
        lines=(("var", "exp(s)"),),
        term="var + m * m - one - s",
        scale="half",
        grads=("w * m", "w * half * (var - one)")),         # d/dmu, d/dlogvar
    "gaussian_kl": dict(
        inputs=("m", "s", "n", "t"),
        lines=(("inv_var_p", "exp(-t)"),
               ("ratio", "exp(s - t)"),                     # var_q / var_p
               ("diff", "m - n"),
               ("d2", "diff * diff * inv_var_p"),
               ("gm", "w * diff * inv_var_p")),
        term="t - s + ratio + d2 - one",
        scale="half",
        grads=("gm", "w * half * (ratio - one)", "-gm", "w * half * (one - ratio - d2)")),
    # END TWIN
}

# act(h) and d act/dh from the output y (see reference.activation_grad_from_output)
ACT_FORWARD = {
    "identity": (("y", "h"),),
    "relu": (("y", "fmax(h, zero)"),),
    "tanh": (("y", "tanh(h)"),),
    "sigmoid": (("e", "exp(-fabs(h))"), ("y", "select(h >= zero, one / (one + e), e / (one + e))")),
    "softplus": (("e", "exp(-fabs(h))"), ("y", "fmax(h, zero) + log1p(e)")),
    "elu": (("y", "select(h > zero, h, expm1(fmin(h, zero)))"),),
}
ACT_GRAD = {
    "identity": "one",
    "relu": "select(y > zero, one, zero)",
    "tanh": "one - y * y",
    "sigmoid": "y * (one - y)",
    "softplus": "-expm1(-y)",
    "elu": "select(y > zero, one, y + one)",
}

# c1 = 1 - beta1, c2 = 1 - beta2 are computed in double on the host: 1 - 0.999f in float is
# off by 1.3e-5 relative.
ADAM_LINES = (
    ("mi", "beta1 * m + c1 * g"),                            # m <- b1 m + (1 - b1) g
    ("vi", "beta2 * v + c2 * (g * g)"),                      # v <- b2 v + (1 - b2) g^2
    ("mf", "select(fabs(mi) < tiny, zero, mi)"),             # flush denormals
    ("vf", "select(vi < tiny, zero, vi)"),
    ("pn", "p - step * mf / (sqrt(vf) + eps_hat)"),
)

_NUMPY_FUNCS = dict(exp=np.exp, log1p=np.log1p, expm1=np.expm1, tanh=np.tanh, sqrt=np.sqrt,
                    fabs=np.abs, fmax=np.maximum, fmin=np.minimum, select=np.where, isinf=np.isinf)


def evaluate_math(lines, env, dtype):
    """Evaluate (name, expression) lines with NumPy, exactly as the CUDA source states them.

    env: name -> array or scalar.  Returns the environment with every line's name added.
    """
    dt = np.dtype(dtype).type
    ns = dict(_NUMPY_FUNCS, one=dt(1), zero=dt(0), half=dt(0.5))
    ns.update(env)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):   # C's select evaluates one side
        for name, expr in lines:
            ns[name] = np.asarray(eval(expr, {"__builtins__": {}}, ns), dtype=dt)  # noqa: S307
    return ns


def evaluate_row_kernel(name, arrays, weight, dtype):
    """The row kernel ``name`` evaluated by NumPy from its C/Python math: (value, *grads)."""
    spec = ROW_KERNELS[name]
    dt = np.dtype(dtype).type
    N = arrays[0].shape[0]
    w = np.ones(N, dt) if weight is None else np.broadcast_to(np.asarray(weight, dt), (N,))
    env = {k: np.asarray(a, dt) for k, a in zip(spec["inputs"], arrays)}
    env["w"] = w[:, None]
    ns = evaluate_math(spec["lines"] + (("_term", spec["term"]), ("_scale", spec["scale"])), env, dt)
    value = (ns["_scale"] * ns["_term"].sum(axis=1)).astype(dt)
    grads = evaluate_math(tuple((f"_g{i}", g) for i, g in enumerate(spec["grads"])), ns, dt)
    return (value, *(np.broadcast_to(grads[f"_g{i}"], ns["_term"].shape).astype(dt)
                     for i in range(len(spec["grads"]))))


# ------------------------------------------------------------------------------------------
# The CUDA C sources
# ------------------------------------------------------------------------------------------
_PRELUDE = r"""
typedef %(real)s real;
__device__ __forceinline__ real select(bool c, real a, real b) { return c ? a : b; }
"""


def _c_lines(lines, indent="    "):
    return "".join(f"{indent}const real {name} = {expr};\n" for name, expr in lines)


def _row_kernel_source(name):
    spec = ROW_KERNELS[name]
    ins = spec["inputs"]
    params = ", ".join([f"const real* __restrict__ {a}_" for a in ins]
                       + ["const real* __restrict__ weight", "real* __restrict__ value"]
                       + [f"real* __restrict__ g{i}_" for i in range(len(spec["grads"]))]
                       + ["const int D"])
    loads = "".join(f"        const real {a} = {a}_[k];\n" for a in ins)
    stores = "".join(f"        g{i}_[k] = {g};\n" for i, g in enumerate(spec["grads"]))
    return f"""
extern "C" __global__ void __launch_bounds__({ROW_THREADS})
{name}({params})
{{
    // One block per row; thread j handles columns j, j + blockDim.x, ...
    __shared__ real partial[{ROW_THREADS}];
    const real one = 1, zero = 0, half = 0.5;
    const long long row = blockIdx.x;
    const real w = weight[row];
    real acc = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {{
        const long long k = row * D + j;
{loads}{_c_lines(spec["lines"], " " * 8)}        acc += {spec["term"]};
{stores}    }}
    // Tree reduction in shared memory: each round, the first half of the threads adds in the
    // second half's partial sums; log2(blockDim.x) rounds leave the row sum in partial[0].
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {{
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }}
    if (threadIdx.x == 0) value[row] = {spec["scale"]} * partial[0];
}}
"""


def _bias_act_source(act):
    return f"""
extern "C" __global__ void __launch_bounds__({ELEM_THREADS})
bias_act_{act}(const real* __restrict__ xw, const real* __restrict__ b, real* __restrict__ out,
               const long long size, const int O)
{{
    // out = act(xw + b), b broadcast along rows; xw and out may be the same buffer.
    const real one = 1, zero = 0;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < size;
         k += (long long)gridDim.x * blockDim.x) {{
        const real h = xw[k] + b[k % O];
{_c_lines(ACT_FORWARD[act], " " * 8)}        out[k] = y;
    }}
}}

extern "C" __global__ void __launch_bounds__({ELEM_THREADS})
act_backward_{act}(const real* __restrict__ dy, const real* __restrict__ y_, real* __restrict__ dh,
                   real* __restrict__ db, const int N, const int O)
{{
    // One thread per column j: dh = dy * act'(y) down the column, and db[j] = sum_n dh[n, j].
    // Neighbouring threads read neighbouring columns, so each row's loads are coalesced.
    const real one = 1, zero = 0;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= O) return;
    real acc = 0;
    for (int n = 0; n < N; ++n) {{
        const long long k = (long long)n * O + j;
        const real y = y_[k];
        const real g = dy[k] * ({ACT_GRAD[act]});
        dh[k] = g;
        acc += g;
    }}
    db[j] = acc;
}}
"""


_ADAM_SOURCE = f"""
extern "C" __global__ void __launch_bounds__({ELEM_THREADS})
adam_step(real* __restrict__ p_, const real* __restrict__ g_, real* __restrict__ m_,
          real* __restrict__ v_, const long long size, const real beta1, const real beta2,
          const real c1, const real c2, const real step, const real eps_hat, const real tiny)
{{
    const real zero = 0;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < size;
         k += (long long)gridDim.x * blockDim.x) {{
        const real p = p_[k], g = g_[k], m = m_[k], v = v_[k];
{_c_lines(ADAM_LINES, " " * 8)}        m_[k] = mf;
        v_[k] = vf;
        p_[k] = pn;
    }}
}}
"""

_MATMUL_TILED_SOURCE = f"""
#define TILE {TILE}
extern "C" __global__ void __launch_bounds__(TILE * TILE)
matmul_tiled(const real* __restrict__ A, const real* __restrict__ B, real* __restrict__ C,
             const int M, const int N, const int K)
{{
    // C (M x N) = A (M x K) @ B (K x N), row-major.  Block (bx, by) computes the TILE x TILE
    // tile of C at rows by*TILE.., columns bx*TILE..; thread (tx, ty) computes one element.
    // A naive kernel reads 2K numbers from global memory per element of C.  Here the block
    // walks along K one TILE at a time: it copies a TILE x TILE tile of A and one of B into
    // shared memory (each thread loads one number of each, coalesced along rows), waits, and
    // then every thread reads TILE numbers of each from fast shared memory.  Global traffic
    // drops by a factor TILE.  Out-of-range loads (edges not a multiple of TILE) read 0.
    __shared__ real As[TILE][TILE];
    __shared__ real Bs[TILE][TILE];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * TILE + ty;
    const int col = blockIdx.x * TILE + tx;
    real acc = 0;
    for (int k0 = 0; k0 < K; k0 += TILE) {{
        As[ty][tx] = (row < M && k0 + tx < K) ? A[(long long)row * K + k0 + tx] : (real)0;
        Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(long long)(k0 + ty) * N + col] : (real)0;
        __syncthreads();                       // the tiles are complete
        #pragma unroll
        for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();                       // everyone is done with them before the next load
    }}
    if (row < M && col < N) C[(long long)row * N + col] = acc;
}}
"""


def cuda_source(dtype) -> str:
    """The complete CUDA C source of this backend for dtype float32 or float64."""
    real = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}.get(np.dtype(dtype))
    if real is None:
        raise TypeError(f"expected dtype float32 or float64, got {np.dtype(dtype)}")
    parts = [_PRELUDE % {"real": real}]
    parts += [_row_kernel_source(name) for name in ROW_KERNELS]
    parts += [_bias_act_source(act) for act in ACTIVATIONS]
    parts += [_ADAM_SOURCE, _MATMUL_TILED_SOURCE]
    return "".join(parts)


def kernel_names():
    """Every __global__ function that cuda_source defines."""
    return (list(ROW_KERNELS) + [f"bias_act_{a}" for a in ACTIVATIONS]
            + [f"act_backward_{a}" for a in ACTIVATIONS] + ["adam_step", "matmul_tiled"])


def simulate_matmul_tiled(A, B, tile=TILE):
    """Run matmul_tiled's block / tile / bounds logic in NumPy (all threads of a block at once).

    For each block (by, bx) and each step k0 along K, build the shared tiles As, Bs exactly as
    the kernel's threads load them (zero outside the matrices), accumulate As @ Bs, and store
    the in-range part of the block's tile.  Returns C (M, N).
    """
    M, K = A.shape
    N = B.shape[1]
    C = np.zeros((M, N), A.dtype)
    ty, tx = np.meshgrid(np.arange(tile), np.arange(tile), indexing="ij")   # threadIdx.y, .x
    for by in range((M + tile - 1) // tile):
        for bx in range((N + tile - 1) // tile):
            row, col = by * tile + ty, bx * tile + tx
            acc = np.zeros((tile, tile), A.dtype)
            for k0 in range(0, K, tile):
                a_ok = (row < M) & (k0 + tx < K)
                b_ok = (k0 + ty < K) & (col < N)
                As = np.where(a_ok, A[np.minimum(row, M - 1), np.minimum(k0 + tx, K - 1)], 0)
                Bs = np.where(b_ok, B[np.minimum(k0 + ty, K - 1), np.minimum(col, N - 1)], 0)
                acc += As @ Bs                   # sum_k As[ty][k] * Bs[k][tx]
            ok = (row < M) & (col < N)
            C[row[ok], col[ok]] = acc[ok]
    return C


# ------------------------------------------------------------------------------------------
# Compilation (NVRTC; no GPU needed) and lazy loading (needs a GPU)
# ------------------------------------------------------------------------------------------
def nvrtc_compile(dtype, arch="sm_80"):
    """Compile cuda_source(dtype) to a cubin for ``arch`` with NVRTC, as CuPy would.

    Returns (cubin bytes, compiler log).  Raises RuntimeError with the log on a compile error
    (syntax, types, or ptxas resource limits such as too much shared memory or too many
    registers for a __launch_bounds__).  Needs ``cupy`` (cupy.cuda.nvrtc) and the NVRTC library,
    not a GPU.
    """
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(cuda_source(dtype), f"nplvm_{np.dtype(dtype).name}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", "--std=c++14",
                                        "--ptxas-options=-v", "-diag-suppress=177"])
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC failed for {np.dtype(dtype)} {arch}: {e}\n"
                               f"{nvrtc.getProgramLog(prog)}") from None
        log = nvrtc.getProgramLog(prog)
        return nvrtc.getCUBIN(prog), log if isinstance(log, str) else log.decode()
    finally:
        nvrtc.destroyProgram(prog)


@functools.lru_cache(maxsize=None)
def _module(dtype_name):
    import cupy
    return cupy.RawModule(code=cuda_source(dtype_name), options=("--std=c++14", "-diag-suppress=177"))


def _fn(name, dtype):
    return _module(np.dtype(dtype).name).get_function(name)


def _cp():
    import cupy
    return cupy


def _grid(size):
    return (max(1, min((size + ELEM_THREADS - 1) // ELEM_THREADS, 65535)),)


def _row_weights(weight, n, dt):
    cp = _cp()
    if weight is None:
        return cp.ones(n, dt)
    w = cp.asarray(weight, dtype=dt)
    if w.ndim == 0:
        return cp.full(n, w, dt)
    if w.shape != (n,):
        raise ValueError(f"expected weight to be a scalar or of shape ({n},), got {w.shape}")
    return cp.ascontiguousarray(w)


def _row_kernel(name, arrays, weight):
    cp = _cp()
    dt = arrays[0].dtype
    arrays = [cp.ascontiguousarray(a, dtype=dt) for a in arrays]
    N, D = arrays[0].shape
    value = cp.empty(N, dt)
    grads = [cp.empty((N, D), dt) for _ in ROW_KERNELS[name]["grads"]]
    if N > 0:
        _fn(name, dt)((N,), (ROW_THREADS,),
                      (*arrays, _row_weights(weight, N, dt), value, *grads, np.int32(D)))
    return (value, *grads)


def bernoulli_nll(x, logits, weight=None):
    """See reference.bernoulli_nll; CuPy arrays in and out."""
    return _row_kernel("bernoulli_nll", [x.astype(logits.dtype, copy=False), logits], weight)


def gaussian_kl_std(mu, logvar, weight=None):
    """See reference.gaussian_kl_std; CuPy arrays in and out."""
    # TWIN kl-gradient: return reference.gaussian_kl_std(mu, logvar, weight)
    return _row_kernel("gaussian_kl_std", [mu, logvar], weight)
    # END TWIN


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, weight=None):
    """See reference.gaussian_kl; CuPy arrays in and out."""
    # TWIN kl-gradient: return reference.gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, weight)
    return _row_kernel("gaussian_kl", [mu_q, logvar_q, mu_p, logvar_p], weight)
    # END TWIN


def matmul(a, b):
    """(M, K) @ (K, N) by cuBLAS (cupy.matmul), which beats matmul_tiled at every size."""
    return _cp().matmul(a, b)


def matmul_tiled(a, b):
    """(M, K) @ (K, N) by the shared-memory tiled kernel above (a teaching kernel)."""
    cp = _cp()
    dt = a.dtype
    a = cp.ascontiguousarray(a)
    b = cp.ascontiguousarray(b, dtype=dt)
    M, K = a.shape
    N = b.shape[1]
    c = cp.empty((M, N), dt)
    _fn("matmul_tiled", dt)(((N + TILE - 1) // TILE, (M + TILE - 1) // TILE), (TILE, TILE),
                            (a, b, c, np.int32(M), np.int32(N), np.int32(K)))
    return c


def _act_check(act):
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def linear_forward(x, W, b, act="identity"):
    """act(x @ W + b): cuBLAS product, then one elementwise pass for bias and activation."""
    cp = _cp()
    _act_check(act)
    h = cp.matmul(x, W)
    b = cp.ascontiguousarray(b, dtype=h.dtype)
    _fn(f"bias_act_{act}", h.dtype)(_grid(h.size), (ELEM_THREADS,),
                                     (h, b, h, np.int64(h.size), np.int32(h.shape[1])))
    return h


def linear_backward(dy, x, W, y, act="identity", need_dx=True):
    """(dx, dW, db): one pass for dh = dy act'(y) and db, then two cuBLAS products."""
    # TWIN layer-backward: return reference.linear_backward(dy, x, W, y, act, need_dx)
    cp = _cp()
    _act_check(act)
    dt = dy.dtype
    dy = cp.ascontiguousarray(dy)
    y = cp.ascontiguousarray(y, dtype=dt)
    N, O = dy.shape
    dh = cp.empty_like(dy)
    db = cp.empty(O, dt)
    _fn(f"act_backward_{act}", dt)(((O + ELEM_THREADS - 1) // ELEM_THREADS,), (ELEM_THREADS,),
                                   (dy, y, dh, db, np.int32(N), np.int32(O)))
    dW = cp.matmul(x.T, dh)
    dx = cp.matmul(dh, W.T) if need_dx else None
    return dx, dW, db
    # END TWIN


def adam_step(p, g, m, v, lr, beta1, beta2, eps, t):
    """In-place fused Adam update on contiguous CuPy arrays; see reference.adam_step."""
    import math
    cp = _cp()
    dt = p.dtype
    for name, a in (("p", p), ("m", m), ("v", v)):
        if not a.flags.c_contiguous or a.dtype != dt:
            raise ValueError(f"expected {name} C-contiguous with dtype {dt} (updated in place)")
    g = cp.ascontiguousarray(g, dtype=dt)
    bc2 = math.sqrt(1.0 - beta2 ** t)
    ty = np.dtype(dt).type
    _fn("adam_step", dt)(_grid(p.size), (ELEM_THREADS,),
                         (p, g, m, v, np.int64(p.size), ty(beta1), ty(beta2),
                          ty(1.0 - beta1), ty(1.0 - beta2), ty(lr * bc2 / (1.0 - beta1 ** t)), ty(eps * bc2), ty(np.finfo(dt).tiny)))
