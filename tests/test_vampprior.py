"""The VampPrior VAE: whole-model gradient (every entry of every parameter, pseudo-inputs included),
the mixture log-density and its gradient, log_weights, the (KLD) decomposition, the contract."""
import json
import math

import numpy as np
import pytest

from nplvm.checks import DataError
from nplvm.gradcheck import assert_model_grads, numerical_grad, rel_error
from nplvm.models import build, get_class
from nplvm.models.vampprior import (VampPrior, active_units, kl_decomposition, log_mixture,
                                    log_mixture_backward)
from nplvm.optim import Adam

TOL = 1e-5


def small(dtype="float64", **kw):
    cfg = dict(x_dim=12, hidden=[7, 5], latent=3, activation="tanh", n_pseudo=4, dtype=dtype, seed=3)
    cfg.update(kw)
    return VampPrior(**cfg)


def binary(n=6, d=12, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float64)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_vampprior_grad_every_entry(activation):
    assert_model_grads(small(activation=activation), binary(), tol=TOL, eps=1e-5, seed=11,
                       max_entries_per_param=None)


def test_vampprior_grad_warmup_beta():
    assert_model_grads(small(beta=0.25), binary(), tol=TOL, eps=1e-5, seed=14, max_entries_per_param=None)


def test_vampprior_grad_one_pseudo_input_and_many():
    assert_model_grads(small(n_pseudo=1), binary(), tol=TOL, eps=1e-5, seed=12, max_entries_per_param=None)
    assert_model_grads(small(n_pseudo=9, latent=2), binary(9), tol=TOL, eps=1e-5, seed=13,
                       max_entries_per_param=None)


def test_mixture_grad_against_finite_differences():
    g = np.random.default_rng(0)
    z, m, s = g.normal(size=(5, 3)), g.normal(size=(4, 3)), g.normal(0, 0.5, (4, 3))
    w = g.normal(size=5)
    f = lambda: float(w @ log_mixture(z, m, s)[0])
    _, r = log_mixture(z, m, s)
    dz, dm, ds = log_mixture_backward(w, z, m, s, r)
    for name, a, d in (("z", z, dz), ("m", m, dm), ("s", s, ds)):
        assert rel_error(d, numerical_grad(f, a, eps=1e-6)) < 1e-7, name


def test_mixture_density_equals_a_loop_and_is_stable():
    g = np.random.default_rng(1)
    z, m, s = g.normal(size=(5, 3)), g.normal(size=(4, 3)), g.normal(0, 0.5, (4, 3))
    loop = np.array([np.log(np.mean([np.prod(np.exp(-(zz - mk) ** 2 / (2 * np.exp(sk))) /
                                             np.sqrt(2 * np.pi * np.exp(sk))) for mk, sk in zip(m, s)]))
                     for zz in z])
    np.testing.assert_allclose(log_mixture(z, m, s)[0], loop, rtol=1e-12)
    far, r = log_mixture(z + 300.0, m, s)                      # every component ~exp(-4e4): no underflow
    assert np.all(np.isfinite(far)) and np.all(np.isfinite(r)) and np.allclose(r.sum(1), 1)


def test_loss_equals_minus_mean_log_weight_with_the_same_draw():
    m, x = small(), binary()
    loss, _ = m.loss(x, 7)
    assert -m.log_weights(x, 1, 7).mean() == pytest.approx(loss, rel=1e-12)


def test_one_pseudo_input_prior_is_its_posterior():
    """K = 1: p(z) = q(z|u_1) exactly, a single Gaussian."""
    m = small(n_pseudo=1)
    mk, sk = m.prior_components()
    z = np.random.default_rng(2).normal(size=(4, 3))
    direct = -0.5 * np.sum(np.log(2 * np.pi) + sk + (z - mk) ** 2 * np.exp(-sk), axis=1)
    np.testing.assert_allclose(m.log_prior(z), direct, rtol=1e-12)


def test_kl_decomposition_identity_and_bound():
    """(KLD) on the empirical distribution of N posteriors: E KL(q(z|x)||p) = I + KL(q(z)||p),
    the MC mean KL agrees with the closed form within 4 SE, and 0 <= I <= log N."""
    g = np.random.default_rng(0)
    N, L = 20, 2
    mu, logvar = g.normal(0, 1.5, (N, L)), g.normal(-1.0, 0.3, (N, L))
    std_normal = lambda z: -0.5 * np.sum(np.log(2 * np.pi) + z * z, axis=1)
    d = kl_decomposition(mu, logvar, std_normal, S=2000, rng=1)
    assert d["mean_kl"] == pytest.approx(d["mutual_info"] + d["marginal_kl"], abs=1e-10)
    se = d["mean_kl_draws"].std() / math.sqrt(d["mean_kl_draws"].size)
    assert abs(d["mean_kl"] - d["mean_kl_exact"]) < 4 * se
    assert 0 < d["mutual_info"] <= d["log_N"] and d["marginal_kl"] > 0
    # with the aggregated posterior itself as the prior, KL(q(z)||p) = 0 and the mean KL is I
    agg = kl_decomposition(mu, logvar, lambda z: log_mixture(z, mu, logvar)[0], S=50, rng=1)
    assert agg["marginal_kl"] == 0.0 and agg["mean_kl"] == agg["mutual_info"]


