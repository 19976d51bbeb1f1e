"""The conditional VAE (CVAE, GSNN, hybrid), the deterministic baseline and the label CVAE:
whole-model gradient checks in float64 (every entry of every parameter), the KL between two
learned Gaussians against a closed form / Monte Carlo / finite differences, quadrant masking,
importance sampling >= ELBO, and the errors of bad input.

The images are 4 x 4 (x_dim = 16) so that every parameter entry can be checked in seconds.
"""
import json

import numpy as np
import pytest

import kernels

from nplvm.checks import DataError
from nplvm.cli import main as cli_main
from nplvm.distributions import DiagGaussian
from nplvm.gradcheck import assert_model_grads, numerical_grad
from nplvm.models import build, get_class
from nplvm.models.cvae import (CVAE, MISSING, BaselineNet, LabelCVAE, merge_quadrants,
                               observed_mask, split_quadrants, with_labels)
from nplvm.objectives import importance_sampled_log_px
from nplvm.optim import Adam
from nplvm.train import fit

TOL = 1e-5          # relative error, float64, eps = 1e-5 central differences


def small(**kw):
    cfg = dict(x_dim=16, hidden=[7, 5], latent=3, activation="tanh", dtype="float64", seed=3)
    cfg.update(kw)
    return CVAE(**cfg)


def binary(n=6, d=16, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float64)


# -- the KL between two learned diagonal Gaussians ---------------------------------------------

def _four(shape=(5, 4), seed=0):
    g = np.random.default_rng(seed)
    return (g.normal(size=shape), g.normal(size=shape) * 0.7, g.normal(size=shape), g.normal(size=shape) * 0.7)


def test_kl_diag_gaussians_closed_form_and_std_normal_case():
    mq, sq, mp, sp = _four()
    kl = kernels.reference.gaussian_kl(mq, sq, mp, sp)[0]
    # per dimension: log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2
    vq, vp = np.exp(sq), np.exp(sp)
    ref = np.sum(np.log(np.sqrt(vp / vq)) + (vq + (mq - mp) ** 2) / (2 * vp) - 0.5, axis=-1)
    np.testing.assert_allclose(kl, ref, rtol=1e-13)
    # the fused kernel (kernels.gaussian_kl via DiagGaussian.kl) agrees, value and gradients
    fused = DiagGaussian(mq, sq).kl(DiagGaussian(mp, sp))
    for a, b in zip(kernels.reference.gaussian_kl(mq, sq, mp, sp), fused):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # p = N(0, I): the std-normal KL; KL(q || q) = 0
    from nplvm.distributions import kl_std_normal
    z = np.zeros_like(mq)
    np.testing.assert_allclose(kernels.reference.gaussian_kl(mq, sq, z, z)[0], kl_std_normal(mq, sq)[0], rtol=1e-13)
    np.testing.assert_allclose(kernels.reference.gaussian_kl(mq, sq, mq, sq)[0], 0.0, atol=1e-14)


def test_kl_diag_gaussians_monte_carlo():
    """KL = E_q[log q(z) - log p(z)], estimated with 200,000 draws: within 4 standard errors."""
    mq, sq, mp, sp = [a[:1] for a in _four((1, 3), seed=4)]
    q, p = DiagGaussian(mq, sq), DiagGaussian(mp, sp)
    z = q.sample(np.random.default_rng(1), (200_000,))
    d = q.log_prob(z) - p.log_prob(z)                     # (S, 1)
    se = d.std() / np.sqrt(d.size)
    assert abs(d.mean() - kernels.reference.gaussian_kl(mq, sq, mp, sp)[0][0]) < 4 * se


def test_kl_diag_gaussians_gradients_finite_differences():
    arrays = [a.copy() for a in _four((3, 4), seed=2)]
    weights = np.random.default_rng(3).normal(size=3)     # a random upstream gradient per row
    grads = kernels.reference.gaussian_kl(*arrays)[1:]
    for i, name in enumerate(["mu_q", "logvar_q", "mu_p", "logvar_p"]):
        num = numerical_grad(lambda: float(weights @ kernels.reference.gaussian_kl(*arrays)[0]), arrays[i], eps=1e-6)
        ana = grads[i] * weights[:, None]
        np.testing.assert_allclose(ana, num, rtol=1e-7, atol=1e-9, err_msg=name)


# -- whole-model gradients: every entry of every parameter --------------------------------------

