"""Lesson 02: the KL divergence between Gaussians, in closed form, by Monte Carlo, and its gradient.

The ELBO's presentation II (lecture notes 001_3b34c7ea4ef78f1e.txt, "DIFFERENT PRESENTATIONS OF THE
ELBO", II; 004_eef4e39dcc0eb5a8.txt, "Evidence Lower Bound (ELBO)") is

    ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)),

and for q = N(mu, sigma^2) and p = N(0, 1) the KL has a closed form (Kingma & Welling 2014, app. B):

    KL(N(mu, sigma^2) || N(0, 1)) = E_q[log q(z) - log p(z)]
                                  = (sigma^2 + mu^2 - 1) / 2 - log sigma                   (KL-1)

(summed over dimensions for a diagonal Gaussian), with gradients, in the log-variance
parameterisation s = log sigma^2 the code uses,

    dKL/dmu = mu,      dKL/ds = (e^s - 1) / 2.                                              (dKL)

Between two diagonal Gaussians q = N(m, e^s) and p = N(n, e^t), per dimension,

    KL(q || p) = 1/2 (t - s + (e^s + (m - n)^2) e^-t - 1).                                  (KL-2)

What this lesson checks, each by two independent computations:

 1. (KL-1) against a Monte Carlo average of log q(z) - log p(z), z ~ q, whose error shrinks like
    1/sqrt(S) (the standard error), and against numerical integration (scipy.integrate.quad);
 2. the diagonal multivariate case: the fused kernel, the plain-NumPy definition and quadrature;
 3. (dKL) against finite differences (nplvm.gradcheck), in float64;
 4. (KL-2) and its four gradients likewise;
 5. Jensen's inequality (notes 002_e73e17ee4c7eee9a.txt, "Jensen's Inequality") log E[w] >= E[log w]
    with w = p(z)/q(z), z ~ q: here E_q[w] = 1, so
    log E[w] = 0 while E[log w] = -KL(q || p): the Jensen gap is exactly the KL.  This is the
    ELBO's derivation in miniature (log p(x) = log E_q[w] >= E_q[log w] = ELBO).

Run:  python lessons/02_kl_gaussian.py [--quick] [--out DIR] [--seed N]
"""
# %%
import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "02_kl_gaussian.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
from scipy import integrate, stats  # noqa: E402

import kernels  # noqa: E402
from nplvm.distributions import DiagGaussian, kl_std_normal, std_normal_log_prob  # noqa: E402
from nplvm.gradcheck import check_grad  # noqa: E402

GRAD_TOL = 1e-7          # relative error of a correct gradient against central differences
N_SE = 4.0               # a Monte Carlo check passes within 4 standard errors


def kl_std_formula(mu, sigma):
    """(KL-1) written as in the notes, for scalars: (sigma^2 + mu^2 - 1)/2 - log sigma."""
    return 0.5 * (sigma ** 2 + mu ** 2 - 1.0) - np.log(sigma)


def kl_by_quadrature(mu_q, sd_q, mu_p=0.0, sd_p=1.0):
    """KL(N(mu_q, sd_q^2) || N(mu_p, sd_p^2)) = int q(z) log(q(z)/p(z)) dz by scipy.integrate.quad."""
    q, p = stats.norm(mu_q, sd_q), stats.norm(mu_p, sd_p)

    def integrand(z):
        return q.pdf(z) * (q.logpdf(z) - p.logpdf(z))

    lo, hi = mu_q - 12 * sd_q, mu_q + 12 * sd_q             # q's mass outside is below 1e-30
    value, _ = integrate.quad(integrand, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200)
    return value


def log_ratio_samples(q, eps):
    """log q(z) - log N(z | 0, I) at z = mu + sigma eps; eps (S, D) -> (S,)."""
    z = q.rsample(eps)
    return q.log_prob(z) - std_normal_log_prob(z)


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
rng = np.random.default_rng(args.seed)
quick = args.quick
table = C.CheckTable("Lesson 02: KL between Gaussians")
results = {"figures": []}

# %% [markdown]
# ## 1. (KL-1) in one dimension: closed form vs quadrature vs Monte Carlo, error ~ 1/sqrt(S)
# %%
mu, sigma = 1.0, 0.6
kl_closed = kl_std_formula(mu, sigma)
q1 = DiagGaussian(np.array([mu]), np.array([2 * np.log(sigma)]))      # logvar = log sigma^2
kl_kernel = float(q1.kl_std()[0])                                      # kernels.gaussian_kl_std
kl_quad = kl_by_quadrature(mu, sigma)
table.add("1D: (s^2+mu^2-1)/2 - log s = fused kernel", kl_closed, kl_kernel, 1e-12)
table.add("1D: closed form = quadrature (scipy)", kl_closed, kl_quad, 1e-9)

