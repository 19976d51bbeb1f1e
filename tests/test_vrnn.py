"""The VRNN: whole-model gradient checks through BPTT, the forward against the equations written
step by step, importance sampling, generation and completion, bad input."""
import argparse

import numpy as np
import pytest

from nplvm import objectives
from nplvm.checks import DataError
from nplvm.distributions import DiagGaussian
from nplvm.gradcheck import assert_model_grads
from nplvm.models import build, get_class
from nplvm.models.vrnn import VRNN
from nplvm.models.vrnn_fast import VRNNFast
from nplvm.nn import gru_forward

SMALL = dict(latent=3, rnn_hidden=5, features=4, hidden=(6,), activation="tanh", dtype="float64")


def binary(n, d, seed=0, p=0.4):
    return (np.random.default_rng(seed).random((n, d)) < p).astype(np.uint8)


def small_model(T, D, seed=1, cls=VRNN, **kw):
    return cls(x_dim=T * D, row_size=D, **{**SMALL, **kw}, seed=seed)


# ----------------------------------------------------------------------------------------------
# gradients: hand-written BPTT against central differences, float64, fixed noise
# ----------------------------------------------------------------------------------------------
# tanh everywhere: smooth, so no ReLU kink is crossed by a finite-difference step.  h = 1e-4: the
# loss is ~10-100 nats, so with h = 1e-6 the rounding error u |f| / h ~ 1e-9 swamps the many tiny
# recurrent-weight gradients (~1e-5); the O(h^2) truncation error at h = 1e-4 is far below that.
EPS = 1e-4

def test_gradcheck_short_sequence_every_entry():
    m = small_model(T=3, D=5)
    x = binary(3, 15)
    report = assert_model_grads(m, x, tol=1e-6, eps=EPS, seed=7, max_entries_per_param=None)
    assert set(report) == set(m.params) and len(report) == 27


def test_gradcheck_full_length_mnist_rows():
    """T = 28 rows of 28 pixels: errors that only show after many steps of the recurrence."""
    m = small_model(T=28, D=28, seed=3)
    x = binary(2, 784, seed=1, p=0.3)
    assert_model_grads(m, x, tol=1e-6, eps=EPS, seed=11, max_entries_per_param=8)


def test_gradient_reaches_the_first_step_through_the_recurrence():
    """The recurrent weights get gradient from the dependence of late steps on early ones: changing
    the first row changes the loss of later steps (through h), which BPTT must account for."""
    m = small_model(T=6, D=5)
    x = binary(4, 30, seed=2)
    l0, g = m.loss(x, 0)
    assert np.abs(g["rnn.U_c"]).max() > 0 and np.abs(g["rnn.W_r"]).max() > 0
    x2 = x.copy()
    x2[:, :5] = 1 - x2[:, :5]
    m2 = build("vrnn", m.config)
    t1 = m.step_terms(x, 0)
    t2 = m2.step_terms(x2, 0)
    assert not np.allclose(t1["kl"][:, 1:], t2["kl"][:, 1:])     # later steps see the first row


@pytest.mark.parametrize("T, D, N, seed", [(3, 5, 4, 1), (28, 28, 3, 2)])
def test_fast_twin_equals_the_readable_model(T, D, N, seed):
    """VRNNFast (fused, batched) computes what VRNN (the step loop) computes: the same loss and
    every gradient, float64, to 1e-12 relative, with the same parameters from the same config."""
    slow, fast = small_model(T, D, seed=seed), small_model(T, D, seed=seed, cls=VRNNFast)
    x = binary(N, T * D, seed=seed, p=0.3)
    l_slow, g_slow = slow.loss(x, 9)
    l_fast, g_fast = fast.loss(x, 9)
    assert l_fast == pytest.approx(l_slow, rel=1e-12, abs=0)
    assert set(g_fast) == set(g_slow) == set(slow.params)
    for k in g_slow:
        scale = np.abs(g_slow[k]).max()
        assert scale > 0, k
        assert np.abs(g_fast[k] - g_slow[k]).max() <= 1e-12 * scale, k
    assert fast.loss(x, 9, grad=False) == (l_fast, None)


# ----------------------------------------------------------------------------------------------
# the forward pass against the equations, one step at a time with the distributions module
# ----------------------------------------------------------------------------------------------