@pytest.mark.parametrize("quadrants", [1, 2, 3])
def test_cvae_grad_every_entry(quadrants):
    assert_model_grads(small(quadrants=quadrants), binary(), tol=TOL, eps=1e-5, seed=11,
                       max_entries_per_param=None)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gsnn_grad_every_entry(activation):
    m = small(objective="gsnn", activation=activation, quadrants=2)
    assert not any(k.startswith("rec.") for k in m.params)         # q = p(z|x): no recognition net
    assert_model_grads(m, binary(), tol=TOL, eps=1e-5, seed=12, max_entries_per_param=None)


@pytest.mark.parametrize("alpha", [0.3, 0.8])
def test_hybrid_grad_every_entry(alpha):
    assert_model_grads(small(objective="hybrid", alpha=alpha), binary(), tol=TOL, eps=1e-5, seed=13,
                       max_entries_per_param=None)


def test_baseline_grad_every_entry():
    m = BaselineNet(x_dim=16, hidden=[7, 5], quadrants=1, activation="tanh", dtype="float64", seed=2)
    assert_model_grads(m, binary(), tol=TOL, eps=1e-5, seed=0, max_entries_per_param=None)


def test_label_cvae_grad_every_entry():
    g = np.random.default_rng(5)
    data = with_labels((g.random((6, 16)) < 0.4).astype(np.uint8), g.integers(0, 3, 6), 3).astype(np.float64)
    m = LabelCVAE(x_dim=16, n_classes=3, hidden=[6], latent=2, activation="tanh", dtype="float64")
    assert_model_grads(m, data, tol=TOL, eps=1e-5, seed=14, max_entries_per_param=None)


# -- what equals what --------------------------------------------------------------------------

def test_hybrid_is_the_weighted_sum_of_cvae_and_gsnn():
    """Same parameters, same noise: hybrid(alpha) = alpha CVAE + (1 - alpha) GSNN, value and gradients."""
    x = binary()
    cvae, hyb = small(), small(objective="hybrid", alpha=0.3)
    gsnn = small(objective="gsnn")
    for name in gsnn.params:                                          # the same prior and generation nets
        gsnn.params[name][...] = cvae.params[name]
    for name in cvae.params:
        hyb.params[name][...] = cvae.params[name]
    lc, gc = cvae.loss(x, 7)
    lg, gg = gsnn.loss(x, 7)
    lh, gh = hyb.loss(x, 7)
    assert lh == pytest.approx(0.3 * lc + 0.7 * lg, rel=1e-13)
    for name in gh:
        want = 0.3 * gc[name] + (0.7 * gg[name] if name in gg else 0.0)
        np.testing.assert_allclose(gh[name], want, rtol=1e-10, atol=1e-14, err_msg=name)
    h1 = small(objective="hybrid", alpha=1.0)
    assert h1.loss(x, 7)[0] == pytest.approx(lc, rel=1e-14)         # alpha = 1 is the CVAE


def test_elbo_terms_add_up_and_grads_are_fresh_arrays():
    x = binary()
    m = small()
    t = m.elbo_terms(x, 5)
    assert t["loss"] == pytest.approx(np.mean(t["nll_q"]) + np.mean(t["kl"]), rel=1e-14)
    assert m.loss(x, 5)[0] == t["loss"]
    assert np.all(t["kl"] >= 0)
    _, g1 = m.loss(x, 1)
    first = {k: v.copy() for k, v in g1.items()}
    m.loss(binary(seed=9), 2)                                        # a second call ...
    for k in first:                                                  # ... leaves the first result alone
        np.testing.assert_array_equal(g1[k], first[k])
    assert m.loss(x, 1, grad=False)[1] is None


def test_importance_sampling_is_above_the_elbo_on_average():
    """E[log (1/K) sum w_k] >= E[log w]: the IS estimate of log p(y|x) is above the ELBO, per
    example on average over many draws, and it grows with K (Burda et al.'s monotonicity)."""
    x = binary(8)
    m = small(latent=2)
    lw = m.log_weights(x, 4000, 0)                                    # (K, N)
    elbo = lw.mean(axis=0)
    is_1000 = np.array([importance_sampled_log_px(m, x, K=1000, rng=s) for s in range(3)]).mean(0)
    is_10 = np.array([importance_sampled_log_px(m, x, K=10, rng=s) for s in range(30)]).mean(0)
    se = lw.std(axis=0) / np.sqrt(lw.shape[0])
    assert np.all(is_1000 >= elbo - 4 * se)
    assert np.mean(is_1000) > np.mean(is_10) > np.mean(elbo)
    # the CVAE's loss is the analytic-KL -ELBO: -mean log w estimates the same number
    losses = [m.loss(x, s, grad=False)[0] for s in range(200)]
    assert abs(np.mean(losses) + elbo.mean()) < 4 * (np.std(losses) / np.sqrt(200) + se.mean())


