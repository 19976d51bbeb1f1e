"""Tests for nplvm.nn: every hand-written backward against finite differences, in float64.

Each gradient is checked on EVERY entry against central differences of a scalar function
L = sum(y * R) with a fixed random R (so dL/dy = R), with the per-entry relative error
    max_i |a_i - n_i| / max(1e-8, |a_i| + |n_i|) <= 1e-7.
The finite-difference helper is local to this file on purpose (no dependency on nplvm.gradcheck).

ReLU and ELU are not smooth at 0 (ReLU has a kink, ELU a jump in its second derivative), so every
test that differentiates through them asserts that all pre-activations stay at least
``KINK_MARGIN`` away from 0, far beyond what a finite-difference step can move them.
"""
import numpy as np
import pytest

from nplvm import nn
from nplvm.checks import DataError

TOL = 1e-7
FD_STEP = 1e-3          # h of the coarser central difference; the finer uses h / 2
KINK_MARGIN = 0.05      # |pre-activation| of relu/elu units stays above this in the checks
ACTS = ("identity", "relu", "tanh", "sigmoid", "softplus", "elu")


# ---------------------------------------------------------------------------------------------
# A tiny central-difference helper
# ---------------------------------------------------------------------------------------------

def numerical_gradient(f, a, h=FD_STEP):
    """df/da for every entry of the float64 array ``a`` (perturbed in place, then restored).

    Central differences D(h) = (f(a + h e_i) - f(a - h e_i)) / 2h have error O(h^2); one
    Richardson step (4 D(h/2) - D(h)) / 3 cancels that term, leaving O(h^4).  The step is large
    enough (1e-3) that rounding in f contributes only ~1e-13 per entry.
    """
    assert a.dtype == np.float64
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]

        def D(s):
            a[idx] = old + s
            fp = f()
            a[idx] = old - s
            fm = f()
            a[idx] = old
            return (fp - fm) / ((old + s) - (old - s))     # the step actually taken

        g[idx] = (4.0 * D(h / 2) - D(h)) / 3.0
    return g


def rel_error(a, b):
    """max_i |a_i - b_i| / max(1e-8, |a_i| + |b_i|)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def assert_grad(analytic, f, a, name):
    numeric = numerical_gradient(f, a)
    err = rel_error(analytic, numeric)
    assert err <= TOL, f"d/d{name}: relative error {err:.2e} > {TOL:.0e}"
    assert np.any(numeric != 0) or np.all(analytic == 0), name
    return err


def away_from_zero(shape, rng, lo=0.2, hi=2.0):
    """Random values with |v| in [lo, hi] and random signs: no entry near an activation's kink."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(lo, hi, size=shape)


def pre_activations(mlp, cache):
    """The pre-activations a_l = x_l W_l + b_l of every layer, recomputed from the cache."""
    return [c[0] @ layer.W.value + layer.b.value for layer, c in zip(mlp.layers, cache)]


def kink_distance(mlp, cache):
    """min |a| over the pre-activations of the relu/elu layers (inf if there are none)."""
    return min([float(np.min(np.abs(a))) for layer, a in zip(mlp.layers, pre_activations(mlp, cache))
                if layer.activation in ("relu", "elu")], default=np.inf)


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTS)
def test_activation_functional_pair_matches_finite_differences(act):
    g = np.random.default_rng(0)
    fwd, bwd = nn.ACTIVATION_FUNCTIONS[act]
    x = away_from_zero((4, 5), g)            # relu/elu: |x| >= 0.2, far from the kink at 0
    R = g.standard_normal((4, 5))
    dx = bwd(R, fwd(x))
    assert_grad(dx, lambda: np.sum(fwd(x) * R), x, f"x ({act})")


