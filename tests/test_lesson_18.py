"""Lesson 18 (the optimal prior) in quick mode: it runs, every printed check holds, its figures exist."""
from pathlib import Path


def test_lesson_18_quick(tmp_path, capsys, run_lesson):
    res = run_lesson("18_optimal_prior", ["--quick", "--out", str(tmp_path), "--seed", "0"])
    out = capsys.readouterr().out
    assert res["all_ok"], [k for k, r in res["checks"].items() if not r["ok"]]
    assert len(res["checks"]) >= 14
    d = res["kl_decomposition"]
    assert 0 < d["mutual_info"] <= d["log_N"] and d["marginal_kl"] > 0
    # the logistic regression found the quadratic (the table's rows hold it within 4 SE)
    assert all(abs(a - b) < 0.2 for a, b in zip(res["dr_coefficients"], res["dr_closed_form"]))
    names = {Path(f).name for f in res["figures"]}
    assert names == {"density_ratio_two_gaussians.png", "aggregated_posterior.png",
                     "vampprior_pseudo_inputs.png", "discriminator_log_ratio.png"}
    assert all(Path(f).stat().st_size > 1000 for f in res["figures"])
    for marker in ("[1] density ratio", "[2] gradient checks", "[3] (KLD)", "[4] VampPrior", "[5] density-ratio VAE"):
        assert marker in out
