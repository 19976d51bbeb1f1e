"""The density-ratio VAE: gradient of -(OP) (every entry, T_psi held fixed), the discriminator as a
second player through nplvm.train.fit (stepped, checkpointed, resumed), the normaliser Z_T, IS."""
import json
import numpy as np
import pytest

from nplvm.gradcheck import assert_model_grads, numerical_grad, rel_error
from nplvm.models import build, get_class
from nplvm.models.drvae import DRVAE
from nplvm.optim import Adam
from nplvm.train import fit, load_checkpoint

TOL = 1e-5


def small(dtype="float64", **kw):
    cfg = dict(x_dim=12, hidden=[7, 5], latent=3, activation="tanh", disc_hidden=[6, 4], dtype=dtype, seed=3)
    cfg.update(kw)
    return DRVAE(**cfg)


def binary(n=6, d=12, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float64)


def test_drvae_grad_every_entry():
    m = small()
    # a discriminator far from its zero-ish start, so the -T(z) path carries a real gradient
    for p in m.discriminator.params.values():
        p += np.random.default_rng(1).normal(0, 0.5, p.shape)
    assert_model_grads(m, binary(), tol=TOL, eps=1e-5, seed=11, max_entries_per_param=None)


def test_discriminator_loss_grad_on_model_samples():
    m, x = small(), binary()
    d = m.discriminator
    _, grads = d.loss(x, 4)
    for name, p in d.params.items():
        num = numerical_grad(lambda: d.loss(x, 4, grad=False)[0], p, eps=1e-6)
        assert rel_error(grads[name], num) < 1e-6, name


def test_model_loss_does_not_disturb_the_discriminator_step():
    m, x = small(), binary()
    _, g1 = m.discriminator.loss(x, 4)
    m.loss(x, 9)                                   # backpropagates through T: adds to disc grads
    _, g2 = m.discriminator.loss(x, 4)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
    assert set(m.loss(x, 9)[1]) == set(m.params)   # the model returns only its own gradients


def test_loss_is_vae_loss_minus_t():
    """-(OP) = -ELBO_N(0,I) - E T(z): with T = 0 it is the analytic-KL VAE loss, the same draw."""
    from nplvm.models.vae import VAE
    m, x = small(), binary()
    for p in m.discriminator.params.values():
        p[...] = 0
    v = VAE(**{k: m.config[k] for k in ("x_dim", "hidden", "latent", "activation", "dtype", "seed")})
    assert m.loss(x, 5)[0] == pytest.approx(v.loss(x, 5)[0], rel=1e-13)


def test_log_normalizer_known_case():
    """T(z) = a z_1 + c (a linear last layer only): Z_T = exp(c + a^2/2) in closed form."""
    m = small(disc_hidden=[])
    W, b = m.discriminator.params["layers.0.W"], m.discriminator.params["layers.0.b"]
    W[...] = 0
    W[0, 0], b[0] = 0.8, -0.3
    exact = -0.3 + 0.8 ** 2 / 2
    for x_ref in (None, binary(10)):
        log_z, se = m.estimate_log_normalizer(200000, rng=0, x_ref=x_ref)
        assert abs(log_z - exact) < 4 * se and se < 0.01


def test_log_weights_use_the_normalised_prior():
    """log w = log p(x|z) + log p_T(z) - log q(z|x) with p_T = N(0, I) exp(T) / Z_T, rebuilt by hand
    from the same draw."""
    m, x = small(), binary()
    for p in m.discriminator.params.values():
        p += np.random.default_rng(1).normal(0, 0.5, p.shape)
    lw = m.log_weights(x, 1, 7)[0]
    mu, logvar = m.encode(x)
    eps = np.random.default_rng(7).standard_normal((1, 6, 3))[0]
    z = mu + np.exp(0.5 * logvar) * eps
    logits = m.decode_logits(z)
    log_px_z = -np.sum(np.logaddexp(0, logits) - x * logits, axis=1)
    log_q = -0.5 * np.sum(np.log(2 * np.pi) + logvar + eps ** 2, axis=1)
    log_pt = -0.5 * np.sum(np.log(2 * np.pi) + z * z, axis=1) + m.discriminator.log_ratio(z) - m.log_normalizer()
    np.testing.assert_allclose(lw, log_px_z + log_pt - log_q, rtol=1e-12)
    np.testing.assert_allclose(m.log_prior(z), log_pt, rtol=1e-12)
    assert m.log_normalizer() != 0.0            # a T far from ln q/p: Z_T is not 1, and it is used


