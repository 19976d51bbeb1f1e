"""GMVAE: the whole-model gradient, the exact sum over y against a loop, the unbiasedness of the
score-function estimator, importance sampling against quadrature, Hungarian accuracy, bad input."""
import math

import numpy as np
import pytest

from nplvm.checks import DataError
from nplvm.gradcheck import assert_model_grads
from nplvm.models import build, get_class
from nplvm.models.gmvae import GMVAE, cluster_accuracy


def tiny(seed=1, K=3, L=2, D=12, activation="tanh"):
    return GMVAE(x_dim=D, n_components=K, latent=L, hidden=[7], activation=activation,
                 prior_spread=1.0, seed=seed, dtype="float64")


def binary(n, d, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float64)


def test_registry_and_config_roundtrip():
    m = tiny()
    assert get_class("gmvae") is GMVAE and m.kind == "gmvae"
    m2 = build("gmvae", m.config)
    for k, v in m.params.items():
        np.testing.assert_array_equal(v, m2.params[k])
    assert set(m.params) >= {"prior_mu", "prior_logvar"}


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_whole_model_gradient_check(beta):
    m = tiny(activation="tanh")
    m.beta = beta
    x = binary(5, 12)
    report = assert_model_grads(m, x, tol=1e-6, seed=3, eps=1e-5, max_entries_per_param=None)
    assert len(report) == len(m.params)          # every parameter, every entry


def reference_elbo_loop(m, x, eps):
    """-ELBO per example with a Python loop over y, straight from the equation, no kernels:

    ELBO = sum_y q(y|x) [ log p(x|z_y) - KL(q(z|x,y) || p(z|y)) ] + sum_y q(y|x) (log p(y) - log q(y|x))
    """
    K, L = m.n_components, m.latent
    h, _ = m.trunk.forward(x)
    a, _ = m.y_head.forward(h)
    q_y = np.exp(a - a.max(1, keepdims=True))
    q_y /= q_y.sum(1, keepdims=True)
    elbo = np.zeros(len(x))
    for y in range(K):
        onehot = np.zeros((len(x), K))
        onehot[:, y] = 1.0
        out, _ = m.z_head.forward(np.concatenate([h, onehot], 1))
        mu, logvar = out[:, :L], out[:, L:]
        z = mu + np.exp(logvar / 2) * eps[y]
        logits, _ = m.decoder.forward(z)
        p = 1 / (1 + np.exp(-logits))
        log_px = (x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1)
        mp, lvp = m.prior_mu.value[y], m.prior_logvar.value[y]
        kl = 0.5 * (lvp - logvar + (np.exp(logvar) + (mu - mp) ** 2) / np.exp(lvp) - 1).sum(1)
        elbo += q_y[:, y] * (log_px - kl + math.log(1 / K) - np.log(q_y[:, y]))
    return elbo


def test_exact_sum_equals_loop_over_y():
    m = tiny(K=4, L=3)
    x = binary(6, 12)
    eps = np.random.default_rng(9).standard_normal((4, 6, 3))
    ref = reference_elbo_loop(m, x, eps)
    loss, _ = m.loss(x, None, eps=eps)
    np.testing.assert_allclose(loss, -ref.mean(), rtol=1e-12)
    terms = m.elbo_terms(x, None, eps=eps)
    np.testing.assert_allclose(terms["elbo"], ref, rtol=1e-12)
    np.testing.assert_allclose(terms["pi"].sum(1), 1.0)
    assert terms["kl_z"].shape == (6, 4) and np.all(terms["kl_z"] >= 0) and np.all(terms["kl_y"] >= -1e-12)


def test_loss_uses_rng_for_noise_only():
    m = tiny()
    x = binary(4, 12)
    assert m.loss(x, 5)[0] == m.loss(x, 5)[0]
    assert m.loss(x, 5)[0] != m.loss(x, 6)[0]


