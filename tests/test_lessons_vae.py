"""Lessons 03-05 in --quick mode: every numeric check they print holds, every figure is written."""


def assert_lesson_ok(res, tmp_path, n_checks, figures):
    bad = {k: r for k, r in res["checks"].items() if not r["ok"]}
    assert not bad, bad
    assert len(res["checks"]) >= n_checks
    for f in figures:
        p = tmp_path / f
        assert p.is_file() and p.stat().st_size > 5000, f          # a real PNG, not an empty canvas
        assert str(p) in res["figures"]


def test_lesson_03_vae_mnist(tmp_path, run_lesson):
    res = run_lesson("03_vae_mnist", ["--out", str(tmp_path)])                    # full: ~35 s
    assert_lesson_ok(res, tmp_path, 5, ["learning_curves.png", "reconstructions.png", "samples.png",
                                        "manifold.png", "latent_scatter.png", "learning_curves_2d_vs_20d.png"])
    n = res["numbers"]
    assert n["test_elbo"] <= n["test_log_px"] and n["posterior_kl"] > 0


def test_lesson_04_gradient_estimators(tmp_path, run_lesson):
    res = run_lesson("04_gradient_estimators", ["--out", str(tmp_path)])          # full: seconds
    assert_lesson_ok(res, tmp_path, 10, ["toy_grad_mu.png", "toy_grad_logvar.png",
                                         "encoder_gradient_variance.png"])
    assert res["numbers"]["encoder_variance_ratio_median"] > 10
    assert res["numbers"]["toy_variance_ratio_mu"] > 1


def test_lesson_05_iwae(tmp_path, run_lesson):
    res = run_lesson("05_iwae", ["--quick", "--out", str(tmp_path)])
    assert_lesson_ok(res, tmp_path, 11, ["learning_curves.png", "bound_vs_k.png", "trained_k_comparison.png"])
    rows = res["numbers"]["models"]
    assert [r["k_train"] for r in rows] == [1, 5, 50]
    for r in rows:
        assert r["elbo"] <= r["log_px"]
