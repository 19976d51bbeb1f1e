"""Lesson 20 (NVDM) in quick mode: it runs, its printed checks hold, its figures exist."""
from pathlib import Path

import numpy as np


def test_lesson_20_quick(tmp_path, capsys, run_lesson):
    res = run_lesson("20_nvdm", ["--quick", "--out", str(tmp_path), "--seed", "0"])
    out = capsys.readouterr().out
    failed = [k for k, r in res["checks"].items() if not r["ok"]]
    assert not failed, failed
    assert len(res["checks"]) == 6
    assert res["grad_error"] < 1e-6
    ppl = res["perplexity"]
    assert np.isfinite(ppl["elbo"]) and ppl["is"] <= ppl["elbo"] * 1.01     # IS bound is tighter
    assert 1 < res["unigram"]["test"] < 4258 and np.isfinite(res["lda"]["test"])
    assert set(res["nearest"]) >= {"medical", "companies", "israel", "book"}
    assert all(len(v) == 5 for v in res["nearest"].values())
    assert len(res["directions"]) == 2 and all(len(w) == 10 for w in res["directions"])
    assert len(res["principal_directions"]) == 2 and all(len(e["+"]) == 10 for e in res["principal_directions"])
    names = {Path(f).name for f in res["figures"]}
    assert names == {"curves.png", "word_vectors.png", "directions.png"}
    assert all(Path(f).stat().st_size > 1000 for f in res["figures"])
    for marker in ("[1] gradients", "[3] training", "[4] nearest words", "[5] top words", "6 checks: all ok"):
        assert marker in out
