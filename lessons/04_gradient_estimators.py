"""Lesson 04: two unbiased gradient estimators of E_q[f(z)], and why the VAE uses the second.

For q(z) = N(mu, sigma^2), sigma^2 = e^s (lecture notes 004_eef4e39dcc0eb5a8.txt, "ELBO gradient
(E-step, ...)", "Log-derivative trick", "Reparametrization trick"), the
gradient of an expectation under q cannot be moved inside the expectation directly, because q
itself depends on the parameters xi = (mu, s).  Two ways around it:

  score function (log-derivative trick, REINFORCE):   grad q = q grad log q, so
      grad_xi E_q[f(z)] = E_q[ f(z) grad_xi log q(z) ],
      d log q/d mu = (z - mu)/sigma^2 = eps/sigma,   d log q/d s = (eps^2 - 1)/2.         (SF)
  reparameterization (pathwise):   z = mu + sigma eps, eps ~ N(0, 1), so
      grad_xi E_q[f(z)] = E_eps[ f'(z) dz/dxi ],   dz/dmu = 1,   dz/ds = sigma eps / 2.   (RP)

Both are unbiased; SF needs only values of f, RP needs f'(z) but usually has a far smaller variance.
Subtracting a constant baseline b from f in (SF) keeps it unbiased (E_q[grad log q] = 0) and
lowers its variance.

What this lesson checks:

 1. a 1-D toy, f(z) = (z - 2)^2 + sin(3z), whose gradient is known in closed form: the mean of
    each estimator is within 5 standard errors of the exact gradient; variances are printed;
 2. the VAE encoder: the gradient of E_q[log p(x|z)] with respect to the encoder's outputs mu and
    log sigma^2 (= the gradient of the encoder's output-layer bias) for a few test images, by both
    estimators: their means agree coordinate by coordinate (|difference| <= 5 combined SE), and the
    reparameterization estimator's variance is smaller: by thousands of times against the plain
    score function, by about ten against the score function with a per-example baseline (the
    ratios are printed; they depend on the model and the data).

The per-draw estimates of the score function have heavy tails (a product of f and a Gaussian
score), so the figures show them as a running mean +- 2 SE against the number of draws and as
tail probabilities P(|g - exact| > t) on log-log axes, not as histograms that would have to clip
the tails to show the bulk.

Run:  python lessons/04_gradient_estimators.py [--quick] [--out DIR] [--seed N]
"""
# %%
import math
import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "04_gradient_estimators.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

import kernels  # noqa: E402
from nplvm import objectives, plots  # noqa: E402
from nplvm.data import load_dataset  # noqa: E402
from nplvm.models.vae import VAE  # noqa: E402
from nplvm.optim import Adam  # noqa: E402
from nplvm.train import fit  # noqa: E402

N_SE = 5.0
C_SHIFT = 2.0


def f_toy(z):
    """f(z) = (z - 2)^2 + sin(3z)."""
    return (z - C_SHIFT) ** 2 + np.sin(3 * z)


def df_toy(z):
    return 2 * (z - C_SHIFT) + 3 * np.cos(3 * z)


def exact_toy_grad(mu, s):
    """E_q f = (mu - 2)^2 + sigma^2 + sin(3 mu) e^{-9 sigma^2 / 2}; its derivatives in mu and s = log sigma^2."""
    v = math.exp(s)
    damp = math.exp(-4.5 * v)
    d_mu = 2 * (mu - C_SHIFT) + 3 * math.cos(3 * mu) * damp
    d_s = v * (1.0 - 4.5 * math.sin(3 * mu) * damp)         # d/ds = sigma^2 d/d(sigma^2)
    return d_mu, d_s


