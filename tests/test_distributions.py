"""Distributions: every gradient against central finite differences (every entry, float64,
relative error <= 1e-7), values against scipy.stats and closed forms, KL against Monte Carlo,
samplers against their moments, stability at logits +-1e4, and bad input."""
import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats

import kernels
from nplvm import distributions as dist
from nplvm.checks import DataError
from nplvm.distributions import Bernoulli, Categorical, DiagGaussian
from nplvm.gradcheck import numerical_grad, rel_error

TOL = 1e-7          # every finite-difference comparison below


def away_from_zero(rng, shape, lo=0.5, hi=1.5):
    """Random values with |v| in [lo, hi] and random sign: keeps every gradient entry O(1), so the
    relative error measures the derivation rather than rounding noise around zero."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(lo, hi, size=shape)


def assert_grad(f, x, analytic, tol=TOL):
    """Every entry of ``analytic`` against central differences of the scalar f() w.r.t. x.

    Step h = 1e-5, near the float64 optimum (u / |f3|)^(1/3) with f3 the third derivative:
    truncation h^2 |f3| / 6 and rounding u |f| / h are both ~1e-11 here, so correct gradients
    land at ~1e-9 relative error (measured max 3e-9), far below TOL.
    """
    err = rel_error(analytic, numerical_grad(f, x, eps=1e-5))
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------------
# log-sum-exp, softmax
# ---------------------------------------------------------------------------------------------

def test_logsumexp_matches_scipy_and_is_exact_at_1e4(rng):
    a = rng.standard_normal((4, 6))
    for axis in (0, 1, -1, None):
        np.testing.assert_allclose(dist.logsumexp(a, axis), scipy.special.logsumexp(a, axis=axis),
                                   rtol=1e-14)
        np.testing.assert_allclose(dist.logsumexp(a, axis, keepdims=True),
                                   scipy.special.logsumexp(a, axis=axis, keepdims=True), rtol=1e-14)
    big = np.array([[1e4, 1e4], [-1e4, -1e4], [1e4, -1e4], [1e4, 1e4 - 1.0]])
    expected = [1e4 + np.log(2.0), -1e4 + np.log(2.0), 1e4, 1e4 + np.log1p(np.exp(-1.0))]
    np.testing.assert_allclose(dist.logsumexp(big, axis=1), expected, rtol=1e-15)
    np.testing.assert_allclose(dist.logmeanexp(big, axis=1), np.array(expected) - np.log(2.0), rtol=1e-15)


def test_logsumexp_with_minus_inf_entries_and_no_warnings():
    a = np.array([[-np.inf, -np.inf, -np.inf], [-np.inf, 0.0, np.log(3.0)], [np.inf, 0.0, -np.inf]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no divide/invalid RuntimeWarnings
        out = dist.logsumexp(a, axis=1)
        lsm = dist.log_softmax(a[1:2])
        sm = dist.softmax(a[1:2])
        da = dist.logsumexp_backward(np.ones(2), a[:2], axis=1)
    assert out[0] == -np.inf and out[1] == pytest.approx(np.log(4.0), rel=1e-15) and out[2] == np.inf
    assert lsm[0, 0] == -np.inf and sm[0, 0] == 0.0
    np.testing.assert_allclose(sm[0, 1:], [0.25, 0.75], rtol=1e-15)
    np.testing.assert_array_equal(da[0], 0.0)          # a constant -inf has gradient 0
    np.testing.assert_allclose(da[1], [0.0, 0.25, 0.75], rtol=1e-15)


def test_softmax_and_log_softmax_match_scipy(rng):
    l = 30.0 * rng.standard_normal((5, 7))
    np.testing.assert_allclose(dist.softmax(l), scipy.special.softmax(l, axis=-1), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(dist.log_softmax(l), scipy.special.log_softmax(l, axis=-1), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dist.softmax(l, axis=0), scipy.special.softmax(l, axis=0), rtol=1e-13, atol=1e-300)
    huge = np.array([[1e4, 0.0, -1e4]])
    np.testing.assert_array_equal(dist.softmax(huge), [[1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(dist.log_softmax(huge), [[0.0, -1e4, -2e4]])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_logsumexp_backward_finite_differences(rng, axis):
    a = rng.standard_normal((3, 4))
    w = away_from_zero(rng, dist.logsumexp(a, axis).shape)
    assert_grad(lambda: np.sum(w * dist.logsumexp(a, axis)), a, dist.logsumexp_backward(w, a, axis))
    wk = np.expand_dims(w, axis)
    assert_grad(lambda: np.sum(wk * dist.logsumexp(a, axis, keepdims=True)), a,
                dist.logsumexp_backward(wk, a, axis, keepdims=True))


def test_softmax_and_log_softmax_backward_finite_differences(rng):
    l = rng.standard_normal((3, 5))
    c = rng.standard_normal((3, 5))
    assert_grad(lambda: np.sum(c * dist.softmax(l)), l, dist.softmax_backward(c, dist.softmax(l)))
    assert_grad(lambda: np.sum(c * dist.log_softmax(l)), l, dist.log_softmax_backward(c, dist.log_softmax(l)))


# ---------------------------------------------------------------------------------------------
# DiagGaussian: values
# ---------------------------------------------------------------------------------------------

def gaussian(rng, shape=(3, 4)):
    return DiagGaussian(rng.standard_normal(shape), 0.8 * rng.standard_normal(shape))


def test_gaussian_log_prob_matches_scipy(rng):
    q = gaussian(rng)
    z = rng.standard_normal((3, 4))
    lp = q.log_prob(z)
    assert lp.shape == (3,)
    np.testing.assert_allclose(lp, scipy.stats.norm.logpdf(z, q.mu, np.exp(0.5 * q.logvar)).sum(-1), rtol=1e-13)
    for n in range(3):
        mvn = scipy.stats.multivariate_normal(q.mu[n], np.diag(np.exp(q.logvar[n])))
        assert lp[n] == pytest.approx(mvn.logpdf(z[n]), rel=1e-12)
    np.testing.assert_allclose(dist.std_normal_log_prob(z), scipy.stats.norm.logpdf(z).sum(-1), rtol=1e-13)
    # K samples per row broadcast against (N, D)
    zk = rng.standard_normal((5, 3, 4))
    np.testing.assert_allclose(q.log_prob(zk)[2], q.log_prob(zk[2]), rtol=1e-15)


def test_gaussian_entropy_matches_scipy(rng):
    q = gaussian(rng)
    for n in range(3):
        mvn = scipy.stats.multivariate_normal(q.mu[n], np.diag(np.exp(q.logvar[n])))
        assert q.entropy()[n] == pytest.approx(mvn.entropy(), rel=1e-13)


def test_gaussian_kl_std_closed_form_kernel_and_general_kl(rng):
    q = gaussian(rng)
    kl, dmu, dlogvar = q.kl_std()
    # closed form, written out separately: KL = 1/2 sum (s^2 + mu^2 - 1 - log s^2)
    s2 = np.exp(q.logvar)
    np.testing.assert_allclose(kl, 0.5 * np.sum(s2 + q.mu ** 2 - 1.0 - q.logvar, axis=1), rtol=1e-14)
    # the general KL against N(0, I) agrees, value and gradients
    kl2, dmu2, dlogvar2, _, _ = q.kl(DiagGaussian(np.zeros((3, 4)), np.zeros((3, 4))))
    np.testing.assert_allclose(kl, kl2, rtol=1e-13)
    np.testing.assert_allclose(dmu, dmu2, rtol=1e-13)
    np.testing.assert_allclose(dlogvar, dlogvar2, rtol=1e-13, atol=1e-15)


def test_kl_std_normal_matches_full_covariance_formula(rng):
    """The grader of the kl-gradient homework (with the tests below): KL to N(0, I) against the
    matrix formula 1/2 (tr S + m^T m - D - log det S), and the same from every entry point."""
    mu, logvar = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    kl, dmu, dlogvar = dist.kl_std_normal(mu, logvar)
    assert kl.shape == (5,) and dmu.shape == (5, 3) and dlogvar.shape == (5, 3)
    for n in range(5):
        S = np.diag(np.exp(logvar[n]))
        ref = 0.5 * (np.trace(S) + mu[n] @ mu[n] - 3 - np.linalg.slogdet(S)[1])
        assert kl[n] == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(kl, DiagGaussian(mu, logvar).kl_std()[0], rtol=1e-13)
    np.testing.assert_allclose(kl, kernels.gaussian_kl_std(mu, logvar)[0], rtol=1e-13)


def test_kl_std_normal_homework_gradient_finite_differences(rng):
    mu = away_from_zero(rng, (3, 4))
    logvar = away_from_zero(rng, (3, 4), 0.3, 1.2)
    w = rng.uniform(0.5, 1.5, size=3)
    _, dmu, dlogvar = dist.kl_std_normal(mu, logvar)
    f = lambda: np.sum(w * dist.kl_std_normal(mu, logvar)[0])
    assert_grad(f, mu, w[:, None] * dmu)
    assert_grad(f, logvar, w[:, None] * dlogvar)


def test_gaussian_kl_matches_full_covariance_formula(rng):
    q, p = gaussian(rng), gaussian(rng)
    kl = q.kl(p)[0]
    for n in range(3):
        Sq, Sp = np.diag(np.exp(q.logvar[n])), np.diag(np.exp(p.logvar[n]))
        d = p.mu[n] - q.mu[n]
        Sp_inv = np.linalg.inv(Sp)
        ref = 0.5 * (np.trace(Sp_inv @ Sq) + d @ Sp_inv @ d - 4
                     + np.linalg.slogdet(Sp)[1] - np.linalg.slogdet(Sq)[1])
        assert kl[n] == pytest.approx(ref, rel=1e-12)


def test_gaussian_kl_matches_monte_carlo():
    """KL(q || p) = E_q[log q(z) - log p(z)], estimated with S = 200,000 draws (seeded).
    Tolerance: 5 standard errors of the estimate (a false failure has probability < 1e-6)."""
    rng = np.random.default_rng(7)
    q = DiagGaussian(np.array([[0.3, -1.0, 0.5]]), np.array([[-0.4, 0.2, 0.0]]))
    p = DiagGaussian(np.array([[0.0, 0.5, 1.0]]), np.array([[0.3, -0.2, 0.6]]))
    z = q.sample(rng, (200_000,))                       # (S, 1, 3)
    terms = q.log_prob(z)[:, 0] - p.log_prob(z)[:, 0]
    se = terms.std(ddof=1) / np.sqrt(terms.size)
    assert abs(terms.mean() - q.kl(p)[0][0]) < 5 * se
    assert se < 0.01                                    # the check has teeth


def test_gaussian_kl_broadcasts_q_against_k_priors(rng):
    """q (N, 1, D) against K priors (1, K, D): the GMVAE's KL(q(z|x) || p(z|y=k)) for every k."""
    q = DiagGaussian(rng.standard_normal((3, 1, 2)), rng.standard_normal((3, 1, 2)))
    p = DiagGaussian(rng.standard_normal((1, 4, 2)), rng.standard_normal((1, 4, 2)))
    kl, dmq, dsq, dmp, dsp = q.kl(p)
    assert kl.shape == (3, 4) and dmq.shape == (3, 1, 2) and dmp.shape == (1, 4, 2)
    for n in range(3):
        for k in range(4):
            ref = DiagGaussian(q.mu[n], q.logvar[n]).kl(DiagGaussian(p.mu[0, k], p.logvar[0, k]))[0]
            assert kl[n, k] == pytest.approx(ref.item(), rel=1e-13)


