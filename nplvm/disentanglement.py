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

The mutual information gap, MIG (Chen et al., 2018)
---------------------------------------------------
For each factor v_k, rank the latent dimensions by their mutual information with it,
I(z_j; v_k), and score the gap between the best and the runner-up, relative to the factor's entropy:

    MIG = (1/K) sum_k  ( I(z_(1); v_k) - I(z_(2); v_k) ) / H(v_k)

A factor held by one dimension alone scores up to 1 (that dimension knows it all, no other knows
anything); a factor spread over two dimensions, or over none, scores near 0.  Unlike Kim & Mnih's
metric, MIG punishes a dimension that shares a factor with another.  Estimated as the usual public
implementations do: the means of q(z|x) on N images, each dimension cut into ``n_bins``
equal-width bins, and the discrete mutual information of the bin counts,

    I(a; b) = sum_{a,b} p(a, b) log( p(a, b) / (p(a) p(b)) ),   H(v) = I(v; v).

The plug-in estimate is biased upward by about (bins_a - 1)(bins_b - 1) / (2N) nats, so a useless
dimension shows a small positive I; with N = 10,000 and 20 bins this is at most 0.03 nats.
"""
from __future__ import annotations

import numpy as np

from .backend import rng as make_rng
from .checks import DataError, check_array

__all__ = ["permute_dims", "gaussian_tc", "kim_mnih_votes", "kim_mnih_metric",
           "discrete_mutual_info", "discretize", "mig", "estimate_tc", "disentanglement_scores"]


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


def discrete_mutual_info(a, b):
    """Plug-in mutual information (nats) of two integer label arrays a, b (N,) from their
    joint counts: sum p(a, b) log p(a, b) / (p(a) p(b)).  I(a; a) is the entropy H(a)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or a.dtype.kind not in "iu" or b.dtype.kind not in "iu":
        raise DataError(f"expected two integer arrays of the same shape (N,), got {a.dtype} {a.shape} "
                        f"and {b.dtype} {b.shape}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1.0)
    p = joint / len(a)
    pa, pb = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / (pa * pb)[nz])))


def discretize(codes, n_bins=20):
    """Each column of codes (N, L) cut into ``n_bins`` equal-width bins over its own range:
    (N, L) int bin ids in 0 .. n_bins-1."""
    check_array(codes, "codes", ndim=2, dtype_kind="f")
    if int(n_bins) < 2:
        raise DataError(f"expected n_bins >= 2, got {n_bins}")
    out = np.empty(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins=int(n_bins))
        out[:, j] = np.digitize(codes[:, j], edges[1:-1])        # interior edges: ids 0 .. n_bins-1
    return out


def mig(codes, factors, n_bins=20):
    """The mutual information gap of codes (N, L) (means of q(z|x)) against the true factor
    classes (N, K) of the same images (see the module docstring).

    Returns (MIG, details): details["mi"] is the (L, K) matrix I(z_j; v_k) in nats,
    details["entropy"] the (K,) factor entropies H(v_k), details["gap"] the (K,) normalised gaps,
    details["best_dim"] the (K,) dimension of largest I per factor.  Needs L >= 2.
    """
    check_array(codes, "codes", ndim=2, dtype_kind="f")
    factors = np.asarray(factors)
    if factors.ndim != 2 or len(factors) != len(codes) or factors.dtype.kind not in "iu":
        raise DataError(f"expected integer factor classes (N, K) with N = {len(codes)}, got "
                        f"{factors.dtype} {factors.shape}")
    if codes.shape[1] < 2:
        raise DataError(f"expected at least 2 latent dimensions for a gap, got {codes.shape[1]}")
    bins = discretize(codes, n_bins)
    L, K = codes.shape[1], factors.shape[1]
    mi = np.array([[discrete_mutual_info(bins[:, j], factors[:, k]) for k in range(K)] for j in range(L)])
    entropy = np.array([discrete_mutual_info(factors[:, k], factors[:, k]) for k in range(K)])
    top2 = -np.sort(-mi, axis=0)[:2]                             # the two largest I per factor
    gap = (top2[0] - top2[1]) / np.maximum(entropy, 1e-12)       # a constant factor (H = 0) scores 0
    return float(gap.mean()), {"mi": mi, "entropy": entropy, "gap": gap,
                               "best_dim": mi.argmax(axis=0)}


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


def disentanglement_scores(model, ds, x_test, x_codes, rng, votes=400, n_scale=10000, tc_steps=1500,
                           n_mig=10000):
    """What the benchmark and lesson 19 report for a trained VAE or FactorVAE on dSprites ``ds``.

    x_test: held-out images (reconstruction, KL, the codes TC is scored on); x_codes: images whose
    codes train the fresh TC discriminator (``estimate_tc``).  Returns a dict: "metric" (Kim &
    Mnih, ``votes`` training and held-out votes) and "metric_se" (binomial, at least the SE at
    accuracy 1/4, so a metric of 0 or 1 on few votes is not taken as exact), "mig" (the mutual
    information gap of the means of q(z|x) on ``n_mig`` random grid images, 20 bins) and
    "mig_per_factor" (its gap per factor, in ``ds.factor_names`` order), "recon" = mean
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
    idx = ds.sample_index(n_mig, g)
    codes = np.concatenate([vae.encode(ds.images(idx[i:i + 2000]))[0] for i in range(0, len(idx), 2000)])
    mig_score, mig_info = mig(codes.astype(np.float64), ds.factor_classes(idx))
    return {"metric": metric, "metric_se": float(np.sqrt(max(metric * (1 - metric), 0.25 * 0.75) / votes)),
            "mig": mig_score, "mig_per_factor": mig_info["gap"].round(4).tolist(),
            "recon": float(rec.mean()), "kl": float(kl.mean()), "nelbo": float((rec + kl).mean()),
            "tc": tc, "tc_se": tc_se, "active_dims": int(info["active"].sum()),
            "votes": info["votes"].tolist()}
