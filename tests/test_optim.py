"""Optimisers against hand computations, checkpoint round-trips, gradient clipping, and Adam's
flushing of denormal moments."""
import math

import numpy as np
import pytest

from nplvm.optim import SGD, Adagrad, Adam, clip_grad_norm, global_grad_norm


def test_adam_two_steps_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    p0, g1, g2 = [0.5, -1.0], [0.2, -3.0], [-0.4, 1.0]
    params = {"w": np.array(p0)}
    opt = Adam(lr=lr, beta1=b1, beta2=b2, eps=eps)
    expected = []
    for i in range(2):                              # the textbook update, in Python floats
        p = p0[i]
        m = v = 0.0
        for t, g in ((1, g1[i]), (2, g2[i])):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
        expected.append((p, m, v))
    opt.step(params, {"w": np.array(g1)})
    # the first step moves every entry by lr: m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps) ~ sign g
    np.testing.assert_allclose(params["w"], np.array(p0) - lr * np.array(g1) / (np.abs(g1) + eps), rtol=1e-14)
    opt.step(params, {"w": np.array(g2)})
    np.testing.assert_allclose(params["w"], [e[0] for e in expected], rtol=1e-13)
    np.testing.assert_allclose(opt.state["m"]["w"], [e[1] for e in expected], rtol=1e-13)
    np.testing.assert_allclose(opt.state["v"]["w"], [e[2] for e in expected], rtol=1e-13)
    assert opt.t == 2


def test_sgd_plain_and_with_momentum_by_hand():
    params = {"a": np.array([1.0, 2.0])}
    SGD(lr=0.1).step(params, {"a": np.array([1.0, -1.0])})
    np.testing.assert_allclose(params["a"], [0.9, 2.1], rtol=1e-15)

    lr, mu = 0.1, 0.9
    params = {"a": np.array([1.0])}
    opt = SGD(lr=lr, momentum=mu)
    v, p = 0.0, 1.0
    for g in (1.0, 2.0, -0.5):
        v = mu * v + g                               # v <- mu v + g
        p = p - lr * v                               # p <- p - lr v
        opt.step(params, {"a": np.array([g])})
        assert params["a"][0] == pytest.approx(p, rel=1e-14)
    assert p == pytest.approx(1.0 - 0.1 * (1.0 + 2.9 + 2.11), rel=1e-14)   # v = 1, 2.9, 2.11


def test_adagrad_by_hand():
    lr, eps = 0.5, 1e-10
    params = {"a": np.array([0.0, 1.0])}
    opt = Adagrad(lr=lr, eps=eps)
    G = np.zeros(2)
    p = params["a"].copy()
    for g in (np.array([1.0, -2.0]), np.array([3.0, 0.5])):
        G = G + g * g
        p = p - lr * g / (np.sqrt(G) + eps)
        opt.step(params, {"a": g.copy()})
    np.testing.assert_allclose(params["a"], p, rtol=1e-14)
    # first step is lr * sign(g); second uses G = [10, 4.25]
    np.testing.assert_allclose(p, [0.0 - 0.5 - 0.5 * 3 / math.sqrt(10), 1.0 + 0.5 - 0.5 * 0.5 / math.sqrt(4.25)],
                               rtol=1e-9)


@pytest.mark.parametrize("make", [lambda: SGD(0.05, momentum=0.8), lambda: Adam(0.01),
                                  lambda: Adagrad(0.1)], ids=["sgd", "adam", "adagrad"])
def test_state_dict_round_trip_is_exact(tmp_path, make):
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    opt = make()
    for g in grads[:3]:
        opt.step(params, {k: v.copy() for k, v in g.items()})
    # checkpoint through a real .npz file, as train.py does
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    saved_params = {k: v.copy() for k, v in params.items()}
    with np.load(tmp_path / "opt.npz") as f:
        restored = make()
        restored.load_state_dict(dict(f))
    params2 = {k: v.copy() for k, v in saved_params.items()}
    for g in grads[3:]:
        opt.step(params, {k: v.copy() for k, v in g.items()})
        restored.step(params2, {k: v.copy() for k, v in g.items()})
    for k in params:
        np.testing.assert_array_equal(params[k], params2[k])      # bit-identical continuation
    assert restored.t == opt.t == 5


