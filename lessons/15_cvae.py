"""Lesson 15: the conditional VAE (Sohn, Lee & Yan, 2015): why structured prediction needs a latent.

Cited: lecture notes 002_e73e17ee4c7eee9a.txt, "VARIANTS OF VARIATIONAL AUTOENCODER WITH CONDITIONAL PROBABILITY".

Lecture notes (002, "Variants of VAE with conditional probability"): condition every density of
the VAE on the input x (the notes write y for the condition and e for the evidence):

    log p(y|x) >= E_{q(z|x,y)}[log p(y|x, z)] - KL(q(z|x, y) || p(z|x))                  (C)

with a prior NETWORK p(z|x), a recognition network q(z|x, y) and a generation network p(y|x, z).
Task: MNIST quadrant completion.  x = the observed quadrant(s) (unobserved pixels marked -1, so
"missing" is not "black"), y = the unobserved pixels.

What this lesson shows and checks (``--out``, default figures/15_cvae/):
  1. the KL between two learned diagonal Gaussians: closed form = Monte Carlo, and its gradient
     to both Gaussians against finite differences (the homework 'cvae-kl-gradient');
  2. four models trained on the same digits: the deterministic baseline (one network x -> y, no
     z, cross-entropy), the GSNN (z from the prior network), the CVAE (C), and the hybrid
     alpha L_CVAE + (1 - alpha) L_GSNN;
  3. the CVAE's ELBO terms add up: loss = E[-log p(y|x, z)] + KL, exactly with the loss's own
     draw; the analytic-KL loss and the sampled log-weights estimate the same -ELBO;
     hybrid = alpha CVAE + (1 - alpha) GSNN exactly;
  4. ELBO <= the importance-sampled log p(y|x), and the IS estimate grows with K;
  5. the CLL table: -log p(y|x) by importance sampling (q(z|x, y) as the proposal) and the -ELBO;
  6. completions of the same inputs: the baseline gives one blurred mean (it must hedge between
     the digits the input allows), the CVAE several sharp, different samples;
  7. conditional generation from labels: a CVAE with x = the one-hot digit, y = the image; one
     row of samples per digit.

    python lessons/15_cvae.py                 # a few minutes on one core
    python lessons/15_cvae.py --quick         # seconds (the test suite runs this)
"""
from __future__ import annotations

import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "15_cvae.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

from nplvm.data import load_dataset  # noqa: E402
import kernels  # noqa: E402
from nplvm.distributions import DiagGaussian  # noqa: E402
from nplvm.models import build  # noqa: E402
from nplvm.models.cvae import LabelCVAE, observed_mask, with_labels  # noqa: E402
from nplvm.objectives import importance_sampled_log_px  # noqa: E402
from nplvm.optim import Adam  # noqa: E402
from nplvm.plots import tile_images  # noqa: E402
from nplvm.train import fit  # noqa: E402

EXACT_TOL = 1e-9          # nats: identities of sums of a few hundred float64 terms
GRAD_TOL = 1e-8           # relative error of Richardson-extrapolated finite differences
MODELS = ("baseline", "gsnn", "cvae", "hybrid")


def as_float64(model):
    """A float64 copy of a model (same kind, config and parameter values), for exact checks."""
    m64 = build(model.kind, {**model.config, "dtype": "float64"})
    for name, p in model.params.items():
        m64.params[name][...] = p
    return m64


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE,
                    extra=lambda p: p.add_argument("--quadrants", type=int, default=1,
                                                   help="observed quadrants, 1, 2 or 3 (default 1)"))
quick, seed = args.quick, args.seed
table = C.CheckTable("Lesson 15: the conditional VAE")
results = {"figures": [], "numbers": {}}
num = results["numbers"]

