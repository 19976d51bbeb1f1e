"""Lesson 08: the Gaussian-mixture VAE: a categorical y summed exactly, a Gaussian z reparameterized.

Lecture notes (002_e73e17ee4c7eee9a.txt, "The Generative Process of VADE"; the mixture of Gaussians as a
latent variable model: 004_eef4e39dcc0eb5a8.txt, "Mixture of gaussians"):
p(x, y, z) = p(x|z) p(z|y) p(y),  q(y, z|x) = q(y|x) q(z|x, y), and

    ELBO(x) = sum_y q(y|x) [ E_q(z|x,y)[log p(x|z)] - KL(q(z|x,y) || p(z|y)) ] - KL(q(y|x) || p(y)).

Because y takes only K values, the expectation over q(y|x) is a finite sum: every component runs
in one batched pass and the gradient flows through the weights q(y|x) (softmax backward) and,
inside each component, through z = mu + sigma * eps.  The alternative, sampling y and using the
score function d log q(y|x), is unbiased too: this lesson checks that numerically and measures
how much more variance it has.

Steps (one ``# %%`` cell each; figures under ``--out``, default figures/08_gmvae/):
  1. a float64 finite-difference check of the whole model's gradient (every parameter);
  2. training without labels after the VaDE-style initialisation (``nplvm.clustering``:
     pretrain the same networks as a plain VAE, fit a Gaussian mixture to the codes, start p(z|y)
     from it and q(y|x) on its responsibilities; ``--no-vade``: from scratch with a KL warm-up),
     clustering accuracy (Hungarian matching) and the train and test -ELBO per epoch;
  3. exact-sum vs score-function gradients (at the initial parameters): agreement in
     expectation (z-scores) and variances;
  4. samples drawn per component, the prior means mu_y decoded (with the digit each component is
     matched to), and the per-component KL and usage.
Why the accuracy does not rise with the ELBO, and the remedy, are lesson 16's (VaDE).

    python lessons/08_gmvae.py                 # a few minutes on one core
    python lessons/08_gmvae.py --quick         # seconds (the test suite runs this)
"""
# %%
import math
import sys
import time
from pathlib import Path

