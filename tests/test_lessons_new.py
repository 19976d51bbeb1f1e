"""Lessons 11-14 (the notes' topics the first ten lessons did not teach): every check holds.

11, 12 and 13 take seconds in full mode, so the full lesson runs; 14 trains two networks and runs
with --quick.  Beyond the lesson's own table, a few of its numbers are asserted here again.
"""
from pathlib import Path

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_checked(run_lesson, stem, tmp_path, quick):
    res = run_lesson(stem, (["--quick"] if quick else []) + ["--out", str(tmp_path), "--seed", "0"])
    failed = {k: r for k, r in res["checks"].items() if not r["ok"]}
    assert res["all_ok"] and not failed, failed
    assert all(r["kind"] == "check" for r in res["checks"].values())
    for f in res["figures"]:
        assert Path(f).parent == tmp_path and Path(f).read_bytes()[:8] == PNG_MAGIC, f
        assert Path(f).stat().st_size > 5000, f
    return res


def test_11_bayes_beta_bernoulli(tmp_path, run_lesson):
    res = run_checked(run_lesson, "11_bayes_beta_bernoulli", tmp_path, quick=False)
    k, n = res["k"], res["n"]
    assert res["theta_ml"] == pytest.approx(k / n)
    assert res["theta_map"] == pytest.approx((2 + k - 1) / (4 + n - 2))      # Beta(2, 2) prior
    assert res["predictive"] == pytest.approx((2 + k) / (4 + n))
    assert len(res["checks"]) >= 8


def test_12_gmm_ppca(tmp_path, run_lesson):
    res = run_checked(run_lesson, "12_gmm_ppca", tmp_path, quick=False)
    ll = res["gmm_loglik"]
    assert all(b >= a - 1e-9 for a, b in zip(ll[:-1], ll[1:])) and ll[-1] > ll[0]
    assert res["ppca_loglik_em"][-1] == pytest.approx(res["ppca_loglik_cf"], abs=1e-6)
    assert "q = uniform: log p(x) - L(q) = KL(q || p(z|x))" in res["examples"]


def test_13_autoregressive(tmp_path, run_lesson):
    res = run_checked(run_lesson, "13_autoregressive", tmp_path, quick=False)
    assert res["test_nll"] < res["indep_nll"] - 20           # context helps, by tens of nats
    assert sorted(Path(f).name for f in res["figures"]) == ["completions.png", "learning_curves.png",
                                                          "samples.png"]


def test_14_gaussian_decoder_autoencoder(tmp_path, run_lesson):
    res = run_checked(run_lesson, "14_gaussian_decoder_autoencoder", tmp_path, quick=True)
    assert res["log_px"] >= res["elbo"]
    assert res["codes_kl_AE"] > res["codes_kl_VAE"]