def test_reparameterized_sample_moments():
    """Sample mean and std of z = mu + exp(logvar/2) eps match mu and exp(logvar/2) to within
    5 standard errors (std/sqrt(S) for the mean, std/sqrt(2S) for the std) in every entry."""
    rng = np.random.default_rng(3)
    mu = np.array([[0.0, 2.0, -1.0], [5.0, -3.0, 0.5]])
    logvar = np.array([[0.0, -2.0, 1.0], [2.0, 0.5, -1.0]])
    q = DiagGaussian(mu, logvar)
    S = 40_000
    z = q.sample(rng, (S,))
    assert z.shape == (S, 2, 3)
    std = np.exp(0.5 * logvar)
    assert np.all(np.abs(z.mean(0) - mu) < 5 * std / np.sqrt(S))
    assert np.all(np.abs(z.std(0, ddof=1) - std) < 5 * std / np.sqrt(2 * S))
    eps = np.random.default_rng(3).standard_normal((S, 2, 3))
    np.testing.assert_array_equal(q.rsample(eps), z)     # sample(rng) is rsample of rng's noise


# ---------------------------------------------------------------------------------------------
# DiagGaussian: gradients
# ---------------------------------------------------------------------------------------------

def test_rsample_backward_finite_differences(rng):
    mu, logvar = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    eps = away_from_zero(rng, (5, 3, 4))                 # K = 5 samples per row
    c = rng.standard_normal((5, 3, 4))                   # upstream dL/dz
    f = lambda: np.sum(c * DiagGaussian(mu, logvar).rsample(eps))
    dmu, dlogvar = DiagGaussian(mu, logvar).rsample_backward(c, eps)
    assert dmu.shape == dlogvar.shape == (3, 4)
    assert_grad(f, mu, dmu)
    assert_grad(f, logvar, dlogvar)


