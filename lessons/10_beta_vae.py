"""Lesson 10: the beta-VAE objective as a Lagrangian, and the rate-distortion curve it traces.

Lecture notes 002_e73e17ee4c7eee9a.txt, "VARIANTS OF VARIATIONAL AUTOENCODER WITH ELABORATED LOSSES":
maximise the reconstruction term
subject to a budget on the KL,

    max E_{q(z|x)}[log p(x|z)]   subject to   KL(q(z|x) || p(z)) < epsilon,

whose Lagrangian, with multiplier beta >= 0, is

    F = E_q[log p(x|z)] - beta (KL(q(z|x) || p(z)) - epsilon)
      >= E_q[log p(x|z)] - beta KL(q(z|x) || p(z))            (the beta-VAE objective)

Name the two terms, averaged over the data (nats per example):

    rate        R = E_x[ KL(q(z|x) || p(z)) ]         (how much the code says about x)
    distortion  D = E_x[ -E_q log p(x|z) ]            (how badly x is reconstructed)

so the loss the model minimises is

    loss_beta = D + beta R,        and at beta = 1:  loss_1 = D + R = -ELBO               (B)

(presentation II of the ELBO).  Each beta picks one point of the achievable (R, D) region: the
point where a line of slope -beta touches it.  On a converged, smooth curve D(R), stationarity of
D + beta R gives dD/dR = -beta at that point; beta = 1 is the point with the best ELBO.

What this lesson shows and checks: (B) for every beta, by recomputing D and R with the noise the
model's loss drew (float64) -- a worked example, since the loss is that sum -- and at beta = 1
against the ELBO assembled by a second code path (VAE.elbo_terms -> objectives.elbo_presentations).
It trains one small VAE per beta on the offline MNIST subset and plots the R-D curve.  The
chords between neighbouring betas are checked (full lesson): a model at the optimum of its
own D + beta R puts each chord's slope between the two betas, within its standard error.

Run:  python lessons/10_beta_vae.py [--quick] [--out DIR] [--seed N]
"""
# %%
import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "10_beta_vae.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

import kernels  # noqa: E402
from nplvm.data import load_dataset  # noqa: E402
from nplvm.models.vae import VAE  # noqa: E402
from nplvm.objectives import elbo_presentations  # noqa: E402
from nplvm.optim import Adam  # noqa: E402
from nplvm.train import fit  # noqa: E402

EXACT_TOL = 1e-9         # nats: (B) is an identity; float64 rounding of sums of ~200 nats
N_SE = 4.0


def as_float64(model):
    """A float64 copy of a VAE (same config, same parameter values) for exact checks."""
    m64 = VAE(**{**model.config, "dtype": "float64"})
    for name, p in model.params.items():
        m64.params[name][...] = p
    return m64


def rate_distortion(model, x, eps):
    """R and D of ``model`` on x with the reparameterization noise eps (S, N, L) held fixed.

    R = mean_n KL(q(z|x_n) || N(0, I))  (closed form, kernels.gaussian_kl_std)
    D = mean_{s,n} -log p(x_n | z_sn),   z_sn = mu_n + sigma_n eps_sn  (kernels.bernoulli_nll)
    Returns (D, R, D_n (N,), R_n (N,)): the means and the per-example values (D_n averaged over
    the S draws), for standard errors over the examples.
    """
    S, N, L = eps.shape
    mu, logvar = model.encode(x)                                      # (N, L) each
    kl, _, _ = kernels.gaussian_kl_std(mu, logvar)                    # (N,)
    z = mu + np.exp(0.5 * logvar) * eps                               # (S, N, L)
    logits = model.decode_logits(z.reshape(S * N, L))
    xs = np.broadcast_to(x, (S,) + x.shape).reshape(S * N, -1).astype(logits.dtype)
    nll, _ = kernels.bernoulli_nll(xs, logits)                        # -log p(x|z) per row
    d_n = nll.reshape(S, N).mean(axis=0).astype(np.float64)
    kl = kl.astype(np.float64)
    return float(d_n.mean()), float(kl.mean()), d_n, kl


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
quick = args.quick
table = C.CheckTable("Lesson 10: beta-VAE, rate and distortion")
results = {"figures": []}

