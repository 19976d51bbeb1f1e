"""Lesson 08 (GMVAE) in quick mode: every check in its table passed, its figures exist."""
from pathlib import Path

import numpy as np


def test_lesson_08_quick(tmp_path, capsys, run_lesson):
    res = run_lesson("08_gmvae", ["--quick", "--out", str(tmp_path), "--seed", "0"])
    out = capsys.readouterr().out
    failed = [k for k, r in res["checks"].items() if not r["ok"]]
    assert res["all_ok"] and not failed, failed
    assert len(res["checks"]) == 5
    assert len(res["accuracy"]) == 3 and all(0.0 < a <= 1.0 for a in res["accuracy"])
    assert np.isclose(res["usage"].sum(), 1.0) and np.all(res["kl_per_component"] >= 0)
    names = {Path(f).name for f in res["figures"]}
    assert names == {"samples_per_component.png", "prior_means.png", "per_component_kl.png",
                     "accuracy_over_training.png"}
    assert all(Path(f).stat().st_size > 1000 for f in res["figures"])
    assert "-ELBO on" in out and "majority digit of each component" in out
