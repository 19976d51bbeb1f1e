"""Bounds and estimators over log-weights: stability, exactness on a conjugate toy, statistics."""
import math

import numpy as np
import pytest

from nplvm import objectives as obj
from nplvm.models.vae import VAE


class ConjugateToy:
    """p(z) = N(0, 1), p(x|z) = N(z, 1), so p(x) = N(0, 2) and p(z|x) = N(x/2, 1/2) exactly.

    q(z|x) = N(x/2 + shift, scale^2 / 2): with shift = 0 and scale = 1 it is the exact posterior,
    and every importance weight equals p(x).  Draws eps sample-major, like the models.
    """

    def __init__(self, shift=0.0, scale=1.0):
        self.shift, self.scale = shift, scale

    def log_weights(self, x, K, rng):
        x = x[:, 0]
        eps = rng.standard_normal((K, x.shape[0]))
        m, s = x / 2 + self.shift, self.scale * math.sqrt(0.5)
        z = m + s * eps
        log_pxz = -0.5 * (math.log(2 * math.pi) + (x - z) ** 2) - 0.5 * (math.log(2 * math.pi) + z * z)
        log_q = -0.5 * (math.log(2 * math.pi) + 2 * math.log(s) + eps * eps)
        return log_pxz - log_q

    @staticmethod
    def log_px(x):
        return -0.5 * (math.log(2 * math.pi * 2) + x[:, 0] ** 2 / 2)


def test_iwae_bound_is_a_stable_log_mean_exp():
    lw = np.array([[1000.0, -1000.0], [1000.0, -1001.0], [999.0, -2000.0]])
    b = obj.iwae_bound(lw)
    assert np.all(np.isfinite(b))
    ref0 = 1000 + math.log((2 + math.exp(-1)) / 3)
    ref1 = -1000 + math.log((1 + math.exp(-1) + math.exp(-1000)) / 3)
    np.testing.assert_allclose(b, [ref0, ref1], rtol=1e-14)
    np.testing.assert_array_equal(obj.iwae_bound(lw[:1]), lw[0])          # k = 1: the ELBO draw


def test_normalized_weights_and_ess():
    lw = np.random.default_rng(0).normal(size=(7, 4)) * 30
    w = obj.normalized_weights(lw)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=1e-12)
    assert np.all(w >= 0)
    ess = obj.effective_sample_size(lw)
    assert np.all((ess >= 1 - 1e-12) & (ess <= 7 + 1e-12))
    assert obj.effective_sample_size(np.zeros((5, 2)))[0] == pytest.approx(5.0)


def test_is_estimate_is_exact_with_the_true_posterior():
    x = np.array([[-1.5], [0.0], [2.0]])
    est = obj.importance_sampled_log_px(ConjugateToy(), x, K=10, batch=2, rng=0)
    np.testing.assert_allclose(est, ConjugateToy.log_px(x), rtol=1e-12)


def test_is_estimate_converges_and_bounds_order_with_a_poor_q():
    x = np.array([[-1.5], [0.5], [2.0]])
    toy = ConjugateToy(shift=0.3, scale=1.3)
    est = obj.importance_sampled_log_px(toy, x, K=5000, batch=3, rng=1, max_rows=3000)
    np.testing.assert_allclose(est, ConjugateToy.log_px(x), atol=0.02)
    lw = toy.log_weights(x, 5000, np.random.default_rng(2))
    b = obj.bounds_for_ks(lw, [1, 10, 100, 5000])
    means = [b[k].mean() for k in (1, 10, 100, 5000)]
    assert means[0] < means[1] < means[2] <= means[3] + 1e-3        # L_1 <= L_10 <= L_100 <= L_5000
    assert means[3] <= ConjugateToy.log_px(x).mean() + 0.02           # ... <= log p(x)


def test_chunked_is_equals_unchunked_for_the_vae():
    m = VAE(x_dim=12, hidden=[9], latent=3, dtype="float64", seed=0)
    x = (np.random.default_rng(0).random((10, 12)) < 0.5).astype(np.float64)
    one = obj.importance_sampled_log_px(m, x, K=300, batch=10, rng=7, max_rows=10 ** 6)
    chunked = obj.importance_sampled_log_px(m, x, K=300, batch=10, rng=7, max_rows=70)   # chunks of 7
    np.testing.assert_allclose(chunked, one, rtol=1e-12)
    direct = obj.iwae_bound(m.log_weights(x, 300, 7))
    np.testing.assert_allclose(one, direct, rtol=1e-12)


