"""Lesson 09 (VRNN) in quick mode: every printed check holds and every figure is written."""
from pathlib import Path

import numpy as np


def test_lesson_09_quick(tmp_path, run_lesson):
    result = run_lesson("09_vrnn", ["--quick", "--out", str(tmp_path), "--seed", "0"])
    checks = result["checks"]
    failed = [k for k, r in checks.items() if not r["ok"]]
    assert not failed, f"lesson checks failed: {failed}"
    assert any(k.startswith("BPTT gradient") for k in checks)
    assert "IS log p(x) >= ELBO (test mean, nats)" in checks
    # figures: samples, completion, KL per step, learning curves, all non-empty PNGs
    names = sorted(Path(f).name for f in result["figures"])
    assert names == ["completion.png", "curves.png", "kl_per_step.png", "samples.png"]
    for f in result["figures"]:
        data = Path(f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert Path(f).parent == tmp_path
    # training made progress and the numbers are in the right units (nats per 784-pixel image)
    h = result["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert 50 < result["test_nll_is"] <= result["test_nelbo"] < 784 * np.log(2)
    kl = np.asarray(result["kl_per_step"])
    assert kl.shape == (28,) and (kl >= 0).all()
    assert len(result["nll_per_step"]) == 28
