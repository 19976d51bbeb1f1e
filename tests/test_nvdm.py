"""NVDM (issue 20): whole-model gradient check in float64, the softmax-with-counts gradient, the
contract (fresh gradient arrays, grad=False, config round trip, log_weights), stability at extreme
logits, bad input; the text data: .feat reader on files the test writes, the seeded split, the
offline corpus, perplexity, the unigram and LDA baselines; the CLI on the offline corpus."""
import json
import math

import numpy as np
import pytest

from nplvm import gradcheck, models, objectives
from nplvm.data import text
from nplvm.checks import DataError
from nplvm.models.nvdm import NVDM, softmax_counts_nll


def _counts(B, V, seed=0, mean=6.0):
    g = np.random.default_rng(seed)
    x = g.poisson(mean * g.dirichlet(np.full(V, 0.3), size=B))
    x[:, 0] += 1                                     # every document has a word
    return x.astype(np.float64)


def _small(dtype="float64", **kw):
    cfg = dict(x_dim=12, hidden=(7, 5), latent=3, activation="tanh", dtype=dtype, seed=1)
    cfg.update(kw)
    return NVDM(**cfg)


# -- gradients ---------------------------------------------------------------------------------

def test_softmax_counts_gradient():
    g = np.random.default_rng(3)
    x = _counts(4, 9, seed=3)
    logits = g.normal(size=(4, 9))
    nll, d = softmax_counts_nll(x, logits, scale=0.25)
    num = gradcheck.numerical_grad(lambda: 0.25 * softmax_counts_nll(x, logits, grad=False)[0].sum(), logits, eps=1e-5)
    assert gradcheck.rel_error(d, num) < 1e-7
    # the value: -sum_v n_dv log softmax(l)_v
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert np.allclose(nll, -(x * logp).sum(1), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("hidden, activation", [((7, 5), "tanh"), ((6,), "relu")])
def test_whole_model_gradient_every_parameter(hidden, activation):
    m = _small(hidden=hidden, activation=activation)
    for p in m.params.values():                      # move logvar weights off their zero start
        p += np.random.default_rng(0).normal(scale=0.1, size=p.shape)
    report = gradcheck.assert_model_grads(m, _counts(6, 12), tol=1e-6, max_entries_per_param=None, eps=1e-5)
    assert set(report) == set(m.params)
    assert max(report.values()) < 1e-6


def test_gradcheck_can_fail():
    """A wrong decoder gradient is caught (the check is not vacuous)."""
    m = _small()
    loss = m.loss

    def broken(x, rng, grad=True):
        v, gr = loss(x, rng, grad)
        if gr is not None:
            gr["b"] = gr["b"] * 1.01
        return v, gr
    m.loss = broken
    rep = gradcheck.check_model(m, _counts(5, 12), max_entries_per_param=None)
    assert rep["b"] > 1e-4 and rep["R"] < 1e-6


# -- the contract ------------------------------------------------------------------------------

def test_contract_fresh_grads_and_grad_false():
    m = _small()
    x = _counts(5, 12)
    l1, g1 = m.loss(x, 0)
    saved = {k: v.copy() for k, v in g1.items()}
    l2, g2 = m.loss(x[:3] * 2, 1)
    assert all(np.array_equal(g1[k], saved[k]) for k in g1)        # the first call's arrays unchanged
    assert all(g1[k] is not g2[k] for k in g1)
    l3, none = m.loss(x, 0, grad=False)
    assert none is None and l3 == l1
    assert set(g1) == set(m.params) and all(g1[k].shape == m.params[k].shape for k in m.params)


def test_config_rebuilds_and_float32():
    m = _small(dtype="float32")
    m2 = models.build("nvdm", json.loads(json.dumps(m.config)))
    assert all(np.array_equal(m.params[k], m2.params[k]) for k in m.params)
    loss, grads = m.loss(_counts(4, 12).astype(np.int32), 0)
    assert np.isfinite(loss) and all(g.dtype == np.float32 for g in grads.values())


def test_log_weights_and_elbo():
    m = _small()
    x = _counts(4, 12)
    lw = m.log_weights(x, 300, 0)
    assert lw.shape == (300, 4) and lw.dtype == np.float64
    # chunked draws equal one call (sample-major noise)
    a = objectives.sample_log_weights(m, x, 300, rng=5, max_rows=40)
    b = m.log_weights(x, 300, np.random.default_rng(5))
    assert np.allclose(a, b)
    # E[log w] = ELBO (analytic KL): the mean of log w over 300 draws within 4 SE of elbo averaged
    elbo = np.mean([m.elbo(x, s) for s in range(300)], axis=0)
    se = lw.std(0) / math.sqrt(300)
    assert np.all(np.abs(lw.mean(0) - elbo) < 4 * se + 1e-9)
    # IS estimate >= ELBO (up to noise); K = 1 loss equals -mean ELBO of the same draw
    log_px = objectives.importance_sampled_log_px(m, x, K=300, rng=1)
    assert np.all(log_px >= lw.mean(0) - 1e-9)
    assert np.isclose(m.loss(x, 7, grad=False)[0], -np.mean(m.elbo(x, 7)), rtol=1e-12)


def test_extreme_logits_are_finite():
    m = _small()
    m.params["R"][...] = 300.0 * np.sign(np.random.default_rng(0).normal(size=m.params["R"].shape))
    m.params["b"][...] = np.linspace(-1e3, 1e3, 12)
    x = _counts(3, 12)
    loss, grads = m.loss(x, 0)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    assert np.all(np.isfinite(m.log_weights(x, 5, 0)))


def test_sample_shapes():
    m = _small()
    p = m.sample(4, 0)
    assert p.shape == (4, 12) and np.allclose(p.sum(1), 1)
    c = m.sample(3, 0, n_words=50)
    assert c.shape == (3, 12) and np.all(c.sum(1) == 50)


@pytest.mark.parametrize("x, msg", [
    (np.ones((2, 11)), "shape"),
    (np.full((2, 12), 0.5), "integer word counts"),
    (-np.ones((2, 12)), "non-negative"),
    (np.full((2, 12), np.nan), "NaN"),
    (np.ones((0, 12)), "at least one document"),
])
def test_bad_input(x, msg):
    with pytest.raises(DataError, match=msg):
        _small().loss(x, 0)


@pytest.mark.parametrize("kw, msg", [({"latent": 0}, "latent"), ({"x_dim": 1}, "x_dim"),
                                     ({"hidden": ()}, "hidden"), ({"dtype": "int8"}, "dtype")])
def test_bad_constructor(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _small(**kw)


# -- data --------------------------------------------------------------------------------------

def test_read_feat_and_vocab(tmp_path):
    (tmp_path / "vocab.new").write_text("alpha 10\nbeta 7\ngamma 3\ndelta 1\n")
    (tmp_path / "test.feat").write_text("3 1:2 4:1\n1 2:5 3:1 2:1\n\n20 3:4\n")
    X, y = text.read_feat(tmp_path / "test.feat", 4)
    assert X.dtype == np.int32 and X.tolist() == [[2, 0, 0, 1], [0, 6, 1, 0], [0, 0, 4, 0]]
    assert y.tolist() == [3, 1, 20]
    assert text.read_vocab(tmp_path / "vocab.new") == ["alpha", "beta", "gamma", "delta"]
    ds = text.load_text_dataset(tmp_path, n_valid=1, n_test=1, seed=0)
    assert ds.V == 4 and len(ds.train) == 1 and ds.test_labels.shape == (1,)
    assert sorted(ds.train_labels.tolist() + ds.valid_labels.tolist() + ds.test_labels.tolist()) == [1, 3, 20]


@pytest.mark.parametrize("line, msg", [("1 0:3", "id >= 1"), ("1 2:x", "id:count"), ("x 2:1", "integer label"),
                                       ("1 9:1", "outside the vocabulary"), ("1 2", "id:count")])
def test_read_feat_errors(tmp_path, line, msg):
    f = tmp_path / "bad.feat"
    f.write_text("1 1:1\n" + line + "\n")
    with pytest.raises(DataError, match=msg):
        text.read_feat(f, 4)


def test_sources_errors(tmp_path):
    with pytest.raises(DataError, match="no text corpus"):
        text.load_text_dataset(tmp_path / "nothing")
    (tmp_path / "a.txt").write_text("1 1:1\n")
    with pytest.raises(DataError, match="not a .feat"):
        text.load_text_dataset(tmp_path / "a.txt")


def test_split_is_seeded_partition():
    a = text.split_documents(50, 5, 10, seed=3)
    b = text.split_documents(50, 5, 10, seed=3)
    c = text.split_documents(50, 5, 10, seed=4)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[2], c[2])
    assert sorted(np.concatenate(a).tolist()) == list(range(50)) and [len(i) for i in a] == [35, 5, 10]
    with pytest.raises(ValueError, match="n_valid"):
        text.split_documents(10, 5, 5)


def test_offline_reuters():
    ds = text.load_text_dataset("offline")
    assert ds.V == 4258 and (len(ds.train), len(ds.valid), len(ds.test)) == (315, 40, 40)
    assert ds.train.dtype == np.int32 and ds.train.sum(1).min() > 0
    assert ds.train_labels is None and "church" in ds.vocab


def test_perplexity_and_unigram():
    X = _counts(30, 10, seed=2)
    V = X.shape[1]
    assert math.isclose(text.perplexity(-X.sum(1) * math.log(V), X.sum(1)), V, rel_tol=1e-12)   # uniform: V
    u = text.Unigram(X)
    assert math.isclose(np.exp(u.log_p).sum(), 1.0, rel_tol=1e-12)
    assert text.perplexity(u.log_prob(X), X.sum(1)) < V
    with pytest.raises(DataError, match="at least one word"):
        text.perplexity([-1.0, -2.0], [3, 0])


def test_lda_bound_matches_sklearn():
    """The per-document LDA bound summed = scikit-learn's score minus its corpus-level topic term."""
    from scipy.special import digamma, gammaln
    from sklearn.decomposition import LatentDirichletAllocation
    X = _counts(40, 15, seed=4, mean=20).astype(np.int64)
    lda = LatentDirichletAllocation(3, learning_method="batch", max_iter=30, random_state=0,
                                    mean_change_tol=1e-10, max_doc_update_iter=2000).fit(X)
    b = text.lda_document_bound(X, lda.components_, lda.doc_topic_prior_, n_iter=2000, tol=1e-10)
    lam, eta, V = lda.components_, lda.topic_word_prior_, X.shape[1]
    Elog = digamma(lam) - digamma(lam.sum(1, keepdims=True))
    topic = (np.sum((eta - lam) * Elog) + np.sum(gammaln(lam) - gammaln(eta))
             + np.sum(gammaln(eta * V) - gammaln(lam.sum(1))))
    assert abs(b.sum() - (lda.score(X) - topic)) < 1e-6 * abs(b.sum())
    assert np.all(b < 0)


def test_nearest_words():
    E = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    words, sim = text.nearest_words(E, ["a", "b", "c", "d"], "a", k=2)
    assert words == ["b", "c"] and sim[0] > sim[1]


# -- the command line --------------------------------------------------------------------------

def test_cli_train_and_evaluate_offline(tmp_path):
    from nplvm.cli import main
    out = tmp_path / "run"
    assert main(["train", "nvdm", "--epochs", "2", "--hidden", "16", "--latent", "4", "--batch-size", "64",
                 "--out", str(out), "--no-progress"]) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["valid_nelbo"]) for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["x_dim"] == 4258
    assert main(["evaluate", "--checkpoint", str(out), "--K", "20", "--n", "10"]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["kind"] == "nvdm" and ev["nll"] <= ev["nelbo"] + 1.0


def test_benchmark_quick(tmp_path, capsys):
    from nplvm.bench import nvdm as bench
    out = tmp_path / "r.json"
    res = bench.main(["--quick", "--out", str(out)])
    text_out = capsys.readouterr().out
    saved = json.loads(out.read_text())
    run = saved["runs"][0]
    assert run["latent"] == 4 and np.isfinite(run["nvdm"]["ppl_elbo"]) and np.isfinite(run["lda"]["ppl"])
    assert run["nvdm"]["ppl_is"] <= run["nvdm"]["ppl_elbo"] * 1.01
    assert np.isclose(run["ratio_nvdm_lda"], run["nvdm"]["ppl_elbo"] / run["lda"]["ppl"])
    assert len(run["principal_directions"]) == 2 and res["unigram_ppl"] > 1
    for marker in ("NVDM (ELBO)", "LDA (sklearn", "unigram", "NVDM / LDA", "nearest to 'book'"):
        assert marker in text_out
