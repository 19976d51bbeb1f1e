"""The derivation lessons 02, 06, 10 (full mode: under a minute) and 07 (--quick) run; their checks hold.

Each lesson's ``main(argv)`` returns the numbers it prints; these tests run it with
``--quick --out <tmp>`` and assert

* every row of its check table ("identity | lhs | rhs | difference | tol | ok"), and
* the key identities again, here, from the returned numbers (so a table that silently dropped a
  row or loosened a tolerance would still be caught):
  closed form vs Monte Carlo within standard errors, finite-difference gradients to 1e-7
  relative in float64, L_1 <= L_k <= L_m <= log p(x) within standard errors, the IWAE gradient
  identity to 1e-8, loss = D + beta R and D + R = -ELBO at beta = 1 to float64 rounding;
* every figure it reports is a PNG file on disk.

(They run single-threaded: the repository's conftest.py pins one thread per library.)
"""
from pathlib import Path

import numpy as np
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_quick(run_lesson, stem, tmp_path, quick=True):
    res = run_lesson(stem, (["--quick"] if quick else []) + ["--out", str(tmp_path), "--seed", "0"])
    failed = {k: v for k, v in res["checks"].items() if not v["ok"]}
    assert not failed, f"{stem}: checks failed: {failed}"
    assert res["all_ok"] is True
    assert res["figures"], f"{stem} wrote no figure"
    for f in res["figures"]:
        path = Path(f)
        assert path.parent == tmp_path, f"{f} not under --out {tmp_path}"
        assert path.read_bytes()[:8] == PNG_MAGIC, f"{f} is not a PNG"
        assert path.stat().st_size > 5000, f"{f} is suspiciously small"
    return res


def test_02_kl_gaussian(tmp_path, run_lesson):
    res = run_quick(run_lesson, "02_kl_gaussian", tmp_path, quick=False)        # full: seconds
    mu, sigma = 1.0, 0.6
    assert res["kl_1d"] == pytest.approx((sigma ** 2 + mu ** 2 - 1) / 2 - np.log(sigma), abs=1e-15)
    for est, se in zip(res["kl_1d_mc"], res["kl_1d_se"]):          # MC within 4 standard errors
        assert abs(est - res["kl_1d"]) <= 4 * se
    assert res["rms_slope"] == pytest.approx(-0.5, abs=0.1)         # error ~ 1/sqrt(S)
    assert abs(res["kl_diag"] - res["kl_diag_scipy"]) < 1e-8
    assert abs(res["kl_diag"] - res["kl_diag_mc"]) <= 4 * res["kl_diag_se"]
    assert abs(res["kl_qp"] - res["kl_qp_scipy"]) < 1e-8
    assert abs(res["kl_qp"] - res["kl_qp_mc"]) <= 4 * res["kl_qp_se"]
    assert res["kl_qp"] > 0 and res["kl_pq"] > 0 and res["kl_qp"] != pytest.approx(res["kl_pq"])
    assert res["grad_err_mu"] < 1e-7 and res["grad_err_logvar"] < 1e-7
    assert max(res["grad_err_kl2"].values()) < 1e-7 and len(res["grad_err_kl2"]) == 4
    # Jensen: log E[w] >= E[log w], and the gap is KL(q || p)
    se_log_mean_w, se_log_w = res["jensen_se"]
    assert res["jensen_log_mean_w"] > res["jensen_mean_log_w"]
    assert abs(res["jensen_mean_log_w"] + res["jensen_kl"]) <= 4 * se_log_w
    assert abs(res["jensen_log_mean_w"]) <= 4 * se_log_mean_w


