"""The gradient checker: central differences are right and leave x untouched, rel_error is the
documented formula, a planted wrong backward FAILS and a right one passes, and check_model works
on a toy model that follows the model contract."""
import numpy as np
import pytest

from nplvm import backend
from nplvm.distributions import DiagGaussian
from nplvm.gradcheck import (GradCheckReport, assert_model_grads, check_grad, check_model,
                             numerical_grad, rel_error, report)


# ---------------------------------------------------------------------------------------------
# numerical_grad, rel_error, check_grad
# ---------------------------------------------------------------------------------------------

def test_numerical_grad_matches_a_known_gradient():
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    g = numerical_grad(lambda: np.sum(c * np.sin(x)), x)           # d/dx sum c sin x = c cos x
    assert g.shape == x.shape
    assert rel_error(g, c * np.cos(x)) < 1e-8


def test_numerical_grad_restores_x_exactly_even_when_f_raises():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(5) * 1e3 + 1.0 / 3.0                   # values where x +- eps rounds
    before = x.copy()
    numerical_grad(lambda: np.sum(x ** 3), x)
    np.testing.assert_array_equal(x, before)                       # bit for bit

    def boom():
        if x[0] != before[0]:
            raise RuntimeError("f failed")
        return 0.0
    with pytest.raises(RuntimeError, match="f failed"):
        numerical_grad(boom, x)
    np.testing.assert_array_equal(x, before)


def test_numerical_grad_subset_and_strided_view():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4, 6))
    view = base[:, ::2]                                            # a non-contiguous parameter
    f = lambda: np.sum(base ** 2)
    full = numerical_grad(f, view)
    np.testing.assert_allclose(full, 2 * view, rtol=1e-8)
    idx = np.array([0, 5, 11])
    part = numerical_grad(f, view, indices=idx)
    assert part.shape == (3,)
    np.testing.assert_array_equal(part, full.reshape(-1)[idx])
    # f returning (loss, grads), like model.loss, is accepted
    np.testing.assert_array_equal(numerical_grad(lambda: (f(), None), view), full)


def test_numerical_grad_rejects_bad_x_and_warns_on_float32():
    with pytest.raises(TypeError, match="float"):
        numerical_grad(lambda: 0.0, np.arange(3))
    x32 = np.ones(2, dtype=np.float32)
    with pytest.warns(UserWarning, match="float64"):
        numerical_grad(lambda: float(np.sum(x32)), x32, eps=1e-3)
    with pytest.raises(ValueError, match="scalar"):
        numerical_grad(lambda: np.ones(2), np.ones(2))


def test_rel_error_is_the_documented_formula():
    assert rel_error(np.array([1.0]), np.array([1.1])) == pytest.approx(0.1 / 2.1, rel=1e-12)
    a, b = np.array([1.0, -2.0, 0.0]), np.array([1.0, -2.2, 1e-10])
    expected = max(0.0, 0.2 / 4.2, 1e-10 / 1e-8)                   # the 1e-8 floor on the last entry
    assert rel_error(a, b) == pytest.approx(expected, rel=1e-12)
    assert rel_error(a, b) == rel_error(b, a)                      # symmetric
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert np.isnan(rel_error(np.array([np.nan]), np.array([1.0])))
    with pytest.raises(ValueError, match="shape"):
        rel_error(np.zeros(2), np.zeros(3))


