r"""Total correlation and disentanglement metrics.

Total correlation (lecture notes, seed 002, "total correlation")
-----------------------------------------------------------------
    TC(z) = KL( q(z) || prod_j q(z_j) )

is zero exactly when the dimensions of z are independent.  FactorVAE estimates it with the
density-ratio trick: a classifier D tells samples of q(z) (label 1) from samples of prod_j q(z_j)
(label 0), and with logit T(z) = log D / (1 - D) -> log q(z) / prod_j q(z_j),

    TC ~= E_q(z)[ T(z) ].

Samples of prod_j q(z_j) come from a batch of q(z) samples by permuting each dimension
*independently across the batch* (``permute_dims``): every column keeps its values (so every
marginal q(z_j) is kept) while the rows are broken up (so the dependence between dimensions is
gone).  Permuting along the wrong axis -- shuffling the dimensions inside a row -- keeps the
dependence and breaks the marginals: the classic bug, tested.

For Gaussian z with correlation matrix R the answer is known in closed form:

    TC = sum_j H(z_j) - H(z) = -1/2 log det R                       (``gaussian_tc``)

since H(N(0, S)) = 1/2 log det(2 pi e S) and the marginals' variances are diag(S).

Kim & Mnih's disentanglement metric (2018)
------------------------------------------
1. Normalise each latent dimension by its standard deviation over the data (means of q(z|x));
   dimensions whose variance is below ``prune`` are collapsed and left out.
2. A vote: choose a factor k, draw L images that share one value of k (the others random),
   encode them, and take d = argmin_j Var_batch(z_j / s_j): the dimension that moved least.
3. Train a majority-vote classifier d -> k on the votes; the metric is its accuracy on fresh votes.
   (When every dimension is collapsed, none is pruned: the votes are then close to chance.)
A perfectly disentangled code scores 1; the chance level is 1 / (number of factors).
"""
from __future__ import annotations

import numpy as np

from .backend import rng as make_rng
from .checks import DataError, check_array

__all__ = ["permute_dims", "gaussian_tc", "kim_mnih_votes", "kim_mnih_metric"]


def permute_dims(z, rng):
    """Samples of prod_j q(z_j) from samples of q(z): each column of z (N, L) permuted on its own.

    Returns a new (N, L) array; column j is a permutation of z[:, j] (a marginal is kept), and
    the permutations of different columns are independent (the joint is broken up).
    """
    check_array(z, "z", ndim=2, dtype_kind="f")
    g = make_rng(rng)
    n, L = z.shape
    rows = np.argsort(g.random((n, L)), axis=0)                  # L independent permutations of 0..n-1
    return np.take_along_axis(z, rows, axis=0)


def gaussian_tc(cov):
    """TC of N(m, cov) in closed form: -1/2 log det R, R the correlation matrix of cov (nats)."""
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise DataError(f"expected a square covariance matrix, got shape {cov.shape}")
    s = np.sqrt(np.diag(cov))
    sign, logdet = np.linalg.slogdet(cov / np.outer(s, s))
    if sign <= 0:
        raise DataError("expected a positive definite covariance matrix")
    return -0.5 * logdet


def _latent_scale(encode, ds, rng, n, prune):
    """Std of each latent mean over n random images, and the mask of dimensions kept."""
    z = encode(ds.sample_index(n, rng))
    var = z.var(axis=0)
    return np.sqrt(np.maximum(var, 1e-12)), var > prune


def kim_mnih_votes(encode, ds, n_votes, rng, batch=64, n_scale=10000, prune=0.05, scale=None):
    """Votes (d, k) of Kim & Mnih's metric: factor k fixed in a batch, d the dimension of least
    normalised variance.  encode: grid indices (N,) -> codes (N, L), for a model the means of
    q(z|x) of the rendered images (``lambda i: model.encode(ds.images(i))[0]``).
    Returns (d (n_votes,), k (n_votes,), (std, active))."""
    g = make_rng(rng)
    std, active = scale if scale is not None else _latent_scale(encode, ds, g, n_scale, prune)
    if not active.any():                                         # nothing to prune against: keep all
        active = np.ones_like(active)
    n_factors = len(ds.factor_sizes)
    d, k = np.empty(n_votes, dtype=np.int64), g.integers(0, n_factors, size=n_votes)
    for v in range(n_votes):
        idx, _ = ds.sample_fixed_factor(int(k[v]), batch, g)
        z = encode(idx) / std
        var = np.where(active, z.var(axis=0), np.inf)            # collapsed dimensions never win
        d[v] = int(np.argmin(var))
    return d, k, (std, active)


