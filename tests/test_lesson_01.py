"""Lesson 01 (factor analysis) in full mode: every printed check holds, the figures exist, and
the ELBO table says what the notes say (three presentations equal, gap = KL to the posterior)."""
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def result(tmp_path_factory, run_lesson):
    out = tmp_path_factory.mktemp("lesson01")
    return run_lesson("01_factor_analysis", ["--out", str(out), "--seed", "0"])      # full: ~20 s


def test_every_check_holds(result):
    failed = [k for k, r in result["checks"].items() if not r["ok"]]
    assert result["all_ok"] and not failed, failed
    for name in ("EM: min_t [ll(t+1) - ll(t)] >= 0", "log p(x): Woodbury = dense",
                 "exact q: gap = 0", "amortized q: gap >= best diagonal gap"):
        assert name in result["checks"]


def test_elbo_table(result):
    table = result["elbo_table"]
    assert set(table) == {"exact p(z|x)", "amortized", "wrong: mean+1, cov I"}
    for q, row in table.items():
        for key in ("expected_loglik_minus_kl", "loglik_minus_kl_posterior"):
            assert row[key] == pytest.approx(row["joint_plus_entropy"], abs=1e-8)
        assert row["gap"] == pytest.approx(row["kl_posterior"], abs=1e-8)
        assert row["log_px"] - row["joint_plus_entropy"] == pytest.approx(row["gap"], abs=1e-8)
    assert abs(table["exact p(z|x)"]["gap"]) < 1e-9
    assert 0 < table["amortized"]["gap"] < table["wrong: mean+1, cov I"]["gap"]


def test_em_curve_and_figures(result):
    ll = result["loglik"]
    assert len(ll) == result["n_iter"] + 1 and ll[-1] > ll[0]
    names = sorted(Path(f).name for f in result["figures"])
    assert names == ["em_curve.png", "factors.png", "reconstructions.png", "samples.png"]
    for f in result["figures"]:
        assert Path(f).stat().st_size > 5000