def _softplus_sum_and_grads():
    """f(x) = sum log(1 + e^x) with a right backward (sigmoid) and a planted wrong one."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5))
    f = lambda: np.sum(np.logaddexp(0.0, x))
    right = 1.0 / (1.0 + np.exp(-x))
    wrong = 0.5 * (1.0 + np.tanh(x))          # a plausible slip: sigma(2x) instead of sigma(x)
    return f, x, right, wrong


def test_check_grad_passes_a_right_backward_and_fails_a_planted_wrong_one():
    f, x, right, wrong = _softplus_sum_and_grads()
    assert check_grad(f, x, right) < 1e-8
    assert check_grad(f, x, wrong) > 1e-2
    # one wrong entry out of fifteen is enough to fail
    off_by_one = right.copy()
    off_by_one[1, 2] *= 1.01
    assert check_grad(f, x, off_by_one) > 1e-3


def test_check_grad_random_subset_is_seeded():
    f, x, right, wrong = _softplus_sum_and_grads()
    e1 = check_grad(f, x, wrong, max_entries=4, seed=5)
    e2 = check_grad(f, x, wrong, max_entries=4, seed=5)
    assert e1 == e2 and e1 > 1e-2
    assert check_grad(f, x, right, max_entries=4, seed=5) < 1e-8
    with pytest.raises(ValueError, match="shape"):
        check_grad(f, x, right[:2])


# ---------------------------------------------------------------------------------------------
# check_model on toy models that follow the contract
# ---------------------------------------------------------------------------------------------

class ToyLinearGaussian:
    """A tiny latent variable model, written here to exercise the model contract:

        q(z) = N(m, diag e^s)            (one variational factor shared by the batch)
        p(x | z) = N(x | z W + b, I)
        loss = mean_n [ -log p(x_n | z_n) ] + KL(q || N(0, I)),  z_n = m + e^(s/2) eps_n

    with eps_n drawn from the rng passed to ``loss``, so the same seed gives the same loss.
    """

    kind = "toy"

    def __init__(self, L=2, D=3, seed=0, bug=None):
        r = np.random.default_rng(seed)
        self.params = {"W": r.standard_normal((L, D)), "b": r.standard_normal(D),
                       "m": r.standard_normal((1, L)), "s": 0.3 * r.standard_normal((1, L))}
        self.config = {"L": L, "D": D, "seed": seed}
        self.bug = bug

    def loss(self, x, rng, grad=True):
        W, b, m, s = (self.params[k] for k in ("W", "b", "m", "s"))
        N = x.shape[0]
        eps = rng.standard_normal((N, W.shape[0]))
        q = DiagGaussian(np.broadcast_to(m, eps.shape), np.broadcast_to(s, eps.shape))
        z = q.rsample(eps)
        r = x - (z @ W + b)                                  # residual of p(x|z)
        nll = 0.5 * np.sum(r * r) / N + 0.5 * x.shape[1] * np.log(2 * np.pi)
        kl, dm_kl, ds_kl = DiagGaussian(m, s).kl_std()
        loss = nll + kl[0]
        dmean = -r / N                                       # d nll / d (z W + b)
        dW = z.T @ dmean
        db = dmean.sum(0)
        if self.bug == "W":
            dW = 2.0 * dW                                    # planted error
        dz = dmean @ W.T
        dm, ds = q.rsample_backward(dz, eps)
        dm, ds = dm.sum(0, keepdims=True) + dm_kl, ds.sum(0, keepdims=True) + ds_kl
        if self.bug == "s":
            ds = ds - ds_kl                                  # planted error: forgot the KL term
        return float(loss), {"W": dW, "b": db, "m": dm, "s": ds}


def toy_data(N=4, D=3):
    return np.random.default_rng(9).standard_normal((N, D))


def test_check_model_passes_a_right_model():
    model = ToyLinearGaussian()
    before = {k: v.copy() for k, v in model.params.items()}
    errors = check_model(model, toy_data(), max_entries_per_param=None)
    assert isinstance(errors, dict) and set(errors) == {"W", "b", "m", "s"}
    assert max(errors.values()) < 1e-7, errors
    for k in before:                                          # parameters restored exactly
        np.testing.assert_array_equal(model.params[k], before[k])
    assert errors.checked == {"W": 6, "b": 3, "m": 2, "s": 2}
    table = errors.report(tol=1e-6)
    assert "parameter" in table and "W" in table and "(2, 3)" in table and "all ok" in table


def test_assert_model_grads_names_the_failing_parameters():
    x = toy_data()
    assert isinstance(assert_model_grads(ToyLinearGaussian(), x, tol=1e-6), GradCheckReport)
    with pytest.raises(AssertionError) as info:
        assert_model_grads(ToyLinearGaussian(bug="W"), x, tol=1e-6)
    msg = str(info.value)
    assert "W (" in msg and "FAIL" in msg and "b (" not in msg
    with pytest.raises(AssertionError, match=r"s \("):
        assert_model_grads(ToyLinearGaussian(bug="s"), x, tol=1e-6)


def test_check_model_subsets_are_seeded_and_bounded():
    model = ToyLinearGaussian(L=3, D=5)
    x = toy_data(D=5)
    r1 = check_model(model, x, max_entries_per_param=4, subset_seed=1)
    r2 = check_model(model, x, max_entries_per_param=4, subset_seed=1)
    assert dict(r1) == dict(r2)
    assert r1.checked["W"] == 4 and r1.checked["b"] == 4 and r1.checked["m"] == 3


def test_check_model_rejects_a_loss_that_ignores_the_seed():
    class Noisy(ToyLinearGaussian):
        _global = np.random.default_rng(0)

        def loss(self, x, rng, grad=True):                              # draws from its own state: broken
            return super().loss(x, self._global)
    with pytest.raises(RuntimeError, match="deterministic"):
        check_model(Noisy(), toy_data())


def test_check_model_reports_missing_gradients():
    class Missing(ToyLinearGaussian):
        def loss(self, x, rng, grad=True):
            loss, grads = super().loss(x, rng)
            del grads["b"]
            return loss, grads
    with pytest.raises(KeyError, match="b"):
        check_model(Missing(), toy_data())


def test_report_function_formats_a_plain_dict():
    text = report({"enc.W": 3e-9, "dec.b": 0.5}, tol=1e-6)
    lines = text.splitlines()
    assert lines[0].split()[0] == "parameter"
    assert "enc.W" in lines[1] and "ok" in lines[1]
    assert "dec.b" in lines[2] and "FAIL" in lines[2]
    assert lines[-1].endswith("1 FAILED")


def test_check_model_uses_a_fresh_generator_from_the_seed():
    """Every evaluation sees the same noise: the loss equals one built from backend.rng(seed)."""
    model, x = ToyLinearGaussian(), toy_data()
    seen = []

    class Spy(ToyLinearGaussian):
        def loss(self, x, rng, grad=True):
            seen.append(rng.bit_generator.state["state"]["state"])
            return super().loss(x, rng)
    spy = Spy()
    check_model(spy, x, seed=42, max_entries_per_param=1)
    assert len(set(seen)) == 1
    assert seen[0] == backend.rng(42).bit_generator.state["state"]["state"]
    assert model.loss(x, backend.rng(42))[0] == spy.loss(x, backend.rng(42))[0]