@pytest.mark.parametrize("cls,act", [(nn.ReLU, "relu"), (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"),
                                     (nn.Softplus, "softplus"), (nn.ELU, "elu"), (nn.Identity, "identity")])
def test_activation_module_forward_backward(cls, act):
    g = np.random.default_rng(1)
    m = cls()
    x = away_from_zero((3, 4), g)
    R = g.standard_normal((3, 4))
    y, cache = m.forward(x)
    np.testing.assert_array_equal(y, nn.ACTIVATION_FUNCTIONS[act][0](x))
    assert m.parameters() == {}
    assert_grad(m.backward(R, cache), lambda: np.sum(m.forward(x)[0] * R), x, f"x ({act})")


def test_activation_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(nn.relu_forward(x), [0, 0, 0, 0.5, 2])
    np.testing.assert_allclose(nn.sigmoid_forward(x), 1 / (1 + np.exp(-x)), rtol=1e-15)
    np.testing.assert_allclose(nn.softplus_forward(x), np.log(1 + np.exp(x)), rtol=1e-15)
    np.testing.assert_allclose(nn.elu_forward(x), np.where(x > 0, x, np.exp(x) - 1), rtol=1e-15)
    np.testing.assert_allclose(nn.tanh_forward(x), np.tanh(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_stable_at_extreme_inputs(dtype):
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for act, (fwd, bwd) in nn.ACTIVATION_FUNCTIONS.items():
            y = fwd(x)
            dx = bwd(np.ones_like(y), y)
            assert y.dtype == dtype and dx.dtype == dtype, act
            assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx)), act
    np.testing.assert_array_equal(nn.sigmoid_forward(x)[[0, 4]], [0.0, 1.0])
    np.testing.assert_allclose(nn.softplus_forward(x)[[0, 4]], [0.0, 1e4])
    # sigma'(x) = sigma(x)(1 - sigma(x)) and softplus'(x) = sigma(x), from the outputs alone
    np.testing.assert_allclose(nn.softplus_backward(np.ones(2, dtype), nn.softplus_forward(x[[0, 4]])),
                               [0.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------------------------

def _check_linear(layer, x, R):
    y, cache = layer.forward(x)
    layer.zero_grad()
    dx = layer.backward(R, cache)
    loss = lambda: np.sum(layer.forward(x)[0] * R)  # noqa: E731
    assert_grad(dx, loss, x, "x")
    for name, p in layer.parameters().items():
        assert_grad(p.grad.copy(), loss, p.value, name)


@pytest.mark.parametrize("act", ACTS)
def test_linear_gradients(act):
    g = np.random.default_rng(2)
    layer = nn.Linear(4, 3, g, dtype=np.float64, activation=act)
    layer.b.value[...] = g.standard_normal(3)       # a non-zero bias, so db is not trivial
    x = g.standard_normal((5, 4))
    R = g.standard_normal((5, 3))
    if act in ("relu", "elu"):
        a = x @ layer.W.value + layer.b.value
        assert np.min(np.abs(a)) > KINK_MARGIN, "pre-activation near the kink: pick another seed"
    _check_linear(layer, x, R)


def test_linear_forward_is_the_equation():
    g = np.random.default_rng(3)
    layer = nn.Linear(4, 3, g, dtype=np.float64, activation="tanh")
    x = g.standard_normal((2, 4))
    y, (cx, cy) = layer.forward(x)
    np.testing.assert_allclose(y, np.tanh(x @ layer.W.value + layer.b.value), rtol=1e-14)
    assert cx is x and cy is y                       # the cache is exactly (x, y)


def test_linear_need_dx_false_skips_dx_but_not_param_grads():
    g = np.random.default_rng(4)
    layer = nn.Linear(4, 3, g, dtype=np.float64, activation="sigmoid")
    x, R = g.standard_normal((5, 4)), g.standard_normal((5, 3))
    y, cache = layer.forward(x)
    layer.backward(R, cache)
    full = {k: v.copy() for k, v in layer.grad_arrays().items()}
    layer.zero_grad()
    assert layer.backward(R, cache, need_dx=False) is None
    for k, v in layer.grad_arrays().items():
        np.testing.assert_array_equal(v, full[k])


# ---------------------------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTS)
def test_mlp_gradients(act):
    # Rejection sampling of the test point: the first seed whose relu/elu pre-activations all
    # keep |a| > KINK_MARGIN (for smooth activations that is seed 0).
    for seed in range(100):
        g = np.random.default_rng(seed)
        mlp = nn.MLP([4, 5, 3, 2], act, g, dtype=np.float64, out_activation="sigmoid")
        for p in mlp.parameters().values():
            if p.value.ndim == 1:
                p.value[...] = 0.5 * g.standard_normal(p.value.shape)
        x = g.standard_normal((3, 4))
        R = g.standard_normal((3, 2))
        y, cache = mlp.forward(x)
        if kink_distance(mlp, cache) > KINK_MARGIN:
            break
    assert kink_distance(mlp, cache) > KINK_MARGIN, "no seed keeps the pre-activations off the kink"
    dx = mlp.backward(R, cache)
    loss = lambda: np.sum(mlp.forward(x)[0] * R)  # noqa: E731
    assert_grad(dx, loss, x, "x")
    assert len(mlp.parameters()) == 6
    for name, p in mlp.parameters().items():
        assert_grad(p.grad.copy(), loss, p.value, name)


def test_mlp_structure_names_and_need_dx():
    mlp = nn.MLP([6, 5, 4], "relu", 0, dtype=np.float64, out_activation="tanh")
    assert list(mlp.parameters()) == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"]
    assert [l.activation for l in mlp.layers] == ["relu", "tanh"]
    assert mlp.n_in == 6 and mlp.n_out == 4 and mlp.num_parameters() == 6 * 5 + 5 + 5 * 4 + 4
    x = np.random.default_rng(1).standard_normal((2, 6))
    y, cache = mlp.forward(x)
    assert len(cache) == 2 and cache[1][0] is cache[0][1]     # layer 2's input is layer 1's output
    assert mlp.backward(np.ones_like(y), cache, need_dx=False) is None
    assert np.any(mlp.layers[0].W.grad != 0)
    assert "MLP(6 -> 5 (relu) -> 4 (tanh)" in repr(mlp)


# ---------------------------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------------------------

def _gru_setup(seed=6, N=3, n_in=4, H=5):
    g = np.random.default_rng(seed)
    cell = nn.GRUCell(n_in, H, g, dtype=np.float64)
    for name in ("b_r", "b_u", "b_c"):
        getattr(cell, name).value[...] = 0.5 * g.standard_normal(H)
    x = g.standard_normal((N, n_in))
    h = np.tanh(g.standard_normal((N, H)))
    return g, cell, x, h


def test_gru_forward_is_the_equations():
    g, cell, x, h = _gru_setup()
    P = cell.param_arrays()
    s = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    r = s(x @ P["W_r"] + h @ P["U_r"] + P["b_r"])
    u = s(x @ P["W_u"] + h @ P["U_u"] + P["b_u"])
    c = np.tanh(x @ P["W_c"] + (r * h) @ P["U_c"] + P["b_c"])
    h_new, cache = cell.forward(x, h)
    np.testing.assert_allclose(h_new, (1 - u) * h + u * c, rtol=1e-13)
    assert len(cache) == 5


def test_gru_cell_gradients():
    g, cell, x, h = _gru_setup()
    R = g.standard_normal((3, 5))
    h_new, cache = cell.forward(x, h)
    dx, dh = cell.backward(R, cache)
    loss = lambda: np.sum(cell.forward(x, h)[0] * R)  # noqa: E731
    assert_grad(dx, loss, x, "x")
    assert_grad(dh, loss, h, "h")
    assert list(cell.parameters()) == list(nn.GRU_PARAM_NAMES)
    for name, p in cell.parameters().items():
        assert_grad(p.grad.copy(), loss, p.value, name)


def test_gru_functional_pair_matches_the_cell():
    g, cell, x, h = _gru_setup(seed=7)
    R = g.standard_normal((3, 5))
    params = {k: v.copy() for k, v in cell.param_arrays().items()}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    h1, c1 = nn.gru_forward(params, x, h)
    dx1, dh1 = nn.gru_backward(params, grads, R, c1)
    h2, c2 = cell.forward(x, h)
    dx2, dh2 = cell.backward(R, c2)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(dh1, dh2)
    for k in params:
        np.testing.assert_array_equal(grads[k], cell.grad_arrays()[k])


def test_gru_backprop_through_time():
    """Three steps of one cell, h_t = GRU(x_t, h_{t-1}), L = sum_t sum(h_t * R_t): BPTT."""
    g, cell, _, h0 = _gru_setup(seed=8)
    T = 3
    xs = [g.standard_normal((3, 4)) for _ in range(T)]
    Rs = [g.standard_normal((3, 5)) for _ in range(T)]

    def loss():
        h, total = h0, 0.0
        for t in range(T):
            h, _ = cell.forward(xs[t], h)
            total += np.sum(h * Rs[t])
        return total

    caches, h = [], h0
    for t in range(T):
        h, c = cell.forward(xs[t], h)
        caches.append(c)
    cell.zero_grad()
    dh = np.zeros_like(h0)
    dxs = [None] * T
    for t in reversed(range(T)):
        dxs[t], dh = cell.backward(Rs[t] + dh, caches[t])     # dL/dh_t: its own term + from t + 1
    for t in range(T):
        assert_grad(dxs[t], loss, xs[t], f"x_{t}")
    assert_grad(dh, loss, h0, "h_0")
    for name, p in cell.parameters().items():
        assert_grad(p.grad.copy(), loss, p.value, name)


# The fused sequence path (gru_fuse / gru_input_side / gru_step_forward / gru_step_backward /
# gru_input_grad / gru_fused_grads): the same numbers as the gate-by-gate pair, batched over time.

def _fused_bptt(cell, xs, h0, Rs):
    """L = sum_t sum(h_t * R_t) through the fused path.  Returns (L, dxs (T, N, n_in), dh_0, grads).

    The input side runs for all steps at once before the loop, the parameter gradients and dx once
    after it, as in the VRNN."""
    T, N, n_in = xs.shape
    H = h0.shape[1]
    fused = nn.gru_fuse(cell.param_arrays())
    gates = nn.gru_input_side(fused, xs.reshape(T * N, n_in)).reshape(3, T, N, H)
    h_prev, rh = np.empty((T, N, H)), np.empty((T, N, H))
    h, L = h0, 0.0
    for t in range(T):
        h_prev[t] = h
        h = nn.gru_step_forward(fused, gates[:, t], h, rh[t])
        L += np.sum(h * Rs[t])
    d_gates = np.empty_like(gates)
    dh = np.zeros_like(h0)
    for t in reversed(range(T)):
        _, dh = nn.gru_step_backward(fused, Rs[t] + dh, h_prev[t], gates[:, t], d_gates[:, t])
    d_gates = d_gates.reshape(3, T * N, H)
    X = xs.reshape(T * N, n_in)
    grads = {k: np.zeros_like(v) for k, v in cell.param_arrays().items()}
    nn.gru_fused_grads(grads, X, h_prev.reshape(T * N, H), rh.reshape(T * N, H), d_gates)
    dxs = nn.gru_input_grad(fused, d_gates).reshape(T, N, n_in)
    return L, dxs, dh, grads


def test_gru_fused_path_gradients_every_entry():
    """BPTT through the fused path against finite differences, every entry (T = 3)."""
    g, cell, _, h0 = _gru_setup(seed=12)
    T = 3
    xs = g.standard_normal((T, 3, 4))
    Rs = g.standard_normal((T, 3, 5))
    L, dxs, dh0, grads = _fused_bptt(cell, xs, h0, Rs)
    loss = lambda: _fused_bptt(cell, xs, h0, Rs)[0]  # noqa: E731
    assert_grad(dxs, loss, xs, "x")
    assert_grad(dh0, loss, h0, "h_0")
    for name, p in cell.parameters().items():
        assert_grad(grads[name], loss, p.value, name)


def test_gru_fused_path_matches_the_step_by_step_pair():
    """The same h_t, dx_t, dh_0 and parameter gradients as gru_forward / gru_backward."""
    g, cell, _, h0 = _gru_setup(seed=13, N=4, n_in=6, H=5)
    T = 5
    xs = g.standard_normal((T, 4, 6))
    Rs = g.standard_normal((T, 4, 5))
    L, dxs, dh0, grads = _fused_bptt(cell, xs, h0, Rs)
    caches, h, L_ref = [], h0, 0.0
    for t in range(T):
        h, c = cell.forward(xs[t], h)
        caches.append(c)
        L_ref += np.sum(h * Rs[t])
    cell.zero_grad()
    dh = np.zeros_like(h0)
    for t in reversed(range(T)):
        dx, dh = cell.backward(Rs[t] + dh, caches[t])
        np.testing.assert_allclose(dxs[t], dx, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(L, L_ref, rtol=1e-13)
    np.testing.assert_allclose(dh0, dh, rtol=1e-12, atol=1e-14)
    for k, v in cell.grad_arrays().items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-12, atol=1e-14, err_msg=k)


def test_gru_fused_path_float32_and_bad_shapes():
    cell = nn.GRUCell(4, 3, 0, dtype=np.float32)
    fused = nn.gru_fuse(cell.param_arrays())
    assert fused["W"].shape == (3, 4, 3) and fused["U"].shape == (3, 3, 3) and fused["b"].shape == (3, 1, 3)
    x = np.ones((2, 4), np.float32)
    h = cell.initial_state(2)
    a = nn.gru_input_side(fused, x)
    h1 = nn.gru_step_forward(fused, a, h)
    da, dh = nn.gru_step_backward(fused, np.ones_like(h1), h, a)
    assert a.dtype == h1.dtype == da.dtype == dh.dtype == np.float32
    assert nn.gru_input_grad(fused, da).dtype == np.float32
    np.testing.assert_allclose(h1, cell.forward(x, h)[0], rtol=1e-6)
    with pytest.raises(DataError, match=r"expected a of shape \(3, N, 3\)"):
        nn.gru_step_forward(fused, np.zeros((2, 9), np.float32), h)
    with pytest.raises(DataError, match="dtype float32"):
        nn.gru_step_forward(fused, np.zeros((3, 2, 3)), np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"dh_new shaped like h \(2, 3\)"):
        nn.gru_step_backward(fused, np.zeros((5, 3), np.float32), h, a)
    with pytest.raises(DataError, match="missing"):
        nn.gru_fuse({"W_r": fused["W"][0]})
    with pytest.raises(DataError, match=r"expected x of shape \(M, 4\)"):
        nn.gru_fused_grads(cell.grad_arrays(), np.zeros((2, 5), np.float32), h, h, da)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation and zero_grad
# ---------------------------------------------------------------------------------------------

def test_linear_gradients_accumulate_over_two_calls():
    """One layer applied to two inputs (as the GMVAE encoder is): grads are the sum of both."""
    g = np.random.default_rng(9)
    layer = nn.Linear(4, 3, g, dtype=np.float64, activation="tanh")
    x1, x2 = g.standard_normal((5, 4)), g.standard_normal((2, 4))
    R1, R2 = g.standard_normal((5, 3)), g.standard_normal((2, 3))
    separate = []
    for x, R in ((x1, R1), (x2, R2)):
        layer.zero_grad()
        _, c = layer.forward(x)
        layer.backward(R, c)
        separate.append({k: v.copy() for k, v in layer.grad_arrays().items()})
    layer.zero_grad()
    _, c1 = layer.forward(x1)                      # both forwards first, then both backwards
    _, c2 = layer.forward(x2)
    layer.backward(R2, c2)
    layer.backward(R1, c1)
    for k, v in layer.grad_arrays().items():
        np.testing.assert_allclose(v, separate[0][k] + separate[1][k], rtol=1e-14, atol=1e-15)
    loss = lambda: np.sum(layer.forward(x1)[0] * R1) + np.sum(layer.forward(x2)[0] * R2)  # noqa: E731
    for name, p in layer.parameters().items():
        assert_grad(p.grad.copy(), loss, p.value, name)


def test_gru_gradients_accumulate_over_two_calls():
    g, cell, x, h = _gru_setup(seed=10)
    x2, h2 = g.standard_normal(x.shape), np.tanh(g.standard_normal(h.shape))
    R, R2 = g.standard_normal(h.shape), g.standard_normal(h.shape)
    _, c = cell.forward(x, h)
    cell.backward(R, c)
    once = {k: v.copy() for k, v in cell.grad_arrays().items()}
    cell.zero_grad()
    _, c2 = cell.forward(x2, h2)
    cell.backward(R2, c2)
    other = {k: v.copy() for k, v in cell.grad_arrays().items()}
    cell.backward(R, c)
    for k, v in cell.grad_arrays().items():
        np.testing.assert_allclose(v, once[k] + other[k], rtol=1e-14, atol=1e-15)


def test_zero_grad_resets_in_place():
    mlp = nn.MLP([3, 4, 2], "elu", 0, dtype=np.float64)
    grads = mlp.grad_arrays()
    y, cache = mlp.forward(np.ones((2, 3)))
    mlp.backward(np.ones_like(y), cache)
    assert any(np.any(v != 0) for v in grads.values())      # the live arrays saw the update
    mlp.zero_grad()
    assert all(np.all(v == 0) for v in grads.values())
    assert all(grads[k] is v for k, v in mlp.grad_arrays().items())


def test_param_arrays_are_live():
    layer = nn.Linear(3, 2, 0, dtype=np.float64)
    x = np.ones((1, 3))
    y0 = layer.forward(x)[0].copy()
    layer.param_arrays()["b"][...] += 1.0                  # an optimiser's in-place update
    np.testing.assert_allclose(layer.forward(x)[0], y0 + 1.0)
    assert layer.param_arrays()["W"] is layer.W.value


def test_load_param_arrays_roundtrip_and_errors():
    a = nn.MLP([3, 4, 2], "tanh", 0, dtype=np.float64)
    b = nn.MLP([3, 4, 2], "tanh", 1, dtype=np.float64)
    b.load_param_arrays(a.param_arrays())
    for k, v in a.param_arrays().items():
        np.testing.assert_array_equal(b.param_arrays()[k], v)
    with pytest.raises(DataError, match="missing"):
        b.load_param_arrays({"layers.0.W": np.zeros((3, 4))})
    bad = dict(a.param_arrays(), **{"layers.0.W": np.zeros((4, 3))})
    with pytest.raises(DataError, match=r"\(3, 4\).*\(4, 3\)"):
        b.load_param_arrays(bad)


def test_shared_parameter_listed_once():
    class Tied(nn.Module):
        def __init__(self):
            self.enc = nn.Linear(3, 2, 0)
            self.dec = nn.Linear(3, 2, 1)
            self.dec.W = self.enc.W                       # a tied weight
            self.also_enc = self.enc                      # the same module under a second name
    m = Tied()
    assert list(m.parameters()) == ["enc.W", "enc.b", "dec.b"]
    assert m.parameters()["enc.W"] is m.dec.W


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------

def _values(m):
    return {k: v.copy() for k, v in m.param_arrays().items()}


@pytest.mark.parametrize("make", [
    lambda s: nn.Linear(5, 4, s, activation="relu"),
    lambda s: nn.MLP([5, 4, 3], "tanh", s),
    lambda s: nn.GRUCell(5, 4, s),
])
def test_seeded_init_reproducible_and_seed_dependent(make):
    a, b, c = _values(make(0)), _values(make(0)), _values(make(1))
    d = _values(make(np.random.default_rng(0)))             # a Generator works like its seed
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], d[k])
        if k.split(".")[-1].startswith("b"):
            assert np.all(a[k] == 0), f"bias {k} should start at zero"
        else:
            assert not np.array_equal(a[k], c[k]), f"{k} did not change with the seed"


def test_init_scales_glorot_and_he():
    n_in, n_out = 400, 300
    for act, var in [("relu", 2 / n_in), ("elu", 2 / n_in), ("softplus", 2 / n_in),
                     ("tanh", 2 / (n_in + n_out)), ("sigmoid", 2 / (n_in + n_out)),
                     ("identity", 2 / (n_in + n_out))]:
        W = nn.Linear(n_in, n_out, 0, dtype=np.float64, activation=act).W.value
        assert np.max(np.abs(W)) <= np.sqrt(3 * var)         # U(-a, a), a = sqrt(3 Var)
        assert abs(W.var() / var - 1) < 0.02, act             # 120000 draws: sd of the ratio ~0.4%
    assert nn.Linear(4, 3, 0, activation="tanh", init="he").init == "he"
    np.testing.assert_array_equal(nn.Linear(4, 3, 0, activation="tanh", init="he").W.value,
                                  nn.Linear(4, 3, 0, activation="relu").W.value)


def test_float32_and_float64_init_agree_up_to_rounding():
    a = nn.GRUCell(4, 3, 0, dtype=np.float32)
    b = nn.GRUCell(4, 3, 0, dtype=np.float64)
    for k, v in a.param_arrays().items():
        np.testing.assert_array_equal(v, b.param_arrays()[k].astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Dtypes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTS)
def test_float32_preserved_and_close_to_float64(act):
    g = np.random.default_rng(11)
    m32 = nn.MLP([4, 5, 2], act, 0, dtype=np.float32)
    m64 = nn.MLP([4, 5, 2], act, 0, dtype=np.float64)
    x = g.standard_normal((3, 4))
    R = g.standard_normal((3, 2))
    y32, c32 = m32.forward(x.astype(np.float32))
    dx32 = m32.backward(R.astype(np.float32), c32)
    y64, c64 = m64.forward(x)
    dx64 = m64.backward(R, c64)
    assert y32.dtype == dx32.dtype == np.float32
    assert all(p.value.dtype == p.grad.dtype == np.float32 for p in m32.parameters().values())
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-5)
    for k, v in m32.grad_arrays().items():
        np.testing.assert_allclose(v, m64.grad_arrays()[k], rtol=1e-4, atol=1e-5)


