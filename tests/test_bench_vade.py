"""The VaDE clustering benchmark in quick mode, the metrics it reports, and the recipe's seeding."""
import json

import numpy as np
import pytest

from nplvm import clustering as C
from nplvm.bench import vade as bench
from nplvm.models.vade import VaDE


def test_bench_quick_writes_table(tmp_path):
    out = tmp_path / "r.json"
    res = bench.main(["--quick", "--model", "vade-held,gmvae-remedy", "--seeds", "2", "--restarts", "2",
                      "--out", str(out)])
    saved = json.loads(out.read_text())
    assert len(saved["runs"]) == 4 and {r["model"] for r in saved["runs"]} == {"vade-held", "gmvae-remedy"}
    rows = {(r["model"], r["stage"]): r for r in res["table"]}
    assert set(rows) == {("vade-held", "init_full_gmm"), ("vade-held", "init"), ("vade-held", "final"),
                         ("gmvae-remedy", "init"), ("gmvae-remedy", "final")}
    for r in saved["runs"]:
        if r["model"] == "vade-held":                         # the diagnostic: single-start GMMs, scored two ways
            assert len(r["restarts"]) == 2 and all(0 < q["accuracy_full"] <= 1 and 0 < q["accuracy_diag"] <= 1
                                                   and np.isfinite(q["loglik"]) for q in r["restarts"])
    for r in rows.values():
        assert 0 < r["accuracy"]["mean"] <= r["accuracy"]["best"] <= 1 and r["accuracy"]["n"] == 2
        assert r["selected_by_elbo"]["seed"] in (0, 1)
    merged = bench.main(["--merge", str(out), "--out", str(tmp_path / "m.json")])
    assert merged["table"] == res["table"]


def test_diagonal_predict_is_the_gaussian_argmax_with_the_diagonals():
    from nplvm.models.gmm import GaussianMixture
    from scipy.stats import multivariate_normal
    g = np.random.default_rng(2)
    z = np.concatenate([g.normal(0, 1, (40, 3)), g.normal(3, 0.5, (40, 3))])
    gmm = GaussianMixture(2, "full", seed=0).fit(z)
    var = C.diagonal_variances(gmm)
    want = np.argmax([[gmm.weights_[k] * multivariate_normal(gmm.means_[k], np.diag(var[k])).pdf(q)
                       for k in range(2)] for q in z], axis=1)
    np.testing.assert_array_equal(bench.diagonal_predict(gmm, z), want)


def test_metrics_against_hand_counts():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    assign = np.array([1, 1, 0, 0, 0, 2, 2, 2])          # cluster 1 -> 0, 0 -> 1, 2 -> 2: 7 of 8
    m = C.cluster_metrics(labels, assign)
    assert m["accuracy"] == pytest.approx(7 / 8) and m["purity"] == pytest.approx(7 / 8)
    assert C.cluster_metrics(labels, labels)["nmi"] == pytest.approx(1.0)
    perm = np.array([2, 0, 1])[labels]                    # relabelled clusters: still perfect
    assert C.cluster_metrics(labels, perm) == pytest.approx({"accuracy": 1.0, "purity": 1.0, "nmi": 1.0})
    normalized_mutual_info_score = pytest.importorskip("sklearn.metrics").normalized_mutual_info_score
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(labels, assign), rel=1e-12)


def test_recipe_is_seeded_and_floors_the_variances():
    g = np.random.default_rng(0)
    protos = np.zeros((2, 20))
    protos[0, :10] = protos[1, 10:] = 1
    labels = np.repeat([0, 1], 60)
    x = np.abs(protos[labels] - (g.random((120, 20)) < 0.05)).astype(np.uint8)
    runs = []
    for _ in range(2):
        m = VaDE(x_dim=20, hidden=[16], latent=2, n_components=2, seed=1)
        r = C.vade_recipe(m, x, seed=3, log=None, pretrain_epochs=10, epochs=3, gmm_inits=2,
                          pretrain_lr=1e-2, var_floor=0.05, batch_size=30)
        runs.append((m, r))
    (m1, r1), (m2, r2) = runs
    for k in m1.params:
        np.testing.assert_array_equal(m1.params[k], m2.params[k])
    assert np.all(np.exp(m1.logvar_c.value) >= 0.05 * (1 - 1e-6))
    assert C.cluster_metrics(labels, m1.predict(x))["accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown VaDE recipe settings"):
        C.vade_recipe(m1, x, log=None, epoch=3)


def test_bad_model_name_is_a_clear_error_before_anything_is_written(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick", "--model", "vade,vaed", "--out", str(tmp_path / "new" / "r.json")])
    assert e.value.code == 2
    assert "error: expected --model from vade, vade-held, gmvae, gmvae-remedy, got vaed" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