def naive_nelbo(m, x, eps):
    """-ELBO per image written step by step from the module docstring, nothing batched."""
    N, T, D, L = x.shape[0], m.T, m.D, m.L
    X = x.reshape(N, T, D).astype(np.float64)
    h = np.zeros((N, m.H))
    total = np.zeros(N)
    gru = m.rnn.param_arrays()
    for t in range(T):
        phx = m.phi_x.forward(X[:, t])[0]
        prior = m.prior.forward(h)[0]
        q_out = m.encoder.forward(np.concatenate([phx, h], 1))[0]
        q = DiagGaussian(q_out[:, :L], q_out[:, L:])
        p = DiagGaussian(prior[:, :L], prior[:, L:])
        z = q.rsample(eps[:, t])
        phz = m.phi_z.forward(z)[0]
        logits = m.decoder.forward(np.concatenate([phz, h], 1))[0]
        # -log Bern(x_t | sigmoid(l)) = sum_d log(1 + e^l) - x l
        nll = np.sum(np.logaddexp(0, logits) - X[:, t] * logits, axis=1)
        kl = np.sum(0.5 * (p.logvar - q.logvar + (np.exp(q.logvar) + (q.mu - p.mu) ** 2)
                           / np.exp(p.logvar) - 1), axis=1)
        total += nll + kl
        h = gru_forward(gru, np.concatenate([phx, phz], 1), h)[0]
    return total


def test_loss_matches_step_by_step_equations():
    m = small_model(T=7, D=4, seed=5)
    x = binary(6, 28, seed=3)
    loss, _ = m.loss(x, 42)
    eps = np.random.default_rng(42).standard_normal((6, 7, 3))    # the model's draw: (N, T, L)
    np.testing.assert_allclose(loss, naive_nelbo(m, x, eps).mean(), rtol=1e-12)
    terms = m.step_terms(x, 42)
    assert terms["nll"].shape == terms["kl"].shape == (6, 7)
    assert (terms["kl"] >= 0).all()
    np.testing.assert_allclose((terms["nll"] + terms["kl"]).sum(1), naive_nelbo(m, x, eps), rtol=1e-12)


def test_loss_is_deterministic_and_float32_trains():
    m = VRNN(latent=4, rnn_hidden=16, features=8, hidden=(16,), seed=0)
    assert m.params["rnn.W_r"].dtype == np.float32 and m.kind == "vrnn"
    x = binary(8, 784, seed=4, p=0.2)
    l1, g1 = m.loss(x, 3)
    g1 = {k: v.copy() for k, v in g1.items()}
    l2, g2 = m.loss(x, 3)
    assert l1 == l2 and all(np.array_equal(g1[k], g2[k]) for k in g1)
    assert g1["rnn.W_r"].dtype == np.float32 and np.isfinite(l1)
    # the same model rebuilt from its config: same parameters, same loss
    assert build("vrnn", m.config).loss(x, 3)[0] == l1
    # (N, T, D) sequences are accepted as well as (N, 784) images
    assert m.loss(x.reshape(8, 28, 28), 3)[0] == l1
    # a few Adam steps with clipping lower the loss on this batch
    from nplvm.optim import Adam, clip_grad_norm
    opt = Adam(lr=3e-3)
    for _ in range(15):
        _, g = m.loss(x, 3)
        clip_grad_norm(g, 10.0)
        opt.step(m.params, g)
    assert m.loss(x, 3)[0] < l1 - 5


def test_training_buffers_are_reused_safely():
    """The fast twin's loss() reuses its time-major arrays between calls: another batch size in
    between, or an evaluation pass, must not change the next loss or its gradients."""
    m = small_model(T=5, D=4, seed=4, cls=VRNNFast)
    x8, x3 = binary(8, 20, seed=5), binary(3, 20, seed=6)
    l1, g1 = m.loss(x8, 1)
    g1 = {k: v.copy() for k, v in g1.items()}
    m.loss(x3, 2)
    m.step_terms(x3, 3)
    l2, g2 = m.loss(x8, 1)
    fresh_loss, fresh_grads = VRNNFast(**m.config).loss(x8, 1)
    assert l1 == l2 == fresh_loss
    for k in g1:
        assert np.array_equal(g1[k], g2[k]) and np.array_equal(g1[k], fresh_grads[k]), k


# ----------------------------------------------------------------------------------------------
# evaluation: log weights of whole trajectories, importance sampling
# ----------------------------------------------------------------------------------------------