def test_gru_float32_preserved():
    cell = nn.GRUCell(4, 3, 0, dtype=np.float32)
    x = np.ones((2, 4), np.float32)
    h = cell.initial_state(2)
    assert h.dtype == np.float32 and h.shape == (2, 3) and not h.any()
    h1, cache = cell.forward(x, h)
    dx, dh = cell.backward(np.ones_like(h1), cache)
    assert h1.dtype == dx.dtype == dh.dtype == np.float32
    assert all(v.dtype == np.float32 for v in cell.grad_arrays().values())


def test_astype_casts_values_and_grads():
    mlp = nn.MLP([3, 4, 2], "relu", 0)
    assert mlp.dtype == np.float32
    before = _values(mlp)
    assert mlp.astype(np.float64) is mlp
    for k, p in mlp.parameters().items():
        assert p.value.dtype == p.grad.dtype == np.float64
        np.testing.assert_array_equal(p.value, before[k])
    assert mlp.dtype == np.float64
    y, _ = mlp.forward(np.ones((2, 3)))
    assert y.dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        mlp.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

def test_bad_shapes_raise_readable_errors():
    layer = nn.Linear(3, 2, 0, dtype=np.float64)
    with pytest.raises(DataError, match=r"expected x of shape \(N, 3\), got \(5, 4\)"):
        layer.forward(np.zeros((5, 4)))
    with pytest.raises(DataError, match=r"expected x with shape \(N, 3\), got shape \(3,\)"):
        layer.forward(np.zeros(3))
    with pytest.raises(DataError, match="to be an array, got list"):
        layer.forward([[1.0, 2.0, 3.0]])
    with pytest.raises(DataError, match="dtype float64.*got float32"):
        layer.forward(np.zeros((2, 3), np.float32))
    y, cache = layer.forward(np.zeros((5, 3)))
    with pytest.raises(DataError, match=r"expected dy of shape \(5, 2\).*got \(5, 3\)"):
        layer.backward(np.zeros((5, 3)), cache)
    mlp = nn.MLP([3, 4, 2], "relu", 0, dtype=np.float64)
    with pytest.raises(DataError, match=r"\(N, 3\), got \(2, 7\)"):
        mlp.forward(np.zeros((2, 7)))