@pytest.mark.parametrize("zshape", [(3, 4), (2, 3, 4)])
def test_log_prob_grad_finite_differences(rng, zshape):
    mu, logvar = rng.standard_normal((3, 4)), 0.5 * rng.standard_normal((3, 4))
    # z - mu bounded away from 0 and from the +-std where d/dlogvar vanishes, with one sign per
    # entry across the K samples so that the gradients summed over samples do not cancel
    offset = away_from_zero(rng, (3, 4), 0.2, 0.4) * rng.uniform(1.0, 1.75, size=zshape)
    z = mu + np.exp(0.5 * logvar) * offset
    w = rng.uniform(0.5, 1.5, size=zshape[:-1])
    f = lambda: np.sum(w * DiagGaussian(mu, logvar).log_prob(z))
    dz, dmu, dlogvar = DiagGaussian(mu, logvar).log_prob_grad(z, weight=w)
    assert dz.shape == zshape and dmu.shape == dlogvar.shape == (3, 4)
    assert_grad(f, z, dz)
    assert_grad(f, mu, dmu)
    assert_grad(f, logvar, dlogvar)
    z0 = z.copy()
    assert_grad(lambda: np.sum(dist.std_normal_log_prob(z0)), z0, dist.std_normal_log_prob_grad(z0))