def test_score_function_estimator_is_unbiased_with_larger_variance():
    """E_y[score-function gradient] = exact-sum gradient, for the same z noise eps.

    With eps fixed, the exact-sum gradient is a deterministic target; M draws of y ~ q(y|x) give
    a mean and a standard error per coordinate.  Under unbiasedness each z = (mean - exact) / se
    is ~N(0, 1), so with P coordinates max |z| stays below 5.5 (Bonferroni: P * P(|N(0,1)| > 5.5)
    < 1e-4 for P < 3000).  The statistic has power: against another target (the exact gradient
    at different noise) it exceeds 5.5.  Finally, the SF gradient for the q(y|x) logits has a variance
    far above the exact-sum gradient's (which, with eps fixed, has none; with eps drawn, only z's).
    """
    m = tiny(K=3, L=2)
    x = binary(4, 12)
    eps = np.random.default_rng(5).standard_normal((3, 4, 2))
    _, exact = m.loss(x, None, eps=eps)
    M, names, r = 2000, list(exact), np.random.default_rng(7)
    draws = {k: np.empty((M,) + exact[k].shape) for k in names}
    for i in range(M):
        _, g = m.score_function_loss(x, r, eps=eps)
        for k in names:
            draws[k][i] = g[k]
    P = sum(v.size for v in exact.values())
    assert P < 3000
    z_max, biased_z_max = 0.0, 0.0
    for k in names:
        mean = draws[k].mean(0)
        se = draws[k].std(0, ddof=1) / math.sqrt(M)
        ok = se > 1e-12
        assert np.allclose(mean[~ok], exact[k][~ok], atol=1e-10)       # coordinates y cannot move
        z_max = max(z_max, float(np.abs((mean - exact[k])[ok] / se[ok]).max(initial=0.0)))
    assert z_max < 5.5, f"max |z| = {z_max:.2f}: the score-function estimator looks biased"

    # power: the same statistic against a different target (the exact gradient at other noise)
    _, other = m.loss(x, None, eps=np.random.default_rng(6).standard_normal((3, 4, 2)))
    for k in names:
        se = draws[k].std(0, ddof=1) / math.sqrt(M)
        ok = se > 1e-12
        biased_z_max = max(biased_z_max, float(np.abs((draws[k].mean(0) - other[k])[ok] / se[ok]).max(initial=0.0)))
    assert biased_z_max > 5.5

    # variance: the q(y|x) head's gradient, SF vs exact sum, eps drawn afresh each time
    sf = np.array([m.score_function_loss(x, s)[1]["y_head.layers.0.W"].ravel() for s in range(300)])
    ex = np.array([m.loss(x, s)[1]["y_head.layers.0.W"].ravel() for s in range(300)])
    assert sf.var(0).sum() > 10 * ex.var(0).sum()


def test_log_weights_sum_y_exactly_against_quadrature():
    """With z 1-D, p(x) = sum_y p(y) int p(x|z) p(z|y) dz by quadrature on a fine grid; the IS
    estimate log mean_s w_s from ``log_weights`` (y summed inside each weight) converges to it."""
    m = GMVAE(x_dim=8, n_components=3, latent=1, hidden=[6], activation="tanh", prior_spread=0.5,
              seed=2, dtype="float64")
    x = binary(3, 8, seed=4)
    grid = np.linspace(-12, 12, 20001)[:, None]
    logits, _ = m.decoder.forward(grid)
    log_px_z = np.stack([-(np.logaddexp(0, logits) - xi * logits).sum(1) for xi in x])   # (N, G)
    log_pz_y = np.stack([-0.5 * (math.log(2 * math.pi) + lv + (grid[:, 0] - mu) ** 2 / math.exp(lv))
                         for mu, lv in zip(m.prior_mu.value[:, 0], m.prior_logvar.value[:, 0])])
    dz = grid[1, 0] - grid[0, 0]
    joint = log_px_z[:, None, :] + log_pz_y[None] - math.log(3)                # (N, K, G)
    exact = np.log(np.exp(joint).sum(axis=(1, 2)) * dz)
    lw = m.log_weights(x, 100000, rng=0)
    est = np.log(np.exp(lw).mean(0))
    np.testing.assert_allclose(est, exact, atol=0.02)
    elbo = np.mean([m.elbo(x, s) for s in range(300)], axis=0)   # E_eps[ELBO] <= log p(x)
    assert np.all(elbo < exact)


