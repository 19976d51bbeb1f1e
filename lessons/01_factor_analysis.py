"""Lesson 01: factor analysis on MNIST, fitted by EM, and the ELBO three ways.

Lecture notes 000_9c66b664a7223908.txt, "Models" (FA) and 001_3b34c7ea4ef78f1e.txt.  The model (FA):

    z ~ N(0, I_L),   x = W z + mu + eps,   eps ~ N(0, diag psi),   x in [0, 1]^784

is the one latent variable model whose posterior is exact and Gaussian,

    p(z|x) = N(V (x - mu), Sigma),  Sigma = (I + W^T Psi^-1 W)^-1,  V = Sigma W^T Psi^-1,

so every quantity the notes introduce for VAEs can be computed here in closed form and checked:

1. EM (notes 001_3b34c7ea4ef78f1e.txt, "II. OPTIMIZATION"; 004_eef4e39dcc0eb5a8.txt, "EM-algorithm":
   the E-step sets q to the exact posterior, the M-step
   maximises the ELBO over theta) -- the log-likelihood never decreases.
2. log p(x) without any 784 x 784 inverse (Woodbury, determinant lemma), checked against a dense
   evaluation.
3. The amortized q_phi(z|x) = N(A x + b, diag exp(logvar)) of notes 001, "B. AMORTIZATION",
   trained by the reparameterized ELBO gradient: A -> V, b -> -V mu, and variances
   -> 1 / Lambda_ii (Lambda = Sigma^-1), the best a diagonal Gaussian can do.
4. The three presentations of the ELBO (notes 001, "DIFFERENT PRESENTATIONS OF THE ELBO"),
       I   E_q[log p(x, z)] + H[q]
       II  E_q[log p(x|z)] - KL(q || p(z))
       III log p(x) - KL(q || p(z|x))
   equal for the exact, the amortized and a deliberately wrong q; the gap log p(x) - ELBO is
   KL(q || p(z|x)), zero only for the exact posterior.

Pixels are intensities in [0, 1].  Border pixels are constant (always 0), so their ML noise
variance would be 0 and the density infinite: the noise floor (``--noise-floor``, default 1e-3,
a noise std of 0.03 intensity) keeps every psi_d away from 0.

    python lessons/01_factor_analysis.py            # ~10 s: 32 factors on the offline MNIST
    python lessons/01_factor_analysis.py --quick    # ~2 s: what the tests run
"""
# %%
import sys
from pathlib import Path

import numpy as np