def test_gsnn_log_weights_use_the_prior_and_baseline_is_exact():
    x = binary()
    gsnn = small(objective="gsnn")
    lw = gsnn.log_weights(x, 3, 0)
    xin, y = gsnn.split(x)
    eps = np.random.default_rng(0).standard_normal((3, 6, 3))
    mu, logvar = gsnn.prior_params(xin)
    p = 1 / (1 + np.exp(-gsnn._generation_logits(xin, mu + np.exp(logvar / 2) * eps)))
    want = np.sum(y * np.log(p) + (1 - y) * np.log1p(-p), axis=-1)
    np.testing.assert_allclose(lw, want, rtol=1e-10)
    base = BaselineNet(x_dim=16, hidden=[7, 5], dtype="float64")
    lw = base.log_weights(x, 5, 0)
    assert lw.shape == (5, 6) and np.all(lw == lw[0])
    assert -lw[0].mean() == pytest.approx(base.loss(x)[0], rel=1e-13)


def test_generation_logits_match_the_mlp_forward():
    """The IS shortcut (x W_x + b computed once for all K samples) = the plain MLP on [x, z]."""
    m = small(activation="relu")
    xin, _ = m.split(binary())
    z = np.random.default_rng(1).normal(size=(4, 6, 3))
    fast = m._generation_logits(xin, z)
    slow = m.generation.forward(np.concatenate([np.broadcast_to(xin, (4, 6, 16)), z], -1).reshape(24, -1))[0]
    np.testing.assert_allclose(fast.reshape(24, -1), slow, rtol=1e-12)


# -- masking ------------------------------------------------------------------------------------

def test_quadrant_layouts():
    q = {n: observed_mask(n, 784).reshape(28, 28) for n in (1, 2, 3)}
    assert q[1][14:, :14].all() and q[1].sum() == 196                 # bottom-left only
    assert q[2][:, :14].all() and q[2].sum() == 392                   # the left half
    assert (~q[3][14:, 14:]).all() and q[3].sum() == 588              # all but the bottom-right
    img = (np.random.default_rng(0).random((3, 784)) < 0.5).astype(np.uint8)
    for n in (1, 2, 3):
        x, y = split_quadrants(img, n)
        assert y.shape == (3, 784 - q[n].sum())
        assert np.all(x[:, ~q[n].reshape(-1)] == MISSING) and MISSING not in (0, 1)
        np.testing.assert_array_equal(x[:, q[n].reshape(-1)], img[:, q[n].reshape(-1)])
        np.testing.assert_array_equal(merge_quadrants(x, y, n), img)
    # a black (all 0) unobserved quadrant and a missing one are told apart
    x0, _ = split_quadrants(np.zeros((1, 784), np.uint8), 1)
    assert set(np.unique(x0)) == {0.0, MISSING}


def test_completion_keeps_the_observed_pixels():
    m = small(quadrants=2)
    img = binary(4)
    c = m.complete(img, 0, n_samples=3)
    obs = observed_mask(2, 16)
    assert c.shape == (3, 4, 16)
    np.testing.assert_array_equal(c[:, :, obs], np.broadcast_to(img[:, obs], (3, 4, obs.sum())))
    assert np.all((c[:, :, ~obs] > 0) & (c[:, :, ~obs] < 1))
    assert not np.allclose(c[0], c[1])                               # different z, different completions
    b = BaselineNet(x_dim=16, hidden=[7, 5], quadrants=2, dtype="float64").complete(img, n_samples=2)
    np.testing.assert_array_equal(b[0], b[1])                         # one answer per input


def test_label_cvae_samples_and_data_format():
    m = LabelCVAE(x_dim=16, n_classes=3, hidden=[6], latent=2)
    s = m.sample(5, 0, labels=np.array([0, 1, 2, 0, 1]))
    assert s.shape == (5, 16) and np.all((s > 0) & (s < 1))
    with pytest.raises(DataError, match="with_labels"):
        m.loss(binary(4).astype(np.uint8), 0)
    bad = with_labels(binary(2).astype(np.uint8), np.array([0, 1]), 3)
    bad[0, 16:] = 1                                                   # two ones in a label
    with pytest.raises(DataError, match="one-hot"):
        m.loss(bad, 0)
    with pytest.raises(DataError, match="labels in 0..2"):
        with_labels(binary(2).astype(np.uint8), np.array([0, 3]), 3)