S_list = [10, 100, 1000, 10000] if quick else [10, 100, 1000, 10000, 100000]
repeats = 100 if quick else 200
rms_err, se_list, est_list = [], [], []
for S in S_list:
    # `repeats` independent estimates of size S: their spread is the estimator's error
    f = log_ratio_samples(q1, rng.standard_normal((repeats, S, 1))).reshape(repeats, S)
    est = f.mean(axis=1)
    rms_err.append(float(np.sqrt(np.mean((est - kl_closed) ** 2))))
    se_list.append(float(f[0].std(ddof=1) / np.sqrt(S)))              # SE from one run
    est_list.append(float(est[0]))
for S, e, se in zip(S_list, est_list, se_list):
    if S < 10000:                 # 4 SE at S = 10 is ~0.6 nats on a KL of 0.7: too weak to be a check
        continue                  # (the small S are in the figure and in the slope row)
    table.add(f"1D: MC (S={S}) = closed form", e, kl_closed, N_SE * se,
              note="" if S != S_list[-1] else f"tol = {N_SE:g} standard errors of the MC mean")
slope = float(np.polyfit(np.log(S_list), np.log(rms_err), 1)[0])
table.add("1D: slope of log RMS error vs log S = -1/2", slope, -0.5, 0.1,
          note=f"RMS over {repeats} independent estimates per S; tol 0.1")
results.update(kl_1d=kl_closed, kl_1d_mc=est_list, kl_1d_se=se_list, S=S_list,
               rms_err=rms_err, rms_slope=slope)

fig, ax = C.plt.subplots(1, 2, figsize=(10, 4))
S_fine = np.unique(np.logspace(0.5, np.log10(S_list[-1]), 60).astype(int))
f_run = log_ratio_samples(q1, rng.standard_normal((S_list[-1], 1)))
run_mean = np.cumsum(f_run) / np.arange(1, f_run.size + 1)
run_se = np.array([f_run[:s].std(ddof=1) / np.sqrt(s) for s in S_fine])
ax[0].semilogx(S_fine, run_mean[S_fine - 1], label="MC mean of log q(z) - log p(z)")
ax[0].fill_between(S_fine, run_mean[S_fine - 1] - 2 * run_se, run_mean[S_fine - 1] + 2 * run_se,
                   alpha=0.3, label="+- 2 standard errors")
ax[0].axhline(kl_closed, color="k", ls="--", label=f"closed form {kl_closed:.4f}")
ax[0].set(xlabel="samples S", ylabel="KL estimate (nats)",
          title=f"KL(N({mu}, {sigma}^2) || N(0, 1)): MC converges")
ax[0].legend(fontsize=8)
ax[1].loglog(S_list, rms_err, "o-", label=f"RMS error over {repeats} runs (slope {slope:.2f})")
ax[1].loglog(S_list, rms_err[0] * np.sqrt(S_list[0] / np.array(S_list)), "k--",
             label="1/sqrt(S)")
ax[1].set(xlabel="samples S", ylabel="|MC - closed form| (RMS)", title="error ~ 1/sqrt(S)")
ax[1].legend(fontsize=8)
results["figures"].append(C.save_figure(fig, args.out / "kl_mc_convergence.png"))

# %% [markdown]
# ## 2. Diagonal multivariate: sum over dimensions of (KL-1)
# %%
D = 6
mu_q = rng.normal(0.0, 1.0, D)
logvar_q = rng.normal(0.0, 0.7, D)
q = DiagGaussian(mu_q[None, :], logvar_q[None, :])
kl_fused = float(q.kl_std()[0][0])
kl_plain = float(kl_std_normal(mu_q, logvar_q)[0])
kl_notes = float(np.sum(kl_std_formula(mu_q, np.exp(0.5 * logvar_q))))
kl_scipy = float(sum(kl_by_quadrature(m, np.exp(0.5 * s)) for m, s in zip(mu_q, logvar_q)))
S = 20000 if quick else 200000
f = log_ratio_samples(q, rng.standard_normal((S, D)))
kl_mc, kl_mc_se = float(f.mean()), float(f.std(ddof=1) / np.sqrt(S))
table.add(f"D={D}: fused kernel = plain NumPy definition", kl_fused, kl_plain, 1e-12)
table.add(f"D={D}: fused kernel = sum_d (s^2+mu^2-1)/2 - log s", kl_fused, kl_notes, 1e-12)
table.add(f"D={D}: closed form = sum of 1-D quadratures", kl_fused, kl_scipy, 1e-8)
table.add(f"D={D}: closed form = MC (S={S})", kl_fused, kl_mc, N_SE * kl_mc_se)
results.update(kl_diag=kl_fused, kl_diag_scipy=kl_scipy, kl_diag_mc=kl_mc, kl_diag_se=kl_mc_se)