def test_fit_steps_the_discriminator_checkpoints_and_resumes(tmp_path):
    g = np.random.default_rng(0)
    protos = g.random((3, 12)) < 0.5
    x = protos[g.integers(0, 3, 120)].astype(np.uint8)
    m = DRVAE(x_dim=12, hidden=[16], latent=2, disc_hidden=[16], disc_lr=1e-3, seed=0)
    d0 = {k: v.copy() for k, v in m.discriminator.params.items()}
    h = fit(m, Adam(3e-3), x, x[:30], epochs=3, batch_size=20, seed=1, out_dir=tmp_path, log=None)
    assert all("disc_loss" in r and np.isfinite(r["disc_loss"]) for r in h)
    assert h[-1]["disc_loss"] < h[0]["disc_loss"] - 0.1          # the classifier learns
    assert any(np.abs(m.discriminator.params[k] - d0[k]).max() > 0 for k in d0)
    fresh, _, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    for k, v in m.discriminator.params.items():
        np.testing.assert_array_equal(fresh.discriminator.params[k], v)
    # resuming to 4 epochs equals an uninterrupted 4-epoch run, discriminator included
    fit(fresh, Adam(3e-3), x, x[:30], epochs=4, batch_size=20, seed=1, out_dir=tmp_path, log=None, resume=True)
    once = DRVAE(x_dim=12, hidden=[16], latent=2, disc_hidden=[16], disc_lr=1e-3, seed=0)
    fit(once, Adam(3e-3), x, x[:30], epochs=4, batch_size=20, seed=1, log=None)
    for k, v in once.discriminator.params.items():
        np.testing.assert_array_equal(fresh.discriminator.params[k], v)
    for k, v in once.params.items():
        np.testing.assert_array_equal(fresh.params[k], v)


def test_contract_registry_config():
    assert get_class("drvae") is DRVAE
    m = small()
    assert json.loads(json.dumps(m.config)) == m.config
    m2 = build("drvae", m.config)
    x = binary()
    assert m2.loss(x, 1)[0] == m.loss(x, 1)[0]
    f = DRVAE(x_dim=12, hidden=[8], latent=2, disc_hidden=[4])
    assert f.sample(5, 0).shape == (5, 12) and f.log_weights(x, 2, 0).dtype == np.float32
    with pytest.raises(ValueError, match="disc_lr"):
        DRVAE(disc_lr=0.0)
    with pytest.raises(ValueError, match="disc_hidden"):
        DRVAE(disc_hidden="3,x")


def test_drvae_grad_warmup_beta():
    """beta < 1 (KL warm-up).  Step h = 1e-4: one entry of enc.layers.0.W has a gradient ~1e-6 whose
    rounding noise at h = 1e-5 reaches 1.4e-5 relative (it grows as h shrinks: rounding, not a bug)."""
    m = small(beta=0.4)
    for p in m.discriminator.params.values():
        p += np.random.default_rng(2).normal(0, 0.5, p.shape)
    assert_model_grads(m, binary(), tol=TOL, eps=1e-4, seed=12, max_entries_per_param=None)


def test_log_normalizer_calls_pool_their_samples():
    m = small(disc_hidden=[])
    W, b = m.discriminator.params["layers.0.W"], m.discriminator.params["layers.0.b"]
    W[...] = 0
    W[0, 0], b[0] = 1.5, 0.2
    exact = 0.2 + 1.5 ** 2 / 2
    one, se1 = m.estimate_log_normalizer(20000, rng=1)
    first = m.last_batch_log_z
    pooled, se2 = m.estimate_log_normalizer(20000, rng=2)
    assert first == pytest.approx(one, abs=1e-12) and se2 < se1  # pooled: more samples, smaller SE
    assert abs(pooled - exact) < 4 * se2
    W[0, 0] = 1.0                                              # new psi: the pool starts afresh
    fresh, _ = m.estimate_log_normalizer(20000, rng=3)
    assert fresh == pytest.approx(m.last_batch_log_z, abs=1e-12) and abs(fresh - (0.2 + 0.5)) < 0.05


def test_warmup_ramps_the_prior_term():
    m, x = small(warmup=2), binary()
    assert m.kl_weight == 1.0 and m.config["warmup"] == 2
    m.set_epoch(1)                                                 # weight 1/2: the loss of beta = 1/2
    assert m.loss(x, 5, grad=False)[0] == small(beta=0.5).loss(x, 5, grad=False)[0]
    for p in m.discriminator.params.values():
        p += np.random.default_rng(1).normal(0, 0.5, p.shape)
    assert_model_grads(m, x, tol=TOL, eps=1e-5, seed=16, max_entries_per_param=None)
    with pytest.raises(ValueError, match="warmup"):
        small(warmup=-2)
