"""Lesson 06: importance sampling of log p(x), and the k-sample (IWAE) bound, where log p(x) is exact.

Factor analysis (lecture notes 000_9c66b664a7223908.txt, "Models": FA) is a latent variable model whose marginal and
posterior are Gaussian and known in closed form (nplvm.models.fa):

    z ~ N(0, I_L),   x | z ~ N(W z + mu, Psi)      =>   p(x) = N(mu, W W^T + Psi),
    p(z|x) = N(V (x - mu), Sigma).

So every Monte Carlo statement about log p(x) can be checked against the truth.
The notes (001_3b34c7ea4ef78f1e.txt, "I. IMPORTANCE SAMPLING") rewrite the marginal likelihood with any proposal q(z):

    p(x) = int p(x|z) p(z) dz = E_q[ p(x, z) / q(z) ] = E_q[w],     w = p(x, z) / q(z)      (IS)

    p_hat_K = (1/K) sum_i w_i,   z_i ~ q  iid          E[p_hat_K] = p(x)        (unbiased)   (1)
    E[log p_hat_K] <= log E[p_hat_K] = log p(x)        (Jensen: the log is biased low)     (2)
    E[log p_hat_K] - log p(x) ~= -Var_q(w) / (2 K p(x)^2)      for large K (delta method)   (3)

E[log p_hat_K] is the k-sample bound L_K (notes 002_e73e17ee4c7eee9a.txt, "VARIANTS OF VARIATIONAL
AUTOENCODER WITH ELABORATED LOSSES"; Burda et al. 2016) with proposal q:

    L_1 = ELBO <= L_k <= L_m <= log p(x)   for k <= m,    L_k -> log p(x) as k -> infinity  (4)

and, with z_i = g(eps_i, phi) reparameterized and eps fixed, its gradient is the self-normalized
weighted sum of per-sample gradients:

    grad log (1/k) sum_i w_i = sum_i w~_i grad log w_i,    w~_i = w_i / sum_j w_j           (5)

The proposal matters: with the exact posterior q = p(z|x), w = p(x, z)/p(z|x) = p(x) for every z,
so a single sample gives log p(x) exactly (zero variance); with the prior q = p(z) the weights are
the likelihoods p(x|z) and most samples are wasted.

What this lesson checks: (IS) with the exact posterior (every log w_i = log p(x)); (1) for the
prior proposal; (2) for every proposal; (3) with Var_q(w) in closed form, for the prior and for
an overdispersed q = N(posterior mean, 2 Sigma) -- and that the best diagonal ("mean-field")
Gaussian, narrower than p(z|x), has Var_q(w) = infinity, so its bias decays slower than 1/K; (4) with E[L_k] from many independent repeats and their
standard errors, L_1 against the closed-form ELBO (FactorAnalysis.elbo); (5) against finite
differences, for the proposal's and the model's parameters.

Run:  python lessons/06_importance_sampling.py [--quick] [--out DIR] [--seed N]
"""
# %%
import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "06_importance_sampling.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

from nplvm.distributions import LOG_2PI, DiagGaussian, logsumexp, std_normal_log_prob  # noqa: E402
from nplvm.gradcheck import check_grad, rel_error  # noqa: E402
from nplvm.models.fa import FactorAnalysis  # noqa: E402
from nplvm.objectives import iwae_bound, normalized_weights  # noqa: E402

N_SE = 3.0               # an inequality between MC estimates may be violated by 3 standard errors
GRAD_TOL = 1e-7          # central differences (nplvm.gradcheck)
GRAD_TOL_RICHARDSON = 1e-8


# %% [markdown]
# ## The model and the log weights
# %%

def make_fa(D=5, L=2, seed=0):
    """A factor analysis model with known parameters W (D, L), mu (D,), psi (D,), float64."""
    g = np.random.default_rng(seed)
    fa = FactorAnalysis(n_components=L, n_features=D, seed=seed)
    fa.params["W"][...] = g.normal(0.0, 1.0, (D, L))
    fa.params["mu"][...] = g.normal(0.0, 0.5, D)
    fa.params["log_psi"][...] = np.log(g.uniform(0.1, 0.4, D))        # small noise: a sharp posterior
    return fa