def test_gru_bad_shapes():
    cell = nn.GRUCell(4, 3, 0, dtype=np.float64)
    with pytest.raises(DataError, match=r"expected x of shape \(N, 4\), got \(2, 5\)"):
        cell.forward(np.zeros((2, 5)), np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"expected h of shape \(N, 3\), got \(2, 4\)"):
        cell.forward(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(DataError, match=r"expected h of shape \(2, 3\).*got \(5, 3\)"):
        cell.forward(np.zeros((2, 4)), np.zeros((5, 3)))
    h1, cache = cell.forward(np.zeros((2, 4)), np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"dh_new of shape \(2, 3\)"):
        cell.backward(np.zeros((3, 3)), cache)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        nn.Linear(3, 2, 0, activation="gelu")
    with pytest.raises(ValueError, match="unknown activation"):
        nn.MLP([3, 2], "relu", 0, out_activation="softmax")
    with pytest.raises(ValueError, match="at least two positive integers"):
        nn.MLP([3], "relu", 0)
    with pytest.raises(ValueError, match="positive integer sizes"):
        nn.Linear(0, 2, 0)
    with pytest.raises(ValueError, match="unknown init"):
        nn.Linear(3, 2, 0, init="orthogonal")
    with pytest.raises(ValueError, match="seed is required"):
        nn.Linear(3, 2, None)