# %% [markdown]
# ## 3. (dKL): gradients w.r.t. mu and logvar vs central differences, float64
# %%
M = mu_q[None, :].copy()                     # (1, D) live arrays perturbed by the FD check
S_ = logvar_q[None, :].copy()

def kl_value():
    return float(kernels.gaussian_kl_std(M, S_)[0].sum())

_, dmu, dlogvar = kernels.gaussian_kl_std(M, S_)
err_mu = check_grad(kl_value, M, dmu)
err_lv = check_grad(kl_value, S_, dlogvar)
table.add("dKL/dmu = mu  (vs finite differences)", err_mu, 0.0, GRAD_TOL, "<=",
          note="gradient rows: lhs is the relative error against central differences")
table.add("dKL/dlogvar = (e^logvar - 1)/2  (vs FD)", err_lv, 0.0, GRAD_TOL, "<=")
table.example("dKL/dmu: kernel = formula mu", float(np.max(np.abs(dmu - M))), 0.0, 1e-15, "<=",
              note="the kernel returns its input mu: shown, not a check (the FD row checks it)")
table.add("dKL/dlogvar: kernel = formula", float(np.max(np.abs(dlogvar - 0.5 * (np.exp(S_) - 1)))),
          0.0, 1e-15, "<=")
results.update(grad_err_mu=err_mu, grad_err_logvar=err_lv)

# %% [markdown]
# ## 4. (KL-2): two diagonal Gaussians, value and four gradients
# %%
mu_p = rng.normal(0.0, 1.0, D)
logvar_p = rng.normal(0.0, 0.7, D)
p = DiagGaussian(mu_p[None, :], logvar_p[None, :])
kl_qp = float(q.kl(p)[0][0])
kl_pq = float(p.kl(q)[0][0])
kl_qp_formula = float(np.sum(0.5 * (logvar_p - logvar_q
                                    + (np.exp(logvar_q) + (mu_q - mu_p) ** 2) * np.exp(-logvar_p) - 1)))
kl_qp_scipy = float(sum(kl_by_quadrature(mq, np.exp(0.5 * sq), mp, np.exp(0.5 * sp))
                        for mq, sq, mp, sp in zip(mu_q, logvar_q, mu_p, logvar_p)))
zq = q.rsample(rng.standard_normal((S, D)))
f2 = q.log_prob(zq) - p.log_prob(zq)
kl_qp_mc, kl_qp_se = float(f2.mean()), float(f2.std(ddof=1) / np.sqrt(S))
table.add("KL(q||p): kernel = formula (KL-2)", kl_qp, kl_qp_formula, 1e-12)
table.add("KL(q||p): closed form = quadrature", kl_qp, kl_qp_scipy, 1e-8)
table.add(f"KL(q||p): closed form = MC (S={S})", kl_qp, kl_qp_mc, N_SE * kl_qp_se)
table.add("KL(q||q) = 0", float(q.kl(q)[0][0]), 0.0, 1e-14)
table.add("KL(q||p) >= 0 and KL(p||q) >= 0", min(kl_qp, kl_pq), 0.0, 0.0, ">=",
          note=f"KL is not symmetric: KL(q||p) = {kl_qp:.4f}, KL(p||q) = {kl_pq:.4f}")
A = [mu_q[None, :].copy(), logvar_q[None, :].copy(), mu_p[None, :].copy(), logvar_p[None, :].copy()]

def kl2_value():
    return float(kernels.gaussian_kl(*A)[0].sum())

grads = kernels.gaussian_kl(*A)[1:]
errs2 = {}
for name, a, g in zip(("mu_q", "logvar_q", "mu_p", "logvar_p"), A, grads):
    errs2[name] = check_grad(kl2_value, a, g)
    table.add(f"dKL(q||p)/d{name} (vs FD)", errs2[name], 0.0, GRAD_TOL, "<=")
results.update(kl_qp=kl_qp, kl_pq=kl_pq, kl_qp_scipy=kl_qp_scipy, kl_qp_mc=kl_qp_mc,
               kl_qp_se=kl_qp_se, grad_err_kl2=errs2)