FILE = Path(globals().get("__file__", "08_gmvae.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from scipy.stats import norm  # noqa: E402

from nplvm import clustering as CL  # noqa: E402
from nplvm.gradcheck import check_model  # noqa: E402
from nplvm.models.gmvae import GMVAE  # noqa: E402

GRAD_TOL = 1e-5      # float64 central differences (eps 1e-5) on entries ~1e-4: noise ~1e-7



def image_grid(images, rows, cols, side=28):
    """(rows*cols, side*side) -> one (rows*side, cols*side) image, row-major."""
    g = images.reshape(rows, cols, side, side).transpose(0, 2, 1, 3)
    return g.reshape(rows * side, cols * side)


def check_gradients(seed):
    """1. The whole model's gradient against central differences, float64, every entry."""
    m = GMVAE(x_dim=16, n_components=3, hidden=[8], activation="tanh", seed=seed, dtype="float64",
              latent=2)
    x = (np.random.default_rng(seed).random((6, 16)) < 0.4).astype(np.float64)
    report = check_model(m, x, seed=seed, eps=1e-5, max_entries_per_param=None)
    print(report)
    return max(report.values()), len(report)


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
    print(f"    same eps: max |z| of (mean SF - exact sum) / s.e. over {int(ok.sum())} coordinates = {z_max:.2f}")
    print(f"    eps drawn afresh: total variance  exact sum {ex_var:.3e}   score function {sf_var:.3e}"
          f"   ratio {ratio:.0f}x")
    return z_max, int(ok.sum()), ratio


def matched_digit(labels, assign, K):
    """Component y -> the digit the Hungarian matching gives it (-1: unmatched)."""
    counts = np.zeros((K, int(labels.max()) + 1))
    np.add.at(counts, (assign, labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    out = np.full(K, -1)
    out[rows] = cols
    return out


def mean_nelbo(model, x, seed):
    """-ELBO per image (y summed exactly, one z per component), seeded: (N,)."""
    return -np.concatenate([model.elbo(x[i:i + 500], np.random.default_rng([seed, 4, i]))
                            for i in range(0, len(x), 500)])


# %% [markdown]
# ## The lesson, step by step
# %%
def extra(p):
    p.add_argument("--data", default="offline", help="'offline' (labeled 5,000 MNIST) or an .npz path")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the ELBO phase")
    p.add_argument("--no-vade", action="store_true",
                   help="skip the VaDE-style initialisation (train from scratch with a KL warm-up)")
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE, extra)
out, plt = args.out, C.plt
t0 = time.perf_counter()
q = args.quick
epochs = args.epochs or (3 if q else 10)
K = 10
table = C.CheckTable("Lesson 08: the GMVAE")
results = {"figures": []}

# %% [markdown]
# ## 1. The exact-sum gradient, every parameter, float64
# %%
worst, n_params = check_gradients(args.seed)
table.add(f"[1] gradient check: max rel. error over all {n_params} parameters", worst, 0.0, GRAD_TOL, "<=",
          note="central differences (eps 1e-5), every entry")

# %% [markdown]
# ## 2. Training without labels, after the VaDE-style initialisation
# %%
ds = C.load_data(args, labels=True, seed=args.seed)
x_train = ds.train[:600] if q else ds.train
x_eval, y_eval = (ds.test[:300], ds.test_labels[:300]) if q else (ds.test, ds.test_labels)
y_eval = np.asarray(y_eval, dtype=np.int64)
x_fit = x_train[:len(x_eval)]                          # as many training images, for train -ELBO
model = GMVAE(x_dim=x_train.shape[1], n_components=K, hidden=[64] if q else [256, 256],
              prior_spread=2.0, seed=args.seed, latent=4 if q else 10)
fresh = GMVAE(**model.config)          # the same initial parameters, kept for part 3
warmup = max(1, epochs // 3) if args.no_vade else 0
print(f"[2] training {model.num_parameters()} parameters on {len(x_train)} images without "
      f"labels, {epochs} epochs" + (f", KL warm-up over {warmup}" if warmup else ""))
init = None
if not args.no_vade:       # pretrain as a VAE (y off), GMM on the codes -> p(z|y), q(y|x)
    info = CL.gmvae_vade_init(model, x_train, pretrain_epochs=15 if q else 20, pretrain_beta=0.1,
                              yhead_epochs=10, gmm_inits=3 if q else 10, gmm_covariance="full",
                              lr=3e-3 if q else 1e-3, seed=args.seed, log=None)
    init = CL.clustering_report(model, x_eval, y_eval)
    print(f"    VaDE init ({info['seconds']:.0f} s): accuracy of argmax q(y|x) before any ELBO "
          f"step {init['accuracy']:.3f}")
nelbo_train0 = mean_nelbo(model, x_fit, args.seed)
nelbo_test0 = mean_nelbo(model, x_eval, args.seed)
train_curve = [float(nelbo_train0.mean())]

hist = CL.train_gmvae(model, x_train, x_eval, y_eval, epochs, batch_size=100, lr=1e-3,
                      warmup_epochs=warmup, seed=args.seed, log=None)
acc = [r["accuracy"] for r in hist]
nelbo_test = [r["nelbo_beta1"] for r in hist]
nelbo_train1 = mean_nelbo(model, x_fit, args.seed)
train_curve.append(float(nelbo_train1.mean()))
final = CL.clustering_report(model, x_eval, y_eval)
print("    accuracy per epoch: " + " ".join(f"{a:.3f}" for a in acc))
d = nelbo_train1 - nelbo_train0
d_se = d.std(ddof=1) / math.sqrt(len(d))
dt = mean_nelbo(model, x_eval, args.seed) - nelbo_test0
dt_se = dt.std(ddof=1) / math.sqrt(len(dt))
print(f"    -ELBO on {len(x_fit)} training images: {nelbo_train0.mean():.2f} -> {nelbo_train1.mean():.2f} "
      f"({d.mean():+.2f} +- {d_se:.2f}); on the test images: {nelbo_test0.mean():.2f} -> "
      f"{nelbo_test0.mean() + dt.mean():.2f} ({dt.mean():+.2f} +- {dt_se:.2f})")
verdict = ("falls on the test images too" if dt.mean() + 2 * dt_se < 0 else
           "rises on the test images: the model overfits the training images" if dt.mean() - 2 * dt_se > 0
           else "does not move measurably on the test images")
print(f"    The ELBO phase lowers the training -ELBO; the test -ELBO {verdict}.  The accuracy "
      f"goes {acc[0] if init is None else init['accuracy']:.3f} -> {final['accuracy']:.3f}: a better "
      f"ELBO does not reward components that match digits (lesson 16 shows why, and the remedy).")
table.add("[2] the ELBO phase lowers the training -ELBO: upper 4-SE bound of the change <= 0",
          float(d.mean() + 4 * d_se), 0.0, 0.0, "<=", note="paired over the same training images and noise")
majority = np.bincount(y_eval).max() / len(y_eval)
a0 = final["accuracy"] if init is None else init["accuracy"]
se0 = math.sqrt(a0 * (1 - a0) / len(y_eval))
table.add("[2] the initialisation clusters: accuracy - 4 SE >= majority-digit share",
          a0 - 4 * se0, majority, 0.0, ">=", note=f"SE = sqrt(a(1-a)/N), N = {len(y_eval)}")

# %% [markdown]
# ## 3. Exact sum vs score function
# At the initial parameters, where q(y|x) is spread over the components: after training it is
# nearly one-hot, and components drawn once in thousands make the z statistic need far more draws.
# %%
z_max, n_coord, ratio = compare_estimators(fresh, x_eval[:4 if q else 32], 100 if q else 2000, args.seed)
z_tol = float(norm.isf(0.001 / (2 * n_coord)))
table.add("[3] score function unbiased: max |z| over the head's coordinates", z_max, 0.0, z_tol, "<=",
          note=f"tol: P(max of {n_coord} |N(0,1)| > tol) = 0.001 (Bonferroni)")
table.add("[3] score-function variance / exact-sum variance >= 1", ratio, 1.0, 0.0, ">=",
          note="total variance of the q(y|x) head's gradient, eps drawn afresh")

# %% [markdown]
# ## 4. Samples per component, decoded prior means, per-component KL and usage
# %%
assign = model.predict(x_eval)
digit_of = matched_digit(y_eval, assign, K)
names = [f"y={k}: {digit_of[k] if digit_of[k] >= 0 else '-'}" for k in range(K)]
n_per = 10
samples = model.sample_components(n_per, np.random.default_rng(args.seed))            # (K, n_per, D)
fig, ax = plt.subplots(figsize=(n_per * 0.6, K * 0.6))
ax.imshow(image_grid(samples.reshape(K * n_per, -1), K, n_per), cmap="gray", vmin=0, vmax=1)
ax.set_yticks(np.arange(K) * 28 + 14, names, fontsize=7)
ax.set_xticks([])
ax.set_title("x ~ p(x|z), z ~ p(z|y): one row per component (y: matched digit)", fontsize=8)
results["figures"].append(C.save_figure(fig, out / "samples_per_component.png", dpi=100))

means = model.decode(model.prior_mu.value)                                  # (K, D)
fig, ax = plt.subplots(figsize=(K * 0.8, 1.6))
ax.imshow(image_grid(means, 1, K), cmap="gray", vmin=0, vmax=1)
ax.set_xticks(np.arange(K) * 28 + 14, names, fontsize=6)
ax.set_yticks([])
ax.set_title("decoded prior means sigmoid(decoder(mu_y)) (y: matched digit)", fontsize=8)
results["figures"].append(C.save_figure(fig, out / "prior_means.png", dpi=100))
counts = np.zeros((K, 10), dtype=int)
np.add.at(counts, (assign, y_eval), 1)
major = counts.argmax(1)
dup = sorted({int(d) for d in major if (major == d).sum() > 1})
missing = sorted(set(range(10)) - set(int(d) for d in major))
print(f"[4] the majority digit of each component: {major.tolist()}" +
      (f"; digits {dup} hold two or more components and digits {missing} none: the mixture fitted to "
       f"the codes splits a digit written in several styles and merges digits whose codes "
       f"overlap; the Hungarian matching scores every image of a duplicate component as an error"
       if dup else "; one component per digit"))

terms = model.elbo_terms(x_eval, np.random.default_rng(args.seed + 2))
pi = terms["pi"]
kl_per = (pi * terms["kl_z"]).sum(0) / np.maximum(pi.sum(0), 1e-12)       # E[KL_z | y = k]
usage = pi.mean(0)                                                          # mean q(y=k|x)
print("    per component k: mean q(y=k|x) and KL(q(z|x,y=k) || p(z|y=k)) weighted by q(y=k|x):")
print("    usage " + " ".join(f"{u:5.3f}" for u in usage))
print("    KL_z  " + " ".join(f"{v:5.1f}" for v in kl_per))
print(f"    mean KL(q(y|x) || p(y)) = {terms['kl_y'].mean():.3f} nats (log K = {math.log(K):.3f}): "
      f"q(y|x) is nearly one-hot; -ELBO = {-terms['elbo'].mean():.2f} nats")
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].bar(np.arange(K), kl_per, color="tab:blue")
axes[0].set_xlabel("component y")
axes[0].set_ylabel("nats")
axes[0].set_title("KL(q(z|x,y) || p(z|y)), q(y|x)-weighted mean", fontsize=8)
axes[1].bar(np.arange(K), usage, color="tab:orange")
axes[1].axhline(1 / K, color="k", lw=0.8, ls="--")
axes[1].set_xlabel("component y")
axes[1].set_title("usage: mean q(y|x) (dashed: p(y) = 1/K)", fontsize=8)
results["figures"].append(C.save_figure(fig, out / "per_component_kl.png", dpi=100))

fig, ax1 = plt.subplots(figsize=(7, 3.5))
ep = np.arange(1, len(hist) + 1)
ax1.plot(ep, acc, "o-", color="tab:green", label="clustering accuracy (test)")
if init is not None:
    ax1.plot([0], [init["accuracy"]], "o", color="tab:green", mfc="none")
ax1.axhline(0.9446, color="gray", ls=":", label="VaDE (full MNIST, the notes)")
ax1.set_xlabel("ELBO epoch (0, open marker: after the initialisation)")
ax1.set_ylabel("accuracy (Hungarian)")
ax1.set_ylim(0, 1)
ax2 = ax1.twinx()
ax2.plot(np.r_[0, ep], [nelbo_test0.mean()] + nelbo_test, "s--", color="tab:red", ms=3, label="-ELBO (test)")
ax2.plot([0, ep[-1]], train_curve, "^:", color="tab:purple", ms=4, label="-ELBO (training images)")
ax2.set_ylabel("-ELBO, nats")
h1, l1 = ax1.get_legend_handles_labels()
h2, l2 = ax2.get_legend_handles_labels()
ax1.legend(h1 + h2, l1 + l2, loc="upper left", bbox_to_anchor=(1.15, 1.0), fontsize=7)
ax1.set_title(f"GMVAE trained without labels ({len(x_train)} images)", fontsize=9)
results["figures"].append(C.save_figure(fig, out / "accuracy_over_training.png", dpi=100))

print(f"({time.perf_counter() - t0:.1f} s)")
results.update({"grad_error": worst, "accuracy": acc, "init_accuracy": None if init is None else init["accuracy"],
                "final_accuracy": final["accuracy"], "z_max": z_max, "variance_ratio": ratio,
                "usage": usage, "kl_per_component": kl_per, "nelbo": nelbo_test})
results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
