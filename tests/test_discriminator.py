"""The discriminator T_psi: gradients (params and inputs) by central differences in float64, the
contract of a second player, and the density-ratio trick where the answer is known (two Gaussians)."""
import numpy as np
import pytest

from nplvm.checks import DataError
from nplvm.gradcheck import numerical_grad, rel_error
from nplvm.models.discriminator import (Discriminator, gaussian_log_ratio, logistic_loss,
                                        logistic_regression, quadratic_coefficients)

TOL = 1e-6


def two_sets(n=7, m=5, d=3, seed=0):
    g = np.random.default_rng(seed)
    return g.normal(0.5, 1.0, (n, d)), g.normal(-0.3, 1.5, (m, d))


def test_logistic_loss_value_and_gradient():
    t_q, t_p = np.array([0.3, -2.0, 5.0]), np.array([1.0, -0.5])
    loss, dq, dp = logistic_loss(t_q, t_p)
    sig = lambda t: 1 / (1 + np.exp(-t))
    expect = -np.mean(np.log(sig(t_q))) - np.mean(np.log(1 - sig(t_p)))   # -(E_q ln D + E_p ln(1 - D))
    assert loss == pytest.approx(expect, rel=1e-13)
    for t, dt, f in ((t_q, dq, lambda: logistic_loss(t_q, t_p)[0]), (t_p, dp, lambda: logistic_loss(t_q, t_p)[0])):
        assert rel_error(dt, numerical_grad(f, t, eps=1e-6)) < 1e-8


def test_logistic_loss_extreme_logits_finite():
    loss, dq, dp = logistic_loss(np.array([1e4, -1e4]), np.array([1e4, -1e4]))
    assert np.isfinite(loss) and np.all(np.isfinite(dq)) and np.all(np.isfinite(dp))
    assert loss == pytest.approx((1e4 + 1e4) / 2, rel=1e-12)          # softplus(1e4) = 1e4


@pytest.mark.parametrize("activation", ["softplus", "tanh"])
def test_param_gradients_every_entry(activation):
    h_q, h_p = two_sets()
    d = Discriminator(None, 3, hidden=(6, 4), activation=activation, dtype="float64", seed=1)
    _, grads = d.loss_on(h_q, h_p)
    for name, p in d.params.items():
        num = numerical_grad(lambda: d.loss_on(h_q, h_p, grad=False)[0], p, eps=1e-6)
        assert rel_error(grads[name], num) < TOL, name


def test_input_gradient():
    """backward returns dT/dh: sum_n c_n T(h_n) differentiated w.r.t. every entry of h."""
    h, _ = two_sets()
    c = np.random.default_rng(3).normal(size=len(h))
    d = Discriminator(None, 3, hidden=(6, 4), dtype="float64", seed=2)
    t, cache = d.forward(h)
    dh = d.backward(c, cache)
    num = numerical_grad(lambda: float(c @ d.forward(h)[0]), h, eps=1e-6)
    assert rel_error(dh, num) < TOL


def test_contract_fresh_grads_and_samples_callable():
    g = np.random.default_rng(0)

    class Owner:
        def draw(self, x, rng):
            return x + rng.normal(size=x.shape), rng.normal(size=x.shape)

    owner = Owner()
    d = Discriminator(owner.draw, 2, hidden=(5,), dtype="float64", lr=1e-3, seed=0)
    assert d.model is owner and d.lr == 1e-3
    x = g.normal(size=(8, 2))
    l1, g1 = d.loss(x, 5)
    snapshot = {k: v.copy() for k, v in g1.items()}
    l2, g2 = d.loss(x + 1, 6)
    for k in g1:                                   # the first call's arrays are the caller's
        np.testing.assert_array_equal(g1[k], snapshot[k])
    assert d.loss(x, 5)[0] == l1 and d.loss(x, 5, grad=False) == (l1, None)
    with pytest.raises(DataError, match=r"\(N, 2\)"):
        d.loss_on(np.zeros((3, 4)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="samples"):
        Discriminator(None, 2).loss(x, 0)
    with pytest.raises(ValueError, match="in_dim"):
        Discriminator(None, 0)
    with pytest.raises(ValueError, match="lr"):
        Discriminator(None, 2, lr=-1.0)


def test_quadratic_is_the_gaussian_log_ratio():
    h = np.linspace(-4, 4, 9)
    mq, vq, mp, vp = 1.0, 0.5, -0.5, 2.0
    direct = (-0.5 * np.log(2 * np.pi * vq) - (h - mq) ** 2 / (2 * vq)) - (-0.5 * np.log(2 * np.pi * vp) - (h - mp) ** 2 / (2 * vp))
    np.testing.assert_allclose(gaussian_log_ratio(h, mq, vq, mp, vp), direct, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="variance"):
        quadratic_coefficients(0, 0.0, 0, 1)


def test_logistic_regression_learns_the_log_ratio():
    """Density-ratio trick, answer known: logistic regression on (1, h, h^2) between samples of
    q = N(1, 0.5) and p = N(-0.5, 2) recovers the quadratic's coefficients within 4 standard errors
    (the asymptotic covariance, the inverse Fisher information)."""
    g = np.random.default_rng(0)
    mq, vq, mp, vp = 1.0, 0.5, -0.5, 2.0
    n = 40000
    hq, hp = g.normal(mq, np.sqrt(vq), n), g.normal(mp, np.sqrt(vp), n)
    feats = lambda h: np.stack([np.ones_like(h), h, h * h], axis=1)
    w, cov = logistic_regression(feats(hq), feats(hp))
    c = np.array(quadratic_coefficients(mq, vq, mp, vp))
    z = (w - c) / np.sqrt(np.diag(cov))
    assert np.all(np.abs(z) < 4), (w, c, z)
    # and it is not the trivial answer: the coefficients are resolved far from zero
    assert np.all(np.abs(c) / np.sqrt(np.diag(cov)) > 10)


def test_mlp_discriminator_learns_the_log_ratio():
    """The MLP T_psi trained with Adam on the logistic loss approaches the closed form where both
    densities have mass (|h - 0.5| < 1.5): mean absolute error below 0.15 nats."""
    from nplvm.optim import Adam
    g = np.random.default_rng(1)
    mq, vq, mp, vp = 1.0, 0.5, -0.5, 2.0
    d = Discriminator(None, 1, hidden=(32, 32), dtype="float64", seed=0)
    opt = Adam(3e-3)
    for step in range(1500):
        hq, hp = g.normal(mq, np.sqrt(vq), (256, 1)), g.normal(mp, np.sqrt(vp), (256, 1))
        _, grads = d.loss_on(hq, hp)
        opt.step(d.params, grads)
    h = np.linspace(-1.0, 2.0, 61)[:, None]
    err = np.abs(d.log_ratio(h) - gaussian_log_ratio(h[:, 0], mq, vq, mp, vp))
    assert err.mean() < 0.15, err.mean()