# -- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, msg", [
    (dict(quadrants=4), "quadrants"), (dict(quadrants=0), "quadrants"),
    (dict(objective="vae"), "objective"), (dict(alpha=1.5), "alpha"), (dict(alpha=-0.1), "alpha"),
    (dict(latent=0), "latent"), (dict(x_dim=15), "x_dim"), (dict(x_dim=9), "x_dim"),
    (dict(hidden="a,b"), "hidden"),
])
def test_bad_settings_raise(kw, msg):
    with pytest.raises(ValueError, match=msg):
        small(**kw)


def test_bad_data_raises():
    m = small()
    with pytest.raises(DataError, match=r"shape \(N, 16\)"):
        m.loss(binary(3, 15), 0)
    with pytest.raises(DataError, match="binary"):
        m.loss(binary(3) * 0.5, 0)
    x = binary(3)
    x[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        m.loss(x, 0)
    with pytest.raises(DataError, match="at least one row"):
        m.loss(np.zeros((0, 16)), 0)
    with pytest.raises(ValueError, match="pass x"):
        m.sample(3, 0)


# -- training and the command line ---------------------------------------------------------------

def test_training_lowers_the_loss_and_rebuilds_from_config():
    g = np.random.default_rng(0)
    protos = (g.random((3, 16)) < 0.5)
    x = protos[g.integers(0, 3, 300)].astype(np.uint8)               # three 4x4 "digits"
    for kind in ("cvae", "cvae-baseline"):
        m = get_class(kind)(x_dim=16, hidden=[16], dtype="float64", **({"latent": 2} if kind == "cvae" else {}))
        before = m.loss(x, 0, grad=False)[0]
        fit(m, Adam(1e-2), x, epochs=15, batch_size=50, seed=0, progress=False, log=None)
        assert m.loss(x, 0, grad=False)[0] < 0.5 * before
        m2 = build(kind, json.loads(json.dumps(m.config)))
        assert m2.config == m.config


@pytest.mark.parametrize("kind, extra", [("cvae", ["--objective", "hybrid", "--alpha", "0.4", "--quadrants", "2"]),
                                         ("cvae-baseline", ["--quadrants", "3"])])
def test_cli_train_and_evaluate(tmp_path, kind, extra):
    out = tmp_path / kind
    rc = cli_main(["train", kind, "--quick", "--epochs", "1", "--hidden", "32", "--no-progress",
                   "--out", str(out), *extra])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["quadrants"] == int(extra[-1])
    rc = cli_main(["evaluate", "--checkpoint", str(out), "--quick", "--K", "20", "--n", "30"])
    assert rc == 0
    res = json.loads((out / "evaluation.json").read_text())
    assert res["kind"] == kind and np.isfinite(res["nll"]) and res["nll"] <= res["nelbo"] + 1e-6


def test_benchmark_quick(tmp_path):
    """The benchmark's --quick mode: four models per setting, a table, and the JSON it writes."""
    from nplvm.bench import cvae as bench
    out = tmp_path / "results.json"
    res = bench.main(["--quick", "--data", "offline", "--quadrants", "2", "--runs", str(tmp_path / "runs"),
                      "--out", str(out)], log=lambda s: None)
    saved = json.loads(out.read_text())
    rows = saved["results"]["2"]
    assert set(rows) == {"baseline", "gsnn", "cvae", "hybrid"} and res["results"]["2"].keys() == rows.keys()
    for name, r in rows.items():
        assert np.isfinite(r["test_cll"]) and r["epochs"] >= 1
        assert r["test_cll"] <= r["test_nelbo"] + 6 * r["test_cll_se"] + 1e-6, name
    assert rows["baseline"]["test_cll"] == pytest.approx(rows["baseline"]["test_nelbo"], rel=1e-9)
    with pytest.raises(SystemExit):
        bench.main(["--quadrants", "4", "--quick"], log=lambda s: None)


def test_extreme_images_give_finite_losses_and_gradients():
    """All-black and all-white images, float32 and float64: finite loss, gradients and log-weights."""
    for dtype in ("float32", "float64"):
        for objective in ("cvae", "gsnn", "hybrid"):
            m = small(objective=objective, dtype=dtype, activation="relu")
            for x in (np.zeros((3, 16), np.uint8), np.ones((3, 16), np.uint8)):
                loss, grads = m.loss(x, 0)
                assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
                assert np.all(np.isfinite(m.log_weights(x, 5, 0)))
