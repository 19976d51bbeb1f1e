"""Lesson 07: per-datapoint variational inference vs the amortized encoder, and the two gaps.

Lecture notes 001_3b34c7ea4ef78f1e.txt, "II. OPTIMIZATION" ("A. VARIATIONAL INFERENCE", "B.
AMORTIZATION", "C. JOINT TRAINING"): with the decoder theta fixed, the E-step of variational EM
fits a Gaussian q_n(z) = N(mu_n, diag sigma_n^2) to each data point separately,

    mu_n*, sigma_n* = argmax ELBO(theta, q_n) = argmin KL(q_n || p_theta(z|x_n)),        (A. VI)

which costs one optimisation per data point; amortization (B) instead learns one function
g_phi(x) = (mu_phi(x), sigma_phi(x)) shared by all points, and joint training (C) fits theta and
phi together -- the VAE.  The amortized q can only be as good as the best q of its family for each
x, so the distance from log p(x) splits in two (Cremer, Li & Duvenaud, 2018):

    log p(x) - ELBO(q_phi(.|x)) = [log p(x) - ELBO(q*_x)]  +  [ELBO(q*_x) - ELBO(q_phi(.|x))]
                                   approximation gap          amortization gap
                                   (the Gaussian family)      (the encoder's error)

where q*_x is the optimal Gaussian for x alone.  Both gaps are >= 0.

This lesson trains a small VAE (joint training, C) on the offline MNIST subset, freezes the
decoder, and for a handful of test digits runs per-datapoint VI (A) from the encoder's answer with
the reparameterized gradient of

    ELBO(mu, logvar) = E_eps[log p(x | z = mu + e^(logvar/2) eps)] - KL(N(mu, e^logvar) || N(0, I)),

    d ELBO/d mu     = E[g] - mu,
    d ELBO/d logvar = E[g * eps * e^(logvar/2) / 2] - (e^logvar - 1)/2,   g = d log p(x|z)/dz,

with g from the decoder's hand-written backward (nn.MLP.backward returns dL/dz).  log p(x) is
estimated by importance sampling (lesson 06: a lower bound in expectation, tight for large K
only if the proposal's tails cover the posterior's).  q*_x itself is a poor proposal: fitted by
minimising KL(q || p(z|x)), it is narrower than the posterior, so its weights are heavy-tailed
and IS with q* alone underestimates log p(x) -- for some images below the estimate with the
encoder's wider q_phi.  The lesson therefore uses a defensive mixture of q*, q_phi and a widened
q*, whose weights are bounded by three times each component's, and shows all three estimates.

Checks: the per-datapoint ELBO gradient against finite differences (float64, eps fixed); the
amortization gap >= 0 and the approximation gap >= 0, per test image and on average, within
standard errors; local VI raising the ELBO above the encoder's for the average image; the
mixture's log p(x) estimate: two independent halves agree, and it is not below either single
proposal's estimate (each is biased low).

Before the VAE, the exact version of the same picture (notes 001, "II. OPTIMIZATION": "IN EM",
Step E / Step M; notes 004_eef4e39dcc0eb5a8.txt, "EM-algorithm"):
EM on factor analysis is coordinate ascent on ELBO(theta, q).  The E-step sets q to the exact
posterior p(z|x, theta), which makes the bound tight (ELBO = log p(x)); the M-step raises the
ELBO over theta with q fixed, and log p(x; theta_new) >= ELBO(theta_new, q) >= log p(x; theta_old).
Printed before and after each step for a few iterations, and checked.  (Lesson 01 fits FA by
EM and shows the log-likelihood never decreasing; here the ELBO is shown step by step.)

Run:  python lessons/07_amortization_gap.py [--quick] [--out DIR] [--seed N]
"""
# %%
import sys
from pathlib import Path

FILE = Path(globals().get("__file__", "07_amortization_gap.py")).resolve()   # a notebook has no __file__: open it in lessons/
sys.path.insert(0, str(FILE.parent))

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

import kernels  # noqa: E402
from nplvm.data import load_dataset  # noqa: E402
from nplvm.distributions import DiagGaussian, logsumexp, std_normal_log_prob  # noqa: E402
from nplvm.gradcheck import rel_error  # noqa: E402
from nplvm.models.fa import FactorAnalysis, fa_m_step, fa_posterior  # noqa: E402
from nplvm.models.vae import VAE  # noqa: E402
from nplvm.objectives import iwae_bound  # noqa: E402
from nplvm.optim import Adam  # noqa: E402
from nplvm.train import fit  # noqa: E402

