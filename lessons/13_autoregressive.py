"""Lesson 13: the autoregressive factorisation, exact likelihood and ancestral sampling.

Lecture notes 004_eef4e39dcc0eb5a8.txt, "Recap of previous lecture": "Likelihood as product of
conditionals", "MLE problem for autoregressive model", "Sampling".  Any distribution over
x = (x_1, ..., x_D) factorises by the chain rule of probability,

    p(x) = prod_{d=1}^D p(x_d | x_{1:d-1}),       log p(x) = sum_d log p(x_d | x_{<d}),      (AR)

so a model of each conditional is a model of the joint, with an *exact* log-likelihood (no latent
variable, no bound).  The smallest such model for binary pixels is the fully visible sigmoid belief
net (logistic autoregressive model, Frey 1998):

    p(x_d = 1 | x_{<d}) = sigmoid(b_d + sum_{j<d} W_dj x_j)        (W strictly lower triangular)

All D conditionals come from one matrix product, s = b + x (W * M)^T with the mask M_dj = [j < d]:
the mask is what makes it a valid factorisation.  Its gradient (the Bernoulli log-likelihood's):

    d(-log p)/ds_d = sigmoid(s_d) - x_d,    dW = (dS^T X) * M,    db = sum_n dS_n.

Sampling is *ancestral*: x_1 ~ p(x_1), then x_2 ~ p(x_2 | x_1), ..., one pixel at a time (D
sequential steps -- the price of the exact likelihood).

Checks: on a D = 8 model, the 2^8 probabilities sum to 1 exactly (a mask with the diagonal does not
-- printed), and ancestral samples follow them (chi-square against the exact probabilities); the
gradient against finite differences; trained on binarized MNIST, the exact test log-likelihood
beats the independent-pixel model (the same model with W = 0) per image, beyond its standard error.

Run:  python lessons/13_autoregressive.py [--quick] [--out DIR] [--seed N]
"""
# %%
import itertools
import sys
import time
from pathlib import Path