def log_joint(W, mu, log_psi, x, z):
    """log p(x, z) = log N(x | W z + mu, diag e^log_psi) + log N(z | 0, I).

    W (D, L), mu (D,), log_psi (D,), x (D,), z (..., L).  Returns (...,).
    """
    mean = z @ W.T + mu                                                 # (..., D)
    lik = DiagGaussian(mean, np.broadcast_to(log_psi, mean.shape))
    return lik.log_prob(x) + std_normal_log_prob(z)


def full_gaussian_log_prob(z, m, chol):
    """log N(z | m, Sigma) with Sigma = chol chol^T (lower Cholesky factor); z (..., L) -> (...,)."""
    L = m.shape[-1]
    y = np.linalg.solve(chol, (z - m).reshape(-1, L).T).T.reshape(z.shape)   # chol^-1 (z - m)
    return -0.5 * (L * LOG_2PI + np.sum(y * y, axis=-1)) - np.sum(np.log(np.diag(chol)))


class Proposal:
    """A Gaussian proposal q(z) = N(m, chol chol^T): draws z and returns log w = log p(x,z) - log q(z)."""

    def __init__(self, name, m, chol):
        self.name, self.m, self.chol = name, m, chol

    def log_weights(self, fa, x, shape, rng):
        """log w for iid z ~ q of ``shape + (L,)``: returns an array of ``shape``."""
        L = self.m.shape[0]
        eps = rng.standard_normal(tuple(shape) + (L,))
        z = self.m + eps @ self.chol.T                                   # z = m + chol eps
        p = fa.params
        return log_joint(p["W"], p["mu"], p["log_psi"], x, z) - full_gaussian_log_prob(z, self.m, self.chol)


def relative_weight_variance(m, Sigma, a, chol_q):
    """Var_q(w / p(x)) = E_q[(p(z|x)/q(z))^2] - 1 in closed form, for p(z|x) = N(m, Sigma), q = N(a, Q).

    w / p(x) = p(z|x) / q(z), and int N(z; m, Sigma)^2 / N(z; a, Q) dz, completing the square with
    A = 2 Sigma^-1 - Q^-1, b = 2 Sigma^-1 m - Q^-1 a, c = 2 m^T Sigma^-1 m - a^T Q^-1 a, is

        |Q|^(1/2) |Sigma|^-1 |A|^(-1/2) exp((b^T A^-1 b - c) / 2),

    finite only when A is positive definite (q not too narrow where p(z|x) has mass); else inf.
    """
    Q = chol_q @ chol_q.T
    Si, Qi = np.linalg.inv(Sigma), np.linalg.inv(Q)
    A = 2 * Si - Qi
    if np.min(np.linalg.eigvalsh(A)) <= 0:
        return float("inf")
    b = 2 * Si @ m - Qi @ a
    c = 2 * m @ Si @ m - a @ Qi @ a
    log_e = (0.5 * np.linalg.slogdet(Q)[1] - np.linalg.slogdet(Sigma)[1] - 0.5 * np.linalg.slogdet(A)[1]
             + 0.5 * (b @ np.linalg.solve(A, b) - c))
    return float(np.exp(log_e) - 1.0)


def estimate_bounds(prop, fa, x, Ks, repeats, rng):
    """For each K: `repeats` independent draws of log p_hat_K = log (1/K) sum_i w_i.

    Returns {K: (repeats,) array}.  Their mean estimates L_K = E[log p_hat_K], and
    mean(exp(log p_hat_K)) / p(x) estimates E[p_hat_K] / p(x) = 1.
    """
    out = {}
    for K in Ks:
        lw = prop.log_weights(fa, x, (K, repeats), rng)                  # (K, repeats)
        out[K] = iwae_bound(lw)                                          # log (1/K) sum_i w_i
    return out


# %% [markdown]
# ## (5): the gradient of the k-sample bound, by hand
# %%

