"""Lesson 11: maximum likelihood, Bayes' rule, MAP and the posterior predictive, on a coin.

Lecture notes 004_eef4e39dcc0eb5a8.txt, "Recap of previous lecture" (the MLE problem),
"Bayesian framework" (Bayes theorem, posterior, Bayesian inference) and "Maximum a posteriori
(MAP)".  The model is the simplest one where every quantity has a closed form: n coin flips
x_i in {0, 1} with an unknown bias theta, and a Beta prior on theta,

    p(x_i | theta) = theta^x_i (1 - theta)^(1 - x_i),        p(theta) = Beta(theta | a, b).

With k = sum_i x_i heads:

    MLE          theta_ML  = argmax_theta sum_i log p(x_i|theta) = k / n                  (ML)
    Bayes' rule  p(theta|X) = p(X|theta) p(theta) / p(X) = Beta(theta | a + k, b + n - k) (B)
    evidence     p(X) = int p(X|theta) p(theta) dtheta = B(a + k, b + n - k) / B(a, b)      (E)
    MAP          theta_MAP = argmax_theta [log p(X|theta) + log p(theta)]
                           = (a + k - 1) / (a + b + n - 2)                                  (MAP)
    predictive   p(x = 1 | X) = int p(x = 1|theta) p(theta|X) dtheta = (a + k) / (a + b + n) (P)
    plug-in      p(x = 1 | X) ~= p(x = 1 | theta_MAP) = theta_MAP   (the notes' approximation)

Each closed form is checked against a second computation that does not use it: a numerical
optimiser (ML, MAP), quadrature of prior x likelihood (B, E, P), posterior samples (P).  Then a
check that can only pass if Bayes' rule is right *as a procedure*: draw theta from the prior,
data from theta, and build the central 90% credible interval from (B); over many repeats it
must contain the true theta 90% of the time (calibration), within its binomial standard error.

Run:  python lessons/11_bayes_beta_bernoulli.py [--quick] [--out DIR] [--seed N]   (a few seconds)
"""
# %%
import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "11_bayes_beta_bernoulli.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
from scipy import integrate, optimize, special, stats  # noqa: E402

N_SE = 4.0               # a Monte Carlo check passes within 4 standard errors
OPT_TOL = 1e-7           # xatol of the bounded scalar optimiser (a stated numeric precision)
QUAD_TOL = 1e-9          # quadrature of smooth densities on [0, 1] (epsabs 1e-12)


def log_lik(theta, k, n):
    """log p(X | theta) = k log theta + (n - k) log(1 - theta)."""
    return k * np.log(theta) + (n - k) * np.log1p(-theta)


def log_prior(theta, a, b):
    return stats.beta(a, b).logpdf(theta)


def argmax_numeric(f):
    """argmax of f on (0, 1) by a bounded scalar optimiser (no closed form used)."""
    res = optimize.minimize_scalar(lambda t: -f(t), bounds=(1e-9, 1 - 1e-9), method="bounded",
                                   options={"xatol": OPT_TOL / 10})
    return float(res.x)


def quad(f):
    return integrate.quad(f, 0.0, 1.0, epsabs=1e-12, epsrel=1e-10, limit=200)[0]


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
rng = np.random.default_rng(args.seed)
table = C.CheckTable("Lesson 11: MLE, Bayes' rule, MAP, posterior predictive (Beta-Bernoulli)")
results = {"figures": []}

# %% [markdown]
# ## The data: n flips of a coin with bias theta_true, a Beta(a, b) prior
# %%
a, b = 2.0, 2.0
theta_true, n = 0.3, 20
x = (rng.random(n) < theta_true).astype(int)
k = int(x.sum())
print(f"data: n = {n} flips, k = {k} heads (theta_true = {theta_true}); prior Beta({a:g}, {b:g})")

# %% [markdown]
# ## (ML) the maximum-likelihood estimate: k / n vs a numerical optimiser
# %%
theta_ml = k / n
table.add("(ML) k/n = argmax log p(X|theta) (numerical)", theta_ml,
          argmax_numeric(lambda t: log_lik(t, k, n)), OPT_TOL, note="tol = the optimiser's xatol")

# %% [markdown]
# ## (B) and (E): Bayes' rule, posterior = prior x likelihood / evidence, by quadrature
# %%
evidence_closed = float(np.exp(special.betaln(a + k, b + n - k) - special.betaln(a, b)))
evidence_quad = quad(lambda t: np.exp(log_lik(t, k, n) + log_prior(t, a, b)))
table.add("(E) p(X) = B(a+k, b+n-k)/B(a,b) = int p(X|t)p(t)dt", evidence_closed / evidence_quad,
          1.0, QUAD_TOL * 100, note="ratio of the two; quadrature relative precision ~1e-10")
grid = np.linspace(0.01, 0.99, 99)
post_bayes = np.exp(log_lik(grid, k, n) + log_prior(grid, a, b)) / evidence_quad
post_closed = stats.beta(a + k, b + n - k).pdf(grid)
table.add("(B) Beta(a+k, b+n-k) = prior x lik / evidence (max rel. diff on a grid)",
          float(np.max(np.abs(post_bayes / post_closed - 1))), 0.0, QUAD_TOL * 100, "<=")

# %% [markdown]
# ## (MAP): the mode of the posterior, and how it differs from the MLE and the posterior mean
# %%
theta_map = (a + k - 1) / (a + b + n - 2)
table.add("(MAP) (a+k-1)/(a+b+n-2) = argmax [log p(X|t) + log p(t)]", theta_map,
          argmax_numeric(lambda t: log_lik(t, k, n) + log_prior(t, a, b)), OPT_TOL)
