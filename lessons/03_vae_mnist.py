"""Lesson 03: a variational autoencoder on MNIST, trained with a hand-written backward pass.

The model (lecture notes 002_e73e17ee4c7eee9a.txt, "Variational Autoencoder"; E = x the image,
H = z the code):

    p(z) = N(0, I),   p_theta(x|z) = prod_d Bern(x_d | sigmoid(decoder(z)_d)),
    q_phi(z|x) = N(mu(x), diag sigma^2(x)),   (mu, log sigma^2) = encoder(x),

trained by minimising the negative ELBO, in nats per image,

    -ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || p(z))                              (ELBO-II)
    KL = 1/2 sum_l (sigma_l^2 + mu_l^2 - 1 - log sigma_l^2)                        (closed form)

with z = mu + sigma * eps, eps ~ N(0, I) (the reparameterization trick), so that the gradient
with respect to the encoder's outputs is dmu = dz + dKL/dmu, dlogvar = dz eps sigma / 2 + dKL/dlogvar
(nplvm/models/vae.py, region ``vae-reparam-gradient``).

What this lesson does and checks:

 1. the whole model's gradient against finite differences in float64 (every parameter);
 2. trains a 20-D VAE on the offline MNIST subset; learning curves, reconstructions, samples;
 3. the three presentations of the ELBO (notes 001_3b34c7ea4ef78f1e.txt, "DIFFERENT PRESENTATIONS
    OF THE ELBO"): E_q log p(x,z) + H[q] (I) = E_q log p(x|z) - KL (II), each with its closed-form
    term (I: the entropy, II: the KL), against the Monte Carlo draws they replace (paired: the
    same draws, so the tolerance is the SE of the per-draw difference); III = log p(x) -
    KL(q || p(z|x)) is the Monte Carlo ELBO by construction (a worked example): its content is
    the gap log p(x) - ELBO = KL(q || p(z|x)) >= 0, checked with log p(x) by importance sampling;
 4. the closed-form KL against its Monte Carlo estimate log q(z|x) - log p(z) (paired likewise);
 5. a 2-D latent VAE: the decoded manifold over a grid of z = Phi^-1(u) (Kingma & Welling's
    figure 4; notes 002, "Manifold Learning Result with VAE") and the encoded test set colored by digit.

Run:  python lessons/03_vae_mnist.py [--quick] [--out DIR] [--seed N] [--epochs E]
(about a minute on one core; --quick: seconds).
"""
# %%
import sys
import time
from pathlib import Path