# %% 1. KL(q || p) between two learned diagonal Gaussians, and its gradient to both ---------
g = np.random.default_rng(seed)
mq, lq, mp, lp = (g.normal(size=(1, 3)), 0.6 * g.normal(size=(1, 3)),
                  g.normal(size=(1, 3)), 0.6 * g.normal(size=(1, 3)))
kl = kernels.reference.gaussian_kl(mq, lq, mp, lp)
q, p = DiagGaussian(mq, lq), DiagGaussian(mp, lp)
z = q.sample(g, (20_000 if quick else 400_000,))
d = (q.log_prob(z) - p.log_prob(z))[:, 0]                          # log q(z) - log p(z), z ~ q
se = d.std() / np.sqrt(d.size)
table.add("KL(q||p): closed form = E_q[log q - log p]", kl[0][0], d.mean(), 4 * se,
          note=f"Monte Carlo with {d.size} draws; tol = 4 SE")
arrays = [a.copy() for a in (mq, lq, mp, lp)]
for i, name in enumerate(("mu_q", "logvar_q", "mu_p", "logvar_p")):
    fd = C.richardson_grad(lambda: kernels.reference.gaussian_kl(*arrays)[0].sum(), arrays[i])
    rel = np.max(np.abs(kl[1 + i] - fd) / np.maximum(np.abs(fd), 1e-3))
    table.add(f"dKL/d{name} vs finite differences (rel. error)", rel, 0.0, GRAD_TOL, relation="<=")

# %% 2. four models on the same digits -------------------------------------------------------
ds = load_dataset("offline", seed=seed)
n_train, n_test = (1000, 60) if quick else (4000, 500)
x_train, x_test = ds.train[:n_train], ds.test[:n_test]
hidden, latent = ([32], 4) if quick else ([256, 256], 16)
epochs = 8 if quick else 40
K = 100 if quick else 1000
lr = 3e-3 if quick else 1e-3                  # the tiny quick models take larger steps
quadrants = args.quadrants
print(f"training baseline, GSNN, CVAE and hybrid ({hidden}, latent {latent}) on {n_train} offline "
      f"digits for {epochs} epochs; {quadrants} observed quadrant(s)")
common = dict(x_dim=784, hidden=hidden, quadrants=quadrants, activation="relu", seed=seed)
models = {"baseline": build("cvae-baseline", common)}
for name in ("gsnn", "cvae", "hybrid"):
    models[name] = build("cvae", {**common, "latent": latent, "objective": name, "alpha": 0.5})
for name, m in models.items():
    fit(m, Adam(lr), x_train, epochs=epochs, batch_size=50, seed=seed, progress=True, log=None)

# %% 3. the CVAE's ELBO terms add up (float64, the loss's own draw) -----------------------
x64 = x_test.astype(np.float64)
cvae = as_float64(models["cvae"])
t = cvae.elbo_terms(x64, seed + 1)
rec, klm = float(np.mean(t["nll_q"])), float(np.mean(t["kl"]))
table.add("CVAE loss = E[-log p(y|x,z)] + KL(q(z|x,y)||p(z|x))", t["loss"], rec + klm, EXACT_TOL)
table.add("KL(q(z|x,y) || p(z|x)) >= 0 (every test input)", -float(np.min(t["kl"])), 0.0, 0.0,
          relation="<=")
hyb = as_float64(models["hybrid"])
th = hyb.elbo_terms(x64, seed + 1)
table.add("hybrid loss = a (rec + KL) + (1 - a) GSNN rec", th["loss"],
          0.5 * (np.mean(th["nll_q"]) + np.mean(th["kl"])) + 0.5 * np.mean(th["nll_p"]), EXACT_TOL)