GRAD_TOL = 1e-7
N_SE = 3.0


def as_float64(model):
    """A float64 copy of a VAE (same config and parameter values)."""
    m64 = VAE(**{**model.config, "dtype": "float64"})
    for name, p in model.params.items():
        m64.params[name][...] = p
    return m64


def local_elbo_and_grad(vae, x, mu, logvar, eps):
    """Per-datapoint ELBO of q_n = N(mu_n, e^logvar_n) with the decoder fixed, and its gradient.

    x (N, D) float64 binary; mu, logvar (N, L); eps (S, N, L) standard normal (held fixed).
    Returns elbo (N,) = mean_s log p(x_n|z_sn) - KL_n, and d elbo_n / d mu_n, d logvar_n (N, L).
    """
    S, N, L = eps.shape
    sigma = np.exp(0.5 * logvar)
    z = mu + sigma * eps                                                # z = mu + sigma eps
    logits, cache = vae.decoder.forward(z.reshape(S * N, L))
    xs = np.broadcast_to(x, (S, N, x.shape[1])).reshape(S * N, -1)
    nll, dlogits = kernels.bernoulli_nll(xs, logits, 1.0 / S)           # -log p(x|z), d/dlogits / S
    dz_nll = vae.decoder.backward(dlogits, cache).reshape(S, N, L)      # d(mean_s nll)/dz
    kl, dkl_dmu, dkl_dlogvar = kernels.gaussian_kl_std(mu, logvar)
    elbo = -nll.reshape(S, N).mean(axis=0) - kl
    g = -dz_nll                                                          # (1/S) d log p(x|z)/dz
    dmu = g.sum(axis=0) - dkl_dmu                                        # dz/dmu = 1
    dlogvar = (g * eps).sum(axis=0) * (0.5 * sigma) - dkl_dlogvar        # dz/dlogvar = eps sigma/2
    return elbo, dmu, dlogvar


def per_sample_elbo(vae, x, mu, logvar, eps):
    """(S, N) single-sample ELBOs log p(x|z_s) - KL (analytic KL): their mean is the ELBO, their
    spread gives its standard error.  Common eps makes differences between two q's low-variance."""
    S, N, L = eps.shape
    z = mu + np.exp(0.5 * logvar) * eps
    logits = vae.decoder.forward(z.reshape(S * N, L))[0]
    xs = np.broadcast_to(x, (S, N, x.shape[1])).reshape(S * N, -1)
    nll, _ = kernels.bernoulli_nll(xs, logits)
    kl, _, _ = kernels.gaussian_kl_std(mu, logvar)
    return -nll.reshape(S, N) - kl


def log_weights(vae, x, mu, logvar, K, rng, chunk=500):
    """log w = log p(x|z) + log p(z) - log q(z) for K draws z ~ N(mu, e^logvar) per row: (K, N)."""
    q = DiagGaussian(mu, logvar)
    out = []
    for start in range(0, K, chunk):
        c = min(chunk, K - start)
        z = q.rsample(rng.standard_normal((c,) + mu.shape))             # (c, N, L)
        logits = vae.decoder.forward(z.reshape(-1, mu.shape[1]))[0]
        xs = np.broadcast_to(x, (c,) + x.shape).reshape(-1, x.shape[1])
        nll, _ = kernels.bernoulli_nll(xs, logits)
        out.append(-nll.reshape(c, -1) + std_normal_log_prob(z) - q.log_prob(z))
    return np.concatenate(out, axis=0)


def delta_se(lw):
    """Delta-method standard error of log (1/K) sum_i w_i from the K weights themselves, (K, N) -> (N,):
    SE(mean w) / mean w.  It is only as trustworthy as the weights' variance is finite."""
    w = np.exp(lw - lw.max(0))
    return w.std(0, ddof=1) / np.sqrt(lw.shape[0]) / w.mean(0)


def effective_sample_size(lw):
    """(sum w)^2 / sum w^2 per column of (K, N) log weights: K for equal weights, 1 for one dominant."""
    w = np.exp(lw - lw.max(0))
    return w.sum(0) ** 2 / (w * w).sum(0)