def toy(args, table, figures, rng):
    mu, s = 0.5, math.log(0.8)
    S = C.quick_or(args, 20_000, 200_000)
    eps = rng.standard_normal((S, 1))
    z = mu + math.exp(0.5 * s) * eps
    lv = np.array([s])
    b = float(np.mean(f_toy(mu + math.exp(0.5 * s) * rng.standard_normal(1000))))    # baseline, independent draws
    est = {
        "score function": objectives.score_function_gradient(f_toy(z)[:, 0], eps, lv),
        "score function, baseline": objectives.score_function_gradient(f_toy(z)[:, 0], eps, lv, baseline=b),
        "reparameterization": objectives.reparameterization_gradient(df_toy(z), eps, lv),
    }
    exact = exact_toy_grad(mu, s)
    print(f"1-D toy: q = N({mu}, {math.exp(s):.2f}), f(z) = (z - 2)^2 + sin(3z), {S} draws; "
          f"exact gradient d/dmu {exact[0]:.4f}, d/dlogvar {exact[1]:.4f}")
    variances = {}
    for name, (g_mu, g_s) in est.items():
        for which, g, ex in (("mu", g_mu, exact[0]), ("logvar", g_s, exact[1])):
            st = objectives.estimator_summary(g[:, 0])
            variances[(name, which)] = float(st["var"])
            print(f"  {name:26s} d/d{which:6s}: mean {st['mean']:+.4f} +- {st['se']:.4f}, variance {st['var']:.4g}")
            table.add(f"toy, {name}: E[d/d{which}] = exact", st["mean"], ex, N_SE * st["se"],
                      note=f"tol = {N_SE:g} SE of the mean" if name == "score function" and which == "mu" else "")
    for j, which in enumerate(("mu", "logvar")):
        a, b = est["reparameterization"][j][:, 0], est["score function"][j][:, 0]
        table.add(f"toy: Var reparameterization <= Var score function (d/d{which})",
                  variances[("reparameterization", which)], variances[("score function", which)],
                  N_SE * float(np.hypot(var_se(a), var_se(b))), relation="<=",
                  note="tol = 5 SE of the variance difference, SE(var) = sqrt((m4 - var^2) / S)" if j == 0 else "")
    for j, which in enumerate(("mu", "logvar")):
        figures.append(estimator_figure({name: g[j][:, 0] for name, g in est.items()}, exact[j],
                                        args.out / f"toy_grad_{which}.png", f"d E_q[f] / d {which}"))
    return variances


def var_se(g):
    """Standard error of the sample variance of g: sqrt((m4 - var^2) / S), m4 the 4th central moment."""
    g = np.asarray(g, np.float64)
    c = g - g.mean()
    return float(np.sqrt(max(np.mean(c ** 4) - np.mean(c ** 2) ** 2, 0.0) / g.size))


def estimator_figure(samples, exact, path, what):
    """Left: running mean +- 2 SE of each estimator against the number of draws (log x).
    Right: P(|g - exact| > t) against t, log-log: the tails a histogram would clip."""
    fig, ax = C.plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, g) in enumerate(samples.items()):
        g = np.asarray(g, np.float64)
        n = np.unique(np.logspace(1, np.log10(g.size), 200).astype(int))
        c1, c2 = np.cumsum(g), np.cumsum(g * g)
        mean = c1[n - 1] / n
        se = np.sqrt(np.maximum(c2[n - 1] / n - mean ** 2, 0) / n)
        ax[0].plot(n, mean, color=f"C{i}", label=f"{name} (var {g.var():.3g})")
        ax[0].fill_between(n, mean - 2 * se, mean + 2 * se, color=f"C{i}", alpha=0.2)
        dev = np.sort(np.abs(g - exact))
        ccdf = 1.0 - np.arange(dev.size) / dev.size
        keep = np.unique(np.geomspace(1, dev.size, 400).astype(int)) - 1
        ax[1].loglog(dev[keep], ccdf[keep], color=f"C{i}", label=name)
    ax[0].axhline(exact, color="k", ls="--", lw=1, label=f"exact {exact:.4g}")
    ax[0].set_xscale("log")
    ax[0].set(xlabel="number of draws S", ylabel=f"mean of S per-draw estimates of {what}",
              title="running mean +- 2 SE: all converge to the exact value")
    ax[0].legend(fontsize=8)
    ax[1].set(xlabel="t", ylabel="P(|estimate - exact| > t)",
              title="tails of the per-draw estimates (all draws)")
    ax[1].set_xlim(left=1e-2)
    ax[1].grid(alpha=0.3, which="both")
    ax[1].legend(fontsize=8)
    return C.save_figure(fig, path)


def encoder_gradients(vae, x, S, rng):
    """Per-draw SF and RP estimates of d E_q[log p(x|z)] / d(mu, logvar) for each row of x.

    Returns dict name -> (g_mu, g_logvar), each (S, N, L).
    """
    mu, logvar = vae.encode(x)
    mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
    N, L = mu.shape
    eps = rng.standard_normal((S, N, L))
    z = mu + np.exp(0.5 * logvar) * eps                                      # (S, N, L)
    logits, cache = vae.decoder.forward(z.reshape(S * N, L).astype(vae.dtype))
    xk = np.broadcast_to(x.astype(vae.dtype), (S, N, x.shape[1])).reshape(S * N, -1)
    nll, dnll_dlogits = kernels.bernoulli_nll(xk, logits)                    # -log p(x|z), its gradient
    # f(z) = log p(x|z):  f'(z) = -decoder.backward(d nll / d logits), one row per draw
    df_dz = -vae.decoder.backward(dnll_dlogits, cache).astype(np.float64).reshape(S, N, L)
    vae.decoder.release_grads()                                               # parameter grads not wanted here
    f = -nll.astype(np.float64).reshape(S, N)
    return {"score function": objectives.score_function_gradient(f, eps, logvar),
            "score function, baseline": objectives.score_function_gradient(
                f - f.mean(axis=0), eps, logvar),      # per-example baseline (a slight, O(1/S) bias)
            "reparameterization": objectives.reparameterization_gradient(df_dz, eps, logvar)}