def test_06_importance_sampling(tmp_path, run_lesson):
    res = run_quick(run_lesson, "06_importance_sampling", tmp_path, quick=False)   # full: ~15 s
    L, se, log_px = res["L"], res["L_se"], res["log_px"]
    # the k-sample bound: L_1 <= L_5 <= L_50 <= L_200 <= log p(x), within 3 SE of each difference
    ks = [1, 5, 50, 200]
    for k, m in zip(ks[:-1], ks[1:]):
        assert L[k] <= L[m] + 3 * np.hypot(se[k], se[m]), (k, m, L[k], L[m])
    assert L[200] <= log_px + 3 * se[200]
    assert L[1] < L[200]                                            # it does tighten
    assert abs(L[1] - res["elbo_closed"]) <= 4 * se[1]              # L_1 is the ELBO
    assert log_px - L[200] < (log_px - L[1]) / 5                     # converging to log p(x)
    # the log of the unbiased estimate is biased low, for every proposal and K
    for name, st in res["stats"].items():
        for K, (mean, se_k, _) in st.items():
            assert mean <= log_px + 3 * se_k, (name, K)
    # delta method for the prior proposal: bias ~ -Var(w/p(x)) / (2K) at the K the lesson chose,
    # where the prediction is resolved (>= 8 SE of the measured bias)
    K = res["bias_K"]["prior"]
    bias, se_K = res["stats"]["prior"][K][0] - log_px, res["stats"]["prior"][K][1]
    pred = -res["rel_var"]["prior"] / (2 * K)
    assert abs(pred) >= 8 * se_K
    assert abs(bias - pred) <= 4 * se_K + 0.1 * abs(pred)
    assert res["rel_var"]["mean-field"] == float("inf")
    # grad L_k = sum_i w~_i grad log w_i, for the proposal's and the model's parameters
    assert set(res["grad_errors"]) == {"m", "s", "W", "mu", "log_psi"}
    for name, (central, richardson) in res["grad_errors"].items():
        assert richardson < 1e-8, (name, richardson)
        assert central < 1e-7, (name, central)


def test_07_amortization_gap(tmp_path, run_lesson):
    res = run_quick(run_lesson, "07_amortization_gap", tmp_path)
    assert max(res["grad_errors"]) < 1e-7
    amort, amort_se = res["amortization_gap"], res["amortization_gap_se"]
    approx, approx_se = res["approximation_gap"], res["approximation_gap_se"]
    assert np.all(amort >= -3 * amort_se)                          # ELBO(q*) >= ELBO(q_phi)
    assert np.all(approx >= -3 * approx_se)                        # log p(x) >= ELBO(q*)
    assert res["mean_amortization_gap"] > 0
    assert np.all(res["elbo_local"] <= res["log_px"] + 3 * approx_se)
    np.testing.assert_allclose(res["log_px"] - res["elbo_encoder"], approx + amort, atol=1e-9)
    # EM on factor analysis is coordinate ascent on the ELBO: it never decreases, the E-step
    # makes it tight (= log p(x)), and after the M-step log p(x) is above it again
    trace = res["em_trace"]
    elbos = [e for _, e, _ in trace]
    assert len(trace) >= 6 and all(a <= b + 1e-10 for a, b in zip(elbos[:-1], elbos[1:]))
    for label, elbo, loglik in trace:
        if "E-step" in label:
            assert abs(elbo - loglik) < 1e-9, label
        else:
            assert loglik >= elbo - 1e-10, label


def test_10_beta_vae(tmp_path, run_lesson):
    res = run_quick(run_lesson, "10_beta_vae", tmp_path, quick=False)          # full: ~35 s (the chords)
    rows = res["curve"]
    assert [r["beta"] for r in rows] == sorted(r["beta"] for r in rows) and len(rows) >= 3
    for r in rows:                                                  # loss = D + beta R, same eps
        assert abs(r["loss"] - (r["D_loss_eps"] + r["beta"] * r["R_loss_eps"])) < 1e-9
        assert r["R"] > 0 and r["D"] > 0
    one = next(r for r in rows if r["beta"] == 1.0)
    assert abs(one["loss"] - res["neg_elbo_beta1"]) < 1e-9          # loss = -ELBO at beta = 1
    assert abs(res["neg_elbo_beta1"] - (one["D_loss_eps"] + one["R_loss_eps"])) < 1e-9
    # a larger beta buys a lower rate: R decreases along the betas
    assert rows[0]["R"] > rows[-1]["R"]
    chords = [k for k in res["checks"] if k.startswith("chord beta")]
    assert len(chords) == len(rows) - 1                              # full mode: every chord checked
