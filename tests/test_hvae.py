"""Hierarchical VAEs (hvae, lvae): whole-model gradient checks in float64 for 2 and 3 layers, the
precision-weighted merge and its backward, batch normalisation, KL warm-up, log weights, active
units, the model contract.

Gradient checks hold the noise fixed (the same seed gives the same eps), so the loss is a
deterministic function of every parameter; small models let every entry be checked.
Tolerance: relative error 2e-6 with central differences of step 1e-5 in float64 (measured:
<= 9e-7 on every model below; a wrong term gives 1e-2 and more).
"""
import json

import numpy as np
import pytest

from nplvm.checks import DataError
from nplvm.gradcheck import assert_model_grads, check_grad, rel_error
from nplvm.models import build, get_class
from nplvm.models.hvae import (HVAE, LVAE, active_units, kl_per_layer, precision_weighted_merge,
                               precision_weighted_merge_backward)
from nplvm.models.vae import VAE
from nplvm.nn import BatchNorm
from nplvm.objectives import importance_sampled_log_px
from nplvm.optim import Adam
from nplvm.train import fit, load_checkpoint

TOL, STEP = 2e-6, 1e-5


def small(cls, latent=(3, 2), dtype="float64", **kw):
    cfg = dict(x_dim=12, hidden=(7, 5), latent=latent, activation="tanh", dtype=dtype, seed=3)
    cfg.update(kw)
    return cls(**cfg)


def binary(n=6, d=12, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float64)


# -- whole-model gradient checks: every entry of every parameter ---------------------------------

@pytest.mark.parametrize("cls", [HVAE, LVAE])
@pytest.mark.parametrize("latent", [(3, 2), (4, 3, 2)])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_grad_every_entry(cls, latent, batch_norm):
    m = small(cls, latent, batch_norm=batch_norm)
    m.kl_weight = 0.7                     # the warm-up weight enters every KL gradient
    assert_model_grads(m, binary(), tol=TOL, eps=STEP, seed=11, max_entries_per_param=None)


@pytest.mark.parametrize("cls, activation", [(HVAE, "tanh"), (LVAE, "tanh"), (LVAE, "relu")])
def test_grad_five_layers_subset(cls, activation):
    """Issue 17's deepest shape (5 layers), a seeded subset of entries.  Tolerance 1e-5 here:
    entries of size ~1e-4 meet the differences' absolute error ~2e-10 (measured max 4e-6).
    (A 5-layer bottom-up HVAE with ReLU and He init starts with variances that grow layer by
    layer to a loss of 1e8: the notes' "hierarchically increasing variance"; train it with tanh.)"""
    m = cls(x_dim=20, hidden=(9, 8), latent=(6, 5, 4, 3, 2), activation=activation, dtype="float64", seed=1)
    assert_model_grads(m, binary(7, 20, seed=4), tol=1e-5, eps=STEP, seed=12, max_entries_per_param=12)


# -- the precision-weighted merge ----------------------------------------------------------------

def test_merge_is_the_product_of_two_gaussians():
    """N(z|mu^, s^2) N(z|mu_p, s_p^2) is proportional to N(z|mu_q, s_q^2): the log of the product
    minus log N(z|mu_q, s_q^2) does not depend on z (checked on a grid of z)."""
    rng = np.random.default_rng(0)
    mu_hat, lv_hat, mu_p, lv_p = rng.normal(size=(4, 5))
    mu_q, lv_q, w = precision_weighted_merge(mu_hat, lv_hat, mu_p, lv_p)

    def log_n(z, mu, lv):
        return -0.5 * (np.log(2 * np.pi) + lv + (z - mu) ** 2 / np.exp(lv))

    z = np.linspace(-4, 4, 9)[:, None]
    gap = log_n(z, mu_hat, lv_hat) + log_n(z, mu_p, lv_p) - log_n(z, mu_q, lv_q)
    np.testing.assert_allclose(gap - gap[0], 0, atol=1e-12)
    # the notes' formula with precisions, written out
    p_hat, p_p = np.exp(-lv_hat), np.exp(-lv_p)
    np.testing.assert_allclose(np.exp(lv_q), 1 / (p_hat + p_p), rtol=1e-13)
    np.testing.assert_allclose(mu_q, (mu_hat * p_hat + mu_p * p_p) / (p_hat + p_p), rtol=1e-12)
    np.testing.assert_allclose(w, p_hat / (p_hat + p_p), rtol=1e-13)


