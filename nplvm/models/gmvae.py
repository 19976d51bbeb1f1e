"""The Gaussian-mixture VAE (GMVAE): a categorical latent y summed exactly, a Gaussian latent z
reparameterized.

Generative story (lecture notes, "GMVAE"), x in {0,1}^D, y one-hot over K components, z in R^L:

    p(x, y, z) = p(x | z) p(z | y) p(y)
    p(y)       = Cat(1/K, ..., 1/K)                          uniform, fixed
    p(z | y)   = N(mu_y, diag exp(logvar_y))                 learned prior means and log-variances
    p(x | z)   = Bern(sigmoid(decoder(z)))                   Bernoulli decoder (logits)

Approximate posterior q(y, z | x) = q(y | x) q(z | x, y):

    h(x)        = trunk(x)                                   shared encoder trunk (N, H)
    q(y | x)    = Cat(pi(x)),  pi(x) = softmax(a(x)),  a = y_head(h)          (N, K) logits
    q(z | x, y) = N(mu(x, y), diag exp(logvar(x, y))),  [mu, logvar] = z_head([h(x), onehot(y)])

Design choice: one trunk h(x) shared by both posteriors, and a y-conditioned head that reads the
concatenation [h(x), onehot(y)].  The expensive 784-wide first layer then runs once per example,
not once per (example, component); only the small head and the decoder see all K components.

The ELBO, with y summed exactly (K terms, no sampling of y):

    ELBO(x) = sum_y q(y|x) [ E_q(z|x,y)[log p(x|z)] - KL(q(z|x,y) || p(z|y)) ] - KL(q(y|x) || p(y))
            = sum_y q(y|x) [ -nll_y - kl_y ] - sum_y q(y|x) (log q(y|x) + log K)

The expectation over z is a one-sample reparameterized estimate z = mu + exp(logvar/2) * eps per
component; the Gaussian KL is in closed form (kernels.gaussian_kl).  All K components run in ONE
batched pass: the K copies of the batch are stacked along the batch axis, row k*N + n holding
(x_n, y = k), so there is no Python loop over y.

The loss is the mean over examples of -ELBO (nats), optionally with a KL weight beta multiplying
both KL terms (a warm-up schedule; beta = 1 is the ELBO).

The gradient, by hand (loss = -ELBO, per example, with l_k = nll_k + beta kl_k):

    loss          = sum_k pi_k l_k + beta sum_k pi_k (log pi_k + log K)
    dloss/dpi_k   = l_k + beta (log pi_k + log K + 1)             the weights q(y|x)
    dloss/da      = pi * (g - sum_k pi_k g_k),  g = dloss/dpi       softmax backward
    inside component k: the kernels get weight pi_k / N, so the decoder, z-head and prior
    gradients come out already weighted by q(y=k|x): reparameterization per component.

Clustering needs a good start (measured in nplvm.bench.gmvae_cluster: from scratch, argmax q(y|x)
matches the digits ~0.44 of the time on the 4,000-image subset).  The VaDE-style initialisation
(``nplvm.clustering.gmvae_vade_init``) uses three hand-differentiated pieces here:

    pretrain_loss(x)  a plain VAE through the same trunk, z-head and decoder, y input off:
                      l = -log p(x|z) + beta KL(N(mu(x,0), exp(logvar(x,0))) || N(0, I))
    init_prior(m, v)  p(z|y) <- N(m_y, diag v_y) (a GMM fitted to the codes mu(x, 0)) and the
                      z-head's onehot(y) weights <- 0, so q(z|x,y) = q(z|x) for every y at the start
    y_head_loss(x, r) CE = -(1/N) sum_n sum_k r_nk log q(y=k|x_n), dCE/da = (q(y|x) - r) / N,
                      fitting q(y|x) to the GMM responsibilities r (vade_init moves only the y-head)

Also here: ``score_function_loss`` (sample y ~ q(y|x), REINFORCE for q(y|x), reparameterization
for z: unbiased, with much larger variance), ``log_weights`` (importance weights for log p(x) with
y summed exactly inside each weight) and ``cluster_accuracy`` (Hungarian matching of components to
labels).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

import kernels

from ..backend import check_dtype, rng as make_rng
from ..checks import (DataError, check_array, check_binary, check_finite, nonneg_float, nonneg_int, one_of,
                      positive_int)
from ..distributions import gaussian_log_prob, log_softmax, logsumexp, reparameterize_backward, softmax_backward
from ..nn import MLP, Module, Parameter
from . import register
from .vae import parse_hidden


def cluster_accuracy(labels, assignments, n_clusters=None):
    """Clustering accuracy under the best one-to-one matching of clusters to labels.

    labels: (N,) integer class labels; assignments: (N,) integer cluster ids (e.g. argmax q(y|x)).
    The matching m maximises sum_n [m(assignment_n) == label_n] (the Hungarian algorithm,
    scipy.optimize.linear_sum_assignment, on the cluster-by-label contingency table).  With more
    clusters than labels, unmatched clusters count as errors.  Returns a float in [0, 1].
    """
    labels = np.asarray(labels)
    assignments = np.asarray(assignments)
    if labels.ndim != 1 or assignments.shape != labels.shape:
        raise DataError(f"expected labels and assignments of the same shape (N,), got "
                        f"{labels.shape} and {assignments.shape}")
    if labels.size == 0:
        raise DataError("expected at least one example, got none")
    for name, a in (("labels", labels), ("assignments", assignments)):
        if a.dtype.kind not in "iu" or a.min() < 0:
            raise DataError(f"expected {name} to be non-negative integers, got dtype {a.dtype}"
                            + (f" with minimum {a.min()}" if a.dtype.kind in "iu" else ""))
    K = int(max(assignments.max() + 1, n_clusters or 0))
    C = int(labels.max() + 1)
    counts = np.zeros((K, C), dtype=np.int64)            # counts[k, c] = #{n: cluster k, label c}
    np.add.at(counts, (assignments, labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / labels.size)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

@register("gmvae")
class GMVAE(Module):
    """Gaussian-mixture VAE with q(y|x) summed exactly and q(z|x,y) reparameterized.

    Args (all JSON-serialisable; ``GMVAE(**model.config)`` rebuilds the architecture):
        x_dim:        D, the number of binary pixels (784 for MNIST).
        n_components: K, the number of mixture components (values of y).
        latent:       L, the dimension of z.
        hidden:       widths of the encoder trunk; the decoder mirrors them (L -> reversed -> D).
        activation:   hidden-layer activation ("relu", "tanh", "softplus", "elu", ...).
        beta:         the weight of both KL terms in ``loss`` (1 = the ELBO); ``self.beta`` may be
                      changed during training (a KL warm-up) without touching the config.
        prior_spread: the prior means mu_y start at prior_spread * (a random unit direction),
                      spread apart so that the components begin distinguishable; logvar_y = 0.
        seed:         initialisation seed.
        dtype:        "float32" to train, "float64" to check gradients.

    Parameters (``params``): trunk.*, y_head.*, z_head.*, decoder.* (MLP weights), prior_mu (K, L),
    prior_logvar (K, L).
    """

    def __init__(self, x_dim=784, n_components=10, latent=10, hidden=(256, 256), activation="relu",
                 prior_spread=2.0, beta=1.0, seed=0, dtype="float32"):
        for name, v in (("x_dim", x_dim), ("n_components", n_components), ("latent", latent)):
            positive_int(name, v)
        one_of("activation", activation, kernels.reference.ACTIVATIONS)
        nonneg_int("seed", seed)
        if int(n_components) < 2:
            raise ValueError(f"expected n_components >= 2 (a mixture), got {n_components}")
        hidden = parse_hidden(hidden if not isinstance(hidden, int) else [hidden])
        if not hidden:
            raise ValueError(f"expected at least one hidden layer (the trunk h(x)), got {hidden}")
        nonneg_float("beta", beta)
        nonneg_float("prior_spread", prior_spread)
        dt = check_dtype(dtype)
        self.x_dim, self.n_components, self.latent = int(x_dim), int(n_components), int(latent)
        self.hidden, self.activation = hidden, activation
        self.prior_spread, self.seed = float(prior_spread), int(seed)
        D, K, L, H = self.x_dim, self.n_components, self.latent, hidden[-1]
        g = make_rng(self.seed)
        self.trunk = MLP([D] + hidden, activation, g, dt, out_activation=activation)   # h(x)
        self.y_head = MLP([H, K], activation, g, dt)                                    # a(x): logits of q(y|x)
        self.z_head = MLP([H + K, H, 2 * L], activation, g, dt)                         # [mu, logvar](x, y)
        self.decoder = MLP([L] + hidden[::-1] + [D], activation, g, dt)                # logits of p(x|z)
        direction = g.standard_normal((K, L))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        self.prior_mu = Parameter((self.prior_spread * direction).astype(dt))           # mu_y (K, L)
        self.prior_logvar = Parameter(np.zeros((K, L), dtype=dt))                       # logvar_y (K, L)
        self.beta = float(beta)        # KL weight used by loss(); a warm-up schedule changes it
        self._config = {"x_dim": self.x_dim, "n_components": K, "latent": L, "hidden": list(hidden),
                        "activation": activation, "prior_spread": self.prior_spread,
                        "beta": self.beta, "seed": self.seed, "dtype": dt.name}

    def __repr__(self):
        return (f"GMVAE(x_dim={self.x_dim}, n_components={self.n_components}, latent={self.latent}, "
                f"hidden={self.hidden}, activation={self.activation!r}, beta={self.beta}, "
                f"dtype={self.dtype.name})")

    # -- the model contract ----------------------------------------------------------------------

    @property
    def config(self):
        """The constructor arguments (beta as given: a warm-up changes ``self.beta`` only)."""
        return dict(self._config)

    @property
    def params(self):
        """name -> live parameter array (the optimiser updates these in place)."""
        return self.param_arrays()

    def _release_grads(self):
        """The backward that follows writes into new arrays (see ``nn.Module.release_grads``)."""
        self.release_grads()

    def _grads(self):
        """This call's gradients, keyed like ``params``: arrays the caller owns."""
        return self.take_grads()

    def _check_x(self, x):
        """x: (N, D) binary, any real or integer dtype -> the parameters' dtype."""
        check_array(x, "x", ndim=2, shape=(None, self.x_dim), dtype_kind="fuib")
        if x.shape[0] == 0:
            raise DataError(f"expected at least one example in x of shape (N, {self.x_dim}), got N = 0")
        if x.dtype.kind == "f":
            check_finite(x, "x")
        check_binary(x, "x")
        return x.astype(self.dtype, copy=False)

    def _noise(self, rng, shape):
        return make_rng(rng).standard_normal(shape).astype(self.dtype)

    # -- the shared pieces -----------------------------------------------------------------------

    def _encode(self, x):
        """x (N, D) -> h (N, H), logits a (N, K), log pi (N, K), caches."""
        h, c_trunk = self.trunk.forward(x)
        a, c_y = self.y_head.forward(h)
        return h, a, log_softmax(a, axis=1), (c_trunk, c_y)

    def _components_forward(self, x_rows, h_rows, Y, eps, weight, beta):
        """The per-(example, y) terms for M rows at once.

        x_rows (M, D), h_rows (M, H), Y (M, K) one-hot y of each row, eps (M, L) standard normal,
        weight (M,): what multiplies each row's gradient (q(y|x)/N for the exact sum).
        Returns nll (M,) = -log p(x|z), kl (M,) = KL(q(z|x,y) || p(z|y)), and a cache for backward.
        """
        L = self.latent
        out, c_z = self.z_head.forward(np.concatenate([h_rows, Y], axis=1))
        mu, logvar = out[:, :L], out[:, L:]                    # q(z|x,y) = N(mu, exp(logvar))
        std = np.exp(0.5 * logvar)
        z = mu + std * eps                                     # reparameterization
        logits, c_dec = self.decoder.forward(z)
        nll, dlogits = kernels.bernoulli_nll(x_rows, logits, weight)          # -log p(x|z)
        mu_p, logvar_p = Y @ self.prior_mu.value, Y @ self.prior_logvar.value  # (mu_y, logvar_y) per row
        kl, dmu_q, dlv_q, dmu_p, dlv_p = kernels.gaussian_kl(mu, logvar, mu_p, logvar_p, beta * weight)
        return nll, kl, (c_z, c_dec, Y, eps, logvar, dlogits, dmu_q, dlv_q, dmu_p, dlv_p)

    def _components_backward(self, cache):
        """Backward of the weighted per-row loss sum_rows w (nll + beta kl): parameter grads
        accumulate; returns dL/dh_rows (M, H)."""
        c_z, c_dec, Y, eps, logvar, dlogits, dmu_q, dlv_q, dmu_p, dlv_p = cache
        dz = self.decoder.backward(dlogits, c_dec)             # through p(x|z)
        dmu, dlogvar = reparameterize_backward(dz, eps, logvar)   # z = mu + exp(logvar / 2) * eps
        dinp = self.z_head.backward(np.concatenate([dmu + dmu_q, dlogvar + dlv_q], axis=1), c_z)
        self.prior_mu.add_grad(Y.T @ dmu_p)                    # scatter rows back to their y
        self.prior_logvar.add_grad(Y.T @ dlv_p)
        return dinp[:, :dinp.shape[1] - self.n_components]    # the h part of [h, onehot(y)]

    def _stack(self, x, h, eps):
        """The K copies of the batch stacked along the batch axis: row k*N + n is (x_n, y = k)."""
        K, N = self.n_components, x.shape[0]
        Y = np.repeat(np.eye(K, dtype=self.dtype), N, axis=0)              # (K*N, K)
        return np.tile(x, (K, 1)), np.tile(h, (K, 1)), Y, eps.reshape(K * N, self.latent)

    # -- the objective ---------------------------------------------------------------------------

    def elbo_terms(self, x, rng, eps=None, beta=None):
        """Forward of the exact-sum ELBO, returning its pieces (no gradients).

        Returns a dict: pi (N, K) = q(y|x), log_pi (N, K), nll (N, K) = -log p(x|z_k) at the
        sampled z_k, kl_z (N, K) = KL(q(z|x,y=k) || p(z|y=k)), kl_y (N,) = KL(q(y|x) || p(y)),
        elbo (N,) = sum_k pi_k (-nll_k - kl_z_k) - kl_y (at beta = 1, whatever ``beta`` says).
        """
        x = self._check_x(x)
        N, K, L = x.shape[0], self.n_components, self.latent
        eps = self._noise(rng, (K, N, L)) if eps is None else self._check_eps(eps, (K, N, L))
        h, a, log_pi, _ = self._encode(x)
        pi = np.exp(log_pi)
        xs, hs, Y, es = self._stack(x, h, eps)
        nll, kl, _ = self._components_forward(xs, hs, Y, es, np.ones(K * N, self.dtype), 1.0)
        nll, kl = nll.reshape(K, N).T, kl.reshape(K, N).T
        kl_y = (pi * (log_pi + math.log(K))).sum(axis=1)
        return {"pi": pi, "log_pi": log_pi, "nll": nll, "kl_z": kl, "kl_y": kl_y,
                "elbo": (pi * (-nll - kl)).sum(axis=1) - kl_y}

    def _check_eps(self, eps, shape):
        check_array(eps, "eps", shape=shape)
        return eps.astype(self.dtype, copy=False)

    def loss(self, x, rng, grad=True, eps=None, beta=None):
        """Mean over the batch of -ELBO (nats per example) with y summed exactly, and its gradient.

        x: (N, D) binary.  rng: seed or Generator for eps (K, N, L), one noise vector per
        (component, example); pass ``eps`` to fix it.  beta: KL weight (default ``self.beta``).
        Returns (loss: float, grads: dict like ``params``, new arrays the caller owns; None
        with ``grad=False``, which skips the backward pass).
        """
        x = self._check_x(x)
        beta = self.beta if beta is None else float(beta)
        N, K, L = x.shape[0], self.n_components, self.latent
        eps = self._noise(rng, (K, N, L)) if eps is None else self._check_eps(eps, (K, N, L))
        h, a, log_pi, (c_trunk, c_y) = self._encode(x)
        pi = np.exp(log_pi)                                    # q(y|x) (N, K)
        xs, hs, Y, es = self._stack(x, h, eps)
        w = (pi.T / N).reshape(K * N)                          # row k*N + n weighs q(y=k|x_n) / N
        nll, kl, cache = self._components_forward(xs, hs, Y, es, w, beta)
        ell = (nll + beta * kl).reshape(K, N).T                # l_k = -E[log p(x|z)] + beta KL_z, (N, K)
        kl_y = (pi * (log_pi + math.log(K))).sum(axis=1)       # KL(q(y|x) || Uniform), exact
        loss = float(((pi * ell).sum(axis=1) + beta * kl_y).mean())
        if not grad:
            return loss, None
        self._release_grads()
        # SOLUTION gmvae-gradient: the exact-sum gradient: through the weights q(y|x) and, per component, by reparameterization
        # through the weights: dloss/dpi_k = l_k + beta (log pi_k + log K + 1), then softmax backward
        g = (ell + beta * (log_pi + math.log(K) + 1.0)) / N
        da = softmax_backward(g, pi, axis=1)          # pi * (g - sum_k pi_k g_k)
        dh = self.y_head.backward(da, c_y)
        # inside each component: reparameterization, already weighted by q(y=k|x)/N in the kernels
        dh_rows = self._components_backward(cache)
        dh += dh_rows.reshape(K, N, -1).sum(axis=0)            # h feeds all K copies
        self.trunk.backward(dh, c_trunk, need_dx=False)
        # END SOLUTION
        return loss, self._grads()

    def score_function_loss(self, x, rng, y=None, eps=None, beta=None):
        """The loss and gradient estimated by SAMPLING y ~ q(y|x), one y per example.

        With f(y, eps) = -nll(x, z_y) - beta KL(q(z|x,y) || p(z|y)) + beta (log p(y) - log q(y|x))
        and z_y reparameterized, the estimate of d(-ELBO) is

            -(1/N) sum_n [ f_n d log q(y_n|x_n) + d f_n ]           (score function + pathwise)

        For the logits a of q(y|x): d log q(y|x)/da = onehot(y) - pi, so da = -(f - beta)(onehot(y) - pi)/N.
        Unbiased: sum_y q(y) [f d log q(y) + d f] = d sum_y q(y) f.  With the same eps (K, N, L)
        (row y of eps for the sampled y), its expectation over y is exactly ``loss(x, eps=eps)``'s
        gradient.  y: (N,) to fix the sample.  Returns (loss estimate: float, grads).
        """
        x = self._check_x(x)
        beta = self.beta if beta is None else float(beta)
        g = make_rng(rng)
        N, K, L = x.shape[0], self.n_components, self.latent
        eps = self._noise(g, (K, N, L)) if eps is None else self._check_eps(eps, (K, N, L))
        self._release_grads()
        h, a, log_pi, (c_trunk, c_y) = self._encode(x)
        pi = np.exp(log_pi)
        if y is None:                                          # y_n ~ Cat(pi_n), by inverse CDF
            u = g.random((N, 1))
            y = np.minimum((np.cumsum(pi, axis=1) < u).sum(axis=1), K - 1)
        y = np.asarray(y)
        if y.shape != (N,) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= K:
            raise DataError(f"expected y of shape ({N},) with integers in [0, {K}), got {y.shape} {y.dtype}")
        Y = np.eye(K, dtype=self.dtype)[y]                     # (N, K)
        e = eps[y, np.arange(N)]                               # the noise of the sampled component
        w = np.full(N, 1.0 / N, dtype=self.dtype)
        nll, kl, cache = self._components_forward(x, h, Y, e, w, beta)
        log_q_y = log_pi[np.arange(N), y]
        f = -nll - beta * kl + beta * (-math.log(K) - log_q_y)   # one-sample ELBO (beta-weighted)
        da = -((f - beta) / N)[:, None] * (Y - pi)             # score function + d(-log q)/da
        dh = self.y_head.backward(da.astype(self.dtype), c_y)
        dh += self._components_backward(cache)                 # pathwise, for the sampled y
        self.trunk.backward(dh, c_trunk, need_dx=False)
        return float(-f.mean()), self._grads()

    # -- the VaDE-style initialisation (pretraining, GMM on the codes, the y-head) ---------------

    def pretrain_loss(self, x, rng, eps=None, beta=1.0):
        """A plain VAE through the SAME trunk, z-head and decoder, with the y input switched off.

        q(z|x) = N(mu(x, 0), diag exp(logvar(x, 0))): the z-head reads [h(x), 0] (no component);
        p(z) = N(0, I); p(x|z) the decoder.  Per example  l = -log p(x|z) + beta KL(q(z|x) || N(0, I)),
        one reparameterized z; the loss is the batch mean of l.  (Row y = 0 of ``_components_forward``
        gives exactly this: mu_p = 0 @ prior_mu = 0 and logvar_p = 0, and the prior gets no gradient.)
        The y-head gets no gradient.  x: (N, D) binary; eps: (N, L) to fix the noise.
        Returns (loss: float, grads: dict like ``params``).
        """
        x = self._check_x(x)
        N, K, L = x.shape[0], self.n_components, self.latent
        eps = self._noise(rng, (N, L)) if eps is None else self._check_eps(eps, (N, L))
        self._release_grads()
        h, c_trunk = self.trunk.forward(x)
        Y0 = np.zeros((N, K), dtype=self.dtype)               # no component: p(z|y) -> N(0, I)
        w = np.full(N, 1.0 / N, dtype=self.dtype)
        nll, kl, cache = self._components_forward(x, h, Y0, eps, w, float(beta))
        loss = float((nll + float(beta) * kl).mean())
        dh = self._components_backward(cache)
        self.trunk.backward(dh, c_trunk, need_dx=False)
        return loss, self._grads()

    def pretrain_codes(self, x, batch_size=1000):
        """The pretrained codes mu(x, 0) (N, L): the mean of q(z|x) with the y input off."""
        x = self._check_x(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            h, _ = self.trunk.forward(x[i:i + batch_size])
            Y0 = np.zeros((h.shape[0], self.n_components), dtype=self.dtype)
            out.append(self.z_head.forward(np.concatenate([h, Y0], axis=1))[0][:, :self.latent])
        return np.concatenate(out)

    def init_prior(self, means, variances):
        """Set p(z|y) = N(means_y, diag variances_y) (e.g. a diagonal GMM fitted to
        ``pretrain_codes``) and zero the z-head's weights on onehot(y), so that at the start
        q(z|x,y) = q(z|x) (the pretrained encoder) for every y.  means, variances: (K, L)."""
        K, L = self.n_components, self.latent
        check_array(means, "means", shape=(K, L))
        check_array(variances, "variances", shape=(K, L))
        check_finite(means, "means")
        if not np.all(np.asarray(variances) > 0):
            raise DataError("expected variances > 0 (the diagonal of each p(z|y)), got a value <= 0")
        self.prior_mu.value[...] = means
        self.prior_logvar.value[...] = np.log(variances)                      # logvar_y
        self.z_head.layers[0].W.value[self.trunk.n_out:, :] = 0.0            # rows read by onehot(y)

    def y_head_loss(self, x, targets):
        """Cross-entropy of q(y|x) against soft targets r (e.g. GMM responsibilities):

            CE = -(1/N) sum_n sum_k r_nk log pi_nk,    dCE/da = (pi - r) / N   (sum_k r_nk = 1)

        The gradient reaches the y-head and, through h(x), the trunk; ``vade_init`` steps only the
        y-head's parameters (the trunk, which the z-head shares, keeps the pretrained codes).
        x: (N, D) binary; targets: (N, K) rows on the simplex.
        Returns (loss: float, grads: dict like ``params``; zero for the z-head, decoder, prior).
        """
        x = self._check_x(x)
        N, K = x.shape[0], self.n_components
        check_array(targets, "targets", shape=(N, K))
        r = np.asarray(targets, dtype=self.dtype)
        if np.any(r < 0) or not np.allclose(r.sum(axis=1), 1.0, atol=1e-4):
            raise DataError("expected targets with rows on the simplex (>= 0, summing to 1)")
        self._release_grads()
        h, a, log_pi, (c_trunk, c_y) = self._encode(x)
        loss = float(-(r * log_pi).sum(axis=1).mean())
        # SOLUTION gmvae-yhead: the cross-entropy gradient through the softmax: dCE/da = (pi - r) / N
        da = (np.exp(log_pi) - r) / N                          # log-softmax backward with sum_k r = 1
        dh = self.y_head.backward(da.astype(self.dtype), c_y)
        self.trunk.backward(dh, c_trunk, need_dx=False)
        # END SOLUTION
        return loss, self._grads()

    # -- evaluation and use ----------------------------------------------------------------------

    def elbo(self, x, rng):
        """Per-example ELBO (N,) with y summed exactly and one z sample per component."""
        return self.elbo_terms(x, rng)["elbo"]

    def log_weights(self, x, K, rng, max_rows=1 << 15):
        """Log importance weights (K, N) for log p(x) (model dtype), y summed EXACTLY inside each weight:

            w_s = sum_y p(y) p(x|z_sy) p(z_sy|y) / q(z_sy|x,y),   z_sy ~ q(z|x,y),

        each w_s an unbiased estimate of p(x) = sum_y p(y) int p(x|z) p(z|y) dz, so the generic
        importance-sampled log p(x) ~ log mean_s w_s applies.  (q(y|x) cancels: every y is summed.)
        Runs in chunks of samples so that at most ``max_rows`` decoder rows are live at once.
        """
        x = self._check_x(x)
        if isinstance(K, bool) or int(K) != K or K < 1:
            raise ValueError(f"expected K (importance samples) to be a positive integer, got {K!r}")
        S = int(K)                                             # K is the components' count below
        g = make_rng(rng)
        N, K, L = x.shape[0], self.n_components, self.latent
        h, _, _, _ = self._encode(x)
        out, _ = self.z_head.forward(np.concatenate(
            [np.tile(h, (K, 1)), np.repeat(np.eye(K, dtype=self.dtype), N, axis=0)], axis=1))
        mu, logvar = out[:, :L], out[:, L:]                    # (K*N, L), row k*N + n
        mu_p = np.repeat(self.prior_mu.value, N, axis=0)
        logvar_p = np.repeat(self.prior_logvar.value, N, axis=0)
        xs = np.tile(x, (K, 1))
        chunk = max(1, int(max_rows) // (K * N))              # samples per decoder pass
        logw = np.empty((S, N), dtype=self.dtype)                # the model's dtype
        for s0 in range(0, S, chunk):
            c = min(chunk, S - s0)
            eps = g.standard_normal((c, K * N, L)).astype(self.dtype)   # sample-major noise
            z = (mu + np.exp(0.5 * logvar) * eps).reshape(c * K * N, L)
            logits, _ = self.decoder.forward(z)
            log_px = -kernels.bernoulli_nll(np.tile(xs, (c, 1)), logits)[0]       # log p(x|z)
            mp, lvp = np.tile(mu_p, (c, 1)), np.tile(logvar_p, (c, 1))
            log_pz = gaussian_log_prob(z, mp, lvp)                                     # log p(z|y)
            log_qz = gaussian_log_prob(z, np.tile(mu, (c, 1)), np.tile(logvar, (c, 1)))  # log q(z|x,y)
            terms = (log_px + log_pz - log_qz).reshape(c, K, N) - math.log(K)
            logw[s0:s0 + c] = logsumexp(terms, axis=1)          # log sum_y p(y) p(x,z|y) / q(z|x,y)
        return logw

    def responsibilities(self, x):
        """q(y|x) (N, K)."""
        return np.exp(self._encode(self._check_x(x))[2])

    def predict(self, x):
        """The cluster of each example: argmax_y q(y|x), (N,) int."""
        return self.responsibilities(x).argmax(axis=1)

    def decode(self, z):
        """Bernoulli means sigmoid(decoder(z)), (M, D), for z (M, L)."""
        check_array(z, "z", ndim=2, shape=(None, self.latent))
        logits, _ = self.decoder.forward(z.astype(self.dtype, copy=False))
        return kernels.reference.sigmoid(logits)

    def sample(self, n, rng):
        """n draws from the model, (n, D) Bernoulli means of p(x|z): y ~ p(y) (uniform), then
        z ~ p(z|y).  ``sample_components`` draws per component instead."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"expected n to be a positive integer, got {n!r}")
        g = make_rng(rng)
        y = g.integers(0, self.n_components, size=int(n))                    # y ~ Cat(1/K)
        eps = self._noise(g, (int(n), self.latent))
        std = np.exp(0.5 * self.prior_logvar.value[y])
        return self.decode(self.prior_mu.value[y] + std * eps)               # z ~ N(mu_y, var_y)

    def sample_components(self, n_per_component, rng, components=None):
        """Draw z ~ p(z|y) and return the Bernoulli means of p(x|z), one block per component.

        Returns (n_components_drawn, n_per_component, D) means for y in ``components``
        (default all K), so ``out[k]`` is a row of samples from component k.
        """
        comps = np.arange(self.n_components) if components is None else np.asarray(components)
        n = int(n_per_component)
        if n < 1:
            raise ValueError(f"expected n_per_component >= 1, got {n_per_component!r}")
        eps = self._noise(rng, (len(comps), n, self.latent))
        std = np.exp(0.5 * self.prior_logvar.value[comps])[:, None, :]
        z = self.prior_mu.value[comps][:, None, :] + std * eps                # z ~ N(mu_y, var_y)
        return self.decode(z.reshape(-1, self.latent)).reshape(len(comps), n, self.x_dim)