def test_log_weights_do_not_depend_on_chunking():
    m = tiny()
    x = binary(4, 12)
    a = m.log_weights(x, 7, rng=3, max_rows=12)             # one sample per decoder pass
    b = m.log_weights(x, 7, rng=3)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert a.shape == (7, 4)


def test_elbo_is_below_is_estimate_on_average():
    m = tiny()
    x = binary(6, 12)
    elbo = np.mean([m.elbo(x, s) for s in range(200)], axis=0)
    lw = m.log_weights(x, 2000, rng=1)
    assert np.all(elbo <= np.log(np.exp(lw).mean(0)) + 0.05)


def test_cluster_accuracy_on_planted_permutation():
    r = np.random.default_rng(0)
    labels = r.integers(0, 10, size=1000)
    perm = r.permutation(10)
    assert cluster_accuracy(labels, perm[labels]) == 1.0
    noisy = perm[labels].copy()
    noisy[:100] = (noisy[:100] + 1) % 10                      # 100 wrong (first 100 shifted)
    assert cluster_accuracy(labels, noisy) == pytest.approx(0.9)
    # more clusters than labels: one-to-one, unmatched clusters count as errors
    assert cluster_accuracy(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])) == 0.75


def test_bad_input_errors():
    m = tiny()
    with pytest.raises(DataError, match=r"expected x of shape \(N, 12\)"):
        m.loss(np.zeros((3, 5)), 0)
    with pytest.raises(DataError, match="binary"):
        m.loss(np.full((2, 12), 0.5), 0)
    with pytest.raises(DataError, match="NaN"):
        m.loss(np.full((2, 12), np.nan), 0)
    with pytest.raises(DataError, match="at least one example"):
        m.loss(np.zeros((0, 12)), 0)
    with pytest.raises(DataError, match="eps"):
        m.loss(binary(2, 12), None, eps=np.zeros((3, 2, 5)))
    with pytest.raises(DataError, match="expected y"):
        m.score_function_loss(binary(2, 12), 0, y=np.array([0, 7]))
    with pytest.raises(ValueError, match="n_components"):
        GMVAE(n_components=1)
    with pytest.raises(ValueError, match="seed is required"):
        m.loss(binary(2, 12), None)
    with pytest.raises(DataError, match="same shape"):
        cluster_accuracy(np.array([0, 1]), np.array([0]))
    with pytest.raises(DataError, match="non-negative integers"):
        cluster_accuracy(np.array([0.5, 1.0]), np.array([0, 1]))


def test_float32_training_step_lowers_the_loss():
    from nplvm.optim import Adam
    m = GMVAE(x_dim=12, n_components=3, latent=2, hidden=[16], seed=0)
    x = binary(64, 12).astype(np.uint8)
    opt = Adam(1e-2)
    first = m.loss(x, 0)[0]
    for step in range(60):
        loss, g = m.loss(x, step)
        assert all(v.dtype == np.float32 for v in g.values())
        opt.step(m.params, g)
    assert m.loss(x, 0)[0] < first - 0.5


# -- the VaDE-style initialisation: pretraining loss, prior init, y-head cross-entropy ----------

def test_pretrain_loss_gradient_check_and_equation():
    """The plain-VAE pretraining loss (y input off, p(z) = N(0, I)): every entry of every
    parameter against central differences, and its value against the equation written out."""
    from nplvm.gradcheck import check_grad
    m = tiny(K=3, L=2)
    x = binary(5, 12)
    eps = np.random.default_rng(4).standard_normal((5, 2))
    loss, grads = m.pretrain_loss(x, None, eps=eps, beta=0.3)
    for name, p in m.params.items():
        err = check_grad(lambda: m.pretrain_loss(x, None, eps=eps, beta=0.3)[0], p, grads[name], eps=1e-5)
        assert err < 1e-6, f"{name}: relative error {err:.1e}"
    for name in ("prior_mu", "prior_logvar", "y_head.layers.0.W", "y_head.layers.0.b"):
        assert np.all(grads[name] == 0.0)                      # untouched by the pretraining
    h, _ = m.trunk.forward(x)                                  # the equation, by hand
    out, _ = m.z_head.forward(np.concatenate([h, np.zeros((5, 3))], 1))
    mu, logvar = out[:, :2], out[:, 2:]
    logits, _ = m.decoder.forward(mu + np.exp(logvar / 2) * eps)
    nll = (np.logaddexp(0, logits) - x * logits).sum(1)
    kl = 0.5 * (np.exp(logvar) + mu ** 2 - 1 - logvar).sum(1)
    np.testing.assert_allclose(loss, (nll + 0.3 * kl).mean(), rtol=1e-12)
    np.testing.assert_allclose(m.pretrain_codes(x), mu, rtol=1e-12)


