"""VaDE: whole-model gradient checks in float64 (every entry of every parameter), gamma against
the brute-force posterior p(c|z), the closed-form KL terms against Monte Carlo, the contract."""
import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from nplvm.checks import DataError
from nplvm.gradcheck import assert_model_grads
from nplvm.models import build
from nplvm.models.vade import VaDE

TOL = 1e-6          # relative error, float64, central differences with eps = 1e-5


def small(activation="tanh", seed=3, spread=0.7):
    m = VaDE(x_dim=12, hidden=[7, 5], latent=3, n_components=4, activation=activation,
             dtype="float64", seed=seed)
    g = np.random.default_rng(seed + 100)
    # a mixture away from its symmetric start, so every term of the gradient is exercised
    m.init_mixture(np.exp(g.standard_normal(4) * 0.5), g.standard_normal((4, 3)) * spread,
                   np.exp(g.standard_normal((4, 3)) * 0.3))
    return m


def binary(n=6, d=12, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float64)


# -- gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_elbo_grad_every_entry(activation):
    m = small(activation)
    report = assert_model_grads(m, binary(), tol=TOL, eps=1e-5, seed=11, max_entries_per_param=None)
    assert {"pi_logits", "mu_c", "logvar_c"} <= set(report)


def test_elbo_grad_sharp_gamma():
    """Well-separated components: gamma near one-hot, the softmax backward near its edge."""
    m = small(spread=3.0, seed=4)
    assert_model_grads(m, binary(seed=1), tol=TOL, eps=1e-5, seed=12, max_entries_per_param=None)


class _Pretrain:
    """The autoencoder pretraining loss behind the model contract, for check_model."""

    def __init__(self, m):
        self.m, self.params = m, m.params

    def loss(self, x, rng, grad=True):
        return self.m.pretrain_loss(x, rng, grad)


def test_pretrain_grad_every_entry():
    m = small()
    report = assert_model_grads(_Pretrain(m), binary(), tol=TOL, eps=1e-5, seed=0,
                                max_entries_per_param=None)
    _, grads = m.pretrain_loss(binary())
    for name in ("pi_logits", "mu_c", "logvar_c"):          # the AE does not touch the mixture
        assert not np.any(grads[name]) and report[name] == 0.0


# -- what equals what ----------------------------------------------------------------------------

def test_gamma_is_the_posterior_of_the_mixture():
    m = small()
    z = np.random.default_rng(2).standard_normal((5, 3)) * 2
    gamma, log_gamma, _ = m.gamma(z)
    pi = m.pi
    joint = np.stack([pi[c] * multivariate_normal(m.mu_c.value[c], np.diag(np.exp(m.logvar_c.value[c]))).pdf(z)
                      for c in range(4)], axis=1)
    np.testing.assert_allclose(gamma, joint / joint.sum(1, keepdims=True), rtol=1e-10)
    np.testing.assert_allclose(np.exp(log_gamma), gamma, rtol=1e-12)


def test_gamma_stable_far_from_every_component():
    m = small()
    gamma, log_gamma, _ = m.gamma(np.array([[1e4, -1e4, 1e4], [0.0, 0.0, 0.0]]))
    assert np.all(np.isfinite(gamma)) and np.allclose(gamma.sum(1), 1.0)
    assert np.all(np.isfinite(log_gamma))


def test_closed_form_kl_matches_monte_carlo():
    """sum_c gamma_c KL(q(z|x) || p(z|c)) (closed form) = E_q[log q(z|x) - sum_c gamma_c log p(z|c)]
    estimated from 40,000 independent draws; tolerance 4 standard errors of the estimate."""
    m = small()
    x = binary(3)
    t = m.elbo_terms(x, 7)
    mu, logvar = t["mu"], t["logvar"]
    g = np.random.default_rng(8)
    S = 40000
    for n in range(3):
        zs = mu[n] + np.exp(0.5 * logvar[n]) * g.standard_normal((S, 3))
        log_q = multivariate_normal(mu[n], np.diag(np.exp(logvar[n]))).logpdf(zs)
        log_p = np.stack([multivariate_normal(m.mu_c.value[c], np.diag(np.exp(m.logvar_c.value[c]))).logpdf(zs)
                          for c in range(4)], axis=1)
        f = log_q - log_p @ t["gamma"][n]
        exact = float(t["gamma"][n] @ t["kl_z"][n])
        assert abs(f.mean() - exact) <= 4 * f.std(ddof=1) / math.sqrt(S), (n, f.mean(), exact)


def test_elbo_pieces_add_up_and_bound_log_px():
    m = small()
    x = binary(4)
    t = m.elbo_terms(x, 3)
    np.testing.assert_allclose(t["elbo"], -t["nll"] - (t["gamma"] * t["kl_z"]).sum(1) - t["kl_c"], rtol=1e-12)
    assert np.all(t["kl_c"] >= -1e-12) and np.all(t["kl_z"] >= -1e-12)
    # the mean ELBO over many draws sits below the importance-sampled log p(x) (K = 2000)
    elbo = np.mean([m.elbo_terms(x, s)["elbo"] for s in range(200)], axis=0)
    lw = m.log_weights(x, 2000, 9)
    log_px = np.log(np.mean(np.exp(lw - lw.max(0)), axis=0)) + lw.max(0)
    assert np.all(elbo <= log_px + 0.05)


# -- the contract (the rest is tests/test_contract.py's, for every kind) --------------------------

def test_build_from_config_and_float32_training_step():
    m = VaDE(x_dim=12, hidden=[8], latent=2, n_components=3, seed=1)
    m2 = build("vade", m.config)
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], m2.params[k])
    x = binary(10).astype(np.uint8)
    loss, grads = m.loss(x, 0)
    assert np.isfinite(loss) and all(g.dtype == np.float32 for g in grads.values())
    assert m.log_weights(x, 3, 0).shape == (3, 10) and m.log_weights(x, 3, 0).dtype == np.float32
    assert m.sample(4, 0).shape == (4, 12) and m.sample_per_cluster(2, 0).shape == (3, 2, 12)
    assert m.predict(x).shape == (10,) and np.allclose(m.responsibilities(x).sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kw, name", [({"latent": 0}, "latent"), ({"n_components": 1}, "n_components"),
                                      ({"x_dim": 2.5}, "x_dim"), ({"dtype": "int8"}, "dtype"),
                                      ({"hidden": "a,b"}, "hidden"), ({"hidden": [4, 0]}, "hidden"),
                                      ({"seed": "a"}, "seed"), ({"activation": "foo"}, "activation")])
def test_bad_constructor_arguments_name_themselves(kw, name):
    with pytest.raises(ValueError, match=name):
        VaDE(**{"x_dim": 12, "hidden": [4], "latent": 2, "n_components": 3, **kw})


def test_bad_input_and_mixture():
    m = small()
    with pytest.raises(DataError):
        m.loss(np.full((2, 12), 0.5), 0)                        # not binary
    with pytest.raises(DataError):
        m.loss(np.zeros((2, 11)), 0)                            # wrong width
    with pytest.raises(DataError):
        m.init_mixture(np.ones(4), np.zeros((4, 3)), np.zeros((4, 3)))   # variance 0
