"""Lesson 08: the Gaussian-mixture VAE: a categorical y summed exactly, a Gaussian z reparameterized.

Lecture notes, "GMVAE":  p(x, y, z) = p(x|z) p(z|y) p(y),  q(y, z|x) = q(y|x) q(z|x, y), and

    ELBO(x) = sum_y q(y|x) [ E_q(z|x,y)[log p(x|z)] - KL(q(z|x,y) || p(z|y)) ] - KL(q(y|x) || p(y)).

Because y takes only K values, the expectation over q(y|x) is a finite sum: every component runs
in one batched pass and the gradient flows through the weights q(y|x) (softmax backward) and,
inside each component, through z = mu + sigma * eps.  The alternative, sampling y and using the
score function d log q(y|x), is unbiased too: this lesson checks that numerically and measures
how much more variance it has.

What it prints and draws (``--out``, default figures/08_gmvae/):
  1. a float64 finite-difference check of the whole model's gradient (every parameter);
  2. training without labels, clustering accuracy per epoch (Hungarian matching), after the
     VaDE-style initialisation: pretrain the same networks as a plain VAE, fit a Gaussian
     mixture to the codes, start p(z|y) from it and q(y|x) on its responsibilities
     (``--no-vade``: from scratch with a KL warm-up instead, which clusters far worse);
  3. exact-sum vs score-function gradients (at the initial parameters): agreement in
     expectation (z-scores) and variances;
  4. samples drawn per component (one row per y), the prior means mu_y decoded, and the
     per-component KL and usage.

    python lessons/08_gmvae.py                 # about three minutes on one laptop core
    python lessons/08_gmvae.py --quick         # seconds (the test suite runs this)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nplvm.bench.gmvae_cluster import clustering_report, train_clustering, vade_init  # noqa: E402
from nplvm.data import load_dataset  # noqa: E402
from nplvm.gradcheck import assert_model_grads  # noqa: E402
from nplvm.models.gmvae import GMVAE  # noqa: E402


def image_grid(images, rows, cols, side=28):
    """(rows*cols, side*side) -> one (rows*side, cols*side) image, row-major."""
    g = images.reshape(rows, cols, side, side).transpose(0, 2, 1, 3)
    return g.reshape(rows * side, cols * side)


def check_gradients(seed):
    """1. The whole model's gradient against central differences, float64, every entry."""
    m = GMVAE(x_dim=16, n_components=3, latent=2, hidden=[8], activation="tanh", seed=seed,
              dtype="float64")
    x = (np.random.default_rng(seed).random((6, 16)) < 0.4).astype(np.float64)
    report = assert_model_grads(m, x, tol=1e-5, seed=seed, eps=1e-5, max_entries_per_param=None)
    worst = max(report.values())
    print(f"[1] gradient check (float64, all {len(report)} parameters, every entry): "
          f"max relative error {worst:.1e}  (tolerance 1e-5: central-difference noise on entries ~1e-4)")
    return worst


