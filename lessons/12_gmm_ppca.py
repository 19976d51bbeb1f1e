"""Lesson 12: the mixture of Gaussians and probabilistic PCA as latent variable models, fitted by EM.

Lecture notes 004_eef4e39dcc0eb5a8.txt, "Latent variable models" (Examples: mixture of gaussians,
PCA model), "Variational lower bound" and "EM-algorithm"; notes 001_3b34c7ea4ef78f1e.txt,
"II. OPTIMIZATION" (the E-step has a closed form for Gaussian mixtures).  Two models with the
same recipe p(x) = int p(x|z) p(z) dz, one with a discrete z and one with a continuous z:

    GMM   p(z) = Categorical(pi),    p(x | z = k) = N(x | mu_k, Sigma_k)
          p(x) = sum_k pi_k N(x | mu_k, Sigma_k),
          responsibilities r_nk = p(z = k | x_n) = pi_k N(x_n | mu_k, Sigma_k) / p(x_n)      (Bayes)
    PPCA  p(z) = N(0, I_L),          p(x | z) = N(x | W z + mu, sigma^2 I)
          p(x) = N(x | mu, W W^T + sigma^2 I)

EM is block-coordinate ascent on the ELBO L(q, theta) = E_q[log p(x, z | theta)] + H[q]:

    E-step  q(z_n) <- p(z_n | x_n, theta)          makes the bound tight: L = log p(X | theta)
    M-step  theta  <- argmax_theta L(q, theta)     raises L, and log p(X | theta) >= L

so log p(X | theta) never decreases.  PPCA also has a closed-form maximum (Tipping & Bishop 1999):
with S = U diag(lambda) U^T, sigma^2 = mean of the D - L smallest lambda, W = U_L (Lambda_L - sigma^2 I)^1/2.

Checks (each against a computation that does not share the code under test): responsibilities and
log p(x) against scipy's Gaussian densities; the M-step as the maximiser of L(q, .) (its gradient in
the means is zero, by finite differences); every EM step for L and log p(X); PPCA's log p(x)
against scipy with C = W W^T + sigma^2 I; the closed form as a stationary point (the
log-likelihood's gradient, nplvm's FactorAnalysis.loss, vanishes there) and as the global
maximum EM climbs to.

Run:  python lessons/12_gmm_ppca.py [--quick] [--out DIR] [--seed N]     (a few seconds)
"""
# %%
import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "12_gmm_ppca.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

from nplvm.models.fa import PPCA  # noqa: E402
from nplvm.models.gmm import GaussianMixture  # noqa: E402

EXACT = 1e-10            # float64 rounding of sums of ~1e3 terms of size ~10 (relative)


def gmm_data(rng, n):
    """Three 2-D clusters of different shapes, n points."""
    means = np.array([[-3.0, 0.0], [2.0, 2.5], [2.5, -2.0]])
    covs = np.array([[[1.0, 0.6], [0.6, 0.8]], [[0.6, -0.3], [-0.3, 0.9]], [[1.2, 0.0], [0.0, 0.3]]])
    y = rng.choice(3, n, p=[0.4, 0.35, 0.25])
    x = means[y] + np.einsum("nij,nj->ni", np.linalg.cholesky(covs)[y], rng.standard_normal((n, 2)))
    return x, y


def log_joint_scipy(x, pi, means, covs):
    """log pi_k + log N(x_n | mu_k, Sigma_k) by scipy: (N, K)."""
    return np.stack([np.log(pi[k]) + stats.multivariate_normal(means[k], covs[k]).logpdf(x)
                     for k in range(len(pi))], axis=1)


def elbo_gmm(x, resp, pi, means, covs):
    """L(q, theta) = mean_n sum_k q_nk [log pi_k + log N(x_n | mu_k, Sigma_k) - log q_nk]."""
    lj = log_joint_scipy(x, pi, means, covs)
    return float(np.mean(np.sum(resp * (lj - np.log(np.maximum(resp, 1e-300))), axis=1)))


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
rng = np.random.default_rng(args.seed)
table = C.CheckTable("Lesson 12: GMM and PPCA as latent variable models")
results = {"figures": []}

# %% [markdown]
# ## 1. The GMM: EM step by step, the ELBO after each half-step
# `reg_covar = 0`: the M-step is the exact maximiser, so nothing may decrease.
# %%
x, y_true = gmm_data(rng, C.quick_or(args, 300, 1500))
K = 3
gmm = GaussianMixture(K, covariance_type="full", reg_covar=0.0, tol=1e-8, max_iter=1, seed=args.seed)
gmm.fit(x)                                   # initialisation + one EM iteration
gmm._init(x)                                 # back to the initial parameters, to step by hand
n_iter = C.quick_or(args, 30, 80)
trace = []                                   # (log p(X) before, L after M-step, log p(X) after)
ll_hist = []
worst_m, worst_e = np.inf, np.inf
for t in range(n_iter):
    log_resp, ll = gmm._e_step(x)            # E-step: q = p(z|x, theta_t), so L = log p(X)
    ll_hist.append(ll)
    resp = np.exp(log_resp)
    gmm._m_step(x, log_resp)                 # M-step: theta_{t+1} = argmax L(q, .)
    L_after = elbo_gmm(x, resp, gmm.weights_, gmm.means_, gmm.covariances_)
    ll_after = float(np.mean(gmm.score_samples(x)))
    worst_m = min(worst_m, L_after - ll)     # M-step raises L(q, .) above log p(X | theta_t)
    worst_e = min(worst_e, ll_after - L_after)   # and log p(X | theta_{t+1}) >= L(q, theta_{t+1})
    trace.append((ll, L_after, ll_after))
