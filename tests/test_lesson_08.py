"""Lesson 08 (GMVAE) in quick mode: it runs, its printed checks hold, its figures exist."""
from pathlib import Path

import numpy as np


def test_lesson_08_quick(tmp_path, capsys, load_lesson):
    res = load_lesson("08_gmvae").main(["--quick", "--out", str(tmp_path), "--seed", "0"])
    out = capsys.readouterr().out
    assert res["grad_error"] < 1e-5                            # whole-model gradient check
    assert res["z_max"] < 5.0                                  # SF mean agrees with the exact sum
    assert res["variance_ratio"] > 10                          # ... with far more variance
    assert len(res["accuracy"]) == 3 and all(0.0 < a <= 1.0 for a in res["accuracy"])
    assert res["final_accuracy"] > 0.1                         # better than one cluster for all
    assert res["init_accuracy"] > 0.1                          # the VaDE init: q(y|x) already sorts
    assert np.isclose(res["usage"].sum(), 1.0) and np.all(res["kl_per_component"] >= 0)
    assert np.all(np.isfinite(res["nelbo"])) and res["nelbo"][-1] < res["nelbo"][0]
    names = {Path(f).name for f in res["figures"]}
    assert names == {"samples_per_component.png", "prior_means.png", "per_component_kl.png",
                     "accuracy_over_training.png"}
    assert all(Path(f).stat().st_size > 1000 for f in res["figures"])
    for marker in ("[1] gradient check", "[2] training", "[3] gradient of the q(y|x) head", "ratio"):
        assert marker in out