FILE = Path(globals().get("__file__", "03_vae_mnist.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

from nplvm import objectives, plots  # noqa: E402
from nplvm.gradcheck import numerical_grad, rel_error  # noqa: E402
from nplvm.models.vae import VAE  # noqa: E402
from nplvm.optim import Adam  # noqa: E402
from nplvm.train import fit  # noqa: E402

GRAD_TOL = 1e-6          # relative error, Richardson-extrapolated central differences in float64
N_SE = 5.0


def extra_args(p):
    p.add_argument("--epochs", type=int, default=None, help="epochs for each model (default 30; quick 3)")
    p.add_argument("--data", default="offline", help="data source (default: the offline MNIST subset)")


def train(model, x_train, x_valid, epochs, seed, lr=1e-3, batch_size=100):
    t0 = time.perf_counter()
    history = fit(model, Adam(lr), x_train, x_valid, epochs=epochs, batch_size=batch_size, seed=seed,
                  progress=True, log=lambda s: print("    " + s))
    last = history[-1]
    print(f"  {epochs} epochs in {time.perf_counter() - t0:.1f} s: train NELBO {last['train_loss']:.2f}, "
          f"valid NELBO {last['valid_loss']:.2f} nats per image")
    return history


def whole_model_grad_error(model, x, seed, n_entries):
    """Max relative error of model.loss's gradient over a seeded subset of every parameter's entries.

    The loss of 784 pixels is ~500 nats, so plain central differences lose ~1e-5 relative to
    rounding on small entries; one Richardson step, (4 D(h/2) - D(h)) / 3 with h = 4e-3, cancels
    the O(h^2) error while the large step keeps rounding below 1e-9.
    """
    _, grads = model.loss(x, seed)
    grads = {k: v.copy() for k, v in grads.items()}

    def f():
        return model.loss(x, seed)[0]                 # the same eps on every call

    pick = np.random.default_rng(seed)
    worst = 0.0
    for name, p in model.params.items():
        idx = np.sort(pick.choice(p.size, min(p.size, n_entries), replace=False))
        d_h, d_h2 = numerical_grad(f, p, 4e-3, idx), numerical_grad(f, p, 2e-3, idx)
        worst = max(worst, rel_error(grads[name].reshape(-1)[idx], (4 * d_h2 - d_h) / 3))
    return worst


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE, extra_args)
epochs = args.epochs or C.quick_or(args, 3, 30)
table = C.CheckTable("Lesson 03: the VAE on MNIST")
figures, numbers = [], {}
rng = np.random.default_rng(args.seed)

# %% [markdown]
# ## 1. The gradient of the whole model, float64, fixed noise
# %%
small = VAE(x_dim=784, hidden=[6, 5], latent=2, activation="tanh", dtype="float64", seed=args.seed)
ds = C.load_data(args)                                  # the data for this section and the next
xs = ds.test[:4].astype(np.float64)
worst = whole_model_grad_error(small, xs, args.seed, C.quick_or(args, 6, 40))
table.add("VAE gradient vs finite differences (max rel. error)", worst, 0.0, GRAD_TOL, relation="<=",
          note="every parameter, a seeded subset of entries; float64, noise fixed by the seed")

# %% [markdown]
# ## 2. A 20-D VAE on the offline MNIST subset
# %%
n_train = C.quick_or(args, 600, len(ds.train))
x_train, x_valid = ds.train[:n_train], ds.valid[:C.quick_or(args, 200, len(ds.valid))]
x_test, y_test = ds.test, ds.test_labels
hidden = C.quick_or(args, [128], [512, 256])
print(f"data: {ds!r}; training on {len(x_train)} images")
vae = VAE(x_dim=784, hidden=hidden, latent=20, activation="relu", seed=args.seed)
print(f"model: {vae!r}")
hist = train(vae, x_train, x_valid, epochs, args.seed)
table.add("valid NELBO decreases (last epoch <= first)", hist[-1]["valid_loss"], hist[0]["valid_loss"],
          0.0, relation="<=")
print(f"train NELBO {hist[-1]['train_loss']:.2f} vs valid {hist[-1]['valid_loss']:.2f}: the train number is "
      f"the mean over the epoch's minibatches, measured while the weights improved (so after epoch 1 it "
      f"is *above* valid: {hist[0]['train_loss']:.1f} vs {hist[0]['valid_loss']:.1f}); later the gap "
      f"turns the other way and grows: {vae.num_parameters():,} parameters fit {len(x_train)} images "
      "(overfitting; more data or fewer epochs close it)")
figures.append(str(plots.learning_curves(hist, args.out / "learning_curves.png",
                                         title="20-D VAE: -ELBO per image")))
xr = x_test[:10]
figures.append(str(plots.image_grid(np.concatenate([xr, vae.reconstruct(xr)]), args.out / "reconstructions.png",
                                    nrow=10, title="test images (top) and their reconstructions")))
figures.append(str(plots.image_grid(vae.sample(100, rng), args.out / "samples.png", nrow=10,
                                    title="samples: z ~ N(0, I), Bernoulli means of p(x|z)")))

# %% [markdown]
# ## 3. The three presentations of the ELBO, and the gap
# %%
n_eval = C.quick_or(args, 20, 200)
xe = x_test[:n_eval]
S, K = C.quick_or(args, 200, 1000), C.quick_or(args, 200, 2000)
terms = vae.elbo_terms(xe, rng, S=S)
log_px = objectives.importance_sampled_log_px(vae, xe, K=K, batch=50, rng=rng)
mc = objectives.elbo_presentations(terms["log_px_z"], terms["log_pz"], terms["log_qz"], log_px=log_px)
cf = objectives.elbo_presentations(terms["log_px_z"], terms["log_pz"], terms["log_qz"],
                                   entropy=terms["entropy"], kl=terms["kl"], log_px=log_px)
I, II, III = (cf["joint_plus_entropy"].mean(), cf["likelihood_minus_kl"].mean(),
              mc["evidence_minus_posterior_kl"].mean())
print(f"ELBO, three ways (mean over {n_eval} test images, {S} draws each): I {I:.3f}, II {II:.3f}, "
      f"III {III:.3f}; log p(x) (IS, K = {K}) {log_px.mean():.3f}")
# I - II = mean_s log p(z_s) + H + KL: zero in expectation; its SE is that of the per-draw
# values log p(z_s) + H_n + KL_n (the same draws on both sides: a paired difference)
log_pz, log_qz = terms["log_pz"].astype(np.float64), terms["log_qz"].astype(np.float64)
H, KL = terms["entropy"].astype(np.float64), terms["kl"].astype(np.float64)
d_I_II = log_pz + H + KL                                                 # (S, N)
se_I_II = d_I_II.std() / np.sqrt(d_I_II.size)
table.add("I  E_q log p(x,z) + H[q]  =  II  E_q log p(x|z) - KL", I, II, N_SE * se_I_II,
          note=f"closed-form H (I) and KL (II); tol = {N_SE:g} SE of the per-draw difference "
               "log p(z_s) + H + KL (paired: the same draws)")
table.example("II  =  III  log p(x) - KL(q || p(z|x))", II, III, abs(II - III) + 1e-12,
              note="III is the Monte Carlo ELBO by construction (KL(q||p(z|x)) = log p(x) - ELBO), so "
                   "II - III is the KL row's difference again: shown, not a check")
gap = np.asarray(log_px, np.float64) - mc["likelihood_minus_kl"]         # KL(q || p(z|x)) per image
table.add("ELBO <= log p(x) (IS estimate)", mc["likelihood_minus_kl"].mean(), log_px.mean(),
          N_SE * gap.std(ddof=1) / np.sqrt(gap.size), relation="<=",
          note=f"the gap is KL(q(z|x) || p(z|x)) >= 0; tol = {N_SE:g} SE of the per-image gap")
numbers.update(test_elbo=II, test_log_px=float(log_px.mean()),
               posterior_kl=float(mc["posterior_kl"].mean()))

# %% [markdown]
# ## 4. The closed-form KL against its Monte Carlo estimate
# %%
d_kl = (log_qz - log_pz) - KL                                            # per draw, paired with KL_n
table.add("KL closed form = E_q[log q(z|x) - log p(z)]", KL.mean(), (log_qz - log_pz).mean(),
          N_SE * d_kl.std() / np.sqrt(d_kl.size),
          note=f"tol = {N_SE:g} SE of the per-draw difference from the closed form (paired)")

# %% [markdown]
# ## 5. A 2-D latent space: the decoded manifold and the encoded test set
# %%
vae2 = VAE(x_dim=784, hidden=hidden, latent=2, activation="relu", seed=args.seed + 1)
print(f"2-D model: {vae2!r}")
hist2 = train(vae2, x_train, x_valid, epochs, args.seed + 1)
figures.append(str(plots.learning_curves({"20-D": hist, "2-D": hist2}, args.out / "learning_curves_2d_vs_20d.png",
                                         title="-ELBO per image: 2-D vs 20-D latent")))
figures.append(str(plots.latent_manifold(vae2.decode, args.out / "manifold.png", n=C.quick_or(args, 10, 20),
                                         title="decoder means over z = Phi^-1(u), u on a grid")))
mu2, _ = vae2.encode(x_test)
figures.append(str(plots.latent_scatter(mu2, y_test, args.out / "latent_scatter.png",
                                        title="test set encoded (posterior means), colored by digit")))
print(f"valid NELBO after {epochs} epochs: 20-D latent {hist[-1]['valid_loss']:.2f}, "
      f"2-D latent {hist2[-1]['valid_loss']:.2f} nats per image")
numbers.update(valid_nelbo_20d=hist[-1]["valid_loss"], valid_nelbo_2d=hist2[-1]["valid_loss"])

for f in figures:
    print(f"saved {f}")
results = C.finish(table, {"figures": figures, "numbers": numbers})

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
