"""Gaussian mixture EM in log space: monotone log-likelihood, brute-force densities, recovery of
well-separated clusters, stability far from every component, clear errors."""
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from nplvm.checks import DataError
from nplvm.models.gmm import GaussianMixture, gaussian_log_prob

TRUE_MEANS = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0]])



def make_mixture_data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    A = np.array([[[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.7]],
                  [[0.6, 0.0, 0.0], [0.4, 1.2, 0.0], [0.0, 0.0, 0.5]],
                  [[1.5, 0.0, 0.2], [0.0, 0.4, 0.0], [0.3, 0.0, 1.0]]])
    x = TRUE_MEANS[y] + np.einsum("nij,nj->ni", A[y], rng.standard_normal((n, 3)))
    return x, y


@pytest.fixture(scope="module")
def data():
    return make_mixture_data()[0]


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_loglik_never_decreases(data, cov):
    gmm = GaussianMixture(3, covariance_type=cov, reg_covar=0.0, tol=0.0, max_iter=60, seed=1).fit(data)
    ll = np.array(gmm.loglik_)
    assert len(ll) == gmm.n_iter_ + 1 >= 5          # tol=0 stops only at a round-off-level step
    assert np.all(np.diff(ll) >= -1e-10), np.diff(ll).min()
    assert ll[-1] > ll[0]


def test_score_samples_matches_brute_force_mixture(data):
    for cov in ("full", "diag"):
        gmm = GaussianMixture(3, covariance_type=cov, seed=0).fit(data)
        dens = sum(gmm.weights_[k] * multivariate_normal(
            gmm.means_[k], gmm.covariances_[k] if cov == "full" else np.diag(gmm.covariances_[k])).pdf(data[:40])
            for k in range(3))
        np.testing.assert_allclose(gmm.score_samples(data[:40]), np.log(dens), rtol=1e-10)
        assert gmm.loglik_[-1] == pytest.approx(gmm.score(data), abs=1e-10)


def test_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((4, 4))
    cov = B @ B.T + np.eye(4)
    x, mean = rng.standard_normal((10, 4)), rng.standard_normal(4)
    np.testing.assert_allclose(gaussian_log_prob(x, mean, cov), multivariate_normal(mean, cov).logpdf(x), rtol=1e-12)
    var = rng.uniform(0.5, 2, 4)
    np.testing.assert_allclose(gaussian_log_prob(x, mean, var, "diag"),
                               multivariate_normal(mean, np.diag(var)).logpdf(x), rtol=1e-12)


def test_recovers_well_separated_clusters():
    x, y = make_mixture_data(n=3000, seed=1)
    gmm = GaussianMixture(3, seed=0).fit(x)
    order = [int(np.argmin(np.linalg.norm(gmm.means_ - m, axis=1))) for m in TRUE_MEANS]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(gmm.means_[order], TRUE_MEANS, atol=0.15)
    np.testing.assert_allclose(gmm.weights_[order], [0.5, 0.3, 0.2], atol=0.03)
    assert np.mean(np.array(order)[y] == gmm.predict(x)) > 0.99


def test_matches_sklearn_loglik(data):
    from sklearn.mixture import GaussianMixture as SkGMM
    ours = GaussianMixture(3, tol=1e-10, max_iter=500, seed=0).fit(data)
    sk = SkGMM(3, tol=1e-10, max_iter=500, random_state=0).fit(data)
    assert ours.score(data) >= sk.score(data) - 1e-4


def test_responsibilities_are_stable_far_from_every_component(data):
    gmm = GaussianMixture(3, seed=0).fit(data)
    far = np.array([[1e4, -1e4, 1e4]])                   # every density underflows to 0 in linear space
    r = gmm.predict_proba(far)
    assert np.all(np.isfinite(r)) and r.sum() == pytest.approx(1.0)
    assert np.isfinite(gmm.score_samples(far)[0]) and gmm.score_samples(far)[0] < -1e6
    np.testing.assert_allclose(gmm.predict_proba(data).sum(axis=1), 1.0)


def test_sample_shapes_and_seed(data):
    gmm = GaussianMixture(3, covariance_type="diag", seed=0).fit(data)
    x, y = gmm.sample(500, seed=3)
    assert x.shape == (500, 3) and y.shape == (500,)
    np.testing.assert_array_equal(gmm.sample(10, seed=3)[0], gmm.sample(10, seed=3)[0])


def test_bad_settings_raise(data):
    with pytest.raises(ValueError, match="covariance_type"):
        GaussianMixture(2, covariance_type="spherical")
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture(0)
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixture(2, reg_covar=-1.0)
    with pytest.raises(DataError, match="at least"):
        GaussianMixture(5).fit(data[:3])
    bad = data.copy()
    bad[0, 0] = np.inf
    with pytest.raises(DataError, match="NaN/inf"):
        GaussianMixture(2).fit(bad)
    const = data.copy()
    const[:, 1] = 1.0
    with pytest.raises(DataError, match="constant feature"):
        GaussianMixture(2, reg_covar=0.0).fit(const)
    with pytest.raises(RuntimeError, match="not fitted"):
        GaussianMixture(2).score(data)
    with pytest.raises(DataError, match="shape"):
        GaussianMixture(2).fit(data).score(data[:, :2])
