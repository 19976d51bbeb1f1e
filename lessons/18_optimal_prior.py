"""Lesson 18: the optimal prior is the aggregated posterior -- by density ratio and by VampPrior.

Cited: lecture notes 002_e73e17ee4c7eee9a.txt, "Optimal prior ELBO".

Lecture notes (002, "Optimal prior").  The prior that maximises the data-averaged ELBO is the
aggregated posterior q(z) = E_pD[q(z|x)], because the KL term splits as

    E_pD[KL(q(z|x) || p(z))] = I(x; z) + KL(q(z) || p(z)),     0 <= I(x; z) <= log N       (KLD)

and only the second term depends on p.  Two ways to get close to q(z):

  * the density ratio: KL(q(z|x) || q(z)) = KL(q(z|x) || p(z)) - E_q[T*(z)], T* = ln q(z)/p(z), and a
    classifier D = sigmoid(T) between samples of q(z) and p(z) has T* as its best logit
    (density-ratio estimation = class-probability estimation; nplvm/models/discriminator.py,
    nplvm/models/drvae.py);
  * the VampPrior: p(z) = (1/K) sum_k q(z|u_k) with learned pseudo-inputs u_k
    (nplvm/models/vampprior.py).

What it checks and draws (``--out``, default figures/18_optimal_prior/):
  1. the density-ratio trick where the answer is known: two Gaussians, ln q/p a quadratic;
     logistic regression on (1, h, h^2) recovers its coefficients (within 4 standard errors), and an
     MLP discriminator does no better than the Bayes-optimal T* on held-out samples;
  2. gradients by central differences, float64: the VampPrior (every parameter, pseudo-inputs
     included), the discriminator (parameters and inputs), the density-ratio VAE;
  3. (KLD) on a trained VAE with a 2-D latent, the data distribution being N training images:
     closed-form E KL = I + KL(q(z) || p) with I and KL by quadrature on a grid; I <= log N;
     Monte Carlo agrees with quadrature; the aggregated posterior against N(0, I) in the plane;
  4. a VampPrior with a 2-D latent: its pseudo-inputs as images, its prior against its aggregated
     posterior, the KL(q(z) || p) it leaves compared with N(0, I)'s;
  5. the density-ratio VAE with a 2-D latent: the discriminator's log-ratio T_psi over the latent
     plane next to the exact ln q(z)/p(z) (q(z) is a known mixture of N Gaussians here).

    python lessons/18_optimal_prior.py            # ~13 min measured on one core of a busy shared machine
    python lessons/18_optimal_prior.py --quick    # seconds (the test suite runs this)
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "18_optimal_prior.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

from nplvm import plots  # noqa: E402
from nplvm.data import load_dataset  # noqa: E402
from nplvm.gradcheck import check_model, numerical_grad, rel_error  # noqa: E402
from nplvm.models.discriminator import (Discriminator, gaussian_log_ratio,  # noqa: E402
                                        logistic_regression, quadratic_coefficients)
from nplvm.models.drvae import DRVAE  # noqa: E402
from nplvm.models.vae import VAE  # noqa: E402
from nplvm.models.vampprior import VampPrior, kl_decomposition, log_mixture  # noqa: E402
from nplvm.nn import softplus_forward  # noqa: E402
from nplvm.optim import Adam  # noqa: E402
from nplvm.train import fit  # noqa: E402

GRAD_TOL = 1e-6          # float64 central differences (h = 1e-5): relative error of a correct gradient ~1e-8
LOG_2PI = math.log(2 * math.pi)


def std_normal_log_prob(z):
    return -0.5 * np.sum(LOG_2PI + z * z, axis=-1)


def per_sample_logistic(t_q, t_p):
    """Per-sample terms of the logistic loss: softplus(-t_q) (label 1), softplus(t_p) (label 0)."""
    return softplus_forward(-t_q), softplus_forward(t_p)


# %% 1. The density-ratio trick where the answer is known: two Gaussians
def density_ratio_trick(table, results, args):
    g = np.random.default_rng(args.seed)
    mq, vq, mp, vp = 1.0, 0.5, -0.5, 2.0                 # q = N(1, 0.5), p = N(-0.5, 2)
    c = np.array(quadratic_coefficients(mq, vq, mp, vp))  # ln q/p = c0 + c1 h + c2 h^2
    n = C.quick_or(args, 20000, 200000)
    hq, hp = g.normal(mq, math.sqrt(vq), n), g.normal(mp, math.sqrt(vp), n)
    feats = lambda h: np.stack([np.ones_like(h), h, h * h], axis=1)
    w, cov = logistic_regression(feats(hq), feats(hp))
    se = np.sqrt(np.diag(cov))
    for i, name in enumerate(("c0", "c1", "c2")):
        table.add(f"[1] logistic regression {name} = closed form", w[i], c[i], 4 * se[i],
                  note="tol = 4 SE (inverse Fisher information)" if i == 0 else "")
    print(f"closed form ln q/p = {c[0]:.4f} + {c[1]:.4f} h + {c[2]:.4f} h^2; "
          f"logistic regression: {w[0]:.4f} + {w[1]:.4f} h + {w[2]:.4f} h^2")

    # an MLP discriminator T_psi, the one the models use, trained by Adam on fresh samples
    d = Discriminator(None, 1, hidden=(32, 32), dtype="float64", seed=args.seed)
    opt = Adam(3e-3)
    steps = C.quick_or(args, 800, 4000)
    for _ in range(steps):
        _, grads = d.loss_on(g.normal(mq, math.sqrt(vq), (256, 1)), g.normal(mp, math.sqrt(vp), (256, 1)))
        opt.step(d.params, grads)
    # held-out: the Bayes-optimal logit T* cannot be beaten (paired, same samples)
    m = 50000
    eq, ep = g.normal(mq, math.sqrt(vq), m), g.normal(mp, math.sqrt(vp), m)
    lq, lp = per_sample_logistic(d.log_ratio(eq[:, None]), d.log_ratio(ep[:, None]))
    sq, sp = per_sample_logistic(gaussian_log_ratio(eq, mq, vq, mp, vp), gaussian_log_ratio(ep, mq, vq, mp, vp))
    gap = (lq - sq).mean() + (lp - sp).mean()
    gap_se = math.sqrt(((lq - sq).var() + (lp - sp).var()) / m)
    table.add("[1] loss(T_psi) >= loss(T*) (T* Bayes-optimal)", gap, 0.0, 4 * gap_se, relation=">=",
              note="held-out logistic loss gap, tol = 4 paired SE")
    hgrid = np.linspace(-2.5, 3.0, 221)
    t_mlp = d.log_ratio(hgrid[:, None])
    t_true = gaussian_log_ratio(hgrid, mq, vq, mp, vp)
    mass = (hgrid > -1.0) & (hgrid < 2.0)
    err = float(np.mean(np.abs(t_mlp - t_true)[mass]))
    print(f"MLP T_psi after {steps} steps: held-out loss gap to T* {gap:.5f} nats; "
          f"mean |T_psi - ln q/p| on [-1, 2]: {err:.3f}")
    results.update(dr_coefficients=w.tolist(), dr_closed_form=c.tolist(), dr_mlp_gap=gap, dr_mlp_error=err)

    fig, ax = C.plt.subplots(1, 2, figsize=(11, 4))
    ax[0].hist(hq[:20000], bins=80, density=True, alpha=0.5, label="samples of q (y = 1)")
    ax[0].hist(hp[:20000], bins=80, density=True, alpha=0.5, label="samples of p (y = 0)")
    ax[0].set(xlabel="h", ylabel="density", title="the two sample sets")
    ax[0].legend(fontsize=8)
    ax[1].plot(hgrid, t_true, "k-", lw=2, label="ln q/p (closed form, a quadratic)")
    ax[1].plot(hgrid, feats(hgrid) @ w, "C1--", label="logistic regression on (1, h, h^2)")
    ax[1].plot(hgrid, t_mlp, "C2-", label="MLP discriminator T_psi")
    ax[1].set(xlabel="h", ylabel="log density ratio", title="the best classifier's logit is ln q/p",
              ylim=(t_true.min() - 1, t_true.max() + 1))
    ax[1].legend(fontsize=8)
    results["figures"].append(C.save_figure(fig, args.out / "density_ratio_two_gaussians.png"))


# %% 2. Gradients by central differences
def gradient_checks(table, results, args):
    g = np.random.default_rng(args.seed)
    x = (g.random((6, 12)) < 0.4).astype(np.float64)
    vp = VampPrior(x_dim=12, hidden=[7, 5], latent=3, n_pseudo=4, activation="tanh", dtype="float64", seed=args.seed)
    rep = check_model(vp, x, seed=1, eps=1e-5, max_entries_per_param=None)
    table.add("[2] VampPrior grad, every parameter (max rel. err)", max(rep.values()), 0.0, GRAD_TOL,
              relation="<=", note=f"float64 central differences; pseudo-inputs: {rep['pseudo']:.1e}")
    dr = DRVAE(x_dim=12, hidden=[7, 5], latent=3, disc_hidden=[6], dtype="float64", seed=args.seed)
    for p in dr.discriminator.params.values():
        p += g.normal(0, 0.5, p.shape)
    rep = check_model(dr, x, seed=2, eps=1e-5, max_entries_per_param=None)
    table.add("[2] density-ratio VAE grad (max rel. err)", max(rep.values()), 0.0, GRAD_TOL, relation="<=")
    d = dr.discriminator
    _, grads = d.loss(x, 3)
    err = max(rel_error(grads[k], numerical_grad(lambda: d.loss(x, 3, grad=False)[0], p, eps=1e-6))
              for k, p in d.params.items())
    table.add("[2] discriminator grad, parameters", err, 0.0, GRAD_TOL, relation="<=")
    h = g.normal(size=(5, 3))
    cw = g.normal(size=5)
    _, cache = d.forward(h)
    dh = d.backward(cw, cache)
    err = rel_error(dh, numerical_grad(lambda: float(cw @ d.forward(h)[0]), h, eps=1e-6))
    table.add("[2] discriminator grad, inputs dT/dh", err, 0.0, GRAD_TOL, relation="<=")


def quadrature_terms(mu, logvar, n):
    """I(x; z) and KL(q(z) || N(0, I)) by the midpoint rule, q(z) = (1/N) sum_m q(z|x_m) exactly.

    Both are averages over n of integrals against q(z|x_n),
        I  = (1/N) sum_n int q(z|x_n) [ln q(z|x_n) - ln q(z)] dz,
        KL = (1/N) sum_n int q(z|x_n) [ln q(z) - ln N(z|0, I)] dz,
    so each integral runs on its own n x n grid over mu_n +- 8 sigma_n (step 16 sigma / n: the
    midpoint rule resolves the Gaussian weight whatever its width).
    """
    t = (np.arange(n) + 0.5) / n * 16.0 - 8.0                  # standardised grid, midpoints
    U = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    cell = (16.0 / n) ** 2
    mi = kl = 0.0
    for m, s in zip(mu, logvar):
        sd = np.exp(0.5 * s)
        Z = m + sd * U
        w = np.exp(-0.5 * np.sum(LOG_2PI + U * U, axis=1)) * cell   # q(z|x_n) dz = N(u|0, I) du, z = m + sd u
        log_qn = -0.5 * np.sum(LOG_2PI + s + U * U, axis=1)
        log_q, _ = log_mixture(Z, mu, logvar)
        mi += float(np.sum(w * (log_qn - log_q)))
        kl += float(np.sum(w * (log_q - std_normal_log_prob(Z))))
    return mi / len(mu), kl / len(mu)


def latent_plane(mu, logvar, lim, n=200):
    lo, hi = lim
    t = np.linspace(lo, hi, n)
    Z = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    return Z, log_mixture(Z, mu, logvar)[0], std_normal_log_prob(Z)


def train2d(model, x, args, epochs, lr=2e-3):
    """Adam with a KL warm-up (beta = 0, 1/W, ..., 1 over the first W epochs, as in the benchmark):
    without it a VampPrior's encoder collapses onto its own prior (see nplvm/models/vampprior.py)."""
    W = max(1, epochs // 4)

    def warmup(m, epoch):
        m.beta = min(1.0, epoch / W)

    warmup(model, 0)
    fit(model, Adam(lr), x, epochs=epochs, batch_size=100, seed=args.seed, progress=False, log=None,
        eval_fn=warmup)
    assert model.beta == 1.0
    return model


def as64(model, cls, **extra):
    m = cls(**{**model.config, "dtype": "float64"})
    for k, p in model.params.items():
        m.params[k][...] = p
    if hasattr(model, "discriminator"):
        for k, p in model.discriminator.params.items():
            m.discriminator.params[k][...] = p
    return m


# %% 3. The decomposition (KLD) on a trained VAE with a 2-D latent
def decomposition(table, results, args, x_train, n_points):
    arch = dict(x_dim=784, hidden=C.quick_or(args, (128,), (256,)), latent=2, activation="tanh", seed=args.seed)
    vae = as64(train2d(VAE(**arch), x_train, args, C.quick_or(args, 4, 25)), VAE)
    x = x_train[:n_points]                                     # p_D: the empirical distribution of these N
    mu, logvar = vae.encode(x)
    exact = kl_decomposition(mu, logvar, std_normal_log_prob, S=C.quick_or(args, 20, 100), rng=args.seed)
    lo, hi = float(min(mu.min(), -3) - 1.0), float(max(mu.max(), 3) + 1.0)
    n_grid = C.quick_or(args, 60, 100)
    mi_q, kl_q = quadrature_terms(mu, logvar, n_grid)
    mi_q2, kl_q2 = quadrature_terms(mu, logvar, n_grid // 2)
    quad_err = abs(mi_q - mi_q2) + abs(kl_q - kl_q2)           # the coarser grid's difference: its error bound
    table.add("[3] E KL(q(z|x)||p) = I + KL(q(z)||p) (quadrature)", exact["mean_kl_exact"], mi_q + kl_q,
              10 * quad_err + 1e-9, note=f"closed-form E KL vs quadrature, {n_grid}^2 points per posterior; "
              "tol = 10 x |grid n - grid n/2| (+ 1e-9)")
    table.add("[3] I(x; z) <= log N", mi_q, exact["log_N"], 1e-12, relation="<=")
    for key, qv in (("mutual_info", mi_q), ("marginal_kl", kl_q)):
        draws = exact[f"{key}_draws"]
        se = draws.std() / math.sqrt(draws.size)
        table.add(f"[3] Monte Carlo {key} = quadrature", exact[key], qv, 4 * se + 10 * quad_err, note="tol = 4 SE")
    print(f"N = {n_points}: E KL = {exact['mean_kl_exact']:.4f} = I {mi_q:.4f} (log N = {exact['log_N']:.4f}) "
          f"+ KL(q(z)||N(0,I)) {kl_q:.4f}: the ELBO with p = q(z) is higher by {kl_q:.4f} nats per example")
    results.update(kl_decomposition={"mean_kl": exact["mean_kl_exact"], "mutual_info": mi_q,
                                     "marginal_kl": kl_q, "log_N": exact["log_N"]})
    # figure: aggregated posterior vs N(0, I)
    Z, log_q, log_p = latent_plane(mu, logvar, (lo, hi))
    n = int(math.sqrt(len(Z)))
    ext = (lo, hi, lo, hi)
    fig, ax = C.plt.subplots(1, 2, figsize=(10, 4.5))
    ax[0].imshow(np.exp(log_q).reshape(n, n).T, origin="lower", extent=ext, cmap="magma")
    ax[0].contour(Z[:, 0].reshape(n, n), Z[:, 1].reshape(n, n), np.exp(log_p).reshape(n, n),
                  levels=[0.01, 0.05, 0.1], colors="c", linewidths=0.8)
    ax[0].set(xlabel="z1", ylabel="z2", title=f"aggregated posterior q(z) of {n_points} images\n(cyan: N(0, I) contours)")
    ax[1].imshow((log_q - log_p).reshape(n, n).T, origin="lower", extent=ext, cmap="RdBu_r", vmin=-8, vmax=8)
    ax[1].set(xlabel="z1", ylabel="z2", title="ln q(z) / N(z | 0, I)  (the optimal T*)")
    results["figures"].append(C.save_figure(fig, args.out / "aggregated_posterior.png"))
    return mu, logvar, (lo, hi), kl_q


# %% 4. VampPrior with a 2-D latent: pseudo-inputs and its prior vs its aggregated posterior
def vampprior_2d(table, results, args, x_train, n_points, lim, kl_vae):
    arch = dict(x_dim=784, hidden=C.quick_or(args, (128,), (256,)), latent=2, activation="tanh", seed=args.seed)
    K = C.quick_or(args, 16, 50)
    vp = VampPrior(n_pseudo=K, **arch)
    vp.init_pseudo_inputs(x_train, args.seed)                 # start at K training images
    train2d(vp, x_train, args, C.quick_or(args, 4, 25))
    vp64 = as64(vp, VampPrior)
    x = x_train[:n_points].astype(np.float64)
    loss, _ = vp64.loss(x, 5)
    table.add("[4] VampPrior loss = -mean log w (same draw)", loss, -vp64.log_weights(x, 1, 5).mean(), 1e-9)
    mu, logvar = vp64.encode(x)
    d = kl_decomposition(mu, logvar, vp64.log_prior, S=C.quick_or(args, 20, 100), rng=args.seed)
    print(f"VampPrior (K = {K}): KL(q(z) || p_vamp) = {d['marginal_kl']:.3f} (MC), the VAE's KL(q(z) || N(0, I)) = "
          f"{kl_vae:.3f}; I(x; z) = {d['mutual_info']:.3f}")
    results.update(vamp_marginal_kl=d["marginal_kl"], vamp_mutual_info=d["mutual_info"])
    u = vp64.pseudo_inputs()
    fig, ax = C.plt.subplots(1, 3, figsize=(14, 4.5))
    ax[0].imshow(plots.tile_images(u, nrow=8), cmap="gray", vmin=0, vmax=1)
    ax[0].set(title=f"the {K} pseudo-inputs u_k after training\n(started at training images)")
    ax[0].axis("off")
    m, _ = vp64.prior_components()
    lo = float(min(mu.min(), m.min())) - 2.0                 # the VampPrior is not anchored at 0: its own plane
    hi = float(max(mu.max(), m.max())) + 2.0
    t = np.linspace(lo, hi, 200)
    Z = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    lp = vp64.log_prior(Z).reshape(200, 200)
    lq = log_mixture(Z, mu, logvar)[0].reshape(200, 200)
    for a, img, title in ((ax[1], lp, "VampPrior p(z) = (1/K) sum_k q(z|u_k)"),
                          (ax[2], lq, f"its aggregated posterior q(z) ({n_points} images)")):
        a.imshow(np.exp(img).T, origin="lower", extent=(lo, hi, lo, hi), cmap="magma")
        a.plot(m[:, 0], m[:, 1], "c+", ms=6, label="means of q(z|u_k)")
        a.set(xlabel="z1", ylabel="z2", title=title)
    ax[1].legend(fontsize=8, loc="lower right")
    results["figures"].append(C.save_figure(fig, args.out / "vampprior_pseudo_inputs.png"))


# %% 5. The density-ratio VAE with a 2-D latent: T_psi against the exact ln q(z)/p(z)
def density_ratio_vae(table, results, args, x_train, n_points, lim):
    arch = dict(x_dim=784, hidden=C.quick_or(args, (128,), (256,)), latent=2, activation="tanh", seed=args.seed)
    dr = DRVAE(disc_hidden=(64, 64), disc_lr=2e-3, **arch)
    train2d(dr, x_train, args, C.quick_or(args, 4, 25))
    dr64 = as64(dr, DRVAE)
    x = x_train[:n_points].astype(np.float64)
    # freeze the VAE; train T_psi further on the aggregated posterior of these N images, whose
    # density is known exactly (a mixture of N Gaussians): T* = ln q_N(z) - ln N(z | 0, I)
    d = dr64.discriminator
    opt = Adam(2e-3)
    g = np.random.default_rng(args.seed)
    for step in range(C.quick_or(args, 600, 4000)):
        _, grads = d.loss(x, g)
        opt.step(d.params, grads)
    mu, logvar = dr64.encode(x)
    m = 20000
    k = g.integers(0, n_points, m)
    zq = mu[k] + np.exp(0.5 * logvar[k]) * g.standard_normal((m, 2))
    zp = g.standard_normal((m, 2))
    t_star = lambda z: log_mixture(z, mu, logvar)[0] - std_normal_log_prob(z)
    lq, lp = per_sample_logistic(d.log_ratio(zq), d.log_ratio(zp))
    sq, sp = per_sample_logistic(t_star(zq), t_star(zp))
    gap = (lq - sq).mean() + (lp - sp).mean()
    gap_se = math.sqrt(((lq - sq).var() + (lp - sp).var()) / m)
    table.add("[5] loss(T_psi) >= loss(T*) on the latent plane", gap, 0.0, 4 * gap_se, relation=">=",
              note="T* = ln q(z)/N(z|0,I) exact (q: mixture of the N posteriors); tol = 4 paired SE")
    kl_exact = float(np.mean(t_star(zq)))                      # KL(q(z) || p) = E_q[T*]
    kl_disc = float(np.mean(d.log_ratio(zq)))
    log_z, log_z_se = dr64.estimate_log_normalizer(50000, rng=args.seed, x_ref=x)
    print(f"density-ratio prior: E_q[T_psi] = {kl_disc:.3f} vs KL(q(z) || N(0, I)) = E_q[T*] = {kl_exact:.3f}; "
          f"held-out loss gap to T* {gap:.4f}; log Z_T = {log_z:.3f} +- {log_z_se:.3f} (0 for T = T*)")
    results.update(dr2d_gap=gap, dr2d_kl_exact=kl_exact, dr2d_kl_disc=kl_disc, dr2d_log_z=log_z)
    lo, hi = float(min(mu.min(), lim[0])) - 1.0, float(max(mu.max(), lim[1])) + 1.0
    t = np.linspace(lo, hi, 200)
    Z = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    fig, ax = C.plt.subplots(1, 3, figsize=(15, 4.5))
    for a, img, title in ((ax[0], d.log_ratio(Z), "discriminator's log-ratio T_psi(z)"),
                          (ax[1], t_star(Z), "exact ln q(z) / N(z | 0, I)")):
        im = a.imshow(img.reshape(200, 200).T, origin="lower", extent=(lo, hi, lo, hi), cmap="RdBu_r", vmin=-8, vmax=8)
        a.set(xlabel="z1", ylabel="z2", title=title)
    C.plt.colorbar(im, ax=ax[:2].tolist(), shrink=0.8)
    ax[2].scatter(zq[:1000, 0], zq[:1000, 1], s=2, alpha=0.5, label="z ~ q(z)")
    ax[2].scatter(zp[:1000, 0], zp[:1000, 1], s=2, alpha=0.5, label="z ~ N(0, I)")
    ax[2].set(xlim=(lo, hi), ylim=(lo, hi), xlabel="z1", ylabel="z2", title="what the discriminator sees")
    ax[2].legend(fontsize=8, markerscale=4)
    fig.savefig(args.out / "discriminator_log_ratio.png", dpi=110)
    C.plt.close(fig)
    print(f"saved {args.out / 'discriminator_log_ratio.png'}")
    results["figures"].append(str(args.out / "discriminator_log_ratio.png"))


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
table = C.CheckTable("Lesson 18: the optimal prior")
results = {"figures": []}
print("[1] density ratio = class probability: two Gaussians")
density_ratio_trick(table, results, args)
print("[2] gradient checks")
gradient_checks(table, results, args)
ds = load_dataset("offline", seed=args.seed)
x_train = ds.train[:C.quick_or(args, 1000, 4000)]
n_points = C.quick_or(args, 100, 500)
print(f"[3] (KLD) on a 2-D VAE, p_D = {n_points} training images")
mu, logvar, lim, kl_vae = decomposition(table, results, args, x_train, n_points)
print("[4] VampPrior, 2-D latent")
vampprior_2d(table, results, args, x_train, n_points, lim, kl_vae)
print("[5] density-ratio VAE, 2-D latent")
density_ratio_vae(table, results, args, x_train, n_points, lim)
results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
