"""Lesson 09: the variational RNN (Chung et al., 2015): a latent variable per time step.

Lecture notes 000_9c66b664a7223908.txt, "Models" (VRNN: the joint factorization and q): an image is read as a sequence x_1:T of its T = 28 rows, each
x_t in {0, 1}^28, with a Gaussian latent z_t in R^L per row and

    p(x_1:T, z_1:T) = prod_t p(x_t | x_<t, z_<=t) p(z_t | x_<t, z_<t).

A GRU state h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1}) summarises the past, so each factor is a
network of h_{t-1}: the prior p(z_t | h_{t-1}), the decoder p(x_t | z_t, h_{t-1}) and the filtering
posterior q(z_t | x_t, h_{t-1}).  The ELBO is a sum over steps,

    ELBO = sum_t E_q[ log p(x_t | z_t, h_{t-1}) - KL(q(z_t | x_t, h_{t-1}) || p(z_t | h_{t-1})) ],

and its gradient is backpropagation through time written by hand (nplvm/models/vrnn.py).

What it prints and draws (``--out``, default figures/09_vrnn/):
  1. a float64 finite-difference check of the whole model's gradient at the full length T = 28;
  2. training on the rows of binarized MNIST (the offline subset; gradient-norm clipping);
  3. test NELBO and the importance-sampled log p(x_1:T) (whole trajectories z_1:T ~ q), checked
     to lie above the ELBO, in nats per image (comparable with the VAE of lesson 03);
  4. digits generated row by row from the prior (samples.png);
  5. the bottom half of test digits completed from the top half: the posterior reads rows 1-14,
     the prior continues from the state it left (completion.png);
  6. the KL and the reconstruction cost per time step: where in the image the model spends its
     information (kl_per_step.png), and the learning curves (curves.png).

    python lessons/09_vrnn.py                  # a few minutes on a laptop CPU
    python lessons/09_vrnn.py --quick          # seconds (the test suite runs this)

On a small or busy CPU, prefix OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1: the per-step matrices
(batch x 128) are too small to gain from threads, and oversubscribed threads cost up to 10x.
"""
# %%
import sys
import time
from pathlib import Path

import numpy as np