def test_entropy_grad_finite_differences(rng):
    mu, logvar = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    w = rng.uniform(0.5, 1.5, size=3)
    assert_grad(lambda: np.sum(w * DiagGaussian(mu, logvar).entropy()), logvar,
                DiagGaussian(mu, logvar).entropy_grad(weight=w))


def test_kl_std_gradients_finite_differences(rng):
    mu = away_from_zero(rng, (3, 4))
    logvar = away_from_zero(rng, (3, 4), 0.3, 1.2)
    w = rng.uniform(0.5, 1.5, size=3)
    f = lambda: np.sum(w * DiagGaussian(mu, logvar).kl_std()[0])
    _, dmu, dlogvar = DiagGaussian(mu, logvar).kl_std(weight=w)
    assert_grad(f, mu, dmu)
    assert_grad(f, logvar, dlogvar)


@pytest.mark.parametrize("broadcast", [False, True])
def test_kl_gradients_finite_differences(rng, broadcast):
    if broadcast:
        qs, ps, out = (3, 1, 2), (1, 4, 2), (3, 4)
    else:
        qs, ps, out = (3, 4), (3, 4), (3,)
    mq, sq = rng.standard_normal(qs), rng.standard_normal(qs)
    mp, sp = rng.standard_normal(ps), rng.standard_normal(ps)
    w = rng.uniform(0.5, 1.5, size=out)
    f = lambda: np.sum(w * DiagGaussian(mq, sq).kl(DiagGaussian(mp, sp))[0])
    _, dmq, dsq, dmp, dsp = DiagGaussian(mq, sq).kl(DiagGaussian(mp, sp), weight=w)
    for x, g in ((mq, dmq), (sq, dsq), (mp, dmp), (sp, dsp)):
        assert g.shape == x.shape
        assert_grad(f, x, g)


