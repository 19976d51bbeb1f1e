"""Lesson 16 (VaDE) in quick mode: every check passed, the figures exist, the table is filled."""
from pathlib import Path


def test_lesson_16_quick(tmp_path, run_lesson):
    res = run_lesson("16_vade", ["--quick", "--out", str(tmp_path), "--seed", "0"])
    failed = [k for k, r in res["checks"].items() if not r["ok"]]
    assert res["all_ok"] and not failed, failed
    assert len(res["checks"]) >= 5
    names = {Path(f).name for f in res["figures"]}
    assert names == {"latent_by_cluster_and_digit.png", "vade_training.png", "samples_per_cluster.png",
                     "gmvae_q_y_over_training.png", "gmvae_usage_over_training.png"}
    assert all(Path(f).stat().st_size > 1000 for f in res["figures"])
    assert set(res["gmvae"]) == {"GMVAE (lesson 08)", "GMVAE + remedy"}
    for row in res["table"].values():
        assert 0.0 < row["accuracy"] <= 1.0 and 0.0 <= row["nmi"] <= 1.0