def encoder(args, table, figures, rng, numbers):
    ds = load_dataset("offline")
    n_train = C.quick_or(args, 400, len(ds.train))
    vae = VAE(x_dim=784, hidden=C.quick_or(args, [64], [256]), latent=C.quick_or(args, 4, 8),
              activation="relu", seed=args.seed)
    epochs = C.quick_or(args, 2, 15)
    fit(vae, Adam(1e-3), ds.train[:n_train], None, epochs=epochs, batch_size=100, seed=args.seed,
        progress=True, log=None)
    x = ds.test[:C.quick_or(args, 2, 4)]
    S = C.quick_or(args, 4000, 20000)
    est = encoder_gradients(vae, x, S, rng)
    print(f"VAE encoder ({vae.latent}-D latent, trained {epochs} epochs on {n_train} images): gradient of "
          f"E_q[log p(x|z)] w.r.t. (mu, logvar) for {len(x)} test images, {S} draws each")
    sf = [objectives.estimator_summary(g) for g in est["score function"]]
    rp = [objectives.estimator_summary(g) for g in est["reparameterization"]]
    worst = 0.0
    for a, b in zip(sf, rp):
        zscore = np.abs(a["mean"] - b["mean"]) / np.sqrt(a["se"] ** 2 + b["se"] ** 2)
        worst = max(worst, float(zscore.max()))
    n_coord = 2 * x.shape[0] * vae.latent
    table.add(f"encoder: E[SF] = E[RP] on all {n_coord} coordinates (max |z-score|)", worst, 0.0, N_SE,
              relation="<=", note=f"|mean_SF - mean_RP| / sqrt(SE_SF^2 + SE_RP^2) <= {N_SE:g}")
    var = {name: np.concatenate([objectives.estimator_summary(g)["var"].ravel() for g in gs])
           for name, gs in est.items()}
    ratio = float(np.median(var["score function"] / var["reparameterization"]))
    numbers["encoder_variance_ratio_median"] = ratio
    print(f"  variance per coordinate, median: score function {np.median(var['score function']):.4g}, "
          f"with baseline {np.median(var['score function, baseline']):.4g}, "
          f"reparameterization {np.median(var['reparameterization']):.4g} (ratio SF/RP {ratio:.3g})")
    ratio_b = float(np.median(var["score function, baseline"] / var["reparameterization"]))
    numbers["encoder_variance_ratio_baseline_median"] = ratio_b
    print(f"  so the reparameterization estimator's variance is {ratio:.3g}x smaller than the plain score "
          f"function's and {ratio_b:.3g}x smaller than the score function with a baseline (medians)")
    table.add("encoder: Var RP < Var SF (median ratio SF/RP > 10)", ratio, 10.0, 0.0, relation=">=",
              note="a threshold, not an SE: the ratio is 1e3-1e4 here; 10 guards the direction with a margin")
    table.add("encoder: a baseline lowers the SF variance (median)", np.median(var["score function, baseline"]),
              np.median(var["score function"]), 0.0, relation="<=")
    order = np.argsort(var["reparameterization"])
    figures.append(str(plots.line_plot(
        np.arange(len(order)), {name: v[order] for name, v in var.items()},
        args.out / "encoder_gradient_variance.png", xlabel="coordinate of (mu, logvar) (sorted)",
        ylabel="variance of the per-draw estimate", logy=True,
        title="VAE encoder: gradient estimator variance per coordinate")))


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
rng = np.random.default_rng(args.seed)
table = C.CheckTable("Lesson 04: score-function vs reparameterization gradients")
figures, numbers = [], {}

# %% [markdown]
# ## 1. A 1-D toy with a known gradient: (SF), (SF) with a baseline, (RP)
# %%
v = toy(args, table, figures, rng)
numbers["toy_variance_ratio_mu"] = v[("score function", "mu")] / v[("reparameterization", "mu")]

# %% [markdown]
# ## 2. The VAE encoder's outputs (mu, logvar): the same two estimators
# %%
encoder(args, table, figures, rng, numbers)
results = C.finish(table, {"figures": figures, "numbers": numbers})

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
