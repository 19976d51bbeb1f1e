"""Factor analysis and PPCA: EM, the closed forms against brute force, the ELBO identities, and
the amortized linear-Gaussian q (all in float64, small shapes)."""
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from nplvm.checks import DataError
from nplvm.gradcheck import assert_model_grads
from nplvm.models.fa import (FactorAnalysis, PPCA, fa_posterior, gaussian_kl, ppca_closed_form)
from nplvm.models.linear_gaussian_q import LinearGaussianQ, optimal_diagonal_variances

D, L, N = 8, 3, 400



def make_fa_data(n=N, d=D, l=L, seed=0, mean=1.0):
    """Data drawn from a factor-analysis model with known W, psi."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, l))
    psi = rng.uniform(0.1, 1.0, d)
    X = rng.standard_normal((n, l)) @ W.T + mean + rng.standard_normal((n, d)) * np.sqrt(psi)
    return X, W, psi


@pytest.fixture(scope="module")
def data():
    return make_fa_data()[0]


@pytest.fixture(scope="module")
def fitted(data):
    return FactorAnalysis(L, tol=1e-9, max_iter=2000, seed=0).fit(data)


def random_q(rng, n, l):
    """A deliberately wrong Gaussian q per example: random means, random full covariances."""
    m = rng.standard_normal((n, l))
    B = rng.standard_normal((n, l, l)) * 0.5
    return m, B @ np.swapaxes(B, 1, 2) + 0.1 * np.eye(l)


# ---------------------------------------------------------------------------------------------
# EM
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, stats", [(FactorAnalysis, "covariance"), (FactorAnalysis, "data"),
                                        (PPCA, "covariance"), (PPCA, "data")])
def test_em_loglik_never_decreases(data, cls, stats):
    model = cls(L, tol=0.0, max_iter=150, suff_stats=stats, seed=3).fit(data)
    ll = np.array(model.loglik_)
    assert len(ll) == model.n_iter_ + 1 >= 50      # tol=0 stops only at a round-off-level step
    assert np.all(np.diff(ll) >= -1e-10 * np.abs(ll[1:])), np.diff(ll).min()
    assert ll[-1] > ll[0] + 1.0                  # and it actually climbs from the random start


def test_covariance_and_data_paths_agree(data):
    a = FactorAnalysis(L, max_iter=40, tol=0.0, suff_stats="covariance").fit(data)
    b = FactorAnalysis(L, max_iter=40, tol=0.0, suff_stats="data").fit(data)
    np.testing.assert_allclose(a.loglik_, b.loglik_, rtol=1e-10)
    np.testing.assert_allclose(a.components_, b.components_, rtol=1e-7, atol=1e-9)


def test_final_loglik_is_training_score_and_converged(fitted, data):
    assert fitted.converged_
    assert fitted.loglik_[-1] == pytest.approx(fitted.score(data), abs=1e-10)
    assert len(fitted.loglik_) == fitted.n_iter_ + 1


def test_marginal_loglik_matches_scipy(fitted, data):
    C = fitted.params["W"] @ fitted.params["W"].T + np.diag(fitted.psi)
    ref = multivariate_normal(fitted.mean_, C).logpdf(data[:50])
    np.testing.assert_allclose(fitted.score_samples(data[:50]), ref, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(fitted.get_covariance(), C, rtol=1e-12)
    np.testing.assert_allclose(fitted.get_precision() @ C, np.eye(D), atol=1e-10)


def test_posterior_matches_brute_force_gaussian_conditioning(fitted, data):
    """Condition the joint N([z; x]; [0; mu], [[I, W^T], [W, W W^T + Psi]]) on x directly."""
    W, mu, psi = fitted.params["W"], fitted.mean_, fitted.psi
    C = W @ W.T + np.diag(psi)
    K = np.linalg.solve(C, W).T                              # Cov(z, x) Cov(x)^-1 = W^T C^-1
    mean_ref = (data[:20] - mu) @ K.T
    cov_ref = np.eye(L) - K @ W
    mean, Sigma = fitted.posterior(data[:20])
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Sigma, cov_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fitted.transform(data[:20]), mean_ref, rtol=1e-10, atol=1e-12)


def test_loglik_at_least_sklearn(data):
    """At convergence our mean log-likelihood is no lower than scikit-learn's (tolerance 1e-6
    nats per example), and the model covariances W W^T + Psi agree."""
    from sklearn.decomposition import FactorAnalysis as SkFA
    ours = FactorAnalysis(L, tol=1e-10, max_iter=5000).fit(data)
    sk = SkFA(L, tol=1e-8, max_iter=5000, random_state=0).fit(data)
    assert ours.score(data) >= sk.score(data) - 1e-6
    np.testing.assert_allclose(ours.get_covariance(), sk.get_covariance(), atol=1e-3)


def test_recovers_generating_covariance():
    X, W, psi = make_fa_data(n=20000, seed=5)
    model = FactorAnalysis(L, tol=1e-8).fit(X)
    C_true = W @ W.T + np.diag(psi)
    assert np.abs(model.get_covariance() - C_true).max() < 0.15 * np.abs(C_true).max()


def test_sample_moments(fitted):
    x, z = fitted.sample(40000, seed=1, return_latent=True)
    assert x.shape == (40000, D) and z.shape == (40000, L)
    np.testing.assert_allclose(x.mean(0), fitted.mean_, atol=0.05)
    np.testing.assert_allclose(np.cov(x, rowvar=False), fitted.get_covariance(), atol=0.1)
    np.testing.assert_array_equal(fitted.sample(5, seed=7), fitted.sample(5, seed=7))


def test_constant_feature_hits_the_noise_floor():
    X = make_fa_data(n=200)[0]
    X[:, 2] = 0.5                                              # a constant pixel
    model = FactorAnalysis(L, noise_floor=1e-6).fit(X)
    assert model.noise_variance_[2] == pytest.approx(1e-6)
    assert np.all(np.isfinite(model.loglik_)) and np.all(np.diff(model.loglik_) >= -1e-8)


# ---------------------------------------------------------------------------------------------
# PPCA
# ---------------------------------------------------------------------------------------------

def test_ppca_closed_form_agrees_with_em(data):
    em = PPCA(L, tol=1e-13, max_iter=20000).fit(data)
    cf = PPCA(L, method="closed_form").fit(data)
    assert em.score(data) == pytest.approx(cf.score(data), abs=1e-7)
    assert em.sigma2 == pytest.approx(cf.sigma2, rel=1e-5)
    # W is identifiable only up to a rotation: compare W W^T
    np.testing.assert_allclose(em.params["W"] @ em.params["W"].T,
                               cf.params["W"] @ cf.params["W"].T, atol=1e-4)
    assert cf.score(data) >= em.score(data) - 1e-9         # the closed form is the maximum


def test_ppca_closed_form_is_mean_of_discarded_eigenvalues(data):
    S = np.cov(data, rowvar=False, bias=True)
    lam = np.sort(np.linalg.eigvalsh(S))[::-1]
    W, sigma2 = ppca_closed_form(S, L)
    assert sigma2 == pytest.approx(lam[L:].mean(), rel=1e-12)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(W @ W.T))[::-1][:L], lam[:L] - sigma2, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# The model contract: exact -log p(x) and its gradients
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [FactorAnalysis, PPCA])
def test_loss_gradients_finite_differences(data, cls):
    model = cls(L, n_features=D, seed=2)
    model.params["mu"] += 0.7
    noise = "log_psi" if cls is FactorAnalysis else "log_sigma2"
    model.params[noise] += np.random.default_rng(0).normal(0, 0.3, model.params[noise].shape)
    assert_model_grads(model, data[:25], tol=1e-6, max_entries_per_param=None)


def test_loss_is_negative_mean_loglik_and_config_rebuilds(fitted, data):
    loss, _ = fitted.loss(data, np.random.default_rng(0))
    assert loss == pytest.approx(-fitted.score(data), rel=1e-12)
    for model in (fitted, PPCA(2, method="closed_form", n_features=D)):
        clone = type(model)(**model.config)
        assert clone.config == model.config


# ---------------------------------------------------------------------------------------------
# The ELBO, three ways
# ---------------------------------------------------------------------------------------------

def test_elbo_with_exact_posterior_equals_loglik(fitted, data):
    mean, Sigma = fitted.posterior(data[:30])
    e = fitted.elbo(data[:30], mean, Sigma)
    for key in ("joint_plus_entropy", "expected_loglik_minus_kl", "loglik_minus_kl_posterior"):
        np.testing.assert_allclose(e[key], e["log_px"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(e["kl_posterior"], 0.0, atol=1e-10)


def test_elbo_gap_is_kl_to_posterior_and_presentations_agree(fitted, data):
    rng = np.random.default_rng(1)
    x = data[:30]
    m, Sq = random_q(rng, 30, L)
    e = fitted.elbo(x, m, Sq)
    # KL(q || p(z|x)) computed independently, by Gaussian conditioning with D x D matrices
    W, mu, psi = fitted.params["W"], fitted.mean_, fitted.psi
    C = W @ W.T + np.diag(psi)
    K = np.linalg.solve(C, W).T
    post_m, post_S = (x - mu) @ K.T, np.eye(L) - K @ W
    kl_ref = np.array([
        0.5 * (np.trace(np.linalg.solve(post_S, Sq[n])) + (post_m[n] - m[n]) @ np.linalg.solve(post_S, post_m[n] - m[n])
               - L + np.linalg.slogdet(post_S)[1] - np.linalg.slogdet(Sq[n])[1]) for n in range(30)])
    np.testing.assert_allclose(e["gap"], kl_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(e["kl_posterior"], kl_ref, rtol=1e-9, atol=1e-10)
    assert np.all(e["gap"] > 0)
    np.testing.assert_allclose(e["expected_loglik_minus_kl"], e["joint_plus_entropy"], rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(e["loglik_minus_kl_posterior"], e["joint_plus_entropy"], rtol=1e-12, atol=1e-9)
    # a shared (L, L) covariance works too
    e2 = fitted.elbo(x, m, Sq[0])
    np.testing.assert_allclose(e2["gap"], e2["kl_posterior"], rtol=1e-9, atol=1e-10)


def test_closed_form_elbo_matches_monte_carlo(fitted, data):
    """Presentation I by sampling z ~ q: E_q[log p(x, z) - log q(z)], within 5 standard errors."""
    rng = np.random.default_rng(4)
    x = data[:1]
    m, Sq = random_q(rng, 1, L)
    e = fitted.elbo(x, m, Sq)
    z = rng.multivariate_normal(m[0], Sq[0], size=20000)
    W, mu, psi = fitted.params["W"], fitted.mean_, fitted.psi
    log_joint = (multivariate_normal(np.zeros(L), np.eye(L)).logpdf(z)
                 + multivariate_normal(np.zeros(D), np.diag(psi)).logpdf(x[0] - z @ W.T - mu))
    w = log_joint - multivariate_normal(m[0], Sq[0]).logpdf(z)
    assert abs(w.mean() - e["joint_plus_entropy"][0]) < 5 * w.std() / np.sqrt(len(w))


def test_gaussian_kl_zero_for_identical_and_positive_otherwise():
    rng = np.random.default_rng(0)
    m, S = random_q(rng, 4, 3)
    np.testing.assert_allclose(gaussian_kl(m, S, m, S), 0.0, atol=1e-12)
    assert np.all(gaussian_kl(m, S, m + 1.0, S) > 0)


# ---------------------------------------------------------------------------------------------
# The amortized q(z|x) = N(A x + b, diag exp(logvar))
# ---------------------------------------------------------------------------------------------

def test_amortized_q_gradient_check(fitted, data):
    q = LinearGaussianQ.for_model(fitted, n_samples=3, seed=1)
    rng = np.random.default_rng(2)
    q.params["b"] += rng.standard_normal(L)
    q.params["logvar"] += 0.3 * rng.standard_normal(L)
    assert_model_grads(q, data[:20], tol=1e-6, max_entries_per_param=None)


def test_optimal_diagonal_variances_minimise_kl(fitted):
    """For a Gaussian target with precision Lambda the best diagonal q has variances 1/Lambda_ii:
    any perturbation of them raises KL(q || p(z|x)); and they never exceed the marginal Sigma_ii."""
    W, psi = fitted.params["W"], fitted.psi
    v_star = optimal_diagonal_variances(W, psi)
    _, Sigma = fa_posterior(W, psi)
    zero = np.zeros(L)
    kl_star = gaussian_kl(zero, np.diag(v_star), zero, Sigma)
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = v_star * np.exp(0.1 * rng.standard_normal(L))
        assert gaussian_kl(zero, np.diag(v), zero, Sigma) > kl_star
    assert np.all(v_star <= np.diag(Sigma) + 1e-15)
    # the closed-form value of that minimum: 1/2 [sum_i log Lambda_ii - log|Lambda|]
    Lam = np.linalg.inv(Sigma)
    assert kl_star == pytest.approx(0.5 * (np.sum(np.log(np.diag(Lam))) - np.linalg.slogdet(Lam)[1]), rel=1e-9)


def test_amortized_q_converges_to_exact_mean_and_optimal_variances(fitted, data):
    q = LinearGaussianQ.for_model(fitted, n_samples=8, seed=0)
    losses = q.fit(data, n_steps=2500, batch_size=100, lr=3e-2, lr_final=1e-4, seed=0)
    A_star, b_star, v_star = q.exact_targets()
    V, _ = fa_posterior(fitted.params["W"], fitted.psi)
    np.testing.assert_allclose(A_star, V)
    assert np.abs(q.params["A"] - A_star).max() < 0.02 * np.abs(A_star).max()
    assert np.abs(q.params["b"] - b_star).max() < 0.02 * max(1.0, np.abs(b_star).max())
    np.testing.assert_allclose(np.exp(q.params["logvar"]), v_star, rtol=0.03)
    assert np.mean(losses[-100:]) < np.mean(losses[:100])
    # its closed-form gap is (nearly) the irreducible mean-field gap
    e = fitted.elbo(data[:50], q.mean(data[:50]), q.cov())
    _, Sigma = fa_posterior(fitted.params["W"], fitted.psi)
    Lam = np.linalg.inv(Sigma)
    floor = 0.5 * (np.sum(np.log(np.diag(Lam))) - np.linalg.slogdet(Lam)[1])
    assert np.all(e["gap"] >= floor - 1e-9) and e["gap"].mean() < floor + 0.01


# ---------------------------------------------------------------------------------------------
# Bad settings
# ---------------------------------------------------------------------------------------------

def test_bad_settings_raise_clear_errors(data, fitted):
    with pytest.raises(ValueError, match="more than the number of features"):
        FactorAnalysis(D + 1).fit(data)
    with pytest.raises(ValueError, match="more than the number of features"):
        FactorAnalysis(D + 1, n_features=D)
    bad = data.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        FactorAnalysis(L).fit(bad)
    with pytest.raises(DataError, match="at least 2 examples"):
        FactorAnalysis(L).fit(data[:1])
    with pytest.raises(DataError, match="shape"):
        FactorAnalysis(L).fit(data[0])
    with pytest.raises(ValueError, match="noise_floor"):
        FactorAnalysis(L, noise_floor=0.0)
    with pytest.raises(ValueError, match="n_components"):
        FactorAnalysis(0)
    with pytest.raises(ValueError, match="max_iter"):
        FactorAnalysis(L, max_iter=0)
    with pytest.raises(ValueError, match="init"):
        FactorAnalysis(L, init="pca")
    with pytest.raises(ValueError, match="method"):
        PPCA(L, method="svd")
    with pytest.raises(ValueError, match="n_components < D"):
        PPCA(D, method="closed_form").fit(data)
    with pytest.raises(RuntimeError, match="call fit"):
        FactorAnalysis(L).transform(data)
    with pytest.raises(DataError, match=r"shape \(N, 8\)"):
        fitted.score_samples(data[:, :5])
    with pytest.raises(DataError, match="q_cov"):
        fitted.elbo(data[:4], np.zeros((4, L)), np.eye(L + 1))
    with pytest.raises(DataError, match="psi"):
        LinearGaussianQ(np.ones((D, L)), np.zeros(D), -np.ones(D))
