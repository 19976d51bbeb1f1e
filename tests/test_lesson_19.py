"""Lesson 19 (beta-VAE vs FactorVAE) in quick mode: every check holds, every figure is written."""
from pathlib import Path


def test_lesson_19_quick(tmp_path, run_lesson):
    result = run_lesson("19_factorvae", ["--quick", "--out", str(tmp_path), "--seed", "0"])
    checks = result["checks"]
    failed = [k for k, r in checks.items() if not r["ok"]]
    assert not failed, f"lesson checks failed: {failed}"
    assert "TC by logistic regression (DR) = -1/2 log det R" in checks
    assert any(k.startswith("FactorVAE gradient") for k in checks)
    names = sorted(Path(f).name for f in result["figures"])
    assert names == ["dsprites_factors.png", "metric_and_tc.png", "traversal_betavae.png",
                     "traversal_factorvae.png", "traversal_vae.png"]
    for f in result["figures"]:
        assert Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(f).parent == tmp_path
    assert set(result["scores"]) == {"VAE (beta = 1)", "beta-VAE (beta = 4)", "FactorVAE (gamma = 35)"}
    assert abs(result["tc_exact"] - 0.6735) < 1e-3