def test_merge_extreme_log_variances_stay_finite():
    lv = np.array([-800.0, 800.0, -800.0, 0.0])
    lvp = np.array([800.0, -800.0, -800.0, 700.0])
    mu_q, lv_q, w = precision_weighted_merge(np.full(4, 1.0), lv, np.full(4, -1.0), lvp)
    assert np.all(np.isfinite(mu_q)) and np.all(np.isfinite(lv_q)) and np.all(np.isfinite(w))
    assert mu_q[0] == 1.0 and mu_q[1] == -1.0          # the far more precise estimate wins
    assert lv_q[2] == pytest.approx(-800 - np.log(2))  # two equal precisions add


def test_merge_backward_finite_differences():
    rng = np.random.default_rng(1)
    mu_hat, lv_hat, mu_p, lv_p = (rng.normal(size=(3, 4)) for _ in range(4))
    a, b = rng.normal(size=(2, 3, 4))                   # a loss sum(a mu_q + b logvar_q)

    def f():
        mu_q, lv_q, _ = precision_weighted_merge(mu_hat, lv_hat, mu_p, lv_p)
        return float(np.sum(a * mu_q + b * lv_q))

    _, _, w = precision_weighted_merge(mu_hat, lv_hat, mu_p, lv_p)
    grads = precision_weighted_merge_backward(a, b, mu_hat, mu_p, w)
    for x, g in zip((mu_hat, lv_hat, mu_p, lv_p), grads):
        assert check_grad(f, x, g) < 1e-8


# -- batch normalisation -------------------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_grad(train):
    rng = np.random.default_rng(2)
    bn = BatchNorm(4, dtype=np.float64)
    bn.gamma.value[...] = rng.normal(size=4)
    bn.beta.value[...] = rng.normal(size=4)
    bn.running_mean[...] = rng.normal(size=4)
    bn.running_var[...] = rng.random(4) + 0.5
    x = rng.normal(size=(7, 4)) * 3 + 1
    a = rng.normal(size=(7, 4))

    def f():
        return float(np.sum(a * bn.forward(x, train)[0]))

    bn.zero_grad()
    y, cache = bn.forward(x, train)
    dx = bn.backward(a, cache)
    assert check_grad(f, x, dx, eps=1e-5) < 1e-7           # measured ~1e-9 .. 6e-8
    assert check_grad(f, bn.gamma.value, bn.gamma.grad, eps=1e-5) < 1e-7
    assert check_grad(f, bn.beta.value, bn.beta.grad, eps=1e-5) < 1e-7


def test_batchnorm_statistics():
    rng = np.random.default_rng(3)
    bn = BatchNorm(3, dtype=np.float64, momentum=0.5)
    x = rng.normal(size=(50, 3)) * np.array([1.0, 5.0, 0.1]) + np.array([0.0, -3.0, 7.0])
    y, _ = bn.forward(x, train=True)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(0), x.var(0) / (x.var(0) + bn.eps), rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean, 0.5 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.5 + 0.5 * x.var(0, ddof=1), rtol=1e-12)
    for _ in range(60):
        bn.forward(x, train=True)
    # evaluation: running statistics, one row at a time gives the same rows as the whole batch
    y_eval, _ = bn.forward(x, train=False)
    np.testing.assert_allclose(y_eval, y * np.sqrt((x.var(0) + bn.eps) / (x.var(0, ddof=1) + bn.eps)), rtol=1e-9)
    np.testing.assert_array_equal(bn.forward(x[3:4], train=False)[0], y_eval[3:4])
    with pytest.raises(DataError, match="at least 2 rows"):
        bn.forward(x[:1], train=True)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=0.0)


def test_running_statistics_are_params_with_zero_grad_and_survive_a_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((80, 12)) < 0.4).astype(np.uint8)
    m = small(LVAE, batch_norm=True, dtype="float32")
    running = [k for k in m.params if "running_" in k]
    assert running and all(k.endswith(("running_mean", "running_var")) for k in running)
    before = {k: m.params[k].copy() for k in running}
    fit(m, Adam(1e-2), x, epochs=2, batch_size=20, out_dir=tmp_path, progress=False, log=None)
    assert all(not np.array_equal(before[k], m.params[k]) for k in running)   # they moved ...
    m2, _, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    np.testing.assert_array_equal(m2.log_weights(x[:5], 3, 1), m.log_weights(x[:5], 3, 1))
    _, grads = m.loss(x[:10], 0)                      # (a training step: moves them again)
    assert all(not grads[k].any() for k in running)                            # ... not by Adam