log_resp, ll = gmm._e_step(x)
ll_hist.append(ll)
table.add("GMM M-step: min_t [L(q_t, theta_t+1) - log p(X|theta_t)] >= 0", worst_m, 0.0,
          EXACT * abs(ll), ">=", note="the E-step made L = log p(X|theta_t); the M-step maximises L")
table.add("GMM after M-step: min_t [log p(X|theta_t+1) - L(q_t, theta_t+1)] >= 0", worst_e, 0.0,
          EXACT * abs(ll), ">=", note="L is a lower bound: the gap is KL(q_t || p(z|x, theta_t+1))")
table.add("GMM EM: min_t [ll(t+1) - ll(t)] >= 0", float(np.min(np.diff(ll_hist))), 0.0,
          EXACT * abs(ll), ">=")
print(f"GMM, K = {K}, {len(x)} points: log p(x) per point {ll_hist[0]:.4f} -> {ll_hist[-1]:.4f} "
      f"in {n_iter} EM iterations")

# %% [markdown]
# ## 2. Responsibilities are Bayes' rule; log p(x) is a log-sum-exp
# %%
lj = log_joint_scipy(x, gmm.weights_, gmm.means_, gmm.covariances_)
r_scipy = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
table.add("r_nk = pi_k N(x|mu_k,Sigma_k) / sum_j (...) (scipy) (max abs diff)",
          float(np.max(np.abs(gmm.predict_proba(x) - r_scipy))), 0.0, EXACT, "<=")
table.add("log p(x) = log sum_k pi_k N(x|mu_k,Sigma_k) (scipy) (max abs diff)",
          float(np.max(np.abs(gmm.score_samples(x) - logsumexp(lj, axis=1)))), 0.0, EXACT * 100, "<=")
resp = np.exp(log_resp)
q_uniform = np.full_like(resp, 1.0 / K)
gap = float(np.mean(gmm.score_samples(x))) - elbo_gmm(x, q_uniform, gmm.weights_, gmm.means_,
                                                      gmm.covariances_)
kl = float(np.mean(np.sum(q_uniform * (np.log(q_uniform) - log_resp), axis=1)))
table.example("q = uniform: log p(x) - L(q) = KL(q || p(z|x))", gap, kl, EXACT * abs(ll),
              note="algebra: log p(x) = L(q) + KL(q || p(z|x)) for any q: the variational lower bound")

# %% [markdown]
# ## 3. The M-step is the maximiser of L(q, .): its gradient in the means vanishes
# dL/dmu_k = (1/N) sum_n r_nk Sigma_k^-1 (x_n - mu_k) = 0 at mu_k = sum_n r_nk x_n / N_k.
# %%
gmm._m_step(x, log_resp)
means = gmm.means_.copy()
h = 1e-5
g = np.zeros_like(means)
for k in range(K):
    for d in range(2):
        mp, mm = means.copy(), means.copy()
        mp[k, d] += h
        mm[k, d] -= h
        g[k, d] = (elbo_gmm(x, resp, gmm.weights_, mp, gmm.covariances_)
                   - elbo_gmm(x, resp, gmm.weights_, mm, gmm.covariances_)) / (2 * h)
table.add("M-step: max |dL(q, theta)/dmu_k| = 0 (central differences)", float(np.abs(g).max()), 0.0,
          1e-6, "<=", note="FD precision ~ eps * |L| / h = 1e-16 * 5 / 1e-5 ~ 1e-10; tol 1e-6")
pred = gmm.predict(x)
majority = np.array([np.argmax(np.bincount(pred[y_true == c], minlength=K)) for c in range(K)])
acc = float(np.mean(majority[y_true] == pred))
print(f"GMM clusters agree with the true labels (majority map) on {100 * acc:.1f}% of points")

fig, ax = C.plt.subplots(1, 2, figsize=(11, 4.3))
ax[0].scatter(x[:, 0], x[:, 1], c=resp, s=6)               # RGB = the three responsibilities
tt = np.linspace(0, 2 * np.pi, 100)
for k in range(K):
    lam, U = np.linalg.eigh(gmm.covariances_[k])
    ell = gmm.means_[k][:, None] + (U * (2 * np.sqrt(lam))) @ np.stack([np.cos(tt), np.sin(tt)])
    ax[0].plot(ell[0], ell[1], "k-", lw=1)
    ax[0].annotate(f"pi={gmm.weights_[k]:.2f}", gmm.means_[k], fontsize=8,
                   bbox=dict(boxstyle="round", fc="white", alpha=0.8))