def test_log_weights_mean_is_the_elbo_and_is_estimate_is_above_it():
    m = small_model(T=5, D=6, seed=2)
    x = binary(4, 30, seed=6)
    K = 4000
    lw = m.log_weights(x, K, rng=0)
    assert lw.shape == (K, 4) and lw.dtype == np.float64         # the model's dtype
    # E_q[log w] is the ELBO: compare with the loss (analytic KL) averaged over many noise draws
    elbo = -np.mean([m.loss(x, s)[0] for s in range(200)])
    se = lw.mean(axis=1).std() / np.sqrt(K)
    assert abs(lw.mean() - elbo) < 5 * se + 0.05
    # the IS estimate of log p(x) lies above the ELBO for every image here
    log_px = objectives.importance_sampled_log_px(m, x, K=K, batch=2, rng=1, max_rows=1000)
    assert log_px.shape == (4,)
    assert (log_px >= lw.mean(axis=0)).all()
    assert log_px.mean() > elbo


def test_log_weights_do_not_depend_on_the_chunking():
    m = small_model(T=4, D=3)
    x = binary(5, 12, seed=8)
    a = m.log_weights(x, 7, rng=3, max_rows=5)      # one copy of the batch per pass
    b = m.log_weights(x, 7, rng=3, max_rows=10_000)  # all seven at once
    np.testing.assert_allclose(a, b, rtol=1e-12)
    g = np.random.default_rng(3)                     # or split over two calls on one Generator
    c = np.concatenate([m.log_weights(x, 3, rng=g), m.log_weights(x, 4, rng=g)])
    np.testing.assert_allclose(a, c, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# generation and completion
# ----------------------------------------------------------------------------------------------

def test_generate_shapes_binary_and_seeded():
    m = VRNN(latent=4, rnn_hidden=16, features=8, hidden=(16,), seed=0)
    x, p = m.generate(5, rng=0)
    assert x.shape == p.shape == (5, 784) and x.dtype == np.uint8
    assert set(np.unique(x)) <= {0, 1}
    assert ((p >= 0) & (p <= 1)).all()
    x2, _ = m.generate(5, rng=0)
    assert np.array_equal(x, x2)


def test_complete_keeps_the_observed_rows():
    m = VRNN(latent=4, rnn_hidden=16, features=8, hidden=(16,), seed=0)
    x = binary(3, 784, seed=9, p=0.2)
    out, p = m.complete(x, 14, rng=1)
    assert out.shape == p.shape == (3, 784) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1}
    assert np.array_equal(out[:, :14 * 28], x[:, :14 * 28])
    assert np.array_equal(m.complete(x, 28, rng=1)[0], x)
    assert m.complete(x, 0, rng=1)[0].shape == (3, 784)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

def test_bad_input_errors_say_what_was_expected():
    m = small_model(T=4, D=3)
    with pytest.raises(DataError, match=r"\(N, 12\)"):
        m.loss(binary(2, 13), 0)
    with pytest.raises(DataError, match="shape"):
        m.loss(binary(2, 12)[0], 0)
    with pytest.raises(DataError, match="binary"):
        m.loss(np.full((2, 12), 0.5), 0)
    bad = binary(2, 12).astype(float)
    bad[1, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        m.loss(bad, 0)
    with pytest.raises(DataError, match="binary"):
        m.log_weights(binary(2, 12) * 3, 2, 0)
    with pytest.raises(DataError, match="array"):
        m.loss([[0, 1] * 6], 0)
    with pytest.raises(ValueError, match="K"):
        m.log_weights(binary(2, 12), 0, 0)
    with pytest.raises(ValueError, match="n_observed"):
        m.complete(binary(2, 12), 5, 0)
    with pytest.raises(ValueError, match="n"):
        m.generate(0, 0)
    with pytest.raises(ValueError, match="latent"):
        VRNN(latent=0)
    with pytest.raises(ValueError, match="row_size"):
        VRNN(x_dim=100, row_size=28)
    with pytest.raises(ValueError, match="hidden"):
        VRNN(hidden="wide")
    with pytest.raises(TypeError, match="float32 or float64"):
        VRNN(dtype="int32")


def test_cli_flags_build_the_model():
    from nplvm.cli import add_model_arguments, config_from_args
    cls = get_class("vrnn")
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=4)
    add_model_arguments(parser, cls)
    args = parser.parse_args(["--latent", "3", "--rnn-hidden", "8", "--features", "5", "--hidden", "7"])
    config = config_from_args(cls, args, x_dim=784)
    assert config["x_dim"] == 784 and config["row_size"] == 28 and config["seed"] == 4
    m = build("vrnn", config)
    assert m.config == config and m.params["rnn.U_r"].shape == (8, 8)