def test_active_units():
    mu = np.random.default_rng(0).normal(size=(100, 3)) * np.array([1.0, 0.01, 0.5])
    n, var = active_units(mu)
    assert n == 2 and var.shape == (3,)


def test_registry_config_pseudo_inputs_float32():
    assert get_class("vampprior") is VampPrior
    m = small()
    assert json.loads(json.dumps(m.config)) == m.config
    x = binary()
    m2 = build("vampprior", m.config)
    assert m2.loss(x, 1)[0] == m.loss(x, 1)[0]
    _, g1 = m.loss(x, 1)                         # owned arrays: tests/test_contract.py, every kind
    assert set(g1) == set(m.params) and "pseudo" in m.params
    f = VampPrior(x_dim=12, hidden=[8], latent=2, n_pseudo=3)
    loss, grads = f.loss(x.astype(np.uint8), 0)
    assert np.isfinite(loss) and all(v.dtype == np.float32 for v in grads.values())
    assert f.log_weights(x, 3, 0).dtype == np.float32 and f.sample(4, 0).shape == (4, 12)
    assert f.pseudo_inputs().min() > 0 and f.pseudo_inputs().max() < 1


def test_training_moves_pseudo_inputs_and_lowers_the_loss():
    rng = np.random.default_rng(0)
    protos = rng.random((3, 30)) < 0.5
    x = protos[rng.integers(0, 3, 60)].astype(np.float32)
    m = VampPrior(x_dim=30, hidden=[32], latent=2, n_pseudo=5, seed=0)
    m.init_pseudo_inputs(x, 0)
    a0 = m.params["pseudo"].copy()
    opt = Adam(1e-2)
    first = m.loss(x, 0)[0]
    for step in range(150):
        loss, grads = m.loss(x, step)
        opt.step(m.params, grads)
    assert loss < first - 5.0
    assert np.abs(m.params["pseudo"] - a0).max() > 0.5          # the logits of u moved (Adam: <= 1.5)


def test_bad_input_and_config():
    m = small()
    with pytest.raises(DataError, match="binary"):
        m.loss(np.full((3, 12), 0.5), 0)
    with pytest.raises(DataError, match=r"\(N, 12\)"):
        m.log_weights(np.zeros((3, 11)), 2, 0)
    with pytest.raises(ValueError, match="n_pseudo"):
        VampPrior(n_pseudo=0)
    with pytest.raises(ValueError, match="latent"):
        VampPrior(latent=0)


def test_optimal_prior_benchmark_quick(tmp_path, capsys):
    from nplvm.bench import optimal_prior
    out = tmp_path / "op.json"
    res = optimal_prior.main(["--quick", "--out", str(out)])
    assert [r["model"] for r in res["results"]] == ["vae", "vampprior", "drvae"]
    for r in res["results"]:
        assert r["test_nll"] <= r["test_nelbo"] + 2.0                   # IS (K = 20) vs the 1-sample bound
        assert r["mutual_info"] <= r["log_N"] + 1e-9 and r["active_units"] >= 0
        assert abs(r["mean_kl"] - r["mutual_info"] - r["marginal_kl"]) < 1e-9
    assert "log_Z_T" in res["results"][2] and "gain_over_vae" in res["results"][1]
    assert json.loads(out.read_text())["results"][0]["model"] == "vae"
    assert "anchor" in capsys.readouterr().out


def test_warmup_ramps_the_kl_weight_and_fit_applies_it():
    m, x = small(warmup=4), binary()
    assert m.kl_weight == 1.0 and m.config["warmup"] == 4          # a new or rebuilt model: the ELBO
    ramp = []
    for e in (0, 2, 4, 9):
        m.set_epoch(e)
        ramp.append(m.kl_weight)
    assert ramp == [0.0, 0.5, 1.0, 1.0]
    m.set_epoch(1)                                                 # weight 1/4: the loss of beta = 1/4
    assert m.loss(x, 5, grad=False)[0] == small(beta=0.25).loss(x, 5, grad=False)[0]
    assert_model_grads(m, x, tol=TOL, eps=1e-5, seed=15, max_entries_per_param=None)
    from nplvm.train import fit
    fit(m, Adam(1e-3), binary(20), None, epochs=2, batch_size=10, seed=0, progress=False, log=None)
    assert m.kl_weight == 0.25                                     # fit called set_epoch(1) last
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="warmup"):
            small(warmup=bad)


def test_cli_trains_with_a_warmup_flag(tmp_path):
    import subprocess
    import sys
    run = lambda *a: subprocess.run([sys.executable, "-m", "nplvm", *a], capture_output=True, text=True)
    assert "--warmup" in run("train", "vampprior", "--help").stdout
    r = run("train", "vampprior", "--quick", "--epochs", "2", "--hidden", "16", "--latent", "2", "--n-pseudo", "3",
            "--warmup", "2", "--out", str(tmp_path / "r"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["warmup"] == 2