FILE = Path(globals().get("__file__", "13_autoregressive.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

import kernels  # noqa: E402
from nplvm import plots  # noqa: E402
from nplvm.data import load_dataset  # noqa: E402
from nplvm.gradcheck import rel_error  # noqa: E402
from nplvm.optim import Adam  # noqa: E402

N_SE = 4.0
GRAD_TOL = 1e-7


class LogisticAR:
    """p(x) = prod_d Bern(x_d | sigmoid(b_d + sum_{j<d} W_dj x_j)), x in {0, 1}^D.

    params: "W" (D, D) (only its strictly lower triangle is used) and "b" (D,).
    """

    def __init__(self, D, dtype=np.float64, seed=0, scale=0.0, diagonal=False):
        g = np.random.default_rng(seed)
        self.D = D
        self.mask = np.tril(np.ones((D, D), dtype), k=0 if diagonal else -1)   # M_dj = [j < d]
        self.params = {"W": (scale * g.standard_normal((D, D))).astype(dtype) * self.mask,
                       "b": np.zeros(D, dtype)}

    def logits(self, x):
        """s = b + x (W * M)^T: row n, column d holds the logit of p(x_d = 1 | x_{<d}).  (N, D)."""
        return x @ (self.params["W"] * self.mask).T + self.params["b"]

    def log_prob(self, x):
        """log p(x) per row, (N,): sum_d log p(x_d | x_<d), eq. (AR)."""
        x = x.astype(self.params["W"].dtype)
        nll, _ = kernels.bernoulli_nll(x, self.logits(x))
        return -nll

    def loss(self, x, rng=None, grad=True):
        """Mean -log p(x) in nats per example and its gradient (fresh arrays, owned by the caller)."""
        x = x.astype(self.params["W"].dtype)
        N = x.shape[0]
        nll, dS = kernels.bernoulli_nll(x, self.logits(x), 1.0 / N)       # dS = (sigmoid(s) - x) / N
        loss = float(np.mean(nll))
        if not grad:
            return loss, None
        return loss, {"W": (dS.T @ x) * self.mask, "b": dS.sum(axis=0)}

    def sample(self, n, rng, x_init=None, start=0):
        """Ancestral sampling: pixel d from p(x_d | x_<d), d = start .. D-1.  (n, D) in {0, 1}.

        x_init (n, D): pixels before ``start`` are kept (conditioning), the rest are drawn.
        """
        W, b = self.params["W"] * self.mask, self.params["b"]
        x = np.zeros((n, self.D), W.dtype) if x_init is None else x_init.astype(W.dtype).copy()
        u = rng.random((n, self.D))
        for d in range(start, self.D):
            p_d = 1.0 / (1.0 + np.exp(-(x[:, :d] @ W[d, :d] + b[d])))
            x[:, d] = u[:, d] < p_d
        return x


def train(model, x_train, x_test, epochs, batch, lr, seed):
    opt = Adam(lr)
    g = np.random.default_rng(seed)
    hist = []
    for epoch in range(epochs):
        perm = g.permutation(len(x_train))
        for s in range(0, len(perm), batch):
            _, grads = model.loss(x_train[perm[s:s + batch]])
            opt.step(model.params, grads)
        hist.append({"epoch": epoch + 1, "train": -float(np.mean(model.log_prob(x_train))),
                     "test": -float(np.mean(model.log_prob(x_test)))})
    return hist


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
rng = np.random.default_rng(args.seed)
table = C.CheckTable("Lesson 13: autoregressive models")
results = {"figures": []}

# %% [markdown]
# ## 1. The factorisation is a distribution: sum over all 2^D images of p(x) = 1
# %%
D = 8
small = LogisticAR(D, seed=args.seed, scale=0.5)
small.params["b"][...] = rng.normal(0, 0.3, D)
states = np.array(list(itertools.product([0, 1], repeat=D)), dtype=np.float64)   # (2^D, D)
p = np.exp(small.log_prob(states))
table.add(f"sum over all 2^{D} x of prod_d p(x_d | x_<d) = 1", float(p.sum()), 1.0, 1e-12,
          note="exact enumeration; float64 rounding of 256 terms")
bad = LogisticAR(D, seed=args.seed, diagonal=True)    # x_d also "conditions" on itself
bad.params["W"][...] = small.params["W"] + np.diag(np.full(D, 2.0))
bad.params["b"][...] = small.params["b"]
p_bad = np.exp(bad.log_prob(states))
print(f"with the diagonal in the mask (x_d predicted from x_d itself) the 'probabilities' sum to "
      f"{p_bad.sum():.4f}: not a distribution -- the mask M_dj = [j < d] is what makes (AR) valid")

# %% [markdown]
# ## 2. Ancestral sampling draws from that distribution (chi-square test over the 2^D states)
# %%
S = C.quick_or(args, 20_000, 200_000)
xs = small.sample(S, rng)
idx = (xs @ (2 ** np.arange(D - 1, -1, -1))).astype(int)        # state index, as in itertools order
counts = np.bincount(idx, minlength=2 ** D)
expected = S * p
chi2 = float(np.sum((counts - expected) ** 2 / expected))
df = 2 ** D - 1
table.add(f"ancestral samples ~ p(x): chi-square over {2 ** D} states", chi2, df, N_SE * np.sqrt(2 * df),
          "=", note=f"chi2 has mean df = {df} and sd sqrt(2 df); tol = {N_SE:g} sd; "
          f"min expected count {expected.min():.1f}")

# %% [markdown]
# ## 3. The gradient of -log p(x), against finite differences (float64)
# %%
m = LogisticAR(12, seed=args.seed, scale=0.5)
m.params["b"][...] = rng.normal(0, 0.5, 12)
xg = (rng.random((6, 12)) < 0.4).astype(np.float64)
_, grads = m.loss(xg)
errs = []
for name in ("W", "b"):
    num = C.richardson_grad(lambda: m.loss(xg, grad=False)[0], m.params[name], h=1e-3)
    if name == "W":
        num = num * m.mask                          # only the lower triangle is a parameter
    errs.append(rel_error(grads[name], num))
table.add("d(-log p)/d(W, b) vs finite differences (max rel. error)", max(errs), 0.0, GRAD_TOL, "<=",
          note="Richardson central differences, float64, every entry")

# %% [markdown]
# ## 4. Binarized MNIST: maximum likelihood by Adam, the exact test log-likelihood
# %%
ds = load_dataset("offline", seed=args.seed)
x_train = ds.train[:C.quick_or(args, 600, len(ds.train))].astype(np.float32)
x_test = ds.test.astype(np.float32)
model = LogisticAR(784, dtype=np.float32, seed=args.seed)
pbar = np.clip(x_train.mean(0), 1e-3, 1 - 1e-3)                   # W = 0: independent pixels, ML b
model.params["b"][...] = np.log(pbar / (1 - pbar))
ll_indep = model.log_prob(x_test).astype(np.float64)
epochs = C.quick_or(args, 2, 20)
t0 = time.perf_counter()
hist = train(model, x_train, x_test, epochs, batch=100, lr=C.quick_or(args, 3e-3, 1e-3), seed=args.seed)
ll = model.log_prob(x_test).astype(np.float64)
diff = ll - ll_indep                                              # paired: the same test images
se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
print(f"trained {epochs} epochs on {len(x_train)} images in {time.perf_counter() - t0:.1f} s; exact "
      f"-log p(x) per image: train {hist[-1]['train']:.2f}, test {-ll.mean():.2f} nats "
      f"(independent pixels: {-ll_indep.mean():.2f})")
print(f"the model has {784 * 783 // 2 + 784} parameters for {len(x_train)} training images: the gap "
      f"test - train = {-ll.mean() - hist[-1]['train']:.2f} nats is overfitting; the VAE of lesson 03 "
      f"gets ~100 nats with a bound, this model gets an exact number")
table.add(f"test log p(x): autoregressive - independent pixels >= {N_SE:g} SE (paired, nats)",
          float(diff.mean()), N_SE * se, 0.0, ">=",
          note=f"mean per-image improvement vs {N_SE:g} SE of the paired difference (same test images)")
samples = model.sample(C.quick_or(args, 2000, 10000), rng)
# pixel (14, 14) is in the middle: its marginal is an average over all earlier pixels
d = 14 * 28 + 14
ll_s = model.log_prob(samples[:200]).astype(np.float64)
print(f"mean -log p(x) of the model's own samples: {-ll_s.mean():.2f} nats (an estimate of its entropy), "
      f"above the {-ll.mean():.2f} of test digits: a logistic function of the earlier pixels captures "
      "strokes locally but not whole digits, so its samples are speckled; the completions, which start "
      "from a real top half, look far better (samples.png, completions.png)")
print(f"its entropy estimate: {-ll_s.mean():.2f} nats; "
      f"pixel {d}: on in {100 * samples[:, d].mean():.1f}% of samples, {100 * x_train[:, d].mean():.1f}% of training images")
results.update(test_nll=float(-ll.mean()), indep_nll=float(-ll_indep.mean()), history=hist, chi2=chi2)

# %% [markdown]
# ## Figures: samples, completions of the bottom half, learning curves
# %%
results["figures"].append(str(plots.image_grid(samples[:64], args.out / "samples.png", nrow=8,
                                               title="ancestral samples, pixel by pixel")))
top = x_test[:8].copy()
comp = np.concatenate([model.sample(1, rng, x_init=np.tile(t, (1, 1)), start=14 * 28) for t in top
                       for _ in range(3)])
grid = np.concatenate([top[:, None], comp.reshape(8, 3, 784)], axis=1).reshape(-1, 784)
results["figures"].append(str(plots.image_grid(grid, args.out / "completions.png", nrow=4,
                                               title="test image, then 3 draws of rows 15-28")))
fig, ax = C.plt.subplots(figsize=(6, 4))
ax.plot([h["epoch"] for h in hist], [h["train"] for h in hist], "o-", label="train")
ax.plot([h["epoch"] for h in hist], [h["test"] for h in hist], "s-", label="test")
ax.axhline(-ll_indep.mean(), color="k", ls="--", lw=1, label="independent pixels (test)")
ax.set(xlabel="epoch", ylabel="exact -log p(x) per image (nats)",
       title="logistic autoregressive model on binarized MNIST")
ax.legend(fontsize=8)
results["figures"].append(C.save_figure(fig, args.out / "learning_curves.png"))

results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