def test_load_state_dict_checks_the_kind_and_restores_hyperparameters():
    a = Adam(lr=0.003, beta1=0.8)
    a.step({"x": np.ones(2)}, {"x": np.ones(2)})
    b = Adam()
    b.load_state_dict(a.state_dict())
    assert (b.lr, b.beta1, b.beta2, b.eps, b.t) == (0.003, 0.8, 0.999, 1e-8, 1)
    with pytest.raises(ValueError, match="adam"):
        SGD(0.1).load_state_dict(a.state_dict())


def test_adam_flushes_denormal_moments_to_zero():
    """A float32 parameter whose gradient is zero after one tiny step: without flushing, m and v
    would decay geometrically through the denormal range (< 1.2e-38), which is very slow on CPUs.
    With the kernel's flush every moment is either a normal number or exactly 0."""
    tiny = np.finfo(np.float32).tiny
    params = {"w": np.ones(3, dtype=np.float32)}
    # fast-decaying moments so the test needs 200 steps, not the ~90,000 of beta2 = 0.999
    b1 = 0.5
    opt = Adam(lr=1e-3, beta1=b1, beta2=0.5)
    opt.step(params, {"w": np.full(3, 1e-10, dtype=np.float32)})      # m = 5e-11, v = 5e-21
    zero = np.zeros(3, dtype=np.float32)
    m_plain = np.float32(opt.state["m"]["w"][0])                     # what plain decay would give
    went_denormal = False
    for _ in range(200):
        opt.step(params, {"w": zero.copy()})
        m_plain = np.float32(m_plain * np.float32(b1))
        went_denormal |= bool(0 < m_plain < tiny)
        for slot in ("m", "v"):
            a = np.abs(opt.state[slot]["w"])
            assert not np.any((a > 0) & (a < tiny)), f"{slot} holds a denormal"
    assert went_denormal                             # the scenario really crosses the denormal range
    np.testing.assert_array_equal(opt.state["m"]["w"], 0.0)
    np.testing.assert_array_equal(opt.state["v"]["w"], 0.0)
    assert np.all(np.isfinite(params["w"]))
    w = params["w"].copy()
    opt.step(params, {"w": zero.copy()})
    np.testing.assert_array_equal(params["w"], w)      # zero moments: the parameter no longer moves


def test_clip_grad_norm_scales_in_place_and_returns_the_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    before = {k: v.copy() for k, v in grads.items()}
    total = clip_grad_norm(grads, max_norm=1.0)
    assert total == pytest.approx(5.0, rel=1e-15)
    assert global_grad_norm(grads) == pytest.approx(1.0, rel=1e-14)
    np.testing.assert_allclose(grads["a"], before["a"] / 5.0, rtol=1e-15)   # same direction
    np.testing.assert_allclose(grads["b"], before["b"] / 5.0, rtol=1e-15)
    # below the threshold: untouched
    small = {"a": np.array([0.3, 0.4])}
    assert clip_grad_norm(small, max_norm=1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(small["a"], [0.3, 0.4])
    # a non-finite norm is reported and nothing is scaled
    bad = {"a": np.array([np.inf, 1.0])}
    assert clip_grad_norm(bad, 1.0) == np.inf and bad["a"][1] == 1.0
    with pytest.raises(ValueError, match="positive"):
        clip_grad_norm(grads, 0.0)


def test_optimiser_clips_before_the_update():
    params = {"a": np.array([0.0, 0.0])}
    opt = SGD(lr=1.0, max_grad_norm=1.0)
    opt.step(params, {"a": np.array([30.0, 40.0])})
    assert opt.last_grad_norm == pytest.approx(50.0)
    np.testing.assert_allclose(params["a"], [-0.6, -0.8], rtol=1e-14)


def test_step_checks_gradients_and_arguments():
    opt = Adam()
    with pytest.raises(KeyError, match="b"):
        opt.step({"a": np.ones(2), "b": np.ones(2)}, {"a": np.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"a": np.ones(2)}, {"a": np.ones(3)})
    with pytest.raises(ValueError, match="learning rate"):
        SGD(lr=0.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(lr=0.1, momentum=1.0)


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.5), Adam(0.1), Adagrad(0.5)], ids=["sgd", "adam", "adagrad"])
def test_optimisers_minimise_a_quadratic(opt):
    """f(p) = 1/2 ||p - c||^2 with gradient p - c: each optimiser gets close to c."""
    c = np.array([3.0, -2.0, 0.5])
    params = {"p": np.zeros(3)}
    for _ in range(200):
        opt.step(params, {"p": params["p"] - c})
    np.testing.assert_allclose(params["p"], c, atol=1e-3)
