"""Lesson 05: the importance weighted bound (IWAE), from the ELBO at k = 1 to log p(x).

Importance sampling with q(z|x) as the proposal (lecture notes 001_3b34c7ea4ef78f1e.txt,
"I. IMPORTANCE SAMPLING"; the k-sample bound in notes 002_e73e17ee4c7eee9a.txt, "VARIANTS OF
VARIATIONAL AUTOENCODER WITH ELABORATED LOSSES"):

    p(x) = E_{q(z|x)}[ w ],   w = p(x, z) / q(z|x),

so for k draws z_1..z_k ~ q, (1/k) sum_i w_i is an unbiased estimate of p(x), and by Jensen

    L_k(x) = E[ log (1/k) sum_i w_i ] <= log E[(1/k) sum_i w_i] = log p(x).            (IWAE-k)

L_1 is the ELBO; Burda, Grosse & Salakhutdinov (2016) show L_k <= L_{k+1} and L_k -> log p(x).
Training on L_k instead of L_1 gives the IWAE: its gradient is sum_i w~_i grad log w_i with the
normalized weights w~_i = w_i / sum_j w_j (nplvm/models/vae.py, region ``iwae-gradient``).

What this lesson shows and checks:

 1. identities: the IWAE loss with k = 1 *is* the VAE loss with a Monte Carlo KL (same draw);
    the k-sample gradient against finite differences (float64);
 2. on a trained VAE: L_k for k = 1 ... 5000 from one set of 5000 draws per test image (groups
    of k; the figure), increasing in k and levelling off at log p(x).  The inequalities are
    checked between *independent* sets of draws (a second set of 5000 per image), paired over
    test images: within one set, estimates from nested groups would share their draws;
 3. three models trained with k = 1, 5, 50 (same networks, data, epochs): their ELBO, their
    IS log-likelihood (K = 5000) and their number of active latent units (Burda et al.: the
    IWAE trades a looser ELBO for a better likelihood and uses more latent dimensions).

Run:  python lessons/05_iwae.py [--quick] [--out DIR] [--seed N] [--epochs E]
(a few minutes on two cores; --quick: seconds).
"""
# %%
import sys
import time
from pathlib import Path

FILE = Path(globals().get("__file__", "05_iwae.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

from nplvm import objectives, plots  # noqa: E402
from nplvm.data import load_dataset  # noqa: E402
from nplvm.models.vae import IWAE, VAE  # noqa: E402
from nplvm.optim import Adam  # noqa: E402
from nplvm.train import fit  # noqa: E402

GRAD_TOL = 1e-7
N_SE = 4.0
KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
TRAIN_KS = (1, 5, 50)


def extra_args(p):
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default 30; quick 2)")


def active_units(model, x, threshold=0.01):
    """Burda et al.'s count: latent dimensions u with Cov_x(E_q[z_u | x]) > threshold."""
    mu, _ = model.encode(x)
    return int(np.sum(np.var(mu.astype(np.float64), axis=0) > threshold))


def identities(args, table):
    x = (np.random.default_rng(args.seed).random((5, 20)) < 0.3).astype(np.float64)
    cfg = dict(x_dim=20, hidden=[8], latent=3, activation="tanh", dtype="float64", seed=args.seed)
    l_vae, _ = VAE(kl="mc", **cfg).loss(x, args.seed)
    l_iwae, _ = IWAE(k=1, **cfg).loss(x, args.seed)
    table.add("IWAE loss at k = 1 = VAE loss with MC KL (same draw)", l_iwae, l_vae, 1e-12)
    # Richardson central differences (error O(h^4)), every entry.  Entries 1e6 times smaller than the
    # largest carry rounding noise ~1e-12 of their own size, so the error is measured against the
    # gradient's scale: max |analytic - numeric| / max |analytic| (a wrong term shows as O(1))
    model = IWAE(k=5, **cfg)
    _, grads = model.loss(x, args.seed)
    grads = {k: g.copy() for k, g in grads.items()}
    scale = max(float(np.abs(g).max()) for g in grads.values())
    worst = max(float(np.abs(grads[name] - C.richardson_grad(lambda: model.loss(x, args.seed)[0], p, h=1e-3)).max())
                for name, p in model.params.items()) / scale
    table.add("IWAE k = 5 gradient vs FD (max abs. error / max |gradient|)", worst, 0.0, GRAD_TOL,
              relation="<=", note="every entry of every parameter; Richardson differences (h = 1e-3, O(h^4)), "
              "float64, fixed noise")


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE, extra_args)
table = C.CheckTable("Lesson 05: the importance weighted bound")
figures, numbers = [], {}
rng = np.random.default_rng(args.seed)
identities(args, table)

# %% [markdown]
# ## Three models trained on L_1 (the VAE), L_5 and L_50
# %%
ds = load_dataset("offline")
x_train = ds.train[:C.quick_or(args, 300, len(ds.train))]
x_valid = ds.valid[:C.quick_or(args, 100, len(ds.valid))]
x_test = ds.test[:C.quick_or(args, 20, 200)]
arch = dict(x_dim=784, hidden=C.quick_or(args, [32], [200, 200]), latent=C.quick_or(args, 5, 50),
            activation="tanh", seed=args.seed)
epochs = args.epochs or C.quick_or(args, 2, 30)
K_max = C.quick_or(args, 500, 5000)
ks = [k for k in KS if k <= K_max]

# %% [markdown]
# ## Models trained with k = 1, 5, 50
# %%
models, hists = {}, {}
for k in TRAIN_KS:
    m = IWAE(k=k, **arch)                     # k = 1: the VAE with a Monte Carlo KL
    t0 = time.perf_counter()
    hists[k] = fit(m, Adam(1e-3), x_train, x_valid, epochs=epochs, batch_size=100, seed=args.seed,
                   progress=True, log=None)
    models[k] = m
    print(f"trained k = {k:2d}: {epochs} epochs in {time.perf_counter() - t0:.1f} s, "
          f"valid -L_{k} = {hists[k][-1]['valid_loss']:.2f}")