def grad_log_w(W, mu, log_psi, x, m, s, eps):
    """Per-sample gradients of log w_i = log p(x, z_i) - log q(z_i), z_i = m + e^(s/2) eps_i.

    q = N(m, diag e^s) (the reparameterized proposal); eps (k, L).  Returns log_w (k,) and a dict
    of per-sample gradients with a leading k axis: W (k, D, L), mu (k, D), log_psi (k, D),
    m (k, L), s (k, L).  With r = x - W z - mu and psi = e^log_psi:

        d log p(x|z)/dW = (r/psi) z^T,   d/dmu = r/psi,   d/dlog_psi = (r^2/psi - 1)/2,
        d log p(x, z)/dz = W^T (r/psi) - z,
        log q(z_i) = -1/2 sum (log 2 pi + s + eps_i^2)  =>  d(-log q)/ds = 1/2 (eps fixed),
        dz/dm = 1,  dz/ds = e^(s/2) eps / 2.
    """
    sigma = np.exp(0.5 * s)
    z = m + sigma * eps                                                   # (k, L)
    psi = np.exp(log_psi)
    r = x - z @ W.T - mu                                                  # (k, D)
    r_psi = r / psi
    log_lik = -0.5 * np.sum(LOG_2PI + log_psi + r * r_psi, axis=-1)
    log_q = -0.5 * np.sum(LOG_2PI + s + eps * eps, axis=-1)
    log_w = log_lik + std_normal_log_prob(z) - log_q
    dz = r_psi @ W - z                                                    # d log p(x,z)/dz (k, L)
    grads = {"W": r_psi[:, :, None] * z[:, None, :],
             "mu": r_psi,
             "log_psi": 0.5 * (r * r_psi - 1.0),
             "m": dz,
             "s": dz * eps * (0.5 * sigma) + 0.5}
    return log_w, grads


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
rng = np.random.default_rng(args.seed)
quick = args.quick
table = C.CheckTable("Lesson 06: importance sampling and the k-sample bound on factor analysis")
results = {"figures": []}

# One fixed model: its posterior is correlated enough that the best diagonal q has Var(w) = inf
# (a property of these W, psi -- a weakly correlated posterior would not have it).  --seed
# changes the observation x and every Monte Carlo draw.
fa = make_fa(D=5, L=2, seed=0)
x = fa.sample(1, seed=rng)                                            # (1, D): one observation
log_px = float(fa.score_samples(x)[0])                                # exact log N(x; mu, C)
post_mean, Sigma = fa.posterior(x)                                    # exact p(z|x)
m = post_mean[0]
L = m.shape[0]
# The best diagonal Gaussian, argmin KL(q || p(z|x)) over diagonal q: the posterior mean and
# variances 1 / Lambda_ll, Lambda = Sigma^-1 the posterior precision (Bishop 2006, sec. 10.1.2).
Lambda = np.linalg.inv(Sigma)
var_mf = 1.0 / np.diag(Lambda)
props = {"prior": Proposal("prior p(z)", np.zeros(L), np.eye(L)),
         "mean-field": Proposal("best diagonal q", m, np.diag(np.sqrt(var_mf))),
         "wide": Proposal("posterior x 2 covariance", m, np.sqrt(2.0) * np.linalg.cholesky(Sigma)),
         "posterior": Proposal("exact posterior p(z|x)", m, np.linalg.cholesky(Sigma))}
SHOWN = ("prior", "mean-field", "wide")
xv = x[0]
print(f"factor analysis D=5, L=2; one observation x; exact log p(x) = {log_px:.6f}")

# %% [markdown]
# ## (IS) with the exact posterior: every weight is p(x)
# %%
lw_post = props["posterior"].log_weights(fa, xv, (1000,), rng)
table.add("q = p(z|x): max_i |log w_i - log p(x)|", float(np.max(np.abs(lw_post - log_px))),
          0.0, 1e-10, "<=", note="w = p(x,z)/p(z|x) = p(x) for every z: zero variance")