def kim_mnih_metric(encode, ds, rng, n_train=800, n_test=800, batch=64, n_scale=10000, prune=0.05):
    """Kim & Mnih's disentanglement metric: accuracy of the majority-vote classifier d -> k on
    held-out votes.  Returns (accuracy, details dict with the vote table)."""
    g = make_rng(rng)
    d_tr, k_tr, scale = kim_mnih_votes(encode, ds, n_train, g, batch, n_scale, prune)
    d_te, k_te, _ = kim_mnih_votes(encode, ds, n_test, g, batch, scale=scale)
    L, n_factors = len(scale[0]), len(ds.factor_sizes)
    table = np.zeros((L, n_factors), dtype=np.int64)             # votes[d, k]
    np.add.at(table, (d_tr, k_tr), 1)
    predict = table.argmax(axis=1)                               # majority vote per dimension
    accuracy = float(np.mean(predict[d_te] == k_te))
    return accuracy, {"votes": table, "active": scale[1], "std": scale[0]}


def estimate_tc(z_train, z_test, rng, hidden=(128, 128), steps=1500, batch=256, lr=1e-3):
    """TC(z) by the density-ratio trick with a fresh discriminator, for codes of any model.

    z_train, z_test: (N, L) samples z_n ~ q(z|x_n) (the test ones held out).  A Discriminator
    (nplvm.models.discriminator) is trained with Adam for ``steps`` minibatches: each minibatch's
    first half is the class q(z), its second half permuted dimension-wise the class prod_j q(z_j).
    Returns (TC estimate (1/M) sum_m T(z_test_m), its standard error over the test codes).
    The same procedure for every model (a beta-VAE has no discriminator of its own), so the
    estimates compare; a short training under-estimates large TCs.
    """
    from .models.discriminator import Discriminator
    from .optim import Adam
    check_array(z_train, "z_train", ndim=2, dtype_kind="f")
    check_array(z_test, "z_test", ndim=2, shape=(None, z_train.shape[1]), dtype_kind="f")
    g = make_rng(rng)
    d = Discriminator(None, z_train.shape[1], hidden=hidden, activation="relu", dtype=np.float32,
                      seed=int(g.integers(2 ** 31)))            # no gradient to z needed: ReLU, float32
    opt = Adam(lr)
    z_train = np.asarray(z_train, np.float32)
    for _ in range(int(steps)):
        b = z_train[g.integers(0, len(z_train), size=2 * batch)]
        _, grads = d.loss_on(b[:batch], permute_dims(b[batch:], g))
        opt.step(d.params, grads)
    t = d.log_ratio(np.asarray(z_test, np.float32)).astype(np.float64)
    return float(t.mean()), float(t.std(ddof=1) / np.sqrt(len(t)))


def disentanglement_scores(model, ds, x_test, x_codes, rng, votes=400, n_scale=10000, tc_steps=1500):
    """What the benchmark and lesson 19 report for a trained VAE or FactorVAE on dSprites ``ds``.

    x_test: held-out images (reconstruction, KL, the codes TC is scored on); x_codes: images whose
    codes train the fresh TC discriminator (``estimate_tc``).  Returns a dict: "metric" (Kim &
    Mnih, ``votes`` training and held-out votes) and "metric_se" (binomial, at least the SE at
    accuracy 1/4, so a metric of 0 or 1 on few votes is not taken as exact), "recon" = mean
    -log p(x|z) and "kl" = mean KL(q(z|x) || N(0, I)) in nats per image (one z ~ q(z|x)), "nelbo",
    "tc" and "tc_se", "active_dims", "votes" (the vote table).
    """
    import kernels
    vae = getattr(model, "vae", model)                           # a FactorVAE scores its VAE
    g = make_rng(rng)
    x = vae.check_input(x_test)
    mu, logvar = vae.encode(x)
    z = mu + np.exp(0.5 * logvar) * g.standard_normal(mu.shape, dtype=mu.dtype)
    rec, _ = kernels.bernoulli_nll(x, vae.decode_logits(z))      # -log p(x|z) per image
    kl, _, _ = kernels.gaussian_kl_std(mu, logvar)
    mu_c, logvar_c = vae.encode(x_codes)
    z_c = mu_c + np.exp(0.5 * logvar_c) * g.standard_normal(mu_c.shape, dtype=mu_c.dtype)
    tc, tc_se = estimate_tc(z_c, z, g, steps=tc_steps)
    metric, info = kim_mnih_metric(lambda i: vae.encode(ds.images(i))[0], ds, g, n_train=votes,
                                   n_test=votes, n_scale=n_scale)
    return {"metric": metric, "metric_se": float(np.sqrt(max(metric * (1 - metric), 0.25 * 0.75) / votes)),
            "recon": float(rec.mean()), "kl": float(kl.mean()), "nelbo": float((rec + kl).mean()),
            "tc": tc, "tc_se": tc_se, "active_dims": int(info["active"].sum()),
            "votes": info["votes"].tolist()}
