"""Lesson 15 (the conditional VAE) in quick mode: every printed check holds, its figures exist."""
from pathlib import Path


def test_lesson_15_quick(tmp_path, run_lesson):
    res = run_lesson("15_cvae", ["--quick", "--out", str(tmp_path)])
    bad = {k: r for k, r in res["checks"].items() if not r["ok"]}
    assert not bad, bad
    assert len(res["checks"]) >= 15
    names = {Path(f).name for f in res["figures"]}
    assert names == {"completions.png", "samples_by_label.png"}
    assert all(Path(f).stat().st_size > 5000 for f in res["figures"])
    n = res["numbers"]
    assert set(n["cll"]) == {"baseline", "gsnn", "cvae", "hybrid"}
    for name, r in n["cll"].items():                      # IS estimate below the -ELBO, up to noise
        assert r["cll"] <= r["neg_elbo"] + 4 * r["cll_se"], name
    assert n["cvae_kl"] >= 0 and n["entropy_cvae"] <= n["entropy_baseline"]
