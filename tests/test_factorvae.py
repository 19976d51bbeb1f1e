"""FactorVAE: whole-model gradients (float64, every parameter), the discriminator's gradients as
its own player, gamma = 0 is the VAE, the TC term, alternating training through
nplvm.train.fit, and the density-ratio estimate of the TC against its Gaussian closed form."""
import json
import math

import numpy as np
import pytest

from nplvm.disentanglement import gaussian_tc, permute_dims
from nplvm.gradcheck import assert_model_grads
from nplvm.models import build
from nplvm.models.discriminator import logistic_regression
from nplvm.models.factorvae import FactorVAE
from nplvm.models.vae import VAE
from nplvm.optim import Adam
from nplvm.train import fit, load_checkpoint

TOL = 1e-5          # relative error, float64, eps = 1e-5 central differences (as tests/test_vae.py)


def binary(n=8, d=12, seed=1):
    """Random binary rows; no all-zero row (it would put every ReLU of the first layer at its
    kink while the biases are 0, where finite differences are meaningless)."""
    x = (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.uint8)
    x[:, 0] = 1
    return x


def small(**kw):
    kw = {"x_dim": 12, "hidden": (7,), "latent": 3, "gamma": 2.5, "disc_hidden": (5, 4),
          "dtype": "float64", "seed": 1, **kw}
    return FactorVAE(**kw)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_whole_model_gradient_every_parameter(activation):
    assert_model_grads(small(activation=activation), binary(), tol=TOL, eps=1e-5, seed=3,
                       max_entries_per_param=None)


def test_discriminator_gradient_on_the_factorvae_samples():
    m = small()
    assert_model_grads(m.discriminator, binary(), tol=TOL, eps=1e-5, seed=4, max_entries_per_param=None)


def test_gamma_zero_is_the_vae_and_the_tc_term_is_gamma_mean_T():
    x = binary()
    m0 = small(gamma=0.0)
    vae = VAE(x_dim=12, hidden=(7,), latent=3, dtype="float64", seed=1)
    l0, g0 = m0.loss(x, 5)
    lv, gv = vae.loss(x, 5)
    assert l0 == pytest.approx(lv, rel=1e-14)
    for k in gv:
        np.testing.assert_allclose(g0[k], gv[k], rtol=1e-12, atol=1e-15)
    m = small(gamma=3.0)                                       # same networks, same discriminator
    eps = np.random.default_rng(5).standard_normal((8, 3))
    mu, logvar = m.encode(x)
    t = m.discriminator.log_ratio(mu + np.exp(0.5 * logvar) * eps)
    assert m.loss(x, 5)[0] - l0 == pytest.approx(3.0 * t.mean(), rel=1e-10)
    # and the TC term moves the encoder's gradient (a dropped term would not)
    g = m.loss(x, 5)[1]
    assert np.abs(g["enc.layers.0.W"] - g0["enc.layers.0.W"]).max() > 1e-6


def test_tc_samples_halves_the_batch_and_permutes_the_second_half():
    m = small()
    x = binary(10)
    zq, zp = m.tc_samples(x, 7)
    assert zq.shape == (5, 3) and zp.shape == (5, 3)
    g = np.random.default_rng(7)
    z = m._draw_z(x, g)                                        # the same draws, same stream order
    np.testing.assert_array_equal(zq, z[:5])
    for j in range(3):                                         # each column of the second half, reordered
        np.testing.assert_array_equal(np.sort(zp[:, j]), np.sort(z[5:, j]))
    with pytest.raises(ValueError, match="at least 4 rows"):
        m.tc_samples(binary(3), 0)


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="gamma"):
        FactorVAE(gamma=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        FactorVAE(gamma=float("nan"))


def test_fit_alternates_the_two_players_and_checkpoints_the_discriminator(tmp_path):
    m = small(dtype="float32", gamma=1.0)
    x = binary(64, seed=2)
    hist = fit(m, Adam(1e-2), x, x[:16], epochs=3, batch_size=16, seed=0, out_dir=tmp_path,
               progress=False, log=None)
    assert all("disc_loss" in r and math.isfinite(r["disc_loss"]) for r in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    fresh = build("factorvae", m.config)
    load_checkpoint(tmp_path / "checkpoint.npz", fresh)
    for k, v in m.discriminator.params.items():
        np.testing.assert_array_equal(fresh.discriminator.params[k], v)


def test_density_ratio_estimate_of_the_tc_matches_the_gaussian_closed_form():
    """A logistic regression on quadratic features contains log q(z)/prod q(z_j) for Gaussian z,
    so its mean logit over fresh samples of q estimates TC = -1/2 log det R; tolerance 4 SE
    (the spread of the logits and the coefficients' asymptotic covariance)."""
    rng = np.random.default_rng(0)
    R = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
    C = np.linalg.cholesky(R)
    n = 20000
    draw = lambda: rng.standard_normal((n, 3)) @ C.T

    def features(z):
        i, j = np.triu_indices(3)
        return np.concatenate([np.ones((len(z), 1)), z, z[:, i] * z[:, j]], axis=1)

    w, cov = logistic_regression(features(draw()), features(permute_dims(draw(), rng)))
    f = features(draw())
    t = f @ w
    fbar = f.mean(axis=0)
    se = math.sqrt(t.var() / n + fbar @ cov @ fbar)
    exact = gaussian_tc(R)
    assert exact == pytest.approx(-0.5 * math.log(np.linalg.det(R)))
    assert abs(t.mean() - exact) < 4 * se, (t.mean(), exact, se)
    assert se < 0.05 * exact                                   # the check is sharp enough to mean something


def test_benchmark_quick_mode_writes_every_model(tmp_path):
    from nplvm.bench.factorvae import main
    rows = main(["--quick", "--models", "vae,factor10", "--out", str(tmp_path)])
    assert [r["model"] for r in rows] == ["vae", "factor10"]
    saved = json.loads((tmp_path / "results.json").read_text())["rows"]
    for r in saved:
        assert 0.0 <= r["metric"] <= 1.0 and r["metric_se"] > 0 and np.isfinite(r["tc"])
        assert r["recon"] > 0 and r["kl"] >= 0 and np.sum(r["votes"]) == 20