def test_y_head_loss_gradient_check_and_value():
    from nplvm.gradcheck import check_grad
    m = tiny(K=4, L=2)
    x = binary(6, 12)
    r = np.random.default_rng(2).dirichlet(np.ones(4), size=6)          # soft targets (N, K)
    loss, grads = m.y_head_loss(x, r)
    log_pi = np.log(m.responsibilities(x))
    np.testing.assert_allclose(loss, -(r * log_pi).sum(1).mean(), rtol=1e-12)
    for name, p in m.params.items():
        err = check_grad(lambda: m.y_head_loss(x, r)[0], p, grads[name], eps=1e-5)
        assert err < 1e-6, f"{name}: relative error {err:.1e}"
    assert np.all(grads["decoder.layers.0.W"] == 0.0) and np.all(grads["prior_mu"] == 0.0)
    with pytest.raises(DataError, match="simplex"):
        m.y_head_loss(x, np.full((6, 4), 0.5))
    with pytest.raises(DataError, match="targets"):
        m.y_head_loss(x, r[:, :3])


def test_init_prior_makes_q_z_independent_of_y():
    """After init_prior: p(z|y) = the given Gaussians, and q(z|x,y) = q(z|x, 0) for every y, so the
    per-component KL(q(z|x) || p(z|y)) ranks the components as the mixture does."""
    m = tiny(K=3, L=2)
    x = binary(4, 12)
    means = np.array([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]])
    var = np.array([[1.0, 0.5], [2.0, 1.0], [0.3, 0.3]])
    m.init_prior(means, var)
    np.testing.assert_allclose(m.prior_mu.value, means)
    np.testing.assert_allclose(np.exp(m.prior_logvar.value), var)
    codes = m.pretrain_codes(x)
    h, _ = m.trunk.forward(x)
    for k in range(3):
        out, _ = m.z_head.forward(np.concatenate([h, np.eye(3)[[k] * 4]], 1))
        np.testing.assert_allclose(out[:, :2], codes, rtol=1e-12)
    with pytest.raises(DataError, match="variances > 0"):
        m.init_prior(means, -var)
    with pytest.raises(DataError, match="means"):
        m.init_prior(means[:2], var)


def test_vade_init_recovers_planted_clusters():
    """The whole VaDE init on data with two well-separated binary prototypes: without labels,
    q(y|x) ends up separating them (accuracy 1 under the best matching)."""
    from nplvm.clustering import gmvae_vade_init as vade_init
    g = np.random.default_rng(0)
    protos = np.zeros((2, 20))
    protos[0, :10] = protos[1, 10:] = 1
    labels = np.repeat([0, 1], 100)
    flip = g.random((200, 20)) < 0.05
    x = np.abs(protos[labels] - flip).astype(np.float64)
    m = GMVAE(x_dim=20, n_components=2, latent=2, hidden=[16], activation="tanh", seed=0)
    info = vade_init(m, x, pretrain_epochs=15, pretrain_beta=0.1, yhead_epochs=15, gmm_inits=3,
                     lr=1e-2, batch_size=50, seed=0, log=None)
    assert info["pretrain_nelbo"][-1] < info["pretrain_nelbo"][0]
    assert info["yhead_ce"][-1] < info["yhead_ce"][0]
    assert cluster_accuracy(labels, info["gmm_assign"]) == 1.0
    assert cluster_accuracy(labels, m.predict(x)) == 1.0