# Each model's curve is its own objective -L_k (a different k each): one panel per model, not one
# axis, since -L_1, -L_5 and -L_50 are different measures of the same data (L_1 <= L_5 <= L_50).
fig, axes = C.plt.subplots(1, len(TRAIN_KS), figsize=(4.2 * len(TRAIN_KS), 3.8))
for ax, (k, h) in zip(axes, hists.items()):
    ep = [r["epoch"] for r in h]
    ax.plot(ep, [r["train_loss"] for r in h], "o-", ms=3, label=f"train -L_{k}")
    ax.plot(ep, [r["valid_loss"] for r in h], "s-", ms=3, label=f"valid -L_{k}")
    ax.set(xlabel="epoch", ylabel=f"-L_{k} (nats; the model's own objective)",
           title=f"trained on L_{k}" + (" (the ELBO: a VAE)" if k == 1 else ""))
    if len(h) > 2:
        lo = min(min(r["train_loss"], r["valid_loss"]) for r in h)
        ax.set_ylim(lo - 2, max(h[1]["train_loss"], h[1]["valid_loss"]) + 2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if len(h) > 1:
        drop = h[-2]["valid_loss"] - h[-1]["valid_loss"]
        print(f"k = {k:2d}: valid -L_{k} fell {drop:.2f} nats in the last epoch"
              + (" -- still training: the comparison below is at a fixed budget, not at convergence"
                 if drop > 0.2 else ""))
figures.append(C.save_figure(fig, args.out / "learning_curves.png"))

# %% [markdown]
# ## L_k for k = 1 ... K_max on each trained model, from two independent sets of draws
# %%
rows, curves, bands = [], {}, {}
for k_train, m in models.items():
    max_rows = C.quick_or(args, 10000, 50000)
    lw = objectives.sample_log_weights(m, x_test, K_max, rng, max_rows=max_rows)     # set A
    b = objectives.bounds_for_ks(lw, ks)
    lw_b = objectives.sample_log_weights(m, x_test, K_max, rng, max_rows=max_rows)   # set B, independent
    b_b = objectives.bounds_for_ks(lw_b, ks)
    log_px = b_b[K_max]                                                   # log (1/K) sum w: the IS estimate
    curves[f"trained with k = {k_train}"] = [b[k].mean() for k in ks]
    bands[f"trained with k = {k_train}"] = [b[k].std() / np.sqrt(len(x_test)) for k in ks]
    # L_k <= L_m with L_k from set A and L_m from set B: paired over test images, the difference's
    # spread (sampling noise of both and the image-to-image spread of the gap) sets its SE
    k_mid = ks[len(ks) // 2]
    for k_lo, k_hi in ((1, k_mid), (k_mid, K_max)):
        d = b[k_lo] - b_b[k_hi]
        table.add(f"k_train = {k_train}: L_{k_lo} (set A) <= L_{k_hi} (set B)", b[k_lo].mean(), b_b[k_hi].mean(),
                  N_SE * d.std(ddof=1) / np.sqrt(len(d)), relation="<=",
                  note=(f"independent draws; tol = {N_SE:g} SE of the per-image difference"
                        if k_train == TRAIN_KS[0] and k_lo == 1 else ""))
    # L_K from set A and from set B are identically distributed: their difference has mean 0
    diff = b[K_max] - log_px
    table.add(f"k_train = {k_train}: L_{K_max} = IS log p(x), an independent draw", b[K_max].mean(),
              log_px.mean(), N_SE * diff.std(ddof=1) / np.sqrt(len(diff)) + 1e-9,
              note=f"two draws of the same K-sample estimate; tol = {N_SE:g} SE of their difference")
    rows.append({"k_train": k_train, "elbo": float(b[1].mean()),
                 "bound_k_train": float(b[k_train].mean()), "log_px": float(log_px.mean()),
                 "active_units": active_units(m, ds.test)})
figures.append(str(plots.line_plot(ks, curves, args.out / "bound_vs_k.png", xlabel="k (samples in the bound)",
                                   ylabel="L_k, mean over test images (nats; band: 1 SE)", logx=True, bands=bands,
                                   title="L_k tightens towards log p(x) as k grows")))

print(f"\n{'trained with':>12} | {'ELBO (L_1)':>10} | {'log p(x), IS K=' + str(K_max):>18} | "
      f"{'gap log p(x) - ELBO':>19} | active units / {arch['latent']}")
for r in rows:
    print(f"{'k = ' + str(r['k_train']):>12} | {r['elbo']:10.2f} | {r['log_px']:18.2f} | "
          f"{r['log_px'] - r['elbo']:19.2f} | {r['active_units']}")
print("Burda et al. (2016), MNIST, this architecture: NLL 86.76 (VAE k=1) vs 84.78 (IWAE k=50) with "
      "two stochastic layers; 88.71 vs 87.10 with one (the vae_quality benchmark reproduces that setting).")
xs = list(TRAIN_KS)
figures.append(str(plots.line_plot(xs, {"ELBO (L_1)": [r["elbo"] for r in rows],
                                        f"log p(x) (IS, K = {K_max})": [r["log_px"] for r in rows]},
                                   args.out / "trained_k_comparison.png", xlabel="k used in training",
                                   ylabel="nats per test image", logx=True,
                                   title="Models trained with k = 1, 5, 50")))
numbers["models"] = rows
results = C.finish(table, {"checks": table.to_dict(), "figures": figures, "numbers": numbers})

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