def mixture_log_weights(vae, x, comps, K, rng, chunk=500):
    """log w = log p(x, z) - log r(z), r = (1/J) sum_j N(mu_j, e^logvar_j), K/J draws from each
    component (stratified); comps: list of J (mu, logvar) pairs, each (N, L).  Returns (K, N)."""
    J = len(comps)
    qs = [DiagGaussian(m, lv) for m, lv in comps]
    out = []
    for q in qs:
        for start in range(0, K // J, chunk):
            c = min(chunk, K // J - start)
            z = q.rsample(rng.standard_normal((c,) + q.mu.shape))        # (c, N, L)
            logits = vae.decoder.forward(z.reshape(-1, z.shape[-1]))[0]
            xs = np.broadcast_to(x, (c,) + x.shape).reshape(-1, x.shape[1])
            nll, _ = kernels.bernoulli_nll(xs, logits)
            log_r = logsumexp(np.stack([qj.log_prob(z) for qj in qs]), axis=0) - np.log(J)
            out.append(-nll.reshape(c, -1) + std_normal_log_prob(z) - log_r)
    return np.concatenate(out, axis=0)


def em_coordinate_ascent(table, rng, D=8, L=2, N=500, iters=3):
    """EM on factor analysis as coordinate ascent on the mean ELBO, printed and checked per step.

    Data from a random FA model; theta = (W, psi) (mu fixed at the sample mean, its ML value),
    q_n = N(m_n, S_q).  Starts from random theta and q = the prior N(0, I).  Returns the trace:
    a list of (label, mean ELBO, mean log p(x)).
    """
    truth = FactorAnalysis(L, n_features=D, seed=int(rng.integers(1 << 31)))
    truth.params["log_psi"][...] = np.log(rng.uniform(0.2, 1.0, D))
    X = truth.sample(N, seed=rng)
    fa = FactorAnalysis(L, n_features=D, seed=int(rng.integers(1 << 31)))   # random W, psi = 1
    mu = X.mean(axis=0)
    fa.params["mu"][...] = mu
    Xc = X - mu
    S = Xc.T @ Xc / N                                                  # sample covariance (D, D)
    q_mean, q_cov = np.zeros((N, L)), np.eye(L)                        # q = p(z) to start

    def elbo_and_loglik():
        e = fa.elbo(X, q_mean, q_cov)
        return float(np.mean(e["joint_plus_entropy"])), float(np.mean(e["log_px"]))

    trace = []
    print(f"\nEM on factor analysis (D={D}, L={L}, N={N}) as coordinate ascent on the ELBO, "
          "nats per example:")
    print(f"{'step':<27} | {'ELBO(theta, q)':>14} | {'log p(x; theta)':>15} | {'gap = KL(q||p(z|x))':>19}")
    for t in range(1, iters + 1):
        for label in ("E-step: q <- p(z|x,theta)", "M-step: theta <- argmax"):
            before = elbo_and_loglik()
            if label.startswith("E"):
                V, Sigma = fa_posterior(fa.params["W"], fa.psi)        # q_n = N(V (x_n - mu), Sigma)
                q_mean, q_cov = Xc @ V.T, Sigma
            else:
                W_new, psi_new = fa_m_step(S @ V.T, np.diag(S).copy(), V, Sigma)
                fa.params["W"][...] = W_new
                fa.params["log_psi"][...] = np.log(np.maximum(psi_new, 1e-6))
            after = elbo_and_loglik()
            trace.append((f"{t} {label}", *after))
            print(f"{t} {label:<25} | {after[0]:>14.6f} | {after[1]:>15.6f} | {after[1] - after[0]:>19.3e}"
                  f"   (ELBO was {before[0]:.6f})")
            table.add(f"EM {t} {label[:6]}: ELBO does not decrease", before[0], after[0], 1e-10, "<=")
            if label.startswith("E"):
                table.add(f"EM {t} E-step: bound tight, ELBO = log p(x)", after[0], after[1], 1e-9)
            else:
                table.add(f"EM {t} M-step: log p(x; theta_new) >= ELBO(theta_new, q)", after[1], after[0],
                          1e-10, ">=")
    return trace


# %% [markdown]
# ## The lesson, step by step
# %%
args = C.parse_args(C.lesson_argv(), globals().get("__doc__"), FILE)
quick = args.quick
rng = np.random.default_rng(args.seed)
table = C.CheckTable("Lesson 07: per-datapoint VI, amortization and approximation gaps")
results = {"figures": []}

results["em_trace"] = em_coordinate_ascent(table, rng)

# %% [markdown]
# ## C. joint training: a small VAE
# %%
ds = load_dataset("offline", seed=args.seed)
n_train = 1000 if quick else 4000
arch = dict(hidden=(64,), latent=4) if quick else dict(hidden=(200,), latent=8)
epochs = 4 if quick else 30
model = VAE(x_dim=784, activation="tanh", seed=args.seed, **arch)   # tanh: smooth for FD checks
fit(model, Adam(1e-3), ds.train[:n_train], epochs=epochs, batch_size=50, seed=args.seed,
    progress=True, log=None)
vae = as_float64(model)
n_x = 4 if quick else 16
x = ds.test[:n_x].astype(np.float64)
L = vae.latent
print(f"VAE (hidden {arch['hidden']}, latent {L}) trained {epochs} epochs on {n_train} digits; "
      f"{n_x} test digits")

mu_enc, logvar_enc = vae.encode(x)                                   # B. the amortized q

# %% [markdown]
# ## The per-datapoint gradient against finite differences (eps fixed)
# %%
eps_fd = rng.standard_normal((3, n_x, L))
M, S_ = mu_enc.copy(), logvar_enc.copy()
_, dmu, dlogvar = local_elbo_and_grad(vae, x, M, S_, eps_fd)

def total_elbo():
    return float(local_elbo_and_grad(vae, x, M, S_, eps_fd)[0].sum())

# The ELBO is ~ -200 nats per digit, summed over 784 pixels, while some gradient entries are
# ~1e-3: plain central differences (h = 1e-6) lose ~1e-7 relative to rounding in f.  Richardson
# differences with h = 1e-2 (error O(h^4)) resolve them to ~1e-9.
err_mu = rel_error(dmu, C.richardson_grad(total_elbo, M, h=1e-2))
err_lv = rel_error(dlogvar, C.richardson_grad(total_elbo, S_, h=1e-2))
table.add("d ELBO_n/d mu_n = E[g] - mu (vs FD)", err_mu, 0.0, GRAD_TOL, "<=",
          note="lhs: relative error against Richardson finite differences, float64, eps fixed")
table.add("d ELBO_n/d logvar_n (vs FD)", err_lv, 0.0, GRAD_TOL, "<=")

# %% [markdown]
# ## A. per-datapoint VI from the encoder's answer, decoder fixed
# %%
steps = 150 if quick else 1500
S_train = 16
q_local = {"mu": mu_enc.copy(), "logvar": logvar_enc.copy()}
opt = Adam(lr=0.03 if quick else 0.01)
eps_track = rng.standard_normal((512, n_x, L))                      # fixed: a smooth trace
trace = [(0, per_sample_elbo(vae, x, mu_enc, logvar_enc, eps_track).mean(0))]
for t in range(steps):
    eps = rng.standard_normal((S_train, n_x, L))
    _, gmu, glv = local_elbo_and_grad(vae, x, q_local["mu"], q_local["logvar"], eps)
    opt.step(q_local, {"mu": -gmu, "logvar": -glv})                 # Adam minimises -ELBO
    if (t + 1) % max(1, steps // 50) == 0 or t == steps - 1:
        trace.append((t + 1, per_sample_elbo(vae, x, q_local["mu"], q_local["logvar"], eps_track).mean(0)))

# %% [markdown]
# ## The gaps, with common random numbers
# %%
S_eval = 2000 if quick else 10000
eps_eval = rng.standard_normal((S_eval, n_x, L))
e_enc = per_sample_elbo(vae, x, mu_enc, logvar_enc, eps_eval)        # (S, N)
e_loc = per_sample_elbo(vae, x, q_local["mu"], q_local["logvar"], eps_eval)
elbo_enc, elbo_loc = e_enc.mean(0), e_loc.mean(0)
diff = e_loc - e_enc
amort, amort_se = diff.mean(0), diff.std(0, ddof=1) / np.sqrt(S_eval)
# %% [markdown]
# ## log p(x): which proposal?
# Lesson 06 showed that IS is only as good as the tails of its proposal: the weights
# w = p(x, z) / r(z) have a finite variance only where r is at least as wide as the posterior
# (lesson 06's mean-field q, narrower than p(z|x), has Var(w) = infinity).  q*_x maximises the
# ELBO, i.e. minimises KL(q || p(z|x)), which punishes mass where the posterior has none but
# not the reverse: q* is *narrower* than p(z|x) and under-covers its tails.  A rare z in those
# tails carries a huge weight, so with K draws log p_hat is biased low and its delta-method SE
# (from the same heavy-tailed sample) is too small -- the encoder's proposal, often wider,
# can then give the *higher* estimate.  The fix is a proposal with heavy enough tails: the
# defensive mixture (Hesterberg 1995) of q*, q_phi and q* widened 2x in standard deviation,
#     r(z) = [q*(z) + q_phi(z) + N(z; mu*, 4 sigma*^2)] / 3,
# whose weights are bounded by 3 times the weights of each component (r >= q_j / 3), so its
# tails are no heavier than the best component's.  Drawn K/3 from each (a stratified mixture:
# still unbiased for p(x) with the balance weights p(x, z) / r(z)).
K = 2000 if quick else 20000
lw = log_weights(vae, x, q_local["mu"], q_local["logvar"], K, rng)  # proposal q*_x
log_px_qstar, log_px_qstar_se = iwae_bound(lw), delta_se(lw)
lw_enc = log_weights(vae, x, mu_enc, logvar_enc, K, rng)             # the encoder as proposal
log_px_enc, log_px_enc_se = iwae_bound(lw_enc), delta_se(lw_enc)
comps = [(q_local["mu"], q_local["logvar"]), (mu_enc, logvar_enc),
         (q_local["mu"], q_local["logvar"] + np.log(4.0))]
K_mix = 3 * (1000 if quick else 10000)                               # per half
lw_a = mixture_log_weights(vae, x, comps, K_mix, rng)                # two independent halves
lw_b = mixture_log_weights(vae, x, comps, K_mix, rng)
lw_mix = np.concatenate([lw_a, lw_b], axis=0)
log_px, log_px_se = iwae_bound(lw_mix), delta_se(lw_mix)
ess = {name: effective_sample_size(l) / l.shape[0]
       for name, l in (("q*", lw), ("q_phi", lw_enc), ("mixture", lw_mix))}
approx = log_px - elbo_loc
approx_se = np.hypot(log_px_se, e_loc.std(0, ddof=1) / np.sqrt(S_eval))

# %%
print(f"\n{'x':>3} | {'ELBO enc q':>10} | {'ELBO local q*':>13} | {'log p(x) IS, r':>14} | "
      f"{'IS with q*':>10} | {'IS with q_phi':>13} | {'amortization gap':>16} | {'approximation gap':>17}")
for n in range(n_x):
    print(f"{n:>3} | {elbo_enc[n]:>10.3f} | {elbo_loc[n]:>13.3f} | {log_px[n]:>14.3f} | "
          f"{log_px_qstar[n]:>10.3f} | {log_px_enc[n]:>13.3f} | {amort[n]:>9.3f} +- {amort_se[n]:.3f} | "
          f"{approx[n]:>10.3f} +- {approx_se[n]:.3f}")
print("effective sample size / K, median over test images (lesson 06: (sum w)^2 / sum w^2): "
      + ", ".join(f"{k} {np.median(v):.3f}" for k, v in ess.items()))
short = log_px - log_px_qstar
print(f"IS with q* alone falls short of the mixture by {short.mean():.3f} nats on average "
      f"(max {short.max():.3f}): its weights are heavy-tailed, its estimate biased low.")
mean_amort, se_amort = float(amort.mean()), float(np.sqrt(np.sum(amort_se ** 2)) / n_x)
mean_approx, se_approx = float(approx.mean()), float(np.sqrt(np.sum(approx_se ** 2)) / n_x)
print(f"mean over test images: amortization gap {mean_amort:.3f} +- {se_amort:.3f} nats, "
      f"approximation gap {mean_approx:.3f} +- {se_approx:.3f} nats")

worst_amort = float(np.min(amort / amort_se))
worst_approx = float(np.min(approx / approx_se))
table.add("amortization gap ELBO(q*) - ELBO(q_phi) >= 0, every x (in SE)", worst_amort, 0.0,
          N_SE, ">=", note="lhs = min over test images of gap / SE (paired: common eps for both q)")
table.add("approximation gap log p(x) - ELBO(q*) >= 0, every x (in SE)", worst_approx, 0.0,
          N_SE, ">=", note=f"log p(x) by IS with {lw_mix.shape[0]} draws from the defensive mixture r")
table.add("mean amortization gap / SE >= 3 (local VI beats the encoder)", mean_amort / se_amort,
          N_SE, 0.0, ">=", note=f"{mean_amort:.3f} +- {se_amort:.3f} nats")
z_halves = float(np.max(np.abs(iwae_bound(lw_a) - iwae_bound(lw_b))
                        / np.hypot(delta_se(lw_a), delta_se(lw_b))))
table.add("IS log p(x) with r: two independent halves agree (max |diff|/SE)", z_halves, 0.0, 4.0, "<=",
          note="heavy tails would show as halves that disagree beyond their delta-method SEs")
for name, est, se in (("q*", log_px_qstar, log_px_qstar_se), ("q_phi", log_px_enc, log_px_enc_se)):
    z = float(np.min((log_px - est) / np.hypot(log_px_se, se)))
    table.add(f"IS log p(x): mixture r >= proposal {name} alone (min diff/SE)", z, 0.0, 4.0, ">=",
              note="each log p_hat is biased low (lesson 06); r's tails make it the least biased"
              if name == "q*" else "")
results.update(elbo_encoder=elbo_enc, elbo_local=elbo_loc, log_px=log_px, log_px_encoder_proposal=log_px_enc,
               log_px_qstar_proposal=log_px_qstar, effective_sample_size=ess,
               amortization_gap=amort, amortization_gap_se=amort_se, approximation_gap=approx,
               approximation_gap_se=approx_se, mean_amortization_gap=mean_amort,
               mean_approximation_gap=mean_approx, grad_errors=(err_mu, err_lv))

# %% [markdown]
# ## Figures: the VI traces, the two gaps, and the three IS estimates of log p(x)
# %%
fig, ax = C.plt.subplots(1, 3, figsize=(17, 4.5))
ts = np.array([t for t, _ in trace])
vals = np.stack([v for _, v in trace])                               # (T, N)
for n in range(min(n_x, 8)):
    line, = ax[0].plot(ts, vals[:, n] - vals[0, n], lw=1, label=f"test image {n}")
    ax[0].axhline(log_px[n] - elbo_enc[n], color=line.get_color(), ls=":", lw=0.8)
ax[0].axhline(0, color="k", lw=0.8)
ax[0].set(xlabel="VI step (Adam on mu_n, logvar_n)", ylabel="ELBO(q_t) - ELBO(q_phi)  (nats)",
          title="per-datapoint VI from the encoder's q\ndotted: log p(x) - ELBO(q_phi)")
ax[0].legend(fontsize=7, loc="lower right", ncol=2)
idx = np.arange(n_x)
ax[1].bar(idx, approx, color="C0", label="approximation gap log p(x) - ELBO(q*)")
ax[1].bar(idx, amort, bottom=approx, color="C1", label="amortization gap ELBO(q*) - ELBO(q_phi)")
ax[1].set(xlabel="test image (index in the test set)", ylabel="nats",
          title="log p(x) - ELBO(encoder) split in two", xticks=idx)
ax[1].legend(fontsize=8)
for j, (name, est, se) in enumerate((("q* alone", log_px_qstar, log_px_qstar_se),
                                      ("q_phi alone", log_px_enc, log_px_enc_se),
                                      ("mixture r", log_px, log_px_se))):
    ax[2].errorbar(idx + 0.2 * (j - 1), est - log_px, yerr=2 * se, fmt="o", ms=3, capsize=2,
                   label=f"IS with {name} (K = {lw_mix.shape[0] if j == 2 else K})")
ax[2].axhline(0, color="k", lw=0.8)
ax[2].set(xlabel="test image (index in the test set)", ylabel="log p_hat(x) - log p_hat_r(x)  (nats)",
          title="IS estimates of log p(x) (bars: 2 delta-method SE)\nq* under-covers the posterior's tails",
          xticks=idx)
ax[2].legend(fontsize=8)
results["figures"].append(C.save_figure(fig, args.out / "amortization_gap.png"))

results = C.finish(table, results)

# %%
if __name__ == "__main__" and not C.in_notebook():      # a script: exit non-zero if a check failed
    sys.exit(0 if results["all_ok"] else 1)