FILE = Path(globals().get("__file__", "01_factor_analysis.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))   # lessons/_common, also when imported
import _common as C  # noqa: E402  (puts the repository on sys.path)

from nplvm.data import load_dataset  # noqa: E402
from nplvm.models.fa import FactorAnalysis  # noqa: E402
from nplvm.models.linear_gaussian_q import LinearGaussianQ  # noqa: E402
from nplvm.plots import tile_images  # noqa: E402

PRESENTATIONS = (("joint_plus_entropy", "I: E[log p(x,z)] + H[q]"),
                 ("expected_loglik_minus_kl", "II: E[log p(x|z)] - KL(q||p(z))"),
                 ("loglik_minus_kl_posterior", "III: log p(x) - KL(q||p(z|x))"))


def extra_args(parser):
    parser.add_argument("--factors", type=int, default=None, help="L (default 32; 8 with --quick)")
    parser.add_argument("--noise-floor", type=float, default=1e-3, help="floor on every psi_d")


def monte_carlo_elbo(fa, x, m, var, n_samples, rng):
    """Presentation I by sampling z ~ q = N(m, diag var): mean over examples of
    mean_s [log p(x, z_s) - log q(z_s)], and its standard error."""
    W, mu, psi = fa.params["W"], fa.params["mu"], fa.psi
    D, L = W.shape
    eps = rng.standard_normal((n_samples, x.shape[0], L))
    z = m + np.sqrt(var) * eps                                              # (S, N, L)
    resid = x - z @ W.T - mu
    log_lik = -0.5 * (np.sum(np.log(2 * np.pi * psi)) + np.sum(resid ** 2 / psi, axis=-1))
    log_prior = -0.5 * (L * np.log(2 * np.pi) + np.sum(z * z, axis=-1))
    log_q = -0.5 * (np.sum(np.log(2 * np.pi * var)) + np.sum(eps * eps, axis=-1))
    per_example = np.mean(log_lik + log_prior - log_q, axis=0)              # (N,)
    w = log_lik + log_prior - log_q
    se = np.sqrt(np.mean(np.var(w, axis=0) / n_samples)) / np.sqrt(x.shape[0])
    return float(per_example.mean()), float(se)


def factor_figure(W, path, n_show):
    """Each column of W as a 28 x 28 image, on a diverging scale centred at 0 (red +, blue -)."""
    cols = W[:, :n_show].T / np.abs(W[:, :n_show]).max(axis=0)[:, None]   # each in [-1, 1]
    mosaic = tile_images(cols, nrow=8, pad_value=np.nan)
    fig, ax = C.plt.subplots(figsize=(8, 8 * mosaic.shape[0] / mosaic.shape[1] + 0.5))
    ax.imshow(mosaic, cmap="seismic", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"the first {n_show} factors (columns of W), each scaled to [-1, 1]")
    return C.save_figure(fig, path)


def gray_figure(rows, path, title, nrow):
    mosaic = tile_images(np.clip(rows, 0, 1), nrow=nrow, pad_value=0.5)
    fig, ax = C.plt.subplots(figsize=(8, 8 * mosaic.shape[0] / mosaic.shape[1] + 0.4))
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return C.save_figure(fig, path)


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE, extra=extra_args)
L = args.factors or C.quick_or(args, 8, 32)
rng = np.random.default_rng(args.seed)
table = C.CheckTable("Lesson 01: factor analysis")
figures = []

# %% [markdown]
# ## Data: the offline MNIST subset, intensities in [0, 1]
# %%
ds = load_dataset("offline", binarization=None, seed=args.seed)
X = ds.train.astype(np.float64) / 255.0
X_test = ds.test.astype(np.float64) / 255.0
n_train = C.quick_or(args, 1000, X.shape[0])
X = X[rng.permutation(X.shape[0])[:n_train]]
X_eval = X_test[:C.quick_or(args, 100, 500)]
print(f"data: {X.shape[0]} training and {X_eval.shape[0]} test images of 784 pixels, "
      f"{int(np.sum(X.var(0) == 0))} constant pixels in the training set")

# %% [markdown]
# ## 1. EM
# %%
fa = FactorAnalysis(L, noise_floor=args.noise_floor, tol=C.quick_or(args, 1e-3, 1e-4),
                    max_iter=C.quick_or(args, 40, 500), seed=args.seed).fit(X)
ll = np.array(fa.loglik_)
ll_train_n, ll_test_n = fa.score_samples(X), fa.score_samples(X_test)
d_tt = ll_test_n.mean() - ll_train_n.mean()
se_tt = float(np.hypot(ll_test_n.std(ddof=1) / np.sqrt(len(ll_test_n)), ll_train_n.std(ddof=1) / np.sqrt(len(ll_train_n))))
print(f"EM: {fa.n_iter_} iterations, log p(x) per image {ll[0]:.2f} -> {ll[-1]:.2f} nats "
      f"(train), {fa.score(X_test):.2f} (test)")
print(f"  test - train = {d_tt:+.2f} +- {se_tt:.2f} nats (SE of two independent means; per-image log p(x) "
      f"spreads with sd {ll_test_n.std():.0f})")
if abs(d_tt) <= 3 * se_tt:
    print(f"  they agree within 3 SE: with {L * 784 + 2 * 784:,} parameters for {X.shape[0] * 784:,} pixel "
          "values FA barely overfits, and which digits fall in which set moves the means either way -- "
          "so the test score can come out above the training score")
else:
    print(f"  beyond 3 SE: {'overfitting (the training images fit better)' if d_tt < 0 else 'the test digits are easier for the model'}")
table.add("EM: min_t [ll(t+1) - ll(t)] >= 0", lhs=np.min(np.diff(ll)), rhs=0.0,
          tol=1e-9 * abs(ll[-1]), relation=">=", note="the log-likelihood never decreases")
table.add("EM: loglik_[-1] = score(train)", lhs=ll[-1], rhs=fa.score(X), tol=1e-8)

# %% [markdown]
# ## 2. log p(x) via Woodbury vs a dense 784 x 784 evaluation
# %%
from scipy.stats import multivariate_normal
dense = multivariate_normal(fa.mean_, fa.get_covariance()).logpdf(X_eval[:20])
table.add("log p(x): Woodbury = dense", lhs=np.mean(fa.score_samples(X_eval[:20])),
          rhs=np.mean(dense), tol=1e-6, note="mean over 20 test images; dense = scipy with C = W W^T + Psi")

# %% [markdown]
# ## 3. the amortized q, trained by the reparameterized ELBO gradient
# %%
q = LinearGaussianQ.for_model(fa, n_samples=4, seed=args.seed)
gap_before = float(np.mean(fa.elbo(X_eval, q.mean(X_eval), q.cov())["gap"]))
q.fit(X, n_steps=C.quick_or(args, 500, 6000), batch_size=100, lr=3e-2, lr_final=1e-4,
      seed=args.seed)
A_star, b_star, v_star = q.exact_targets()
gap_after = float(np.mean(fa.elbo(X_eval, q.mean(X_eval), q.cov())["gap"]))
Lam = np.linalg.inv(fa.posterior(X_eval[:1])[1])
mean_field_gap = 0.5 * (np.sum(np.log(np.diag(Lam))) - np.linalg.slogdet(Lam)[1])
mean_err = np.abs(q.mean(X_eval) - fa.transform(X_eval)).max() / np.abs(fa.transform(X_eval)).max()
var_ratio = np.exp(q.params["logvar"]) / v_star
print(f"amortized q: gap log p(x) - ELBO {gap_before:.2f} -> {gap_after:.2f} nats per image; "
      f"the best diagonal q has gap 1/2 [sum log Lambda_ii - log|Lambda|] = {mean_field_gap:.3f}")
print(f"  max |A x + b - V (x - mu)| / max |V (x - mu)| = {mean_err:.3f};  var / (1/Lambda_ii) in "
      f"[{var_ratio.min():.3f}, {var_ratio.max():.3f}]")
if not args.quick:   # strongly correlated pixels make this slow for SGD: --quick is too short
    table.add("amortized q: mean -> V (x - mu) (rel. max error)", lhs=mean_err, rhs=0.0,
              tol=0.1, relation="<=")
    table.add("amortized q: var -> 1/Lambda_ii (max |ratio - 1|)", lhs=np.abs(var_ratio - 1).max(),
              rhs=0.0, tol=0.05, relation="<=")
table.add("amortized q: gap >= best diagonal gap", lhs=gap_after, rhs=mean_field_gap, tol=1e-9,
          relation=">=", note="KL(q||p(z|x)) >= KL(q*||p(z|x)), q* = N(V(x - mu), diag 1/Lambda_ii)")
table.add("amortized q: training shrinks the gap 10x", lhs=gap_after, rhs=0.1 * gap_before, tol=0.0,
          relation="<=")

# %% [markdown]
# ## 4. the ELBO three ways, for three q's
# %%
post_mean, Sigma = fa.posterior(X_eval)
qs = {
    "exact p(z|x)": (post_mean, Sigma, np.diag(Sigma)),
    "amortized": (q.mean(X_eval), q.cov(), np.exp(q.params["logvar"])),
    "wrong: mean+1, cov I": (post_mean + 1.0, np.eye(L), np.ones(L)),
}
elbo_table = {}
header = ["q"] + [name for _, name in PRESENTATIONS] + ["MC of I (+-SE)", "log p(x)", "gap",
                                                        "KL(q||p(z|x))"]
lines = []
for qname, (m, S, var) in qs.items():
    e = fa.elbo(X_eval, m, S)
    row = {key: float(np.mean(e[key])) for key, _ in PRESENTATIONS}
    row.update(log_px=float(np.mean(e["log_px"])), gap=float(np.mean(e["gap"])),
               kl_posterior=float(np.mean(e["kl_posterior"])))
    if qname == "exact p(z|x)":      # MC with a full covariance: sample through its Cholesky
        chol = np.linalg.cholesky(Sigma)
        eps = rng.standard_normal((C.quick_or(args, 50, 200), X_eval.shape[0], L))
        z = m + eps @ chol.T
        resid = X_eval - z @ fa.params["W"].T - fa.mean_
        w = (-0.5 * (np.sum(np.log(2 * np.pi * fa.psi)) + np.sum(resid ** 2 / fa.psi, -1))
             - 0.5 * np.sum(z * z, -1) + 0.5 * np.sum(eps * eps, -1)
             + np.sum(np.log(np.diag(chol))))                        # log p(x,z) - log q(z)
        mc = float(w.mean())
        se = float(np.sqrt(np.mean(np.var(w, axis=0) / w.shape[0])) / np.sqrt(w.shape[1]))
    else:
        mc, se = monte_carlo_elbo(fa, X_eval, m, var, C.quick_or(args, 50, 200), rng)
    row.update(mc=mc, mc_se=se)
    elbo_table[qname] = row
    scale = max(1.0, abs(row["log_px"]))
    table.add(f"{qname}: MC of I = closed form", lhs=mc, rhs=row["joint_plus_entropy"],
              tol=max(4 * se, 1e-9 * scale), note="tol = 4 standard errors (the per-draw spread; "
              "the closed form is per image, so image-to-image spread does not enter)" if qname.startswith("exact") else "")
    lines.append([qname] + [f"{row[k]:.4f}" for k, _ in PRESENTATIONS]
                 + [f"{mc:.3f} +- {se:.3f}", f"{row['log_px']:.4f}", f"{row['gap']:.4f}",
                    f"{row['kl_posterior']:.4f}"])
# The identities, once each, as the worst case over the three q's (each presentation is its own
# formula in FactorAnalysis.elbo: I with the entropy, II with the KL to the prior, III with the
# Woodbury log p(x) and the KL to the exact posterior; "gap = KL(q||p(z|x))" is I = III again)
scale = max(1.0, max(abs(r["log_px"]) for r in elbo_table.values()))
table.add("I = II, max over the three q", lhs=max(abs(r["joint_plus_entropy"] - r["expected_loglik_minus_kl"])
                                                   for r in elbo_table.values()), rhs=0.0, tol=1e-10 * scale,
          relation="<=", note="float64 rounding of terms of ~|log p(x)|")
table.add("I = III (gap = KL(q||p(z|x))), max over the three q",
          lhs=max(abs(r["joint_plus_entropy"] - r["loglik_minus_kl_posterior"]) for r in elbo_table.values()),
          rhs=0.0, tol=1e-10 * scale, relation="<=")
table.add("exact q: gap = 0", lhs=elbo_table["exact p(z|x)"]["gap"], rhs=0.0, tol=1e-9)
table.example("amortized gap <= wrong gap", lhs=elbo_table["amortized"]["gap"],
              rhs=elbo_table["wrong: mean+1, cov I"]["gap"], tol=0.0, relation="<=",
              note="a deliberately wrong q: its gap is hundreds of times larger; shown, not a check")
widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
print(f"\nThe ELBO three ways, nats per test image (mean over {X_eval.shape[0]} images):")
for j, r in enumerate([header] + lines):
    print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if j == 0:
        print("-+-".join("-" * w for w in widths))

# %% [markdown]
# ## Figures
# %%
figures.append(factor_figure(fa.params["W"], args.out / "factors.png", min(L, 32)))
fig, ax = C.plt.subplots(figsize=(6, 4))
ax.plot(np.arange(len(ll)), ll, marker="o", ms=2)
ax.axhline(fa.score(X_test), color="k", ls="--", lw=1,
           label=f"final model on the test set (test - train = {d_tt:+.1f} +- {se_tt:.1f}: sampling error)"
           if abs(d_tt) <= 3 * se_tt else "final model on the test set")
ax.set_xlabel("EM iteration (M-steps)")
ax.set_ylabel("mean log p(x) per image (nats)")
ax.set_title(f"EM for factor analysis, L = {L}")
ax.set_ylim(ll[min(1, len(ll) - 1)] - 0.05 * abs(ll[-1] - ll[min(1, len(ll) - 1)]) - 1,
            max(ll[-1], fa.score(X_test)) + 0.05 * abs(ll[-1] - ll[min(1, len(ll) - 1)]) + 1)
ax.grid(alpha=0.3)
ax.legend()
figures.append(C.save_figure(fig, args.out / "em_curve.png"))
samples = fa.sample(32, seed=args.seed)
mean_of_x_given_z = fa.sample(32, seed=args.seed, return_latent=True)[1] @ fa.params["W"].T + fa.mean_
figures.append(gray_figure(np.vstack([mean_of_x_given_z, samples]), args.out / "samples.png",
                           "top 4 rows: W z + mu (z ~ p(z));  bottom 4 rows: x ~ p(x|z) with the noise", 8))
recon = fa.transform(X_eval[:16]) @ fa.params["W"].T + fa.mean_
figures.append(gray_figure(np.vstack([X_eval[:16], recon]), args.out / "reconstructions.png",
                           "test images (top) and W E[z|x] + mu (bottom)", 16))

print()
results = C.finish(table, {"figures": figures,
        "elbo_table": elbo_table, "loglik": ll.tolist(), "n_iter": fa.n_iter_})

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