FILE = Path(globals().get("__file__", "09_vrnn.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository on sys.path, selects the Agg backend)

from nplvm.gradcheck import check_model  # noqa: E402
from nplvm.models.vrnn import VRNN  # noqa: E402
from nplvm.objectives import importance_sampled_log_px  # noqa: E402
from nplvm.optim import Adam  # noqa: E402
from nplvm.train import evaluate, fit  # noqa: E402

plt = C.plt
T, D = 28, 28
N_OBSERVED = 14                     # completion: the top half is given


def extra_flags(parser):
    parser.add_argument("--data", default=None,
                        help="data source for nplvm.data.load_dataset (default: the offline subset)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 40; quick 2)")


def check_gradients(table, seed):
    """1. The whole model's gradient at T = 28 rows against central differences (float64).

    Small networks, tanh (smooth: no ReLU kink inside a finite-difference step), fixed noise,
    a handful of entries of every parameter.  Step h = 1e-4: the loss is ~100 nats, and with
    h = 1e-6 rounding (u |f| / h ~ 1e-8) would swamp the smallest recurrent gradients.
    """
    m = VRNN(x_dim=T * D, row_size=D, latent=3, rnn_hidden=5, features=4, hidden=(6,),
             activation="tanh", dtype="float64", seed=seed)
    x = (np.random.default_rng(seed).random((2, T * D)) < 0.3).astype(np.uint8)
    report = check_model(m, x, seed=seed, eps=1e-4, max_entries_per_param=5)
    worst = max(report.values())
    table.add(f"BPTT gradient, T={T}: max rel. error over {len(report)} parameters", worst, 0.0,
              tol=1e-6, relation="<=", note="float64 central differences, h = 1e-4, 5 entries each")
    print(report.report(1e-6))
    return worst


def train(args, ds):
    """2. Train the VRNN on the rows of the binarized digits."""
    quick = args.quick
    config = C.quick_or(args, dict(latent=4, rnn_hidden=32, features=16, hidden=(32,)),
                        dict(latent=16, rnn_hidden=128, features=64, hidden=(128,)))
    model = VRNN(x_dim=T * D, row_size=D, activation="relu", seed=args.seed, **config)
    n_train = C.quick_or(args, 300, len(ds.train))
    epochs = args.epochs or C.quick_or(args, 2, 40)
    x_train = ds.train[:n_train]
    x_valid = ds.valid[:C.quick_or(args, 100, len(ds.valid))]
    print(f"\n[2] training {model!r} ({model.num_parameters():,} parameters) on {len(x_train)} "
          f"images, {epochs} epochs, Adam lr 2e-3, gradient norm clipped at 50")
    t0 = time.perf_counter()
    history = fit(model, Adam(lr=2e-3), x_train, x_valid, epochs=epochs, batch_size=50 if quick else 100,
                  seed=args.seed, clip_norm=50.0, progress=True,
                  log=(lambda s: print("    " + s)))
    print(f"    {time.perf_counter() - t0:.1f} s in all, {np.mean([h['seconds'] for h in history]):.2f} s per epoch")
    return model, history


def evaluate_model(table, model, x_test, K, seed):
    """3. Test NELBO (the training objective) and the IS estimate of log p(x_1:T)."""
    nelbo = evaluate(model, x_test, batch_size=100, seed=seed)
    log_px = importance_sampled_log_px(model, x_test, K=K, batch=50, rng=seed)
    terms = model.step_terms(x_test, rng=seed + 1)                    # one draw of z_1:T per image
    elbo_n = -(terms["kl"] + terms["nll"]).sum(axis=1)                # (N,) single-sample ELBOs
    gap = np.asarray(log_px, np.float64) - elbo_n                     # paired: the same images
    se = float(gap.std(ddof=1) / np.sqrt(len(gap)))
    nll = -float(log_px.mean())
    print(f"\n[3] test NELBO {nelbo:.2f} nats/image; IS estimate -log p(x_1:T) {nll:.2f} "
          f"(K = {K}); gap log p(x) - ELBO {gap.mean():.2f} +- {se:.2f} (paired over images)")
    table.add("IS log p(x) >= ELBO (test mean, nats)", float(log_px.mean()), float(elbo_n.mean()),
              tol=4 * se, relation=">=",
              note=f"K = {K} whole trajectories z_1:T ~ q vs one draw; tol = 4 SE of the per-image gap")
    return nelbo, nll


def tile(images, nrow):
    """(n, 784) -> one 2-D mosaic, ``nrow`` images per row, a 1-pixel white border."""
    n = len(images)
    ncol = -(-n // nrow)
    grid = np.ones((ncol * 29 + 1, nrow * 29 + 1))
    for i, im in enumerate(images):
        r, c = divmod(i, nrow)
        grid[1 + r * 29:1 + r * 29 + 28, 1 + c * 29:1 + c * 29 + 28] = 1 - im.reshape(28, 28)
    return grid


def plot_samples(args, model, table):
    """4. Generation, row by row from the prior: z_t ~ p(z_t | h_{t-1}), x_t ~ p(x_t | z_t, h_{t-1}),
    then h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1}).  We show each row's Bernoulli means given
    the sampled past (the binary rows are what the recurrence is fed)."""
    x, probs = model.generate(64, rng=args.seed)
    table.example("generated pixels are binary", float(np.isin(x, (0, 1)).mean()), 1.0, tol=0.0,
                  note="generate draws Bernoulli pixels: true by construction")
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6))
    for ax, imgs, title in ((axes[0], probs, "prior samples: Bernoulli means of each row"),
                            (axes[1], x, "the binary rows drawn (fed back to the GRU)")):
        ax.imshow(tile(imgs, 8), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return C.save_figure(fig, args.out / "samples.png")


def plot_completion(args, model, x_test, table):
    """5. Completion: the posterior reads the top half (filtering updates h), the prior goes on."""
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(x_test), size=8, replace=False)
    x = x_test[idx]
    n_draws = 3
    completions, kept = [], []
    for s in range(n_draws):
        out, probs = model.complete(x, N_OBSERVED, rng=args.seed + 1 + s)
        completions.append(probs)
        kept.append(np.array_equal(out[:, :N_OBSERVED * D], x[:, :N_OBSERVED * D]))
    table.example("completion keeps the observed rows", float(all(kept)), 1.0, tol=0.0,
                  note="complete copies the given rows: true by construction")
    observed = x.astype(float).copy()
    observed[:, N_OBSERVED * D:] = 0.5                          # grey: not shown to the model
    rows = [("test digit", x), ("top half given", observed)] + [
        (f"completion {s + 1}", completions[s]) for s in range(n_draws)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.35 * len(rows) + 0.4))
    for ax, (label, imgs) in zip(axes, rows):
        ax.imshow(tile(imgs, 8), cmap="gray", vmin=0, vmax=1)
        ax.axhline(0.5 + N_OBSERVED, color="tab:red", lw=0.8)   # below the last observed row
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title(f"Completing test digits from their top {N_OBSERVED} rows "
                      "(below the red line: Bernoulli means from the prior)", fontsize=10)
    return C.save_figure(fig, args.out / "completion.png")