def test_gaussian_bad_input():
    with pytest.raises(DataError, match="same shape"):
        DiagGaussian(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(DataError, match="array"):
        DiagGaussian([0.0, 1.0], np.zeros(2))
    q = DiagGaussian(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"z of shape \(\.\.\., 3\)"):
        q.log_prob(np.zeros((2, 4)))
    with pytest.raises(DataError, match="weight"):
        q.kl_std(weight=np.ones(5))


# ---------------------------------------------------------------------------------------------
# Bernoulli
# ---------------------------------------------------------------------------------------------

def test_bernoulli_log_prob_matches_scipy(rng):
    l = 3.0 * rng.standard_normal((4, 6))
    x = (rng.random((4, 6)) < 0.5).astype(np.float64)
    b = Bernoulli(l)
    np.testing.assert_allclose(b.log_prob(x), scipy.stats.bernoulli.logpmf(x, scipy.special.expit(l)).sum(1),
                               rtol=1e-12)
    np.testing.assert_allclose(b.mean, scipy.special.expit(l), rtol=1e-15)
    nll, dl = b.nll_and_grad(x)
    np.testing.assert_allclose(nll, -b.log_prob(x), rtol=1e-15)
    np.testing.assert_allclose(dl, scipy.special.expit(l) - x, rtol=1e-14, atol=1e-16)
    # integer / boolean data are accepted and mean the same thing
    np.testing.assert_array_equal(b.log_prob(x.astype(np.uint8)), b.log_prob(x))
    np.testing.assert_array_equal(b.log_prob(x.astype(bool)), b.log_prob(x))


def test_bernoulli_exact_at_logits_1e4():
    """log Bern(x | sigmoid(l)) -> 0 when x agrees with the sign of l, -|l| when it does not."""
    l = np.array([[1e4, 1e4, -1e4, -1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, expected in (([1, 0, 1, 0], [0.0, -1e4, -1e4, 0.0]),):
            for j in range(4):
                xj = np.array([[float(x[j])]])
                lp = Bernoulli(l[:, j:j + 1]).log_prob(xj)
                assert np.isfinite(lp).all() and lp[0] == expected[j]
        H = Bernoulli(l).entropy()
        g = Bernoulli(l).entropy_grad()
    assert H[0] == 0.0 and np.all(g == 0.0)


def test_bernoulli_entropy_matches_closed_form(rng):
    l = np.concatenate([3.0 * rng.standard_normal(6), [30.0, -30.0, 700.0]])[None, :]
    p = scipy.special.expit(l)
    ent = Bernoulli(l).entropy()
    # moderate logits: scipy; large ones: H = p log1p(e^-|l|) + (1-p)(|l| + log1p(e^-|l|)) with
    # 1 - p = sigmoid(-|l|), a form with no cancellation
    np.testing.assert_allclose(Bernoulli(l[:, :6]).entropy(), scipy.stats.bernoulli.entropy(p[:, :6]).sum(1),
                               rtol=1e-12)
    a = np.abs(l[:, 6:])
    e = scipy.special.expit(-a)
    ref = (1 - e) * np.log1p(np.exp(-a)) + e * (a + np.log1p(np.exp(-a)))
    np.testing.assert_allclose(Bernoulli(l[:, 6:]).entropy(), ref.sum(1), rtol=1e-13)
    assert ent[0] > 0


def test_bernoulli_gradients_finite_differences(rng):
    l = away_from_zero(rng, (3, 5), 0.3, 2.0)
    x = (rng.random((3, 5)) < 0.5).astype(np.float64)
    w = rng.uniform(0.5, 1.5, size=3)
    assert_grad(lambda: np.sum(w * Bernoulli(l).log_prob(x)), l, Bernoulli(l).log_prob_grad(x, weight=w))
    assert_grad(lambda: np.sum(w * Bernoulli(l).nll_and_grad(x)[0]), l, Bernoulli(l).nll_and_grad(x, weight=w)[1])
    assert_grad(lambda: np.sum(w * Bernoulli(l).entropy()), l, Bernoulli(l).entropy_grad(weight=w))


def test_bernoulli_broadcasts_data_against_k_samples(rng):
    l = rng.standard_normal((5, 3, 4))                  # K = 5 decoder outputs per example
    x = (rng.random((3, 4)) < 0.5).astype(np.float64)
    lp = Bernoulli(l).log_prob(x)
    assert lp.shape == (5, 3)
    np.testing.assert_allclose(lp[2], Bernoulli(l[2]).log_prob(x), rtol=1e-15)


def test_bernoulli_rejects_non_binary_data_unless_told_not_to_check():
    b = Bernoulli(np.zeros((2, 3)))
    x = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.0]])
    with pytest.raises(DataError, match="binary"):
        b.log_prob(x)
    with pytest.raises(DataError, match="binary"):
        b.nll_and_grad(x)
    assert np.isfinite(b.log_prob(x, validate=False)).all()   # the hot-loop path skips the check
    with pytest.raises(DataError, match=r"x of shape \(\.\.\., 3\)"):
        b.log_prob(np.zeros((2, 4)))


def test_bernoulli_sample_frequencies():
    rng = np.random.default_rng(5)
    l = np.array([[-2.0, 0.0, 1.5]])
    S = 40_000
    x = Bernoulli(l).sample(rng, (S,))
    p = scipy.special.expit(l)
    assert set(np.unique(x)) <= {0.0, 1.0}
    assert np.all(np.abs(x.mean(0) - p) < 5 * np.sqrt(p * (1 - p) / S))


# ---------------------------------------------------------------------------------------------
# Categorical
# ---------------------------------------------------------------------------------------------

def test_categorical_values_match_scipy_and_brute_force(rng):
    l, m = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    q, p = Categorical(l), Categorical(m)
    probs = np.exp(l) / np.exp(l).sum(1, keepdims=True)            # brute force
    np.testing.assert_allclose(q.probs, probs, rtol=1e-14)
    np.testing.assert_allclose(q.log_probs, np.log(probs), rtol=1e-13)
    y = np.array([0, 4, 2, 2])
    np.testing.assert_allclose(q.log_prob(y), np.log(probs[np.arange(4), y]), rtol=1e-13)
    np.testing.assert_allclose(q.log_prob(dist.one_hot(y, 5)), q.log_prob(y), rtol=1e-15)
    np.testing.assert_allclose(q.entropy(), scipy.stats.entropy(probs, axis=1), rtol=1e-13)
    np.testing.assert_allclose(q.kl(p)[0], scipy.stats.entropy(probs, p.probs, axis=1), rtol=1e-12)


def test_categorical_zero_probability_categories():
    l = np.array([[0.0, -np.inf, np.log(3.0)]])
    c = Categorical(l)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c.entropy()[0] == pytest.approx(scipy.stats.entropy([0.25, 0.0, 0.75]), rel=1e-14)
        assert c.log_prob(np.array([1]))[0] == -np.inf
        assert c.log_prob(np.array([[0.0, 0.0, 1.0]]))[0] == pytest.approx(np.log(0.75), rel=1e-15)
        kl = c.kl(Categorical(np.zeros((1, 3))))[0][0]
        assert np.all(np.isfinite(c.entropy_grad()))
    assert kl == pytest.approx(0.25 * np.log(0.75) + 0.75 * np.log(2.25), rel=1e-14)
    assert 1 not in Categorical(l).sample(np.random.default_rng(0), (1000,))


def test_categorical_gradients_finite_differences(rng):
    l, m = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    y = np.array([1, 3, 0])
    w = rng.uniform(0.5, 1.5, size=3)
    assert_grad(lambda: np.sum(w * Categorical(l).log_prob(y)), l, Categorical(l).log_prob_grad(y, weight=w))
    assert_grad(lambda: np.sum(w * Categorical(l).entropy()), l, Categorical(l).entropy_grad(weight=w))
    f = lambda: np.sum(w * Categorical(l).kl(Categorical(m))[0])
    _, dl, dm = Categorical(l).kl(Categorical(m), weight=w)
    assert_grad(f, l, dl)
    assert_grad(f, m, dm)


def test_categorical_kl_against_one_prior_broadcasts(rng):
    """KL(q(y|x) || p(y)) with one prior row (1, K) for a batch (N, K): the prior's gradient sums."""
    l, m = rng.standard_normal((3, 4)), rng.standard_normal((1, 4))
    w = rng.uniform(0.5, 1.5, size=3)
    kl, dl, dm = Categorical(l).kl(Categorical(m), weight=w)
    assert kl.shape == (3,) and dm.shape == (1, 4)
    assert_grad(lambda: np.sum(w * Categorical(l).kl(Categorical(m))[0]), m, dm)


def test_categorical_sample_frequencies():
    rng = np.random.default_rng(11)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    S = 40_000
    y = Categorical(np.log(p)[None, :]).sample(rng, (S,))
    assert y.shape == (S, 1) and y.dtype == np.int64
    freq = np.bincount(y[:, 0], minlength=4) / S
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / S))


