"""Lesson 14: a Gaussian decoder for continuous x, and the deterministic autoencoder against the VAE.

Lecture notes 002_e73e17ee4c7eee9a.txt, "EXPLICIT DISTRIBUTION MODELS": an autoencoder is trained
with the cross entropy for binary x or with the "sum of squared error, linear activation at the
output of the decoder" for real x; notes 003_ef2988ba30bb3a16.txt, "Loss function": the VAE's loss
with a squared-error reconstruction term.  The squared error *is* a log-likelihood: for a Gaussian
decoder with mean m(z) (a linear output layer) and variance sigma^2 per pixel,

    -log N(x | m(z), sigma^2 I) = ||x - m(z)||^2 / (2 sigma^2) + (D/2) log(2 pi sigma^2),        (G)

so with sigma^2 = 1 it is 1/2 ||x - m||^2 plus a constant: the loss of notes 003.  sigma^2 is a
parameter like any other; for a fixed decoder its maximum-likelihood value is the mean squared
error per pixel,

    sigma^2* = (1 / (N D)) sum_n E_q ||x_n - m(z_n)||^2,                                        (ML)

which sets the weight of reconstruction against the KL.  The Bernoulli decoder of lessons 03-10
is the same construction for binary x (the cross entropy of notes 002).  Here x is the gray level
in [0, 1] (no binarization), the decoder Gaussian:

    VAE  q(z|x) = N(mu(x), diag sigma_q^2(x)),  loss = E_q[(G)] + KL(q(z|x) || N(0, I))
    AE   z = mu(x) (no noise, no KL),           loss = 1/2 ||x - m(mu(x))||^2   (notes 002's loss)

The autoencoder is the VAE with sigma_q -> 0 and the KL dropped.  It only reconstructs; nothing
ties its codes to N(0, I), so decoding z ~ N(0, I) -- how a VAE generates -- decodes points
where its codes happen not to be.  (With sigma^2 at its ML value the VAE's KL costs it little
reconstruction error here: the two reconstruct about equally well; the codes differ.)

Checks: (G) by two code paths; (ML) against a numerical minimisation; both models' hand-written
gradients (every parameter, sigma^2 included) against finite differences; after training on
MNIST, the Gaussian VAE's ELBO below its importance-sampled log p(x), and the VAE's codes closer
to N(0, I) than the AE's (KL of their moment-matched Gaussian, bootstrap standard error).

Run:  python lessons/14_gaussian_decoder_autoencoder.py [--quick] [--out DIR] [--seed N]
"""
# %%
import sys
import time
from pathlib import Path

