"""The VAE / IWAE model: whole-model gradient checks in float64, k = 1 identities, input checks.

Gradient checks hold the noise fixed (the same seed gives the same eps), so the loss is a
deterministic function of every parameter and central differences apply.  Small models let
every entry of every parameter be checked.
"""
import numpy as np
import pytest

from nplvm.checks import DataError
from nplvm.gradcheck import assert_model_grads
from nplvm.models import build, get_class
from nplvm.models.vae import IWAE, VAE
from nplvm.optim import Adam

TOL = 1e-5          # relative error, float64, eps = 1e-5 central differences


def small(dtype="float64", **kw):
    cfg = dict(x_dim=12, hidden=[7, 5], latent=3, activation="tanh", dtype=dtype, seed=3)
    cfg.update(kw)
    return VAE(**cfg)


def binary(n=6, d=12, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float64)


# -- gradient checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_elbo_grad_analytic_kl_every_entry(activation):
    m = small(activation=activation)
    assert_model_grads(m, binary(), tol=TOL, eps=1e-5, seed=11, max_entries_per_param=None)


def test_elbo_grad_mc_kl_every_entry():
    m = small(kl="mc")
    assert_model_grads(m, binary(), tol=TOL, eps=1e-5, seed=12, max_entries_per_param=None)


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_elbo_grad_beta_not_one(kl):
    m = small(kl=kl, beta=0.3)
    assert_model_grads(m, binary(), tol=TOL, eps=1e-5, seed=13, max_entries_per_param=None)


@pytest.mark.parametrize("k", [2, 7])
def test_iwae_grad_every_entry(k):
    m = small(k=k)
    assert m.iwae
    assert_model_grads(m, binary(), tol=TOL, eps=1e-5, seed=14, max_entries_per_param=None)


def test_iwae_kind_grad_larger_model_subset():
    """A wider ReLU IWAE, a seeded subset of 25 entries per parameter."""
    m = IWAE(x_dim=30, hidden=[40, 20], latent=6, activation="relu", k=5, dtype="float64", seed=5)
    assert_model_grads(m, binary(8, 30, seed=2), tol=TOL, eps=1e-5, seed=15, max_entries_per_param=25)


# -- what equals what --------------------------------------------------------------------------