# -- what equals what ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [HVAE, LVAE])
def test_one_layer_is_the_vae(cls):
    """With latent = (L,) both hierarchies are the VAE (analytic KL): same loss, same gradients,
    same log weights, once the VAE's weights are copied in."""
    vae = VAE(x_dim=12, hidden=[7, 5], latent=3, activation="tanh", dtype="float64", seed=0)
    h = small(cls, latent=(3,))
    names = {"up.0.layers.0.": "enc.layers.0.", "up.0.layers.1.": "enc.layers.1.",
             "head.0.": "enc.layers.2.", "dec.": "dec."}
    pairs = {}
    for k in h.params:
        prefix = next(p for p in names if k.startswith(p))
        pairs[k] = names[prefix] + k[len(prefix):]
        h.params[k][...] = vae.params[pairs[k]]
    x = binary()
    lv, gv = vae.loss(x, 5)
    gv = {k: v.copy() for k, v in gv.items()}
    lh, gh = h.loss(x, 5)
    assert lh == pytest.approx(lv, rel=1e-13)
    for k, v in gh.items():
        np.testing.assert_allclose(v, gv[pairs[k]], rtol=1e-10, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(h.log_weights(x, 4, 2), vae.log_weights(x, 4, 2), rtol=1e-12)


@pytest.mark.parametrize("cls", [HVAE, LVAE])
def test_loss_and_log_weights_agree_in_expectation(cls):
    """E[-log w(x, z)] with z ~ q is the NELBO; so is E[loss] (closed-form KLs where it has them)."""
    m = small(cls, latent=(4, 3, 2))
    x = binary(4)
    S = 600
    lw = -m.log_weights(x, S, 7).mean(axis=1)                          # (S,) per-draw batch means
    losses = np.array([m.loss(x, s, grad=False)[0] for s in range(S)])
    se = np.sqrt(lw.var() / S + losses.var() / S)
    assert abs(lw.mean() - losses.mean()) < 4 * se
    assert losses.var() < lw.var()                    # closed-form KL terms remove sampling noise


@pytest.mark.parametrize("cls", [HVAE, LVAE])
def test_kl_per_layer_adds_up_to_the_kl_part_of_the_loss(cls):
    m = small(cls, latent=(4, 3, 2))
    x = binary()
    kl = m.kl_per_layer(x, 3)
    assert kl.shape == (3,) and np.all(np.isfinite(kl))
    assert kl[-1] >= 0                                              # a closed-form KL
    if cls is LVAE:
        assert np.all(kl >= 0)                                      # all closed form
    # the same draw: loss = reconstruction + sum of layers
    m.kl_weight = 0.0
    rec = m.loss(x, 3, grad=False)[0]
    m.kl_weight = 1.0
    assert m.loss(x, 3, grad=False)[0] == pytest.approx(rec + kl.sum(), rel=1e-12)
    np.testing.assert_allclose(kl_per_layer(m, x, rng=3), kl, rtol=1e-12)


def test_log_weights_chunks_and_importance_sampling():
    m = small(LVAE, latent=(4, 3, 2))
    x = binary(5)
    g = np.random.default_rng(3)
    chunked = np.concatenate([m.log_weights(x, 2, g), m.log_weights(x, 3, g)])
    np.testing.assert_allclose(chunked, m.log_weights(x, 5, 3), rtol=1e-13)
    assert m.log_weights(x.astype(np.float32), 2, 0).dtype == np.float64
    log_px = importance_sampled_log_px(m, x, K=400, batch=5, rng=0)
    assert np.all(log_px >= m.log_weights(x, 400, 1).mean(axis=0) - 0.05)   # IS >= ELBO


# -- warm-up, active units ------------------------------------------------------------------------

def test_warmup_schedule_and_fit_hook():
    m = small(HVAE, warmup=4, dtype="float32")
    assert m.kl_weight == 1.0                                    # the ELBO until a schedule sets it
    assert [m.set_epoch(e) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert small(HVAE).set_epoch(0) == 1.0                       # no warm-up: the ELBO
    seen = []
    x = (np.random.default_rng(0).random((40, 12)) < 0.4).astype(np.uint8)
    fit(m, Adam(1e-3), x, epochs=3, batch_size=20, progress=False, log=None,
        eval_fn=lambda model, epoch: seen.append(model.kl_weight))
    assert seen == [0.0, 0.25, 0.5]                              # set before each epoch
    x = binary()
    m.kl_weight = 0.0
    l0 = m.loss(x, 1, grad=False)[0]
    m.kl_weight = 1.0
    assert m.loss(x, 1, grad=False)[0] > l0                      # the KL terms add on top


def test_active_units():
    m = small(LVAE, latent=(4, 3))
    x = binary(40, seed=5)
    # make unit 1 of the top layer ignore x: its head row for mu has zero weights
    m.params["head.1.W"][:, 1] = 0.0
    res = active_units(m, x, S=4, rng=0, threshold=1e-12)
    assert res["sizes"] == [4, 3]
    assert res["variances"][1][1] == pytest.approx(0.0, abs=1e-20)
    assert res["counts"][1] == 2 and 0 <= res["counts"][0] <= 4
    vae = VAE(x_dim=12, hidden=[7], latent=5, dtype="float64", seed=0)
    r = active_units(vae, x, threshold=0.0)
    assert r["sizes"] == [5] and r["counts"] == [5]
    assert kl_per_layer(vae, x).shape == (1,)
    with pytest.raises(DataError, match="at least 2 rows"):
        active_units(m, x[:1])


# -- the model contract --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["hvae", "lvae"])
def test_contract(kind):
    cls = get_class(kind)
    assert cls.kind == kind
    m = cls(x_dim=12, hidden=(8,), latent=(4, 2), batch_norm=True, warmup=3, seed=0)
    assert json.loads(json.dumps(m.config)) == m.config
    x = binary().astype(np.uint8)
    m2 = build(kind, m.config)
    assert m2.loss(x, 1)[0] == m.loss(x, 1)[0]
    l1, g1 = m.loss(x, 1)
    g1c = {k: v.copy() for k, v in g1.items()}
    m.loss(x, 2)                                                  # a second call ...
    for k in g1:                                                  # ... leaves the first's arrays alone
        np.testing.assert_array_equal(g1[k], g1c[k])
    assert set(g1) == set(m.params) and all(g.dtype == np.float32 for g in g1.values())
    assert m.loss(x, 1, grad=False)[1] is None
    assert m.log_weights(x, 3, 0).shape == (3, 6) and m.log_weights(x, 3, 0).dtype == np.float32
    s = m.sample(5, 0)
    assert s.shape == (5, 12) and np.all((s >= 0) & (s <= 1))
    assert set(np.unique(m.sample(5, 0, binary=True))) <= {0, 1}
    assert [a.shape for a in m.posterior_means(x, 2, 0)] == [(6, 4), (6, 2)]


def test_training_reduces_the_loss():
    rng = np.random.default_rng(0)
    protos = rng.random((3, 30)) < 0.5
    x = protos[rng.integers(0, 3, 60)].astype(np.float32)
    for cls in (HVAE, LVAE):
        m = cls(x_dim=30, hidden=(32,), latent=(4, 2), seed=0)
        opt = Adam(1e-2)
        first = m.loss(x, 0)[0]
        for step in range(150):
            loss, grads = m.loss(x, step)
            opt.step(m.params, grads)
        assert loss < first - 5.0, cls.__name__


@pytest.mark.parametrize("kw, match", [
    (dict(latent=()), "latent"), (dict(latent=(4, 0)), "latent"), (dict(latent="a,b"), "latent"),
    (dict(hidden=()), "hidden"), (dict(activation="swish"), "activation"),
    (dict(warmup=-1), "warmup"), (dict(warmup=1.5), "warmup"), (dict(batch_norm="yes"), "batch_norm"),
    (dict(x_dim=0), "x_dim"), (dict(dtype="float16"), "float"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        small(LVAE, **kw)


def test_bad_data():
    m = small(HVAE)
    with pytest.raises(DataError, match="binary"):
        m.loss(np.full((3, 12), 0.5), 0)
    with pytest.raises(DataError, match="shape"):
        m.loss(np.zeros((3, 11)), 0)
    with pytest.raises(DataError, match="eps"):
        m.decode_noise(np.zeros((2, 4)))
    assert rel_error(np.zeros(1), np.zeros(1)) == 0.0


# -- the benchmark script, tiny settings ---------------------------------------------------------

def test_bench_quick_and_table(tmp_path):
    from nplvm.bench import hvae as bench
    lines = []
    out = tmp_path / "r.json"
    res = bench.main(["--quick", "--models", "vae,hvae2,lvae2+bn+wu", "--out", str(out)], log=lines.append)
    assert [r["model"] for r in res["models"]] == ["vae", "hvae2", "lvae2+bn+wu"]
    for r in res["models"]:
        assert r["epochs"] == 2 and np.isfinite(r["test_nll_is"]) and len(r["test_log_px"]) == r["n_test"]
        assert len(r["active_units"]) == len(r["layer_sizes"]) == len(r["kl_per_layer_test"])
    assert res["models"][2]["kl_weight"] == [0.0, 1.0]                # warm-up over 1 epoch in --quick
    assert json.loads(out.read_text())["models"][1]["layer_sizes"] == [64, 32]
    text = "\n".join(lines)
    assert "anchor: Burda" in text and "lvae2+bn+wu" in text
    lines.clear()
    bench.main(["--table", str(out)], log=lines.append)
    assert sum(line.startswith(("vae ", "hvae2 ", "lvae2+bn+wu ")) for line in lines) == 3
    with pytest.raises(ValueError, match="model name"):
        bench.main(["--quick", "--models", "lvae9"])