# the analytic-KL loss and the sampled log-weights log p(y|x,z) + log p(z|x) - log q(z|x,y)
# are two estimates of the same -ELBO
S = 5 if quick else 20
losses = np.array([cvae.loss(x64, seed + 10 + s, grad=False)[0] for s in range(S)])
lw1 = cvae.log_weights(x64, S, seed + 2)                          # (S, N)
per_x = lw1.mean(axis=0)
se2 = np.sqrt(losses.var() / S + lw1.mean(axis=1).var() / S)     # SE of the difference of means
table.add("-ELBO: analytic-KL loss = -mean log w (sampled KL)", losses.mean(), -lw1.mean(),
          4 * se2 + 1e-9, note=f"{S} draws each; tol = 4 SE of the difference")
num["cvae_rec"], num["cvae_kl"], num["cvae_neg_elbo"] = rec, klm, float(losses.mean())
print(f"CVAE on the test digits: -E log p(y|x,z) = {rec:.2f} + KL {klm:.2f} = -ELBO {rec + klm:.2f}")

# %% 4. ELBO <= importance-sampled log p(y|x), growing with K -------------------------------
ks = [1, 10, K]
is_k = {k: importance_sampled_log_px(cvae, x64, K=k, rng=seed + 3) for k in ks}
elbo_x = per_x                                                    # E_q log w per input (S draws)
diff = is_k[K] - elbo_x
se_d = diff.std() / np.sqrt(len(diff))
table.add(f"ELBO <= log p(y|x) by IS (K = {K}), mean over inputs", elbo_x.mean(), is_k[K].mean(),
          3 * se_d, relation="<=", note="tol = 3 SE of the per-input difference")
d10 = is_k[K] - is_k[10]
table.add(f"IS(K = 10) <= IS(K = {K})", is_k[10].mean(), is_k[K].mean(), 3 * d10.std() / np.sqrt(len(d10)),
          relation="<=", note="Burda et al.: the K-sample bound grows with K")
num["is_by_k"] = {k: float(-v.mean()) for k, v in is_k.items()}

# %% 5. the CLL table: -log p(y|x) by importance sampling and the -ELBO ----------------------
rows = {}
for name, m in models.items():
    m64 = as_float64(m)
    lp_ = importance_sampled_log_px(m64, x64, K=1 if name == "baseline" else K, rng=seed + 4)
    nelbo = -float(m64.log_weights(x64, S, seed + 5).mean())
    rows[name] = {"cll": float(-lp_.mean()), "cll_se": float(lp_.std() / np.sqrt(len(lp_))),
                  "neg_elbo": nelbo}
print(f"\n{'model':<9} | {'-ELBO':>8} | {'CLL = -log p(y|x) (IS, K = %d)' % K:>30}   [nats per digit, "
      f"{int((~observed_mask(quadrants)).sum())} unobserved pixels]")
for name, r in rows.items():
    print(f"{name:<9} | {r['neg_elbo']:>8.2f} | {r['cll']:>21.2f} +- {r['cll_se']:.2f}")
table.add("baseline: CLL = -ELBO (no latent: log p(y|x) is exact)", rows["baseline"]["cll"],
          rows["baseline"]["neg_elbo"], 1e-9 * rows["baseline"]["cll"])
num["cll"] = rows

# %% 6. completions of the same inputs: one blurred mean vs several sharp samples ----------
n_show, n_samp = 6, 5
idx = np.linspace(0, n_test - 1, n_show).round().astype(int)      # several digits
shown = x_test[idx]
obs = observed_mask(quadrants)
base_c = models["baseline"].complete(shown)[0]                    # (n_show, 784) means
cvae_c = models["cvae"].complete(shown, seed + 6, n_samples=n_samp)   # (n_samp, n_show, 784)
inputs = np.where(obs, shown, 0.5)                                # gray = not observed
tiles = []
for i in range(n_show):
    tiles += [inputs[i], base_c[i], *cvae_c[:, i], shown[i]]