FILE = Path(globals().get("__file__", "14_gaussian_decoder_autoencoder.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
from scipy import optimize  # noqa: E402

import kernels  # noqa: E402
from nplvm import plots  # noqa: E402
from nplvm.data import load_dataset  # noqa: E402
from nplvm.distributions import LOG_2PI, DiagGaussian, logsumexp, std_normal_log_prob  # noqa: E402
from nplvm.gradcheck import rel_error  # noqa: E402
from nplvm.nn import MLP  # noqa: E402
from nplvm.optim import Adam  # noqa: E402

N_SE = 4.0
GRAD_TOL = 1e-6


def gaussian_nll(x, m, log_s2):
    """(G) per row: ||x - m||^2 / (2 s2) + D/2 log(2 pi s2), and d/dm, d/dlog_s2 (per row)."""
    s2 = np.exp(log_s2)
    r = x - m
    sse = np.sum(r * r, axis=1)
    D = x.shape[1]
    return 0.5 * sse / s2 + 0.5 * D * (LOG_2PI + log_s2), -r / s2, -0.5 * sse / s2 + 0.5 * D


class GaussianAutoencoder:
    """A VAE (``stochastic=True``) or a deterministic AE with a Gaussian decoder N(m(z), sigma^2 I).

    Encoder MLP x -> (mu, logvar) (VAE) or x -> z (AE); decoder MLP z -> m(z) with a linear output
    layer; "log_sigma2" (1,) the decoder's log-variance (the AE keeps it at 0: sigma^2 = 1 and its
    loss is 1/2 ||x - m||^2, (G) without the constant).  Follows the model contract: params,
    loss(x, rng, grad=True) -> (loss, grads) with fresh gradient arrays.
    """

    def __init__(self, x_dim, hidden, latent, stochastic=True, dtype="float64", seed=0):
        g = np.random.default_rng(seed)
        self.stochastic, self.latent, self.dtype = stochastic, latent, np.dtype(dtype)
        self.encoder = MLP([x_dim, hidden, (2 if stochastic else 1) * latent], "tanh", g, self.dtype)
        self.decoder = MLP([latent, hidden, x_dim], "tanh", g, self.dtype)   # linear output: m(z)
        self.params, self._grads = {}, {}
        for prefix, net in (("enc.", self.encoder), ("dec.", self.decoder)):
            for name, p in net.parameters().items():
                self.params[prefix + name] = p.value
                self._grads[prefix + name] = p.grad
        if stochastic:
            self.params["log_sigma2"] = np.zeros(1, self.dtype)

    def encode(self, x):
        h = self.encoder.forward(x.astype(self.dtype))[0]
        return (h[:, :self.latent], h[:, self.latent:]) if self.stochastic else (h, None)

    def decode(self, z):
        return self.decoder.forward(z.astype(self.dtype))[0]

    def loss(self, x, rng=None, grad=True):
        x = x.astype(self.dtype)
        N = x.shape[0]
        h, enc_cache = self.encoder.forward(x)
        for gr in self._grads.values():
            gr.fill(0)
        if not self.stochastic:                                      # AE: 1/2 ||x - m(z)||^2, z = enc(x)
            m, dec_cache = self.decoder.forward(h)
            r = m - x
            loss = float(0.5 * np.mean(np.sum(r * r, axis=1)))
            if not grad:
                return loss, None
            dz = self.decoder.backward(r / N, dec_cache)
            self.encoder.backward(dz, enc_cache, need_dx=False)
            return loss, {k: g.copy() for k, g in self._grads.items()}
        L = self.latent
        mu, logvar = h[:, :L], h[:, L:]
        eps = np.random.default_rng(rng).standard_normal(mu.shape).astype(self.dtype)
        sigma = np.exp(0.5 * logvar)
        z = mu + sigma * eps                                         # reparameterization
        m, dec_cache = self.decoder.forward(z)
        nll, dm, dlog_s2 = gaussian_nll(x, m, self.params["log_sigma2"][0])     # (G)
        kl, dmu_kl, dlogvar_kl = kernels.gaussian_kl_std(mu, logvar, 1.0 / N)
        loss = float(np.mean(nll) + np.mean(kl))
        if not grad:
            return loss, None
        dz = self.decoder.backward(dm / N, dec_cache)
        dmu = dz + dmu_kl
        dlogvar = dz * eps * 0.5 * sigma + dlogvar_kl
        self.encoder.backward(np.concatenate([dmu, dlogvar], axis=1), enc_cache, need_dx=False)
        grads = {k: g.copy() for k, g in self._grads.items()}
        grads["log_sigma2"] = np.array([np.mean(dlog_s2)], self.dtype)
        return loss, grads

    def log_weights(self, x, K, rng):
        """log p(x|z) + log p(z) - log q(z|x), z ~ q, (K, N) (VAE only; for IS of log p(x))."""
        mu, logvar = self.encode(x)
        q = DiagGaussian(mu, logvar)
        z = q.rsample(rng.standard_normal((K,) + mu.shape))
        m = self.decode(z.reshape(-1, self.latent)).reshape(K, x.shape[0], -1)
        nll = gaussian_nll(np.broadcast_to(x, m.shape).reshape(-1, x.shape[1]), m.reshape(-1, x.shape[1]),
                           self.params["log_sigma2"][0])[0].reshape(K, -1)
        return -nll + std_normal_log_prob(z) - q.log_prob(z)


def grad_error(model, x, seed):
    """Max relative error of the model's gradient against Richardson central differences."""
    _, grads = model.loss(x, seed)
    worst = 0.0
    for name, p in model.params.items():
        num = C.richardson_grad(lambda: model.loss(x, seed, grad=False)[0], p, h=1e-3)
        worst = max(worst, rel_error(grads[name], num))
    return worst


def train(model, x, epochs, lr, seed, batch=100):
    """Adam on the loss; for the VAE, after every epoch, sigma^2 set to its (ML) value given the
    decoder and encoder (an exact coordinate step: Adam alone moves log sigma^2 by ~lr per step)."""
    opt, g = Adam(lr), np.random.default_rng(seed)
    for epoch in range(epochs):
        perm = g.permutation(len(x))
        for s in range(0, len(perm), batch):
            _, grads = model.loss(x[perm[s:s + batch]], g)
            opt.step(model.params, grads)
        if model.stochastic:
            xs = x[perm[:2000]]
            mu, logvar = model.encode(xs)
            z = mu + np.exp(0.5 * logvar) * g.standard_normal(mu.shape).astype(mu.dtype)
            model.params["log_sigma2"][...] = np.log(np.mean((model.decode(z) - xs) ** 2))    # (ML)


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
rng = np.random.default_rng(args.seed)
table = C.CheckTable("Lesson 14: Gaussian decoder; autoencoder vs VAE")
results = {"figures": []}

# %% [markdown]
# ## 1. (G): the Gaussian negative log-likelihood, and the squared error at sigma^2 = 1
# %%
ds = load_dataset("offline", binarization=None, seed=args.seed)
x_train = ds.train[:C.quick_or(args, 1000, len(ds.train))].astype(np.float64) / 255.0
x_test = ds.test[:C.quick_or(args, 100, 500)].astype(np.float64) / 255.0
D = x_train.shape[1]
m = np.clip(x_test[:50] + rng.normal(0, 0.2, x_test[:50].shape), 0, 1)    # some predicted means
log_s2 = np.log(0.05)
nll, _, _ = gaussian_nll(x_test[:50], m, log_s2)
nll_lib = -DiagGaussian(m, np.full_like(m, log_s2)).log_prob(x_test[:50])
table.add("(G) ||x-m||^2/(2 s2) + D/2 log(2 pi s2) = -DiagGaussian.log_prob (max rel.)",
          float(np.max(np.abs(nll / nll_lib - 1))), 0.0, 1e-12, "<=",
          note="two code paths (nplvm.distributions); float64 rounding")
sse_half = 0.5 * np.sum((x_test[:50] - m) ** 2, axis=1)
table.example("(G) at sigma^2 = 1, minus D/2 log 2 pi = 1/2 ||x - m||^2 (notes 003)",
              float(np.mean(gaussian_nll(x_test[:50], m, 0.0)[0] - 0.5 * D * LOG_2PI)), float(np.mean(sse_half)),
              1e-9, note="the squared-error loss is the Gaussian log-likelihood with sigma^2 = 1")

# %% [markdown]
# ## 2. (ML): the best sigma^2 for a fixed decoder is the mean squared error per pixel
# %%
s2_closed = float(np.mean((x_test[:50] - m) ** 2))
res = optimize.minimize_scalar(lambda t: np.mean(gaussian_nll(x_test[:50], m, t)[0]),
                               bounds=(-10, 2), method="bounded", options={"xatol": 1e-9})
table.add("(ML) argmin_sigma^2 mean (G) = mean squared error per pixel (log scale)", float(res.x),
          float(np.log(s2_closed)), 1e-6, note="bounded optimiser, xatol 1e-9 on log sigma^2; tol 1e-6")

# %% [markdown]
# ## 3. The hand-written gradients of both models (float64, every parameter)
# %%
xg = x_test[:5, 14 * 28 + 4:14 * 28 + 24]                        # 5 images, 20 pixels of the middle row
err_vae = grad_error(GaussianAutoencoder(20, 6, 3, stochastic=True, seed=args.seed), xg, args.seed)
err_ae = grad_error(GaussianAutoencoder(20, 6, 3, stochastic=False, seed=args.seed), xg, args.seed)
table.add("Gaussian VAE: gradient vs finite differences (max rel. error)", err_vae, 0.0, GRAD_TOL, "<=",
          note="every parameter incl. log sigma^2; Richardson differences, noise fixed by the seed")
table.add("AE: gradient vs finite differences (max rel. error)", err_ae, 0.0, GRAD_TOL, "<=")

# %% [markdown]
# ## 4. Train both on gray-level MNIST: same networks, same data, same epochs
# %%
L, H = C.quick_or(args, (4, 64), (8, 256))
epochs = C.quick_or(args, 15, 20)
vae = GaussianAutoencoder(D, H, L, stochastic=True, dtype="float32", seed=args.seed)
ae = GaussianAutoencoder(D, H, L, stochastic=False, dtype="float32", seed=args.seed)
t0 = time.perf_counter()
for model in (vae, ae):
    train(model, x_train.astype(np.float32), epochs, 1e-3, args.seed)
print(f"trained a Gaussian VAE and an AE (784-{H}-{L}, tanh) for {epochs} epochs on {len(x_train)} "
      f"gray-level images in {time.perf_counter() - t0:.1f} s; the VAE's sigma^2 = "
      f"{np.exp(vae.params['log_sigma2'][0]):.4f}")

# %% [markdown]
# ## 5. Reconstruction: the AE optimises nothing else; the VAE also pays the KL
# %%
xt = x_test.astype(np.float32)
err_ae_n = np.mean((ae.decode(ae.encode(xt)[0]) - xt) ** 2, axis=1).astype(np.float64)
err_vae_n = np.mean((vae.decode(vae.encode(xt)[0]) - xt) ** 2, axis=1).astype(np.float64)
d = err_ae_n - err_vae_n
se = float(d.std(ddof=1) / np.sqrt(len(d)))
print(f"test mean squared error per pixel: AE {err_ae_n.mean():.5f}, VAE {err_vae_n.mean():.5f} "
      f"(AE - VAE = {d.mean():+.5f} +- {se:.5f}, paired over test images); "
      f"the VAE's own sigma^2 = {np.exp(vae.params['log_sigma2'][0]):.5f} is its training MSE "
      f"under noise, by (ML)")

# %% [markdown]
# ## 6. The VAE is a density model: its ELBO is below its importance-sampled log p(x)
# %%
K = C.quick_or(args, 100, 1000)
lw = vae.log_weights(xt[:100].astype(np.float64), K, rng).astype(np.float64)   # float32 model, f64 sums
log_px = logsumexp(lw, axis=0) - np.log(K)
elbo = lw.mean(axis=0)
gap = log_px - elbo
table.add(f"Gaussian VAE: IS log p(x) (K = {K}) >= ELBO (mean over 100 test images)", float(log_px.mean()),
          float(elbo.mean()), N_SE * float(gap.std(ddof=1) / 10), ">=",
          note="paired per image; tol = 4 SE of the per-image gap; nats of a *density* (can exceed 0)")
print(f"Gaussian VAE on gray levels: ELBO {elbo.mean():.1f}, log p(x) (IS) {log_px.mean():.1f} nats per "
      f"image: the log of a *density* of continuous x (its sign depends on sigma^2's scale), not "
      f"comparable with the Bernoulli models' log-probabilities of binary images")

# %% [markdown]
# ## 7. Generation: decode z ~ N(0, I).  Where are each model's codes?
# %%
codes_ae = ae.encode(x_train.astype(np.float32))[0].astype(np.float64)
codes_vae = vae.encode(x_train.astype(np.float32))[0].astype(np.float64)

def kl_codes(c):
    """KL(N(mean, cov) || N(0, I)) of the codes' moment-matched Gaussian."""
    mean, cov = c.mean(0), np.cov(c, rowvar=False)
    return 0.5 * (np.trace(cov) + mean @ mean - L - np.linalg.slogdet(cov)[1])

for name, c in (("AE", codes_ae), ("VAE", codes_vae)):
    print(f"{name} codes of the training set: mean norm {np.linalg.norm(c.mean(0)):.2f}, variances "
          f"{np.round(c.var(0), 2)}; KL(N(mean, cov) || N(0, I)) = {kl_codes(c):.2f} nats")
    results[f"codes_kl_{name}"] = float(kl_codes(c))
B = C.quick_or(args, 50, 200)
boot = []
for _ in range(B):                                  # the same resampled images for both models
    i = rng.integers(0, len(codes_ae), len(codes_ae))
    boot.append(kl_codes(codes_ae[i]) - kl_codes(codes_vae[i]))
se_boot = float(np.std(boot, ddof=1))
table.add("codes: KL(AE codes || N(0,I)) - KL(VAE codes || N(0,I)) >= 4 SE", results["codes_kl_AE"]
          - results["codes_kl_VAE"], N_SE * se_boot, 0.0, ">=",
          note=f"moment-matched Gaussians of the training codes; SE by {B} paired bootstrap resamples")
print("the VAE's KL term pulls its codes towards N(0, I), so z ~ N(0, I) mostly lands where its decoder "
      "was trained (its samples: blurry digits, the mean of a Gaussian decoder); nothing does that for the "
      "AE, whose codes spread beyond the prior's bulk, so its decoded prior samples are fainter and more "
      "often not digits (prior_samples.png)")
z = rng.standard_normal((32, L)).astype(np.float32)
grid = np.concatenate([np.clip(vae.decode(z), 0, 1), np.clip(ae.decode(z), 0, 1)])
results["figures"].append(str(plots.image_grid(grid, args.out / "prior_samples.png", nrow=8,
                                               title="decoded z ~ N(0, I): VAE (top 4 rows), AE (bottom 4 rows)")))
recon = np.concatenate([xt[:8], vae.decode(vae.encode(xt[:8])[0]), ae.decode(ae.encode(xt[:8])[0])])
results["figures"].append(str(plots.image_grid(np.clip(recon, 0, 1), args.out / "reconstructions.png", nrow=8,
                                               title="test images; VAE means m(mu(x)); AE m(z(x))")))
fig, ax = C.plt.subplots(1, 2, figsize=(10, 4.5), sharex=True, sharey=True)
tt = np.linspace(0, 2 * np.pi, 100)
for a, name, c in ((ax[0], "AE", codes_ae), (ax[1], "VAE means", codes_vae)):
    a.scatter(c[:2000, 0], c[:2000, 1], c=ds.train_labels[:len(c)][:2000], cmap="tab10", s=3)
    a.plot(2 * np.cos(tt), 2 * np.sin(tt), "k--", lw=1, label="2 sd of the prior N(0, I)")
    a.set(xlabel="z_1", ylabel="z_2", title=f"{name}: training codes, dims 1-2 (colour: digit)")
    a.legend(fontsize=8, loc="upper right")
results["figures"].append(C.save_figure(fig, args.out / "codes_vs_prior.png"))
results.update(mse_ae=float(err_ae_n.mean()), mse_vae=float(err_vae_n.mean()),
               elbo=float(elbo.mean()), log_px=float(log_px.mean()))

results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