def compare_estimators(model, x, n_draws, seed):
    """3. Exact-sum gradient vs score-function (sampled y) gradient, same noise eps.

    With eps fixed, E_y[SF gradient] equals the exact-sum gradient; we report the largest
    |z| = |mean - exact| / standard error over the coordinates of the q(y|x) head, and the
    total variance of each estimator when eps is drawn afresh (the exact sum varies only with z).
    """
    m = GMVAE(**{**model.config, "dtype": "float64"})
    for k, v in model.params.items():
        m.params[k][...] = v
    x = x.astype(np.float64)
    K, N, L = m.n_components, x.shape[0], m.latent
    eps = np.random.default_rng(seed).standard_normal((K, N, L))
    _, exact = m.loss(x, None, eps=eps)
    name = "y_head.layers.0.W"
    r = np.random.default_rng(seed + 1)
    sf = np.array([m.score_function_loss(x, r, eps=eps)[1][name].ravel() for _ in range(n_draws)])
    se = sf.std(0, ddof=1) / math.sqrt(n_draws)
    ok = se > 1e-12
    z_max = float(np.abs((sf.mean(0) - exact[name].ravel())[ok] / se[ok]).max())
    sf_var = np.array([m.score_function_loss(x, s)[1][name].ravel() for s in range(n_draws)]).var(0).sum()
    ex_var = np.array([m.loss(x, s)[1][name].ravel() for s in range(n_draws)]).var(0).sum()
    ratio = sf_var / max(ex_var, 1e-300)
    print(f"[3] gradient of the q(y|x) head at the initial parameters, {n_draws} draws, batch of {N}:")
    print(f"    same eps: max |z| of (mean SF - exact sum) / s.e. over {int(ok.sum())} coordinates "
          f"= {z_max:.2f}  (unbiased: |z| < 4.5 expected)")
    print(f"    eps drawn afresh: total variance  exact sum {ex_var:.3e}   score function {sf_var:.3e}"
          f"   ratio {ratio:.0f}x")
    return z_max, ratio


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: runs in seconds")
    p.add_argument("--out", default="figures/08_gmvae", help="folder for the PNGs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="offline", help="'offline' (labeled 5,000 MNIST) or an .npz path")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--no-vade", action="store_true",
                   help="skip the VaDE-style initialisation (train from scratch with a KL warm-up)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    q = args.quick
    epochs = args.epochs or (3 if q else 30)
    K = 10

    worst = check_gradients(args.seed)

    ds = load_dataset(args.data, seed=args.seed)
    x_train = ds.train[:600] if q else ds.train
    if ds.test_labels is None:
        raise SystemExit(f"{args.data!r} has no test labels: the lesson scores clustering on them")
    x_eval, y_eval = (ds.test[:300], ds.test_labels[:300]) if q else (ds.test, ds.test_labels)
    model = GMVAE(x_dim=x_train.shape[1], n_components=K, latent=4 if q else 10,
                  hidden=[64] if q else [500, 500], prior_spread=2.0, seed=args.seed)
    fresh = GMVAE(**model.config)          # the same initial parameters, kept for part 3
    warmup = max(1, epochs // 3) if args.no_vade else 0
    print(f"[2] training {model.num_parameters()} parameters on {len(x_train)} images without "
          f"labels, {epochs} epochs" + (f", KL warm-up over {warmup}" if warmup else ""))
    init_acc = None
    if not args.no_vade:       # pretrain as a VAE (y off), GMM on the codes -> p(z|y), q(y|x)
        info = vade_init(model, x_train, pretrain_epochs=15 if q else 20, pretrain_beta=0.1,
                         yhead_epochs=10, gmm_inits=3 if q else 20,
                         gmm_covariance="full", lr=3e-3 if q else 1e-3, seed=args.seed, log=None)
        init_acc = clustering_report(model, x_eval, y_eval)["accuracy"]
        print(f"    VaDE init ({info['seconds']:.0f} s): accuracy of argmax q(y|x) before any ELBO "
              f"step {init_acc:.3f}")
    hist = train_clustering(model, x_train, x_eval, y_eval, epochs, batch_size=100, lr=1e-3,
                            warmup_epochs=warmup, seed=args.seed, log=None)
    acc = [r["accuracy"] for r in hist]
    print("    accuracy per epoch: " + " ".join(f"{a:.3f}" for a in acc))
    final = clustering_report(model, x_eval, y_eval)
    print(f"    final clustering accuracy {final['accuracy']:.4f} on {len(x_eval)} test images "
          f"(chance ~0.1; VaDE reports 0.9446 on full MNIST)")

    # at the initial parameters, where q(y|x) is spread over the components: after training it is
    # nearly one-hot, and components drawn once in thousands make the z statistic need far more draws
    z_max, ratio = compare_estimators(fresh, x_eval[:4 if q else 32], 100 if q else 2000, args.seed)

    # 4. figures ------------------------------------------------------------------------------
    n_per = 10
    samples = model.sample_components(n_per, np.random.default_rng(args.seed))            # (K, n_per, D)
    fig, ax = plt.subplots(figsize=(n_per * 0.6, K * 0.6))
    ax.imshow(image_grid(samples.reshape(K * n_per, -1), K, n_per), cmap="gray", vmin=0, vmax=1)
    ax.set_yticks(np.arange(K) * 28 + 14, [f"y={k}" for k in range(K)])
    ax.set_xticks([])
    ax.set_title("x ~ p(x|z), z ~ p(z|y): one row per component")
    fig.tight_layout()
    fig.savefig(out / "samples_per_component.png", dpi=100)
    plt.close(fig)

    means = model.decode(model.prior_mu.value)                                  # (K, D)
    fig, ax = plt.subplots(figsize=(K * 0.8, 1.4))
    ax.imshow(image_grid(means, 1, K), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks(np.arange(K) * 28 + 14, [str(k) for k in range(K)])
    ax.set_yticks([])
    ax.set_title("decoded prior means sigmoid(decoder(mu_y))")
    fig.tight_layout()
    fig.savefig(out / "prior_means.png", dpi=100)
    plt.close(fig)

    terms = model.elbo_terms(x_eval, np.random.default_rng(args.seed + 2))
    pi = terms["pi"]
    kl_per = (pi * terms["kl_z"]).sum(0) / np.maximum(pi.sum(0), 1e-12)       # E[KL_z | y = k]
    usage = pi.mean(0)                                                          # mean q(y=k|x)
    elbo_check = (pi * (-terms["nll"] - terms["kl_z"])).sum(1) - terms["kl_y"]
    assert np.allclose(elbo_check, terms["elbo"])
    print("[4] per component k: mean q(y=k|x) and KL(q(z|x,y=k) || p(z|y=k)) weighted by q(y=k|x):")
    print("    usage " + " ".join(f"{u:5.3f}" for u in usage))
    print("    KL_z  " + " ".join(f"{v:5.1f}" for v in kl_per))
    print(f"    mean KL(q(y|x) || p(y)) = {terms['kl_y'].mean():.3f} nats (log K = {math.log(K):.3f}); "
          f"-ELBO = {-terms['elbo'].mean():.2f} nats")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    axes[0].bar(np.arange(K), kl_per, color="tab:blue")
    axes[0].set_xlabel("component y")
    axes[0].set_ylabel("nats")
    axes[0].set_title("KL(q(z|x,y) || p(z|y)), q(y|x)-weighted mean")
    axes[1].bar(np.arange(K), usage, color="tab:orange")
    axes[1].axhline(1 / K, color="k", lw=0.8, ls="--", label="p(y) = 1/K")
    axes[1].set_xlabel("component y")
    axes[1].set_title("usage: mean q(y|x)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "per_component_kl.png", dpi=100)
    plt.close(fig)

    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ep = np.arange(1, len(hist) + 1)
    ax1.plot(ep, acc, "o-", color="tab:green", label="clustering accuracy")
    ax1.axhline(0.9446, color="gray", ls=":", label="VaDE (full MNIST)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("accuracy (Hungarian)")
    ax1.set_ylim(0, 1)
    ax2 = ax1.twinx()
    ax2.plot(ep, [r["nelbo_beta1"] for r in hist], "s--", color="tab:red", ms=3, label="-ELBO (test)")
    ax2.set_ylabel("-ELBO, nats")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    ax1.set_title("GMVAE trained without labels")
    fig.tight_layout()
    fig.savefig(out / "accuracy_over_training.png", dpi=100)
    plt.close(fig)

    figs = sorted(str(f) for f in out.glob("*.png"))
    print(f"figures: {', '.join(os.path.basename(f) for f in figs)} in {out}  "
          f"({time.perf_counter() - t0:.1f} s)")
    return {"grad_error": worst, "accuracy": acc, "init_accuracy": init_acc, "final_accuracy": final["accuracy"],
            "z_max": z_max, "variance_ratio": ratio, "usage": usage, "kl_per_component": kl_per,
            "nelbo": [r["nelbo_beta1"] for r in hist], "figures": figs}


if __name__ == "__main__":
    main()