ax[0].set(xlabel="x_1", ylabel="x_2", title="GMM: colour = responsibilities (RGB), 2-sd ellipses")
ax[1].plot(np.arange(len(ll_hist)), ll_hist, "o-", ms=3)
ax[1].set(xlabel="EM iteration", ylabel="mean log p(x) per point (nats)",
          title="EM never decreases the log-likelihood")
ax[1].grid(alpha=0.3)
results["figures"].append(C.save_figure(fig, args.out / "gmm_em.png"))

# %% [markdown]
# ## 4. PPCA: the closed form, checked three ways, and EM climbing to it
# %%
D, L, N = 20, 3, C.quick_or(args, 500, 4000)
W_true = rng.normal(0, 1, (D, L)) * np.array([3.0, 2.0, 1.5])
X = rng.standard_normal((N, L)) @ W_true.T + 0.7 * rng.standard_normal((N, D)) + rng.normal(0, 1, D)
cf = PPCA(L, method="closed_form").fit(X)
em = PPCA(L, method="em", tol=1e-12, max_iter=5000, seed=args.seed).fit(X)
C_cf = cf.get_covariance()
ll_scipy = stats.multivariate_normal(cf.mean_, C_cf).logpdf(X)
table.add("PPCA log p(x) = log N(x | mu, W W^T + sigma^2 I) (scipy) (mean)",
          float(np.mean(cf.score_samples(X))), float(np.mean(ll_scipy)), EXACT * 100)
_, grads = cf.loss(X)
gnorm = max(float(np.max(np.abs(v))) for v in grads.values())
table.add("PPCA closed form is stationary: max |d(-log p)/d theta|", gnorm, 0.0, 1e-8, "<=",
          note="the gradient of FactorAnalysis.loss (W, mu, log sigma^2) at Tipping & Bishop's solution")
ll_em = np.array(em.loglik_)
table.add("PPCA EM: min_t [ll(t+1) - ll(t)] >= 0", float(np.min(np.diff(ll_em))), 0.0,
          EXACT * abs(ll_em[-1]), ">=")
table.add("PPCA EM <= closed form (the global maximum)", ll_em[-1], cf.loglik_[-1],
          EXACT * abs(ll_em[-1]), "<=")
table.add("PPCA EM reaches the closed form (log-lik. difference)", cf.loglik_[-1] - ll_em[-1], 0.0,
          1e-6, "<=", note=f"EM tol 1e-12 per iteration; {em.n_iter_} iterations; tol 1e-6 nats")
rel_C = float(np.linalg.norm(em.get_covariance() - C_cf) / np.linalg.norm(C_cf))
table.add("PPCA EM and closed form: same W W^T + sigma^2 I (rel. Frobenius)", rel_C, 0.0, 1e-4, "<=",
          note="W itself is determined only up to a rotation R: W W^T is not")
lam = np.linalg.eigvalsh(np.cov(X, rowvar=False, bias=True))[::-1]
print(f"PPCA (D = {D}, L = {L}, N = {N}): sigma^2 closed form {cf.sigma2:.4f} (true 0.49), EM {em.sigma2:.4f}; "
      f"log p(x) per point: closed form {cf.loglik_[-1]:.6f}, EM {ll_em[-1]:.6f} after {em.n_iter_} iterations")
results.update(gmm_loglik=ll_hist, ppca_loglik_em=ll_em.tolist(), ppca_loglik_cf=cf.loglik_[-1])

fig, ax = C.plt.subplots(1, 2, figsize=(11, 4.3))
short = np.maximum(cf.loglik_[-1] - ll_em, 1e-16)
ax[0].loglog(np.arange(1, len(ll_em) + 1), short, label="closed form - EM")
ax[0].set(xlabel="EM iteration + 1", ylabel="log p(x) per point: closed form - EM (nats)",
          title="PPCA: EM climbs to the closed-form maximum (Tipping & Bishop)")
ax[0].grid(alpha=0.3, which="both")
ax[0].legend(fontsize=8)
ax[1].bar(np.arange(1, D + 1), lam, color=["C1"] * L + ["C0"] * (D - L))
ax[1].axhline(cf.sigma2, color="k", ls="--", lw=1, label=f"sigma^2 = mean of the {D - L} smallest = {cf.sigma2:.3f}")
ax[1].set(xlabel="eigenvalue index", ylabel="eigenvalue of the sample covariance", yscale="log",
          title=f"kept (orange, L = {L}) and discarded eigenvalues")
ax[1].legend(fontsize=8)
results["figures"].append(C.save_figure(fig, args.out / "ppca_em_vs_closed_form.png"))

results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