# %% [markdown]
# ## (1)-(4): many independent repeats of log p_hat_K for each proposal
# %%
Ks = [1, 2, 5, 10, 50, 200] if quick else [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
repeats = 2000 if quick else 10000
est = {name: estimate_bounds(props[name], fa, xv, Ks, repeats, rng) for name in SHOWN}
stats = {}
for name, d in est.items():
    stats[name] = {K: (float(v.mean()), float(v.std(ddof=1) / np.sqrt(repeats)), float(v.std(ddof=1)))
                   for K, v in d.items()}
print(f"\nE[log p_hat_K] - log p(x) over {repeats} repeats (mean +- SE; std of one estimate)")
print(f"{'K':>6} | " + " | ".join(f"{props[n].name:>28}" for n in SHOWN))
for K in Ks:
    cells = [f"{stats[n][K][0] - log_px:+.4f} +- {stats[n][K][1]:.4f} ({stats[n][K][2]:.3f})"
             for n in SHOWN]
    print(f"{K:>6} | " + " | ".join(f"{c:>28}" for c in cells))

# (1) unbiasedness of p_hat itself (prior proposal, K = 1 and K = 10)
for K in (1, 10):
    ratio = np.exp(est["prior"][K] - log_px)                        # p_hat_K / p(x)
    se = float(ratio.std(ddof=1) / np.sqrt(repeats))
    table.add(f"prior, K={K}: E[p_hat_K]/p(x) = 1", float(ratio.mean()), 1.0, 4.0 * se,
              note="tol = 4 SE" if K == 10 else "")
# (2) the log is biased low, for every K and both proposals
worst = max((stats[n][K][0] - log_px) / stats[n][K][1] for n in stats for K in Ks)
table.add("E[log p_hat_K] <= log p(x), all K and q (in SE)", worst, 0.0, N_SE, "<=",
          note="lhs = max over K and q of (E[log p_hat_K] - log p(x)) / SE")
# (3) bias ~ -Var(w) / (2 K p(x)^2): compare at the largest K with the relative variance of w
rel_var = {name: relative_weight_variance(m, Sigma, props[name].m, props[name].chol)
           for name in stats}
K_big = Ks[-1]
for name in stats:
    print(f"Var_q(w/p(x)) in closed form, q = {props[name].name}: {rel_var[name]:.4g}")
# the two proposals with a finite variance of w, each at the largest K where the predicted bias is
# at least 8 standard errors of the measured one (at larger K it drowns in the Monte Carlo noise,
# and a check there could not tell the predicted bias from none)
bias_K = {}
for name in ("prior", "wide"):
    resolved = [K for K in Ks if K >= 5 and rel_var[name] / (2 * K) >= 8 * stats[name][K][1]]
    K = max(resolved) if resolved else 5
    bias_K[name] = K
    bias, se = stats[name][K][0] - log_px, stats[name][K][1]
    pred = -rel_var[name] / (2 * K)
    table.add(f"{name}, K={K}: bias = -Var(w/p(x))/(2K)", bias, pred,
              4.0 * se + 0.1 * abs(pred), note="" if name == "prior" else
              "delta method (3), Var(w/p(x)) in closed form; K: the largest with |prediction| >= 8 SE; "
              "tol = 4 SE + 10% of the prediction (the O(1/K^2) terms)")
Q_mf = props["mean-field"].chol @ props["mean-field"].chol.T
min_eig = float(np.min(np.linalg.eigvalsh(2 * Lambda - np.linalg.inv(Q_mf))))
table.add("mean-field q: Var(w) = inf: min eig(2 Sigma^-1 - Q^-1) <= 0", min_eig, 0.0, 0.0, "<=",
          note="q narrower than p(z|x) (zero-forcing KL): heavy-tailed w, the delta method (3) "
               "does not apply and the bias decays slower than 1/K")
# The fitted slope of log(-bias) against log K is printed, not asserted: -1 is the large-K
# rate, reached only once K >> Var(w/p(x)).  The mean-field q is narrower than the posterior
# (KL(q||p) is zero-forcing), so its weights are heavy-tailed: its bias is small at small K
# but its relative variance (the large-K constant) exceeds even the prior's.
slopes = {}
for name in SHOWN:
    ks_ok = [K for K in Ks if K >= 5 and -(stats[name][K][0] - log_px) > 3 * stats[name][K][1]]
    if len(ks_ok) >= 2:
        b = [-(stats[name][K][0] - log_px) for K in ks_ok]
        slopes[name] = float(np.polyfit(np.log(ks_ok), np.log(b), 1)[0])
        print(f"{name}: slope of log(-bias) vs log K over K in {ks_ok}: {slopes[name]:.2f} "
              f"(large-K rate -1; Var(w/p(x)) = {rel_var[name]:.2f})")
results.update(log_px=log_px, Ks=Ks, stats=stats, rel_var=rel_var, bias_slopes=slopes, bias_K=bias_K)

# (4) the k-sample bound with the mean-field proposal: L_1 = ELBO <= L_k <= L_m <= log p(x)
elbo_cf = fa.elbo(x, m[None, :], np.diag(var_mf))
elbo_closed = float(elbo_cf["expected_loglik_minus_kl"][0])
L1, se1, _ = stats["mean-field"][1]
table.add("L_1 (MC) = ELBO (closed form, FactorAnalysis.elbo)", L1, elbo_closed, 4.0 * se1,
          note="tol = 4 SE")
table.add("log p(x) - ELBO = KL(q || p(z|x)) (closed form)", log_px - elbo_closed,
          float(elbo_cf["kl_posterior"][0]), 1e-10)
ks_order = [k for k in (1, 5, 50, 200, 1000) if k in Ks]
for k, mm in zip(ks_order[:-1], ks_order[1:]):
    (Lk, sek, _), (Lm, sem, _) = stats["mean-field"][k], stats["mean-field"][mm]
    table.add(f"L_{k} <= L_{mm}", Lk, Lm, N_SE * np.hypot(sek, sem), "<=")
Lmax, semax, _ = stats["mean-field"][ks_order[-1]]
table.add(f"L_{ks_order[-1]} <= log p(x)", Lmax, log_px, N_SE * semax, "<=",
          note="tol = 3 SE (of the difference, for the bound orderings)")
gap1, gapmax = log_px - L1, log_px - Lmax
table.add(f"gap log p(x) - L_k shrinks: gap(k={ks_order[-1]}) <= gap(1)/10", gapmax, gap1 / 10,
          N_SE * semax, "<=", note=f"gap(1) = {gap1:.4f}, gap({ks_order[-1]}) = {gapmax:.5f} nats")
results.update(elbo_closed=elbo_closed, L={K: stats["mean-field"][K][0] for K in Ks},
               L_se={K: stats["mean-field"][K][1] for K in Ks})

# %% [markdown]
# ## (5) the gradient of the k-sample bound: sum_i w~_i grad log w_i = finite differences
# %%
k = 5
P = {"W": fa.params["W"].copy(), "mu": fa.params["mu"].copy(), "log_psi": fa.params["log_psi"].copy(),
     "m": m + 0.3 * rng.standard_normal(L), "s": np.log(var_mf) + 0.2 * rng.standard_normal(L)}
eps = rng.standard_normal((k, L))                                     # fixed noise

def bound():
    lw, _ = grad_log_w(P["W"], P["mu"], P["log_psi"], xv, P["m"], P["s"], eps)
    return float(iwae_bound(lw[:, None])[0])                          # log (1/k) sum_i w_i

lw, g_i = grad_log_w(P["W"], P["mu"], P["log_psi"], xv, P["m"], P["s"], eps)
w_tilde = normalized_weights(lw[:, None])[:, 0]                       # w~_i, sums to 1
grad_errs = {}
for name in ("m", "s", "W", "mu", "log_psi"):
    g = np.tensordot(w_tilde, g_i[name], axes=1)                      # sum_i w~_i grad log w_i
    e_c = check_grad(bound, P[name], g)                               # central, h = 1e-6
    e_r = rel_error(g, C.richardson_grad(bound, P[name]))            # O(h^4) differences
    grad_errs[name] = (e_c, e_r)
    table.add(f"grad_{name} L_k = sum_i w~_i grad log w_i (Richardson FD)", e_r, 0.0,
              GRAD_TOL_RICHARDSON, "<=",
              note="" if name != "m" else "lhs: relative error vs finite differences (k = 5, eps fixed)")
    table.add(f"grad_{name}: same, central differences (gradcheck)", e_c, 0.0, GRAD_TOL, "<=")
# the per-sample weights w~ are not 1/k: the IWAE gradient is not the average ELBO gradient
g_avg = g_i["m"].mean(axis=0)
g_iw = np.tensordot(w_tilde, g_i["m"], axes=1)
print(f"\nk = {k}: w~ = {np.array2string(w_tilde, precision=3)} (ESS {1 / np.sum(w_tilde ** 2):.2f}); "
      f"grad_m with w~: {np.array2string(g_iw, precision=3)}, with 1/k: {np.array2string(g_avg, precision=3)}")
table.add("sum_i w~_i = 1 and w~ = exp(log w - logsumexp)", float(abs(w_tilde.sum() - 1) + np.max(np.abs(
    w_tilde - np.exp(lw - logsumexp(lw))))), 0.0, 1e-14, "<=")
results["grad_errors"] = grad_errs

# %% [markdown]
# ## Figures
# %%
fig, ax = C.plt.subplots(1, 3, figsize=(15, 4.3))
gx, gy = np.meshgrid(np.linspace(-3.5, 3.5, 200), np.linspace(-3.5, 3.5, 200))
grid = np.stack([gx, gy], axis=-1)
dens = np.exp(full_gaussian_log_prob(grid, m, np.linalg.cholesky(Sigma)))
ax[0].contour(gx, gy, dens, levels=6, colors="k", linewidths=0.8)
for name, col in (("prior", "C0"), ("mean-field", "C1"), ("wide", "C2")):
    pr = props[name]
    zs = pr.m + rng.standard_normal((300, L)) @ pr.chol.T
    ax[0].scatter(zs[:, 0], zs[:, 1], s=5, alpha=0.5, color=col, label=f"z ~ {pr.name}")
ax[0].set(xlabel="z_1", ylabel="z_2", title="posterior p(z|x) (contours) and proposals")
ax[0].legend(fontsize=8, loc="lower left")
for name, col in (("prior", "C0"), ("mean-field", "C1"), ("wide", "C2")):
    b = np.array([-(stats[name][K][0] - log_px) for K in Ks])
    se = np.array([stats[name][K][1] for K in Ks])
    ax[1].errorbar(Ks, b, yerr=2 * se, fmt="o-", color=col, ms=4, capsize=2,
                   label=f"{props[name].name}: -(E[log p_hat_K] - log p(x))")
    if np.isfinite(rel_var[name]):
        ax[1].plot(Ks, rel_var[name] / (2 * np.array(Ks, float)), "--", color=col,
                   label="Var(w/p(x)) / 2K (delta method)")
ax[1].set_xscale("log")
ax[1].set_yscale("log")
ax[1].set(xlabel="K samples", ylabel="bias of log p_hat_K (nats, negated)",
          title="log of an unbiased estimate is biased low, ~1/K")
ax[1].legend(fontsize=7)
for name, col in (("prior", "C0"), ("mean-field", "C1"), ("wide", "C2")):
    ax[2].loglog(Ks, [stats[name][K][2] for K in Ks], "o-", color=col, ms=4, label=props[name].name)
ax[2].loglog(Ks, stats["prior"][1][2] / np.sqrt(Ks), "k:", label="1/sqrt(K)")
ax[2].set(xlabel="K samples", ylabel="std of log p_hat_K (nats)",
          title="spread of one estimate (exact posterior: 0)")
ax[2].legend(fontsize=8)
results["figures"].append(C.save_figure(fig, args.out / "is_bias_variance.png"))

fig, ax = C.plt.subplots(figsize=(6.5, 4.3))
Lm = np.array([stats["mean-field"][K][0] for K in Ks])
Ls = np.array([stats["mean-field"][K][1] for K in Ks])
ax.errorbar(Ks, Lm, yerr=2 * Ls, fmt="o-", ms=4, capsize=2, label="L_k = E[log (1/k) sum w_i] +- 2 SE")
ax.axhline(log_px, color="k", ls="--", label=f"log p(x) = {log_px:.3f} (exact)")
ax.axhline(elbo_closed, color="C3", ls=":", label=f"ELBO = L_1 closed form = {elbo_closed:.3f}")
ax.set_xscale("log")
ax.set(xlabel="k", ylabel="nats", title="k-sample bound, q = best diagonal Gaussian")
ax.legend(fontsize=8, loc="lower right")
results["figures"].append(C.save_figure(fig, args.out / "k_sample_bound.png"))

results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
