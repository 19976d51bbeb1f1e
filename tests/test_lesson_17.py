"""Lesson 17 (hierarchical VAEs) in quick mode: it runs, every printed check holds, its figures exist."""
from pathlib import Path

import numpy as np


def test_lesson_17_quick(tmp_path, capsys, run_lesson):
    res = run_lesson("17_hierarchical_vae", ["--quick", "--out", str(tmp_path), "--seed", "0"])
    out = capsys.readouterr().out
    assert res["all_ok"], [k for k, r in res["checks"].items() if not r["ok"]]
    assert len(res["checks"]) == 13
    assert np.isclose(res["merge"]["var_q"], 0.4) and np.isclose(res["merge"]["mu_q"], 0.88)
    for name in ("HVAE", "LVAE"):
        kl = np.array(res["kl_per_layer"][name])
        assert kl.shape == (3, 2) and np.all(np.isfinite(kl))
        assert 0 < res["nll"][name] < 800
        assert all(0 <= c <= s for c, s in zip(res["active_units"][name], (32, 8)))
    assert np.all(np.array(res["kl_per_layer"]["LVAE"]) >= 0)       # closed-form KLs
    names = {Path(f).name for f in res["figures"]}
    assert names == {"kl_per_layer.png", "samples_per_layer.png"}
    assert all(Path(f).stat().st_size > 1000 for f in res["figures"])
    for marker in ("[1] merge", "[2] HVAE", "[3] LVAE", "[4] LVAE", "13 checks: all ok"):
        assert marker in out