def plot_kl_per_step(args, model, x_test, nelbo, table):
    """6. KL(q(z_t|.) || p(z_t|h_{t-1})) and -log p(x_t|.) per row t, averaged over test images."""
    terms = model.step_terms(x_test, rng=args.seed)
    kl, nll = terms["kl"].mean(0), terms["nll"].mean(0)
    total = float((terms["kl"] + terms["nll"]).sum(1).mean())
    table.add("sum_t (nll_t + KL_t) = NELBO (same noise)", total,
              float(model.loss(x_test, args.seed)[0]), tol=1e-6 * abs(total),
              note="step_terms vs loss, two code paths; float32 rounding (~8 ulp of the total)")
    table.add("KL_t >= 0 for every step and image", float(terms["kl"].min()), 0.0, tol=0.0,
              relation=">=")
    ink = x_test.reshape(-1, T, D).mean(axis=(0, 2)) * D
    t = np.arange(1, T + 1)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax_ink = ax.twinx()                                   # ink in pixels, on its own axis
    ax_ink.bar(t, ink, color="0.88", label="ink: mean pixels on in row t (right axis)")
    ax_ink.set_ylabel("pixels on per row")
    ax.set_zorder(ax_ink.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(t, kl, "o-", color="tab:red", label="KL(q(z_t | x_t, h_{t-1}) || p(z_t | h_{t-1}))")
    ax.plot(t, nll, "s-", color="tab:blue", label="-log p(x_t | z_t, h_{t-1})")
    ax.set_xlabel("time step t = image row (top to bottom)")
    ax.set_ylabel("nats per image")
    ax.set_ylim(bottom=0)
    ax_ink.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()
    handles_ink = ax_ink.get_legend_handles_labels()
    ax.legend(handles[0] + handles_ink[0], handles[1] + handles_ink[1], fontsize=8, loc="upper right")
    ax.set_title(f"Where the VRNN spends its information (test NELBO {nll.sum() + kl.sum():.1f} = "
                 f"{nll.sum():.1f} reconstruction + {kl.sum():.1f} KL, one draw)", fontsize=10)
    top = np.argsort(kl)[::-1][:3] + 1
    print(f"\n[6] KL per step: total {kl.sum():.2f} nats; largest at rows {top.tolist()} "
          f"({kl.max():.2f} nats); rows 1-3 and 26-28 (blank margins) carry "
          f"{kl[:3].sum() + kl[-3:].sum():.2f} nats")
    return C.save_figure(fig, args.out / "kl_per_step.png"), kl, nll


def plot_curves(args, history):
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train NELBO")
    ax.plot(ep, [h["valid_loss"] for h in history], "s-", label="valid NELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.set_title("VRNN learning curves")
    if len(history) > 2:                    # epoch 1 is far above the rest: zoom on the tail
        top = max(history[1]["train_loss"], history[1]["valid_loss"])
        ax.set_ylim(min(min(h["train_loss"], h["valid_loss"]) for h in history) - 2, top + 2)
    ax.legend()
    return C.save_figure(fig, args.out / "curves.png")


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE, extra=extra_flags)
table = C.CheckTable("Lesson 09: VRNN checks")

# %% [markdown]
# ## 1. Backpropagation through time, checked at T = 28
# %%
print("[1] whole-model gradient check, float64, T = 28 rows")
check_gradients(table, args.seed)

# %% [markdown]
# ## 2. Training on the rows of binarized MNIST
# %%
ds = C.load_data(args, seed=args.seed)
model, history = train(args, ds)
last = history[-1]
first = history[0]
print(f"    train NELBO {last['train_loss']:.2f}, valid {last['valid_loss']:.2f} (after epoch 1: "
      f"{first['train_loss']:.2f}, {first['valid_loss']:.2f}).  The train figure is the mean over the "
      "epoch's minibatches while the weights were still improving, the valid one is measured after the "
      "epoch: early on valid sits below train; later valid - train is the overfitting to the training images")

# %% [markdown]
# ## 3. The test ELBO and the importance-sampled log p(x_1:T)
# %%
x_test = ds.test[:C.quick_or(args, 100, len(ds.test))]
K = C.quick_or(args, 20, 200)
nelbo, nll = evaluate_model(table, model, x_test, K, args.seed)

# %% [markdown]
# ## 4-5. Generation row by row, and completing the bottom half
# %%
figures = [plot_samples(args, model, table), plot_completion(args, model, x_test, table)]

# %% [markdown]
# ## 6. The KL and the reconstruction cost per time step; learning curves
# %%
fig_kl, kl, rec = plot_kl_per_step(args, model, x_test, nelbo, table)
figures += [fig_kl, plot_curves(args, history)]
print()
results = C.finish(table, {"figures": figures, "history": history,
        "test_nelbo": nelbo, "test_nll_is": nll, "kl_per_step": kl.tolist(),
        "nll_per_step": rec.tolist(), "config": model.config})

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