def test_iwae_k1_equals_vae_with_mc_kl_exactly():
    x = binary()
    vae = small(kl="mc")
    iwae = IWAE(**{**vae.config, "k": 1, "kl": None})
    lv, gv = vae.loss(x, 21)
    gv = {k: v.copy() for k, v in gv.items()}
    li, gi = iwae.loss(x, 21)
    assert li == pytest.approx(lv, rel=1e-13, abs=0)
    for name in gv:
        np.testing.assert_allclose(gi[name], gv[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_iwae_k1_log_weight_is_minus_the_mc_loss():
    """-loss of the MC-KL ELBO with one draw = mean of log_weights(x, 1) with the same draw."""
    x = binary()
    m = small(kl="mc")
    loss, _ = m.loss(x, 5)
    assert -m.log_weights(x, 1, 5).mean() == pytest.approx(loss, rel=1e-12)


def test_analytic_and_mc_kl_agree_in_expectation():
    x = binary(4)
    a, b = small(kl="analytic"), small(kl="mc")
    la = np.array([a.loss(x, s)[0] for s in range(400)])
    lb = np.array([b.loss(x, s)[0] for s in range(400)])
    se = np.sqrt(la.var() / 400 + lb.var() / 400)
    assert abs(la.mean() - lb.mean()) < 5 * se
    assert la.var() < lb.var()          # the closed form removes the KL's sampling noise


def test_iwae_bound_tightens_with_k():
    x = binary(8)
    base = small()
    losses = {}
    for k in (1, 10, 100):
        m = VAE(**{**base.config, "k": k, "kl": None if k > 1 else "mc"})
        losses[k] = np.mean([m.loss(x, s)[0] for s in range(30)])
    assert losses[1] > losses[10] > losses[100]


# -- the model contract ------------------------------------------------------------------------

def test_registry_and_config_rebuild():
    assert get_class("vae") is VAE and get_class("iwae") is IWAE
    assert VAE.kind == "vae" and IWAE.kind == "iwae"
    m = small(kl="mc", beta=0.5)
    m2 = build(m.kind, m.config)
    x = binary()
    assert m2.loss(x, 1)[0] == m.loss(x, 1)[0]
    import json
    assert json.loads(json.dumps(m.config)) == m.config


def test_float32_throughout():
    m = VAE(x_dim=12, hidden=[8], latent=2, seed=0)
    x = binary().astype(np.uint8)
    loss, grads = m.loss(x, 0)
    assert np.isfinite(loss)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert m.log_weights(x, 3, 0).dtype == np.float32
    mu, logvar = m.encode(x)
    assert mu.dtype == logvar.dtype == np.float32
    assert m.sample(4, 0).shape == (4, 12) and m.reconstruct(x).dtype == np.float32


def test_same_seed_same_loss_and_uint8_equals_float():
    m = small()
    x = binary()
    assert m.loss(x, 4)[0] == m.loss(x.astype(np.uint8), 4)[0] == m.loss(x.astype(bool), 4)[0]


def test_adam_steps_reduce_the_loss():
    rng = np.random.default_rng(0)
    protos = rng.random((3, 30)) < 0.5
    x = protos[rng.integers(0, 3, 60)].astype(np.float32)
    m = VAE(x_dim=30, hidden=[32], latent=2, seed=0)
    opt = Adam(1e-2)
    first = m.loss(x, 0)[0]
    for step in range(150):
        loss, grads = m.loss(x, step)
        opt.step(m.params, grads)
    assert loss < first - 5.0


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (np.full((3, 12), 0.5), "binary"),
    (np.array([[0, 1, 2] * 4], dtype=np.uint8), "binary"),
    (np.zeros((3, 11)), r"\(N, 12\)"),
    (np.zeros(12), r"\(N, 12\)"),
    (np.where(np.eye(3, 12) > 0, np.nan, 0.0), "NaN"),
    (np.where(np.eye(3, 12) > 0, np.inf, 1.0), "NaN/inf"),
    (np.zeros((0, 12)), "at least one row"),
    ([[0, 1] * 6], "array"),
])
def test_bad_input_raises_data_error(bad, match):
    m = small()
    with pytest.raises(DataError, match=match):
        m.loss(bad, 0)
    with pytest.raises(DataError):
        m.log_weights(bad, 2, 0)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="k-sample bound"):
        VAE(k=5, kl="analytic")
    with pytest.raises(ValueError, match="beta"):
        VAE(k=5, beta=0.5)
    with pytest.raises(ValueError, match="beta"):
        IWAE(k=1, beta=2.0)
    with pytest.raises(ValueError, match="kl"):
        VAE(kl="exact")
    with pytest.raises(ValueError, match="latent"):
        VAE(latent=0)
    with pytest.raises(ValueError, match="hidden"):
        VAE(hidden="512,x")


# -- the benchmarks, end to end with tiny settings ------------------------------------------------

def test_benchmarks_run_end_to_end(tmp_path, capsys):
    from nplvm.bench import vae_quality, vae_speed
    best = vae_speed.main(["--data", "offline", "--steps", "3", "--no-torch", "--hidden", "32,32", "--latent", "4"])
    assert best["nplvm"] > 0
    res = vae_quality.main(["--data", "offline", "--epochs", "1", "--k", "2", "--hidden", "16", "--latent", "3",
                            "--n-test", "20", "--K", "10", "--batch-size", "100", "--out", str(tmp_path)])
    assert res["epochs"] == 1 and res["K"] == 10 and res["n_test"] == 20
    assert res["test_nll"] <= res["test_nelbo"] + 2.0            # IS with K = 10 vs the 1-sample bound
    assert (tmp_path / "result.json").is_file() and (tmp_path / "checkpoint.npz").is_file()