def test_vae_bounds_are_ordered_in_expectation():
    m = VAE(x_dim=12, hidden=[9], latent=3, dtype="float64", seed=0)
    x = (np.random.default_rng(1).random((20, 12)) < 0.5).astype(np.float64)
    lw = m.log_weights(x, 2000, 3)
    b = obj.bounds_for_ks(lw, [1, 5, 50, 2000])
    means = [b[k].mean() for k in (1, 5, 50, 2000)]
    assert means == sorted(means)
    # nelbo: one draw per example; over 100 copies of x it averages to -L_1
    assert -obj.nelbo(m, np.tile(x, (100, 1)), rng=4) == pytest.approx(means[0], abs=0.2)


def test_elbo_presentations_agree_on_the_vae():
    m = VAE(x_dim=12, hidden=[9], latent=3, dtype="float64", seed=0)
    x = (np.random.default_rng(1).random((5, 12)) < 0.5).astype(np.float64)
    t = m.elbo_terms(x, 0, S=4000)
    log_px = obj.importance_sampled_log_px(m, x, K=2000, rng=1)
    mc = obj.elbo_presentations(t["log_px_z"], t["log_pz"], t["log_qz"], log_px=log_px)
    closed = obj.elbo_presentations(t["log_px_z"], t["log_pz"], t["log_qz"],
                                    entropy=t["entropy"], kl=t["kl"], log_px=log_px)
    np.testing.assert_allclose(mc["joint_plus_entropy"], mc["likelihood_minus_kl"], rtol=1e-10)
    np.testing.assert_allclose(closed["joint_plus_entropy"], closed["likelihood_minus_kl"], atol=0.05)
    np.testing.assert_allclose(closed["likelihood_minus_kl"], mc["likelihood_minus_kl"], atol=0.05)
    np.testing.assert_allclose(mc["evidence_minus_posterior_kl"], mc["likelihood_minus_kl"], rtol=1e-10)
    assert np.all(mc["posterior_kl"] > 0)                              # log p(x) - ELBO >= 0


@pytest.mark.parametrize("mu, logvar", [(0.7, -0.4), (-1.2, 0.8)])
def test_both_gradient_estimators_are_unbiased(mu, logvar):
    """f(z) = z^2 + sin(3z): E_q f = mu^2 + s^2 + sin(3mu) e^{-9s^2/2}; the exact gradient vs both."""
    S = 200_000
    rng = np.random.default_rng(0)
    eps = rng.standard_normal((S, 1))
    lv_a = np.array([logvar])
    s2 = math.exp(logvar)
    z = mu + math.sqrt(s2) * eps
    f = (z * z + np.sin(3 * z))[:, 0]
    exact_mu = 2 * mu + 3 * math.cos(3 * mu) * math.exp(-4.5 * s2)
    exact_lv = s2 - 4.5 * s2 * math.sin(3 * mu) * math.exp(-4.5 * s2)        # d/dlogvar = s^2 d/ds^2
    sf = obj.score_function_gradient(f, eps, lv_a)
    rp = obj.reparameterization_gradient(2 * z + 3 * np.cos(3 * z), eps, lv_a)
    for est in (sf, rp):
        for g, exact in zip(est, (exact_mu, exact_lv)):
            s = obj.estimator_summary(g)
            assert abs(s["mean"][0] - exact) < 5 * s["se"][0]       # unbiased: within 5 standard errors
    assert obj.estimator_summary(rp[0])["var"][0] < obj.estimator_summary(sf[0])["var"][0]


def test_bounds_for_ks_rejects_k_out_of_range():
    with pytest.raises(ValueError, match="between 1 and K"):
        obj.bounds_for_ks(np.zeros((10, 2)), [20])
    with pytest.raises(ValueError, match="positive integer"):
        obj.importance_sampled_log_px(ConjugateToy(), np.zeros((2, 1)), K=0)