ds = load_dataset("offline", seed=args.seed)
n_train, n_test = (600, 200) if quick else (4000, 500)
x_train, x_test = ds.train[:n_train], ds.test[:n_test]
betas = [0.25, 1.0, 4.0] if quick else [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
arch = dict(hidden=(64,), latent=4) if quick else dict(hidden=(200,), latent=16)
epochs = 3 if quick else 30
S_eval = 2 if quick else 10
print(f"training {len(betas)} VAEs (hidden {arch['hidden']}, latent {arch['latent']}) for {epochs} "
      f"epochs on {n_train} offline MNIST digits; evaluating on {n_test} test digits")

# %% [markdown]
# ## One VAE per beta (same initialisation, data and epochs); (B) per beta, -ELBO at beta = 1
# %%
x64 = x_test.astype(np.float64)
rows = []
for beta in betas:
    model = VAE(x_dim=784, activation="tanh", beta=beta, seed=args.seed, **arch)   # same init
    fit(model, Adam(1e-3), x_train, epochs=epochs, batch_size=50, seed=args.seed,
        progress=True, log=None)
    m64 = as_float64(model)
    L = m64.latent
    # (B) exactly: the loss's own draw of eps is rng(seed).standard_normal((N, L))
    eps_loss = np.random.default_rng(args.seed + 1).standard_normal((1, n_test, L))
    loss, _ = m64.loss(x64, np.random.default_rng(args.seed + 1))
    D1, R1, _, _ = rate_distortion(m64, x64, eps_loss)
    table.example(f"beta={beta:g}: loss = D + beta R (same eps)", loss, D1 + beta * R1, EXACT_TOL,
                  note="the loss is these two kernels' sum: shown, not a check" if beta == betas[0] else "")
    # an accurate point of the curve: D averaged over S_eval draws (common across betas)
    eps = np.random.default_rng(args.seed + 2).standard_normal((S_eval, n_test, L))
    D, R, d_n, r_n = rate_distortion(m64, x64, eps)
    rows.append({"beta": beta, "R": R, "D": D, "neg_elbo": D + R, "loss": loss,
                 "D_loss_eps": D1, "R_loss_eps": R1, "D_n": d_n, "R_n": r_n})
    if beta == 1.0:
        # -ELBO by a second code path: elbo_terms + elbo_presentations (presentation II)
        terms = m64.elbo_terms(x64, np.random.default_rng(args.seed + 1), S=1)
        pres = elbo_presentations(terms["log_px_z"], terms["log_pz"], terms["log_qz"],
                                  entropy=terms["entropy"], kl=terms["kl"])
        neg_elbo = -float(np.mean(pres["likelihood_minus_kl"]))
        table.add("beta=1: loss = -ELBO (elbo_terms + elbo_presentations, II)", loss, neg_elbo, EXACT_TOL,
                  note="a second code path (VAE.elbo_terms), the same eps; float64 rounding")
        # presentation I uses the MC log p(z) and the closed-form entropy: equal in expectation
        neg_elbo_I = -float(np.mean(pres["joint_plus_entropy"]))
        results["neg_elbo_presentation_I"] = neg_elbo_I
        results["neg_elbo_beta1"] = neg_elbo
results["curve"] = [{k: v for k, v in r.items() if k not in ("D_n", "R_n")} for r in rows]

# %% [markdown]
# ## The curve and its chords
# A model at the optimum of D + beta R sits where a line of slope -beta touches the achievable
# region; two such models (beta_a < beta_b) bound the chord between them:
# beta_a <= -(D_b - D_a) / (R_b - R_a) <= beta_b.  Its standard error comes from the per-image
# differences (the same test images for both models), by the delta method.  It does not include
# the models' distance from their optimum (short training): that is what the check can catch.
# %%
print(f"\n{'beta':>6} | {'rate R':>9} | {'distortion D':>12} | {'D + R = -ELBO':>13} | {'D + beta R':>10}")
for r in rows:
    print(f"{r['beta']:>6g} | {r['R']:>9.3f} | {r['D']:>12.3f} | {r['neg_elbo']:>13.3f} | "
          f"{r['D'] + r['beta'] * r['R']:>10.3f}")
best = min(rows, key=lambda r: r["neg_elbo"])
print(f"best ELBO among these models: beta = {best['beta']:g} (-ELBO {best['neg_elbo']:.3f})")
print("\nslope between neighbouring betas (a chord, not a tangent):")
slopes = []
for a, b in zip(rows[:-1], rows[1:]):
    dD, dR = b["D_n"] - a["D_n"], b["R_n"] - a["R_n"]                  # per test image (N,)
    chord = -dD.mean() / dR.mean()
    se = float(np.std(dD + chord * dR, ddof=1) / np.sqrt(len(dD)) / abs(dR.mean()))   # delta method
    slopes.append(chord)
    inside = min(max(chord, a["beta"]), b["beta"])                     # nearest point of [beta_a, beta_b]
    print(f"  beta {a['beta']:g} -> {b['beta']:g}: -dD/dR = {chord:7.3f} +- {se:.3f}   "
          f"(at the optimum it lies between {a['beta']:g} and {b['beta']:g})")
    if not quick:        # 3 epochs (--quick) are far from the optimum: printed only
        table.add(f"chord beta {a['beta']:g} -> {b['beta']:g}: -dD/dR in [{a['beta']:g}, {b['beta']:g}]",
                  chord, inside, N_SE * se, note=(f"rhs = the nearest point of the interval; tol = {N_SE:g} SE "
                                                 "(per-image differences, delta method)")
                  if a is rows[0] else "")
if quick:
    print("  (--quick: 3 epochs are far from each model's optimum; the chords are checked in the full lesson)")
# Does each model minimise its own objective D + beta R among the trained models?
wins = sum(all(r["D"] + r["beta"] * r["R"] <= o["D"] + r["beta"] * o["R"] + 1e-9 for o in rows)
           for r in rows)
print(f"models whose own D + beta R is the lowest among all {len(rows)} trained models: {wins}; "
      "each would be, if every model reached the optimum of its own objective.")
results.update(chord_slopes=slopes, own_objective_wins=wins)

fig, ax = C.plt.subplots(1, 2, figsize=(11, 4.3))
Rs, Ds = np.array([r["R"] for r in rows]), np.array([r["D"] for r in rows])
ax[0].plot(Rs, Ds, "o-")
span = 0.08 * (Rs.max() - Rs.min() + 1.0)
for r in rows:
    ax[0].annotate(f"beta={r['beta']:g}", (r["R"], r["D"]), textcoords="offset points",
                   xytext=(6, 4) if r is not rows[0] else (-10, 8), fontsize=8)
    rr = np.array([r["R"] - span, r["R"] + span])
    ax[0].plot(rr, r["D"] - r["beta"] * (rr - r["R"]), "k-", lw=0.6, alpha=0.6)
ax[0].set(xlabel="rate R = E KL(q(z|x) || p(z))  (nats)", ylabel="distortion D = -E log p(x|z)  (nats)",
          title="rate-distortion; segments: slope -beta")
ax[1].semilogx(betas, Ds, "o-", label="distortion D")
ax[1].semilogx(betas, Rs, "s-", label="rate R")
ax[1].semilogx(betas, Ds + Rs, "^-", label="D + R = -ELBO")
ax[1].axvline(1.0, color="k", ls=":", lw=0.8)
ax[1].set_xticks(betas)
ax[1].set_xticklabels([f"{b:g}" for b in betas])
ax[1].xaxis.set_minor_formatter(C.matplotlib.ticker.NullFormatter())
ax[1].set(xlabel="beta", ylabel="nats per example", title="the terms of the loss vs beta")
ax[1].legend(fontsize=8)
results["figures"].append(C.save_figure(fig, args.out / "rate_distortion.png"))

results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