def test_categorical_bad_labels():
    c = Categorical(np.zeros((2, 3)))
    with pytest.raises(DataError, match="0..2"):
        c.log_prob(np.array([0, 3]))
    with pytest.raises(DataError, match="one-hot"):
        c.log_prob(np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(DataError, match="integer labels of shape"):
        c.log_prob(np.array([0.0, 1.0]))


def test_float32_in_float32_out(rng):
    """Training runs in float32: no quantity silently upcasts to float64."""
    f32 = np.float32
    mu, lv = rng.standard_normal((3, 4)).astype(f32), rng.standard_normal((3, 4)).astype(f32)
    q = DiagGaussian(mu, lv)
    z = q.sample(rng)
    outs = [z, q.log_prob(z), *q.log_prob_grad(z), q.entropy(), *q.kl_std(), *q.kl(q),
            *q.rsample_backward(z, z)]
    l = rng.standard_normal((3, 4)).astype(f32)
    x = (rng.random((3, 4)) < 0.5).astype(f32)
    outs += [*Bernoulli(l).nll_and_grad(x), Bernoulli(l).entropy(), Bernoulli(l).entropy_grad(),
             Categorical(l).probs, Categorical(l).entropy(), Categorical(l).entropy_grad(),
             *Categorical(l).kl(Categorical(l)), dist.logsumexp(l), dist.logmeanexp(l, 0)]
    assert all(o.dtype == f32 for o in outs), [o.dtype for o in outs]