post = stats.beta(a + k, b + n - k)
print(f"theta_ML = {theta_ml:.4f}, theta_MAP = {theta_map:.4f}, posterior mean = {post.mean():.4f}, "
      f"posterior sd = {post.std():.4f}: the prior pulls the MAP towards its mode 1/2")

# %% [markdown]
# ## (P): the posterior predictive, closed form vs quadrature vs posterior samples
# %%
pred_closed = (a + k) / (a + b + n)
pred_quad = quad(lambda t: t * post.pdf(t))
table.add("(P) (a+k)/(a+b+n) = int theta p(theta|X) dtheta", pred_closed, pred_quad, QUAD_TOL)
S = C.quick_or(args, 20_000, 400_000)
th = post.rvs(size=S, random_state=rng)
x_new = (rng.random(S) < th)                                      # x ~ p(x|theta), theta ~ p(theta|X)
se = float(x_new.std(ddof=1) / np.sqrt(S))
table.add(f"(P) = frequency of x=1 in {S} draws theta~p(theta|X), x~p(x|theta)", pred_closed,
          float(x_new.mean()), N_SE * se, note=f"tol = {N_SE:g} SE of the frequency ({se:.2e})")
print(f"posterior predictive p(x=1|X) = {pred_closed:.4f}; the notes' plug-in p(x=1|theta_MAP) = "
      f"{theta_map:.4f}, the ML plug-in {theta_ml:.4f}: with n = {n} the plug-ins differ from the "
      f"full predictive by {abs(theta_map - pred_closed):.4f} and {abs(theta_ml - pred_closed):.4f}")

# %% [markdown]
# ## Calibration: the 90% credible interval contains the true theta 90% of the time
# Draw theta ~ p(theta), X ~ p(X|theta), compute the interval from (B).  Averaged over the prior,
# P(theta in interval) = 0.9 exactly, for any n: a wrong posterior (e.g. a + n - k, b + k) fails.
# %%
R = C.quick_or(args, 4000, 40000)
th0 = rng.beta(a, b, R)
n_r = rng.integers(1, 50, R)                                       # any sample size
k_r = rng.binomial(n_r, th0)
lo = stats.beta.ppf(0.05, a + k_r, b + n_r - k_r)
hi = stats.beta.ppf(0.95, a + k_r, b + n_r - k_r)
cover = (lo <= th0) & (th0 <= hi)
cover_se = float(np.sqrt(0.9 * 0.1 / R))
table.add(f"90% credible interval covers theta ~ prior ({R} repeats)", float(cover.mean()), 0.9,
          N_SE * cover_se, note=f"tol = {N_SE:g} binomial SE sqrt(0.9 * 0.1 / R) = {N_SE * cover_se:.4f}")
ml_err = k_r / n_r - th0                                           # the MLE is unbiased
table.add("E[theta_ML - theta] = 0 (the MLE k/n is unbiased)", float(ml_err.mean()), 0.0,
          N_SE * float(ml_err.std(ddof=1) / np.sqrt(R)), note=f"tol = {N_SE:g} SE, same repeats")
results.update(k=k, n=n, theta_ml=theta_ml, theta_map=theta_map, predictive=pred_closed,
               coverage=float(cover.mean()), evidence=evidence_closed)

# %% [markdown]
# ## Figures: prior, likelihood and posterior; the estimates as n grows
# %%
tt = np.linspace(0.001, 0.999, 500)
fig, ax = C.plt.subplots(1, 2, figsize=(11, 4.2))
ax[0].plot(tt, stats.beta(a, b).pdf(tt), label=f"prior Beta({a:g}, {b:g})")
ax[0].plot(tt, stats.beta(k + 1, n - k + 1).pdf(tt), label="likelihood p(X|theta), normalised")
ax[0].plot(tt, post.pdf(tt), label=f"posterior Beta({a + k:g}, {b + n - k:g})")
for v, name, ls in ((theta_ml, "ML", "--"), (theta_map, "MAP", ":"), (pred_closed, "post. mean", "-.")):
    ax[0].axvline(v, color="k", ls=ls, lw=0.8, label=f"{name} = {v:.3f}")
ax[0].set(xlabel="theta", ylabel="density", title=f"n = {n} flips, k = {k} heads")
ax[0].legend(fontsize=7)
ns = np.unique(np.logspace(0, 4, 30).astype(int))
xs = (rng.random(ns[-1]) < theta_true).astype(int)
ks = np.cumsum(xs)[ns - 1]
ax[1].semilogx(ns, ks / ns, "o-", ms=3, label="theta_ML = k/n")
ax[1].semilogx(ns, (a + ks - 1) / (a + b + ns - 2), "s-", ms=3, label="theta_MAP")
ax[1].fill_between(ns, stats.beta.ppf(0.05, a + ks, b + ns - ks), stats.beta.ppf(0.95, a + ks, b + ns - ks),
                   alpha=0.25, label="90% credible interval")
ax[1].axhline(theta_true, color="k", lw=0.8, label=f"theta_true = {theta_true}")
ax[1].set(xlabel="number of flips n", ylabel="theta", title="ML and MAP meet as the data outweigh the prior")
ax[1].legend(fontsize=7)
results["figures"].append(C.save_figure(fig, args.out / "prior_likelihood_posterior.png"))

results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