# the figure: densities and the integrand whose area is the KL, in dimension 0
zz = np.linspace(-4, 4, 800)
dq, dp = stats.norm(mu_q[0], np.exp(0.5 * logvar_q[0])), stats.norm(mu_p[0], np.exp(0.5 * logvar_p[0]))
fig, ax = C.plt.subplots(1, 2, figsize=(10, 4))
ax[0].plot(zz, dq.pdf(zz), label=f"q = N({mu_q[0]:.2f}, {np.exp(logvar_q[0]):.2f})")
ax[0].plot(zz, dp.pdf(zz), label=f"p = N({mu_p[0]:.2f}, {np.exp(logvar_p[0]):.2f})")
ax[0].set(xlabel="z", ylabel="density", title="two Gaussians (dimension 0)")
ax[0].legend(fontsize=8)
integ = dq.pdf(zz) * (dq.logpdf(zz) - dp.logpdf(zz))
kl0 = kl_by_quadrature(mu_q[0], np.exp(0.5 * logvar_q[0]), mu_p[0], np.exp(0.5 * logvar_p[0]))
ax[1].plot(zz, integ, color="C2")
ax[1].fill_between(zz, integ, alpha=0.3, color="C2")
ax[1].axhline(0, color="k", lw=0.5)
ax[1].set(xlabel="z", ylabel="q(z) log q(z)/p(z)",
          title=f"KL in dim 0 = signed area = {kl0:.4f} nats")
results["figures"].append(C.save_figure(fig, args.out / "kl_two_gaussians.png"))

# %% [markdown]
# ## 5. Jensen: log E_q[w] >= E_q[log w], w = p(z)/q(z); the gap is KL(q || p)
# %%
# q wider than p/2 in variance (sigma^2 > 1/2) so that w has a finite variance.
mj, sj = 0.5, 1.2
qj = DiagGaussian(np.array([mj]), np.array([2 * np.log(sj)]))
Sj = 20000 if quick else 200000
zj = qj.rsample(rng.standard_normal((Sj, 1)))
log_w = std_normal_log_prob(zj) - qj.log_prob(zj)                     # log p(z) - log q(z)
w = np.exp(log_w)
mean_log_w, se_log_w = float(log_w.mean()), float(log_w.std(ddof=1) / np.sqrt(Sj))
log_mean_w = float(np.log(w.mean()))
se_log_mean_w = float(w.std(ddof=1) / np.sqrt(Sj) / w.mean())        # delta method
kl_j = kl_std_formula(mj, sj)
table.example("Jensen: log E[w] >= E[log w] (on the sample)", log_mean_w, mean_log_w, 0.0, ">=",
              note="holds for every sample (log is concave): shown, not a check; the two rows below "
                   "check each side against its value, 0 and -KL(q||p)")
table.add("Jensen: E_q[log w] = -KL(q||p)", mean_log_w, -kl_j, N_SE * se_log_w)
table.add("Jensen: log E_q[w] = log 1 = 0", log_mean_w, 0.0, N_SE * se_log_mean_w)
results.update(jensen_log_mean_w=log_mean_w, jensen_mean_log_w=mean_log_w,
               jensen_kl=kl_j, jensen_se=(se_log_mean_w, se_log_w))

fig, ax = C.plt.subplots(1, 2, figsize=(10, 4))
ax[0].hist(log_w, bins=80, density=True, alpha=0.6, color="C0")
ax[0].axvline(mean_log_w, color="C3", label=f"E[log w] = {mean_log_w:.3f} (= -KL)")
ax[0].axvline(log_mean_w, color="k", ls="--", label=f"log E[w] = {log_mean_w:.3f} (= 0)")
ax[0].set(xlabel="log w = log p(z) - log q(z),  z ~ q", ylabel="density",
          title="the Jensen gap is KL(q || p)")
ax[0].legend(fontsize=8)
ww = np.linspace(1e-3, max(3.0, np.quantile(w, 0.995)), 400)
idx = rng.choice(Sj, 300, replace=False)
ax[1].plot(ww, np.log(ww), "k", label="log w (concave)")
ax[1].scatter(w[idx], log_w[idx], s=6, alpha=0.4, label="samples (w_i, log w_i)")
ax[1].plot([w.mean()], [log_mean_w], "ko", label="(E[w], log E[w])")
ax[1].plot([w.mean()], [mean_log_w], "o", color="C3", label="(E[w], E[log w]) lies below")
ax[1].set(xlabel="w", ylabel="log", ylim=(-4, 1.5), title="log E[w] >= E[log w]")
ax[1].legend(fontsize=8, loc="lower right")
results["figures"].append(C.save_figure(fig, args.out / "jensen.png"))

results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
