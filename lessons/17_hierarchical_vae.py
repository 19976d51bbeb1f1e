"""Lesson 17: hierarchical VAEs -- stacked latent layers, bottom-up vs ladder inference.

Cited: lecture notes 002_e73e17ee4c7eee9a.txt, "Hierarchical random variable", "Ladder VAE".

Lecture notes (002, the last part): a layered prior p(z) = p(z_L) prod_i p(z_i|z_{i+1}) and two
ways to build q(z|x):

    bottom-up (HVAE)   q(z|x) = q(z_1|x) prod_{i>1} q(z_i|z_{i-1})
    ladder    (LVAE)   q(z|x) = q(z_L|x) prod_{i<L} q(z_i|z_{i+1}, x),  q(z_i|z_{i+1}, x) the
                       precision-weighted merge of a bottom-up estimate N(mu^, sigma^2) with the
                       top-down prior N(mu_p, sigma_p^2):

    sigma_q^2 = 1 / (sigma^-2 + sigma_p^-2),   mu_q = (mu^ sigma^-2 + mu_p sigma_p^-2) sigma_q^2      (M)

Cells (``# %%``):
  1. (M) worked through on one unit, by hand, and checked three ways: the product of the two
     Gaussian densities renormalised on a grid (quadrature: mean and variance), the identity
     log N(z|mu^) + log N(z|mu_p) - log N(z|mu_q) = const in z, and the library's
     ``precision_weighted_merge``; the backward of the library against finite differences.
  2. an HVAE and an LVAE with two layers trained on the same images for the same epochs (both
     with batch normalisation and KL warm-up over the first third of the epochs);
     the KL term of each layer after every epoch (figure), the ELBO identity
     loss = reconstruction + sum of the layers' KL on one draw (float64, exact), and
     IS log p(x) >= ELBO on test images.
  3. active units per layer (Burda et al.: Cov_x(E_q[z_j]) > 0.01), checked against a direct
     computation for the layer whose posterior mean has a closed form.
  4. samples varying one layer at a time (figure): the noise of every other layer held fixed;
     ``decode_noise`` checked against ``sample`` (the same draws give the same images).

Short runs (the default trains for minutes on the offline 4,000 images) do not settle which
model is better: the comparisons of item 2 and 3 are PRINTED, not asserted; the benchmark
(``python -m nplvm.bench.hvae``) measures them on the full data.

    python lessons/17_hierarchical_vae.py            # a few minutes on one core
    python lessons/17_hierarchical_vae.py --quick    # seconds (the test suite runs this)
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "17_hierarchical_vae.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

from nplvm.data import load_dataset  # noqa: E402
from nplvm.gradcheck import check_grad  # noqa: E402
from nplvm.models.hvae import (HVAE, LVAE, active_units, precision_weighted_merge,  # noqa: E402
                               precision_weighted_merge_backward)
from nplvm.objectives import importance_sampled_log_px  # noqa: E402
from nplvm.optim import Adam  # noqa: E402
from nplvm.train import fit  # noqa: E402

EXACT = 1e-9          # float64 identities on sums of a few hundred nats
GRID_TOL = 1e-8       # quadrature on 200,001 points over +-12 sd: error far below this
FD_TOL = 1e-7         # central differences, step 1e-6, float64


def as_float64(model):
    """A float64 copy (same config and parameter values, running statistics included)."""
    m = type(model)(**{**model.config, "dtype": "float64"})
    for k, a in model.params.items():
        m.params[k][...] = a
    return m


def image_grid(images, rows, cols, side=28):
    g = images.reshape(rows, cols, side, side).transpose(0, 2, 1, 3)
    return g.reshape(rows * side, cols * side)


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
table = C.CheckTable("Lesson 17: hierarchical VAEs")
results = {"figures": []}

# %% 1. The precision-weighted merge on one unit, by hand --------------------------------------
mu_hat, var_hat = 1.2, 0.5          # what the data says about z_i (bottom-up estimate)
mu_p, var_p = -0.4, 2.0             # what the layer above says (top-down prior p(z_i|z_{i+1}))
prec = 1 / var_hat + 1 / var_p      # precisions add: 2 + 0.5 = 2.5
var_q = 1 / prec                    # 0.4: smaller than either variance
mu_q = (mu_hat / var_hat + mu_p / var_p) * var_q    # (2.4 - 0.2) * 0.4 = 0.88
print(f"[1] merge of N({mu_hat}, {var_hat}) and N({mu_p}, {var_p}): precision {prec:.3f}, "
      f"sigma_q^2 = {var_q:.4f}, mu_q = {mu_q:.4f} (the estimate with the larger precision pulls harder)")
# the product of the two densities, renormalised, by quadrature on a grid
z = np.linspace(-12, 12, 200_001)
dz = z[1] - z[0]
log_prod = -0.5 * ((z - mu_hat) ** 2 / var_hat + (z - mu_p) ** 2 / var_p)
w = np.exp(log_prod - log_prod.max())
w /= w.sum() * dz
grid_mean = float(np.sum(z * w) * dz)
grid_var = float(np.sum((z - grid_mean) ** 2 * w) * dz)
table.add("(M) mean = mean of the renormalised product (quadrature)", mu_q, grid_mean, GRID_TOL)
table.add("(M) variance = variance of the product (quadrature)", var_q, grid_var, GRID_TOL)
# log N(z|mu^) + log N(z|mu_p) - log N(z|mu_q) does not depend on z (a product of Gaussians is Gaussian)
zs = np.array([-3.0, 0.0, 2.5])

def log_n(v, m, s2):
    return -0.5 * (math.log(2 * math.pi * s2) + (v - m) ** 2 / s2)

gap = log_n(zs, mu_hat, var_hat) + log_n(zs, mu_p, var_p) - log_n(zs, mu_q, var_q)
table.add("log-density gap constant in z (max - min)", float(gap.max() - gap.min()), 0.0, EXACT)
lib_mu, lib_lv, w_hat = precision_weighted_merge(np.array([mu_hat]), np.log([var_hat]),
                                                 np.array([mu_p]), np.log([var_p]))
table.add("library merge: mu_q", float(lib_mu[0]), mu_q, EXACT)
table.add("library merge: sigma_q^2 (from log-variances)", float(np.exp(lib_lv[0])), var_q, EXACT)
table.add("w^ = sigma^-2 / (sigma^-2 + sigma_p^-2) = 0.8", float(w_hat[0]), (1 / var_hat) / prec, EXACT)
# the backward (homework lvae-merge-gradient) against finite differences of f = a mu_q + b logvar_q
a, b = 0.7, -1.3
xs = [np.array([mu_hat]), np.log([var_hat]), np.array([mu_p]), np.log([var_p])]

def f():
    m, lv, _ = precision_weighted_merge(*xs)
    return float(a * m[0] + b * lv[0])

grads = precision_weighted_merge_backward(np.array([a]), np.array([b]), xs[0], xs[2], w_hat)
err = max(check_grad(f, x, g) for x, g in zip(xs, grads))
table.add("merge backward vs central differences (max rel. error)", err, 0.0, FD_TOL, relation="<=")
results["merge"] = {"mu_q": mu_q, "var_q": var_q}

# %% 2. HVAE vs LVAE, two layers: KL per layer over training -----------------------------------
ds = load_dataset("offline", seed=args.seed)
x_train = ds.train[:1000] if args.quick else ds.train
x_valid, x_test = ds.valid[:200], ds.test[:100 if args.quick else 500]
epochs = C.quick_or(args, 3, 30)
# both with batch normalisation and KL warm-up (Sonderby et al.: without them the ladder's
# layers collapse early, see the benchmark); the same settings for both models
cfg = dict(x_dim=784, hidden=C.quick_or(args, (64,), (200, 200)), latent=(32, 8),
           activation="tanh", batch_norm=True, warmup=max(1, epochs // 3), seed=args.seed)
models, kl_hist = {}, {}
for name, cls in (("HVAE", HVAE), ("LVAE", LVAE)):
    m = cls(**cfg)
    hist = []
    fit(m, Adam(1e-3), x_train, None, epochs=epochs, batch_size=100, seed=args.seed, progress=False,
        log=None, eval_fn=lambda model, e: hist.append(model.kl_per_layer(x_valid, args.seed)) or {})
    models[name], kl_hist[name] = m, np.array(hist)
    print(f"[2] {name}: KL per layer on {len(x_valid)} valid images after each of {epochs} epochs "
          f"(bottom, top):\n    " + "  ".join(f"({k[0]:.1f}, {k[1]:.1f})" for k in hist))
fig, axes = C.plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
for ax, (name, h) in zip(axes, kl_hist.items()):
    for i in range(h.shape[1]):
        ax.plot(np.arange(1, epochs + 1), h[:, i], marker="o", label=f"layer {i + 1} ({cfg['latent'][i]} units)")
    ax.axvspan(0.5, cfg["warmup"] + 0.5, color="0.9", zorder=0, label="KL warm-up (weight < 1)")
    ax.set_title(f"{name}: KL term per layer")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
axes[0].set_ylabel("nats per image (valid, log scale)")
axes[0].set_yscale("log")            # epoch 1 (KL weight 0) can be 10x the rest
results["figures"].append(C.save_figure(fig, args.out / "kl_per_layer.png"))
results["kl_per_layer"] = {k: v.tolist() for k, v in kl_hist.items()}

nll = {}
for name, m in models.items():
    m64 = as_float64(m)
    xb = x_test[:50].astype(np.float64)
    m64.kl_weight = 0.0
    rec = m64.loss(xb, 7, grad=False)[0]
    m64.kl_weight = 1.0
    total = m64.loss(xb, 7, grad=False)[0]
    kls = m64.kl_per_layer(xb, 7)                       # the same draw (seed 7)
    table.add(f"{name}: -ELBO = reconstruction + sum of layer KLs (one draw)", total, rec + kls.sum(), EXACT)
    lw = m.log_weights(x_test, 1, args.seed)[0].astype(np.float64)
    log_px = importance_sampled_log_px(m, x_test, K=C.quick_or(args, 50, 500), rng=args.seed)
    d = log_px - lw                                       # per image: IS estimate - one-sample ELBO
    se = math.sqrt(d.var(ddof=1) / len(d))
    table.add(f"{name}: ELBO <= IS log p(x) (test)", float(lw.mean()), float(log_px.mean()), 4 * se,
              relation="<=", note="tol = 4 SE of the paired per-image differences")
    nll[name] = float(-log_px.mean())
print(f"    test NLL by IS: HVAE {nll['HVAE']:.2f}, LVAE {nll['LVAE']:.2f} nats "
      f"({epochs} epochs on {len(x_train)} images; printed, not asserted)")
results["nll"] = nll

# %% 3. Active units per layer ------------------------------------------------------------------
au = {}
for name, m in models.items():
    res = active_units(m, x_test, S=C.quick_or(args, 3, 10), rng=args.seed)
    au[name] = res
    print(f"[3] {name}: active units (Cov_x E_q[z_j] > 0.01) per layer: "
          + ", ".join(f"{c}/{s}" for c, s in zip(res["counts"], res["sizes"])))
# LVAE top layer: q(z_L|x) = N(mu^_L(x), .), so E_q[z_L] = mu^_L(x) with no sampling at all
lv = models["LVAE"]
f0 = lv._forward(lv.check_input(x_test), np.zeros((len(x_test), sum(lv.latent)), lv.dtype), train=False)
direct = f0["mu_hat"][-1].astype(np.float64).var(axis=0)
table.add("LVAE top layer: Cov_x E_q[z] = Var_x mu^_L(x) (max abs diff)",
          float(np.max(np.abs(direct - au["LVAE"]["variances"][-1]))), 0.0, 1e-6,
          note="float32 model: tolerance of float32 rounding of values ~1")
results["active_units"] = {k: v["counts"] for k, v in au.items()}

# %% 4. Samples varying one layer at a time -----------------------------------------------------
n_cols, Ls = 8, cfg["latent"]
rows, labels = [], []
for name, m in models.items():
    g = np.random.default_rng(args.seed)
    base = g.standard_normal(sum(Ls)).astype(np.float32)
    bounds = np.cumsum((0,) + Ls)
    for i in range(len(Ls)):
        eps = np.tile(base, (n_cols, 1))
        eps[:, bounds[i]:bounds[i + 1]] = g.standard_normal((n_cols, Ls[i]))
        rows.append(m.decode_noise(eps))
        labels.append(f"{name}: vary z_{i + 1}")
    spread = [float(r.std(axis=0).mean()) for r in rows[-len(Ls):]]
    print(f"[4] {name}: mean pixel std across a row when only z_i varies, i = 1, 2: "
          + ", ".join(f"{s:.3f}" for s in spread))
fig, ax = C.plt.subplots(figsize=(n_cols * 0.7, len(rows) * 0.75))
ax.imshow(image_grid(np.concatenate(rows), len(rows), n_cols), cmap="gray", vmin=0, vmax=1)
ax.set_yticks(np.arange(len(rows)) * 28 + 14, labels)
ax.set_xticks([])
ax.set_title("one layer's noise varies along a row, the others fixed")
results["figures"].append(C.save_figure(fig, args.out / "samples_per_layer.png"))
g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
m = models["LVAE"]
same = m.sample(4, g1)
again = m.decode_noise(g2.standard_normal((4, sum(Ls)), dtype=np.float32))
table.add("sample(n, rng) = decode_noise(the same draws) (max abs diff)",
          float(np.max(np.abs(same - again))), 0.0, 0.0)
results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