mosaic = tile_images(np.array(tiles, dtype=float), nrow=n_samp + 3)
fig, ax = C.plt.subplots(figsize=(1.0 * (n_samp + 3), 1.05 * n_show + 0.6))
ax.imshow(1 - mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
ax.set_xticks([14 + 29 * j for j in range(n_samp + 3)])
ax.set_xticklabels(["input", "baseline\nmean"] + [f"CVAE\nsample {s + 1}" for s in range(n_samp)]
                   + ["truth"], fontsize=7)
ax.set_yticks([])
ax.set_title(f"{quadrants} observed quadrant(s) (gray = not observed): one blurred mean vs "
             "different sharp samples", fontsize=8)
results["figures"].append(C.save_figure(fig, args.out / "completions.png"))
# sharpness: the entropy of the predicted Bernoulli per unobserved pixel, per test input
def entropy(pr):                                                  # (N, D_y) -> (N,) nats per pixel
    pr = np.clip(pr, 1e-12, 1 - 1e-12)
    return np.mean(-(pr * np.log(pr) + (1 - pr) * np.log1p(-pr)), axis=1)
e_base = entropy(models["baseline"].complete(x_test)[0][:, ~obs])
e_cvae = entropy(models["cvae"].complete(x_test, seed + 7)[0][:, ~obs])
h_base, h_cvae = float(e_base.mean()), float(e_cvae.mean())
se_h = float((e_cvae - e_base).std() / np.sqrt(n_test))
spread = float(cvae_c[:, :, ~obs].std(axis=0).mean())
table.add("sharper: entropy per pixel, CVAE p(y|x,z) <= baseline p(y|x)", h_cvae, h_base, 3 * se_h,
          relation="<=", note="nats per unobserved pixel, mean over test inputs; tol = 3 SE of the difference")
table.add("CVAE samples differ: mean std over samples > 0", -spread, 0.0, 0.0, relation="<=")
num.update(entropy_baseline=h_base, entropy_cvae=h_cvae, cvae_sample_spread=spread)
print(f"entropy per unobserved pixel: baseline {h_base:.3f}, CVAE (given z) {h_cvae:.3f} nats; "
      f"std across CVAE samples {spread:.3f}")

# %% 7. conditional generation from labels: x = the one-hot digit, y = the image -------------
data = with_labels(x_train, ds.train_labels[:n_train])
lab = LabelCVAE(**dict(x_dim=784, n_classes=10, hidden=hidden, latent=latent,
                                activation="relu", seed=seed))
# (the tiny --quick model needs more passes before its samples follow the label: the KL term
# first pulls q onto the prior and the decoder learns the mean digit)
fit(lab, Adam(lr), data, epochs=20 if quick else epochs, batch_size=50,
    seed=seed, progress=True, log=None)
per_row = 20 if quick else 10
labels = np.repeat(np.arange(10), per_row)
samples = lab.sample(len(labels), seed + 8, labels=labels)
fig, ax = C.plt.subplots(figsize=(6, 6.3))
ax.imshow(1 - tile_images(samples, nrow=per_row), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
ax.set_yticks([14 + 29 * j for j in range(10)])
ax.set_yticklabels([str(j) for j in range(10)])
ax.set_xticks([])
ax.set_title("samples of p(y | digit): one row per digit (Bernoulli means)", fontsize=9)
results["figures"].append(C.save_figure(fig, args.out / "samples_by_label.png"))
# the samples carry their label: a nearest-class-mean classifier (class means of the training
# images) recognises them far above chance (1/10); tol = 4 binomial SEs around chance
means = np.stack([x_train[ds.train_labels[:n_train] == c].mean(0) for c in range(10)])
pred = np.argmin(((samples[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
acc = float(np.mean(pred == labels))
chance_se = np.sqrt(0.1 * 0.9 / len(labels))
table.add("label CVAE samples: nearest-class-mean accuracy > chance + 4 SE", acc, 0.1 + 4 * chance_se,
          0.0, relation=">=", note="chance = 0.10; SE = sqrt(0.1 * 0.9 / n) binomial")
num["label_sample_accuracy"] = acc

results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
