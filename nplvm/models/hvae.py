r"""Hierarchical VAEs: stacked Gaussian latent layers, bottom-up (``hvae``) or ladder (``lvae``) inference.

Generative model (lecture notes 002, last part; layers numbered from the data up)
----------------------------------------------------------------------------------
    p(z_L) = N(0, I)
    p(z_i | z_{i+1}) = N(z_i | mu_p,i(z_{i+1}), sigma_p,i^2(z_{i+1})),   i = L-1 ... 1
    p(x | z_1) = prod_d Bern(x_d | sigmoid(l_d)),   l = decoder(z_1)

``latent`` = (L_1, ..., L_L) gives the sizes, bottom first: (64, 32) is z_1 in R^64, z_2 in R^32.
Each (mu_p,i, log sigma_p,i^2) is an MLP ``down[i]`` of z_{i+1} (hidden widths ``hidden``, linear
output of 2 L_i); the decoder is an MLP z_1 -> reversed(hidden) -> D logits.  Variances are kept
as log-variances throughout (the house convention; the notes' Softplus plays the same role).

Bottom-up inference, kind ``hvae`` (the notes' first q)
--------------------------------------------------------
    q(z|x) = q(z_1|x) prod_{i=2}^L q(z_i|z_{i-1})
    d_i = up[i](z_{i-1})  (z_0 = x),   (mu_q,i, log sigma_q,i^2) = head[i](d_i)

Each layer sees only a sample of the layer below: the noise of every lower layer reaches the top
("hierarchically increasing variance"), and q never uses the generative path.  The ELBO is

    ELBO = E_q[ log p(x|z_1) ] - KL(q(z_L|z_{L-1}) || p(z_L))
           - sum_{i<L} E_q[ log q(z_i|z_{i-1}) - log p(z_i|z_{i+1}) ]

with the top term in closed form and the others by the one sample drawn (their two Gaussians
condition on different variables, so no closed form applies).  With eps_i fixed,
log q(z_i|.) = -1/2 eps_i^2 - 1/2 log sigma_q,i^2 - 1/2 log 2 pi per unit.

Ladder inference, kind ``lvae`` (Sonderby et al., 2016)
--------------------------------------------------------
A deterministic bottom-up pass  d_i = up[i](d_{i-1}) (d_0 = x)  gives each layer an estimate
(mu^_q,i, log sigma^_q,i^2) = head[i](d_i) of what the data says about z_i.  Then q runs top-down
and SHARES the generative path:

    q(z|x) = q(z_L|x) prod_{i=1}^{L-1} q(z_i|z_{i+1}, x)
    q(z_L|x) = N(mu^_q,L, sigma^_q,L^2)
    q(z_i|z_{i+1}, x) = N(mu_q,i, sigma_q,i^2), the precision-weighted merge of the bottom-up
        estimate with the top-down prior p(z_i|z_{i+1}) (the notes' formula):

    sigma_q,i^2 = 1 / (sigma^_q,i^-2 + sigma_p,i^-2)
    mu_q,i      = (mu^_q,i sigma^_q,i^-2 + mu_p,i sigma_p,i^-2) / (sigma^_q,i^-2 + sigma_p,i^-2)

(The notes print ``sigma_q,i = 1 / (...)``; the right side is the VARIANCE.)  That is the product
of the two Gaussians, renormalised; in log-variances, stably,

    w^ = sigma^-2 / (sigma^-2 + sigma_p^-2) = sigmoid(log sigma_p^2 - log sigma^2)
    mu_q = mu_p + w^ (mu^ - mu_p),     log sigma_q^2 = -logaddexp(-log sigma^2, -log sigma_p^2)

(``precision_weighted_merge``; its backward, ``precision_weighted_merge_backward``, is the
homework ``lvae-merge-gradient``).  Now q(z_i|z_{i+1}, x) and p(z_i|z_{i+1}) condition on the same
z_{i+1}, so every KL is in closed form given the sample above (``kernels.gaussian_kl``):

    ELBO = E_q[ log p(x|z_1) ] - KL(q(z_L|x) || p(z_L)) - sum_{i<L} E_q[ KL(q(z_i|z_{i+1},x) || p(z_i|z_{i+1})) ]

(The notes write "+ KL"; the KL terms are subtracted.)

Loss, KL warm-up, batch normalisation
-------------------------------------
    loss = mean_n [ -log p(x_n|z_1) + beta_e sum_i KL_i(x_n) ],  one sample per example,

beta_e = 1 (the ELBO) unless ``warmup`` = n > 0: then beta_e = min(1, e / n) in epoch e (0-based),
rising from 0 to 1 over the first n epochs (Sonderby et al.'s "warm-up").  The hook: ``set_epoch(e)``
sets it; ``nplvm.train.fit`` calls ``model.set_epoch(epoch)`` at the start of every epoch when the
model has that method (so a resumed run gets the right beta).  ``kl_weight`` holds the current beta:
1 for a new or rebuilt model (so a loaded checkpoint's loss is the -ELBO), until ``set_epoch``.

``batch_norm=True`` puts a ``nn.BatchNorm`` after every hidden layer of every MLP (after the
activation, so every Linear bias keeps a gradient).  A loss WITH gradients (a training step) uses
batch statistics and updates the running ones; ``loss(..., grad=False)``, ``log_weights``,
``sample`` and everything else use the running statistics.  The running statistics sit in
``params`` (names ending in ``running_mean`` / ``running_var``) so checkpoints keep them; their
gradient is always zero, so no optimiser (Adam, SGD, Adagrad) moves them.

Backward (eps fixed), in words; every step is commented in ``_backward``
------------------------------------------------------------------------
decoder -> dz_1; then HVAE: the generative terms send gradients to z_i and through down[i] to
z_{i+1}; the inference layers are visited top-down (z_i also feeds up[i+1]), each pushing
dz_i through the reparameterization into head[i] and up[i] and on to z_{i-1}.  LVAE: layers are
visited bottom-up along the top-down path: dz_i and the KL's gradients go through the
reparameterization and the merge into (mu^, sigma^) and (mu_p, sigma_p); the latter through down[i]
to z_{i+1}; at the end the bottom-up pass is backpropagated top to bottom (d_i feeds up[i+1]).

Public API
----------
HVAE(x_dim=784, hidden=(200, 200), latent=(64, 32), activation="tanh", batch_norm=False, warmup=0,
     dtype="float32", seed=0)                       kind "hvae"
LVAE(...same arguments...)                          kind "lvae"
    .loss(x, rng, grad=True) -> (loss, grads)       grads: fresh arrays keyed like .params
    .log_weights(x, K, rng) -> (K, N)               log p(x, z_1..L) - log q(z_1..L|x), z ~ q
    .kl_per_layer(x, rng) -> (L,)                   mean KL term of each layer (bottom first)
    .posterior_means(x, S, rng) -> [(N, L_i)]       E_q[z_i] per layer (S samples of the others)
    .sample(n, rng, binary=False) -> (n, D);  .decode_noise(eps) -> (n, D) means from fixed noise
    .set_epoch(e)                                   KL warm-up: kl_weight = min(1, e / warmup)
precision_weighted_merge(mu_hat, logvar_hat, mu_p, logvar_p) -> (mu_q, logvar_q, w_hat)
precision_weighted_merge_backward(dmu_q, dlogvar_q, mu_hat, mu_p, w_hat) -> 4 gradients
active_units(model, x, S=10, rng=0, threshold=0.01) -> dict   (Burda et al.'s criterion, per layer)
kl_per_layer(model, x, rng=0, batch=500) -> (L,)              any VAE or hierarchy
"""
from __future__ import annotations

import numpy as np

import kernels

from ..backend import check_dtype
from ..backend import rng as make_rng
from ..checks import DataError, check_array
from ..distributions import reparameterize_backward
from ..nn import ACTIVATION_FUNCTIONS, BatchNorm, Linear, Module, sigmoid_forward
from . import register
from .vae import VAE, check_warmup, kl_warmup, parse_hidden

__all__ = ["HVAE", "LVAE", "precision_weighted_merge", "precision_weighted_merge_backward",
           "active_units", "kl_per_layer", "parse_latent"]


def parse_latent(latent):
    """(64, 32), [64, 32], '64,32' or 64 -> a tuple of positive ints, bottom layer first."""
    if isinstance(latent, (int, np.integer)):
        latent = (int(latent),)
    elif isinstance(latent, str):
        try:
            latent = tuple(int(s) for s in latent.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"expected latent sizes like '64,32', got {latent!r}") from None
    try:
        sizes = tuple(int(s) for s in latent)
    except (TypeError, ValueError):
        raise ValueError(f"expected latent to be a tuple of positive integers such as (64, 32), "
                         f"got {latent!r}") from None
    if not sizes or any(s < 1 or s != v for s, v in zip(sizes, latent)):
        raise ValueError(f"expected latent to be a non-empty tuple of positive integers such as "
                         f"(64, 32), got {latent!r}")
    return sizes


# ----------------------------------------------------------------------------------------------
# The precision-weighted merge (LVAE)
# ----------------------------------------------------------------------------------------------

def precision_weighted_merge(mu_hat, logvar_hat, mu_p, logvar_p):
    """The product of N(mu_hat, e^logvar_hat) and N(mu_p, e^logvar_p), renormalised.

    sigma_q^2 = 1 / (sigma_hat^-2 + sigma_p^-2),  mu_q = (mu_hat sigma_hat^-2 + mu_p sigma_p^-2) sigma_q^2,
    computed as  w_hat = sigma_hat^-2 / (sigma_hat^-2 + sigma_p^-2) = sigmoid(logvar_p - logvar_hat),
    mu_q = mu_p + w_hat (mu_hat - mu_p),  logvar_q = -logaddexp(-logvar_hat, -logvar_p):  no
    precision is formed, so extreme log-variances (+-500) neither overflow nor lose the mean.
    All arrays of one shape.  Returns (mu_q, logvar_q, w_hat); w_hat is what the backward needs.
    """
    w_hat = sigmoid_forward(logvar_p - logvar_hat)               # weight of the bottom-up estimate
    mu_q = mu_p + w_hat * (mu_hat - mu_p)                         # = w_hat mu_hat + (1 - w_hat) mu_p
    logvar_q = -np.logaddexp(-logvar_hat, -logvar_p)              # log 1 / (sigma_hat^-2 + sigma_p^-2)
    return mu_q, logvar_q, w_hat


def precision_weighted_merge_backward(dmu_q, dlogvar_q, mu_hat, mu_p, w_hat):
    """Backward of ``precision_weighted_merge``.

    dmu_q, dlogvar_q: dL/dmu_q and dL/dlogvar_q; mu_hat, mu_p, w_hat: from the forward (all one
    shape).  Returns (dL/dmu_hat, dL/dlogvar_hat, dL/dmu_p, dL/dlogvar_p), new arrays.
    """
    # SOLUTION lvae-merge-gradient: the gradients of the precision-weighted merge w.r.t. mu_hat, logvar_hat, mu_p, logvar_p
    # HINT Write the merge with w_hat = sigmoid(a), a = logvar_p - logvar_hat: mu_q = mu_p + w_hat (mu_hat - mu_p)
    # HINT and logvar_q = -logaddexp(-logvar_hat, -logvar_p).  sigmoid'(a) = w_hat (1 - w_hat); the derivative
    # HINT of -logaddexp(-u, -v) w.r.t. u is exp(-u) / (exp(-u) + exp(-v)).  Each input gets two terms.
    w_p = 1 - w_hat                                   # weight of the top-down prior
    dmu_hat = dmu_q * w_hat                           # d mu_q / d mu_hat = w_hat
    dmu_p = dmu_q * w_p                               # d mu_q / d mu_p = 1 - w_hat
    # mu_q depends on a = logvar_p - logvar_hat through w_hat: d mu_q / da = w_hat w_p (mu_hat - mu_p)
    da = dmu_q * w_hat * w_p * (mu_hat - mu_p)
    # logvar_q = -logaddexp(-logvar_hat, -logvar_p): d/dlogvar_hat = w_hat, d/dlogvar_p = w_p
    dlogvar_hat = dlogvar_q * w_hat - da              # da/dlogvar_hat = -1
    dlogvar_p = dlogvar_q * w_p + da                  # da/dlogvar_p = +1
    # END SOLUTION
    return dmu_hat, dlogvar_hat, dmu_p, dlogvar_p


# ----------------------------------------------------------------------------------------------
# An MLP with optional batch normalisation after its hidden layers
# ----------------------------------------------------------------------------------------------

class _Net(Module):
    """Fused Linear layers sizes[0] -> ... -> sizes[-1]; hidden layers use ``activation``, the last
    ``out_activation``.  With ``batch_norm``, a BatchNorm follows every layer whose activation is
    ``activation`` (after it), the last too when ``out_activation == activation`` (a trunk).
    Parameters: ``layers.<l>.W``, ``layers.<l>.b``, ``norms.<j>.gamma``, ``norms.<j>.beta``."""

    def __init__(self, sizes, activation, rng, dtype, out_activation="identity", batch_norm=False):
        n = len(sizes) - 1
        acts = [activation] * (n - 1) + [out_activation]
        self.layers = [Linear(sizes[l], sizes[l + 1], rng, dtype, acts[l]) for l in range(n)]
        self.norm_at = [l for l in range(n) if batch_norm and acts[l] == activation]
        self.norms = [BatchNorm(sizes[l + 1], dtype) for l in self.norm_at]

    def buffers(self):
        """name -> running-statistics array (live), named like the parameters."""
        out = {}
        for j, bn in enumerate(self.norms):
            out[f"norms.{j}.running_mean"] = bn.running_mean
            out[f"norms.{j}.running_var"] = bn.running_var
        return out

    def forward(self, x, train):
        caches = []
        for l, layer in enumerate(self.layers):
            x, c = layer.forward(x)
            cb = None
            if l in self.norm_at:
                x, cb = self.norms[self.norm_at.index(l)].forward(x, train)
            caches.append((c, cb))
        return x, caches

    def backward(self, dy, caches, need_dx=True):
        for l in range(len(self.layers) - 1, -1, -1):
            c, cb = caches[l]
            if cb is not None:
                dy = self.norms[self.norm_at.index(l)].backward(dy, cb)
            dy = self.layers[l].backward(dy, c, need_dx=need_dx or l > 0)
        return dy


def _split(h, L):
    return h[:, :L], h[:, L:]


def _gauss_sample(mu, logvar, eps):
    """z = mu + exp(logvar / 2) eps, the reparameterization."""
    return mu + np.exp(0.5 * logvar) * eps


# ----------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------

class _Hierarchy:
    """Shared by HVAE and LVAE: construction, checks, the generative path, evaluation.
    Subclasses set ``ladder`` (False: bottom-up q; True: ladder q)."""

    ladder = False

    def __init__(self, x_dim=784, hidden=(200, 200), latent=(64, 32), activation="tanh",
                 batch_norm=False, warmup=0, dtype="float32", seed=0):
        hidden = parse_hidden(hidden)
        latent = parse_latent(latent)
        if int(x_dim) != x_dim or x_dim < 1:
            raise ValueError(f"expected a positive integer x_dim, got {x_dim!r}")
        if not hidden:
            raise ValueError(f"expected at least one hidden layer in hidden (e.g. 200,200), got {hidden!r}")
        if activation not in ACTIVATION_FUNCTIONS:
            raise ValueError(f"expected activation to be one of {tuple(ACTIVATION_FUNCTIONS)}, got {activation!r}")
        if not isinstance(batch_norm, (bool, np.bool_)):
            raise ValueError(f"expected batch_norm to be True or False, got {batch_norm!r}")
        warmup = check_warmup(warmup)
        try:
            self.dtype = check_dtype(dtype)
        except TypeError as e:
            raise ValueError(f"expected dtype 'float32' or 'float64', got {dtype!r}") from e
        self.x_dim, self.hidden, self.latent = int(x_dim), hidden, latent
        self.activation, self.batch_norm, self.warmup = activation, bool(batch_norm), warmup
        self.config = {"x_dim": self.x_dim, "hidden": list(hidden), "latent": list(latent),
                       "activation": activation, "batch_norm": self.batch_norm, "warmup": self.warmup,
                       "dtype": self.dtype.name, "seed": int(seed)}
        g = make_rng(int(seed))
        Ls, H, dt, bn = latent, hidden, self.dtype, self.batch_norm
        n_layers = len(Ls)
        # bottom-up: up[i] maps z_{i-1} (hvae) or d_{i-1} (lvae) to d_i; head[i] maps d_i to 2 L_i
        ins = [self.x_dim] + ([Ls[i - 1] for i in range(1, n_layers)] if not self.ladder
                              else [H[-1]] * (n_layers - 1))
        self.up = [_Net([ins[i], *H], activation, g, dt, out_activation=activation, batch_norm=bn)
                   for i in range(n_layers)]
        self.head = [Linear(H[-1], 2 * Ls[i], g, dt) for i in range(n_layers)]
        # top-down: down[i] maps z_{i+1} to the 2 L_i parameters of p(z_i | z_{i+1}); decoder z_1 -> x
        self.down = [_Net([Ls[i + 1], *H, 2 * Ls[i]], activation, g, dt, batch_norm=bn)
                     for i in range(n_layers - 1)]
        self.dec = _Net([Ls[0], *reversed(H), self.x_dim], activation, g, dt, batch_norm=bn)
        self.params = {}
        self._nets = nets = ([(f"up.{i}.", m) for i, m in enumerate(self.up)] + [(f"head.{i}.", m) for i, m in enumerate(self.head)]
                + [(f"down.{i}.", m) for i, m in enumerate(self.down)] + [("dec.", self.dec)])
        for prefix, net in nets:
            for name, p in net.parameters().items():
                self.params[prefix + name] = p.value
            for name, a in (net.buffers().items() if isinstance(net, _Net) else ()):
                self.params[prefix + name] = a                    # running statistics: zero gradient
        self.kl_weight = 1.0          # the ELBO; train.fit's set_epoch(e) applies the warm-up schedule

    # -- KL warm-up hook -----------------------------------------------------------------------------
    def set_epoch(self, epoch):
        """KL warm-up: the KL weight of epoch ``epoch`` (0-based) is min(1, epoch / warmup), 1 without
        warm-up.  ``nplvm.train.fit`` calls this at the start of every epoch.  Returns the weight."""
        self.kl_weight = kl_warmup(int(epoch), self.warmup)
        return self.kl_weight

    def __repr__(self):
        q = "ladder (precision-weighted)" if self.ladder else "bottom-up"
        return (f"{type(self).__name__}(latent={self.latent}, hidden={self.hidden}, {self.activation}, "
                f"q {q}, batch_norm={self.batch_norm}, warmup={self.warmup}, dtype={self.dtype.name})")

    def num_parameters(self):
        return int(sum(a.size for k, a in self.params.items() if "running_" not in k))

    def check_input(self, x, name="x"):
        """x (N, x_dim) binary and finite -> row-major array of the model's dtype (as the VAE's)."""
        return VAE.check_input(self, x, name)

    def _noise(self, g, K, N):
        """eps (K, N, sum L_i), sample-major (so K draws in chunks equal one call with all K)."""
        return g.standard_normal((K, N, sum(self.latent)), dtype=self.dtype)

    def _eps_layers(self, eps):
        """(M, sum L_i) -> one (M, L_i) view per layer, bottom first."""
        bounds = np.cumsum((0,) + self.latent)
        return [eps[:, bounds[i]:bounds[i + 1]] for i in range(len(self.latent))]

    # -- forward -------------------------------------------------------------------------------------
    def _forward(self, x, eps, train):
        """Everything the loss, the log weights and the backward need, for M = K N rows of noise.

        x: (N, D); eps: (M, sum L_i) with M a multiple of N (row k N + n belongs to x_n); train:
        batch statistics in the batch norms.  Returns a dict of per-layer lists (bottom first).
        """
        Ls, n_layers = self.latent, len(self.latent)
        N, M = x.shape[0], eps.shape[0]
        K = M // N
        tile = (lambda a: a) if K == 1 else (lambda a: np.broadcast_to(a, (K,) + a.shape).reshape(M, a.shape[1]))
        e = self._eps_layers(eps)
        f = {"eps": e, "z": [None] * n_layers,
             "mu_q": [None] * n_layers, "logvar_q": [None] * n_layers,
             "mu_hat": [None] * n_layers, "logvar_hat": [None] * n_layers,
             "mu_p": [None] * n_layers, "logvar_p": [None] * n_layers, "w_hat": [None] * n_layers,
             "c_up": [None] * n_layers, "c_head": [None] * n_layers, "c_down": [None] * n_layers}
        # bottom-up pass
        h = x
        for i in range(n_layers):
            d, f["c_up"][i] = self.up[i].forward(h, train)
            out, f["c_head"][i] = self.head[i].forward(d)
            mu_hat, logvar_hat = _split(out, Ls[i])                  # (mu^_q,i, log sigma^_q,i^2)
            if not self.ladder:
                if i == 0:
                    mu_hat, logvar_hat = tile(mu_hat), tile(logvar_hat)   # K samples of z_1 per x
                # q(z_i | z_{i-1}) = N(mu^, sigma^2): sample now, the next layer reads z_i
                f["mu_q"][i], f["logvar_q"][i] = mu_hat, logvar_hat
                f["z"][i] = _gauss_sample(mu_hat, logvar_hat, e[i])
                h = f["z"][i]
            else:
                h = d                                                # d_i feeds up[i+1]
            f["mu_hat"][i], f["logvar_hat"][i] = mu_hat, logvar_hat
        # top-down pass: p(z_i | z_{i+1}) for i < L, and in the ladder the merge and the sample
        top = n_layers - 1
        if self.ladder:
            f["mu_q"][top], f["logvar_q"][top] = tile(f["mu_hat"][top]), tile(f["logvar_hat"][top])
            f["z"][top] = _gauss_sample(f["mu_q"][top], f["logvar_q"][top], e[top])
        for i in range(top - 1, -1, -1):
            out, f["c_down"][i] = self.down[i].forward(f["z"][i + 1], train)
            f["mu_p"][i], f["logvar_p"][i] = _split(out, Ls[i])      # p(z_i | z_{i+1})
            if self.ladder:
                mu_q, logvar_q, f["w_hat"][i] = precision_weighted_merge(
                    tile(f["mu_hat"][i]), tile(f["logvar_hat"][i]), f["mu_p"][i], f["logvar_p"][i])
                f["mu_q"][i], f["logvar_q"][i] = mu_q, logvar_q
                f["z"][i] = _gauss_sample(mu_q, logvar_q, e[i])
        f["logits"], f["c_dec"] = self.dec.forward(f["z"][0], train)
        return f

    def _kl_terms(self, f, weight=None):
        """Per-layer KL terms (M,) each, bottom first, and their gradients (times ``weight``).

        Top: KL(q(z_L|.) || N(0, I)) in closed form (grads w.r.t. mu_q, logvar_q).  Below, the
        ladder: KL(q(z_i|z_{i+1},x) || p(z_i|z_{i+1})) in closed form (grads w.r.t. mu_q, logvar_q,
        mu_p, logvar_p); bottom-up: log q(z_i|z_{i-1}) - log p(z_i|z_{i+1}) at the sample.
        """
        top = len(self.latent) - 1
        kls, grads = [None] * (top + 1), [None] * (top + 1)
        kls[top], dmu, dlv = kernels.gaussian_kl_std(f["mu_q"][top], f["logvar_q"][top], weight)
        grads[top] = (dmu, dlv)
        for i in range(top):
            if self.ladder:
                kl, dmu_q, dlv_q, dmu_p, dlv_p = kernels.gaussian_kl(
                    f["mu_q"][i], f["logvar_q"][i], f["mu_p"][i], f["logvar_p"][i], weight)
                kls[i], grads[i] = kl, (dmu_q, dlv_q, dmu_p, dlv_p)
            else:
                # log q(z_i|z_{i-1}) - log p(z_i|z_{i+1}) per unit, the 2 pi terms cancelling:
                # [-1/2 eps^2 - 1/2 logvar_q] - [-1/2 (z - mu_p)^2 / sigma_p^2 - 1/2 logvar_p]
                e, lv_q, lv_p = f["eps"][i], f["logvar_q"][i], f["logvar_p"][i]
                diff = f["z"][i] - f["mu_p"][i]
                inv_var_p = np.exp(-lv_p)
                kls[i] = 0.5 * np.sum(diff * diff * inv_var_p + lv_p - e * e - lv_q, axis=1)
                grads[i] = (diff, inv_var_p)                         # what the backward needs
        return kls, grads

    # -- the objective -------------------------------------------------------------------------------
    def loss(self, x, rng, grad=True):
        """(loss, grads): mean_n [-log p(x_n|z_1) + kl_weight sum_i KL_i], nats per example.

        x: (N, x_dim) binary; rng: a seed or Generator (the noise eps of every layer comes from it).
        grad=True: batch statistics in the batch norms (a training step) and fresh gradient arrays
        keyed like ``params``; grad=False: running statistics, (loss, None), no backward pass.
        """
        x = self.check_input(x)
        N = x.shape[0]
        eps = self._noise(make_rng(rng), 1, N)[0]
        f = self._forward(x, eps, train=grad)
        w = self.kl_weight / N
        rec, dlogits = kernels.bernoulli_nll(x, f["logits"], 1.0 / N)   # -log p(x|z_1), its gradient
        kls, kl_grads = self._kl_terms(f, self.dtype.type(w))
        loss = float(np.mean(rec) + self.kl_weight * sum(float(np.mean(k)) for k in kls))
        if not grad:
            return loss, None
        self._backward(f, dlogits, kl_grads, w)
        grads = {k: g for prefix, net in self._nets for k, g in net.take_grads(prefix).items()}
        for k, a in self.params.items():
            if k not in grads:
                grads[k] = np.zeros_like(a)                          # running statistics
        return loss, {k: grads[k] for k in self.params}

    def _backward(self, f, dlogits, kl_grads, w):
        """Accumulate d loss / d param into the modules' grads (fresh ones); eps held fixed."""
        for _, net in self._nets:
            net.release_grads()                                      # this call's grads: new arrays
        n_layers, top = len(self.latent), len(self.latent) - 1
        eps = f["eps"]
        dz = [None] * n_layers
        dz[0] = self.dec.backward(dlogits, f["c_dec"])               # d loss / dz_1 through p(x|z_1)
        if not self.ladder:
            self._backward_hvae(f, dz, kl_grads, w)
            return
        # Ladder.  Visit i = 1 .. L-1 along the top-down path: dz_i is complete (decoder or down[i-1]).
        dhat = [None] * n_layers                                     # (dmu^, dlogvar^) per layer
        for i in range(top):
            dmu_kl, dlv_kl, dmu_p, dlv_p = kl_grads[i]
            dmu_q, dlv_q = reparameterize_backward(dz[i], eps[i], f["logvar_q"][i])   # z_i = mu_q + sigma_q eps_i
            dmu_q, dlv_q = dmu_q + dmu_kl, dlv_q + dlv_kl
            dmu_hat, dlv_hat, dmu_p2, dlv_p2 = precision_weighted_merge_backward(
                dmu_q, dlv_q, f["mu_hat"][i], f["mu_p"][i], f["w_hat"][i])
            dhat[i] = (dmu_hat, dlv_hat)
            # (mu_p, logvar_p) reach the loss through the KL and through the merge
            dp = np.concatenate([dmu_p + dmu_p2, dlv_p + dlv_p2], axis=1)
            dz[i + 1] = self.down[i].backward(dp, f["c_down"][i])    # z_{i+1} -> down[i]
        dmu_kl, dlv_kl = kl_grads[top]                               # the top: q(z_L|x) = N(mu^, sigma^2)
        dmu_top, dlv_top = reparameterize_backward(dz[top], eps[top], f["logvar_q"][top])
        dhat[top] = (dmu_top + dmu_kl, dlv_top + dlv_kl)
        # the deterministic bottom-up pass, top to bottom: d_i feeds head[i] and up[i+1]
        dd = None
        for i in range(top, -1, -1):
            g = self.head[i].backward(np.concatenate(dhat[i], axis=1), f["c_head"][i])
            if dd is not None:
                g += dd
            dd = self.up[i].backward(g, f["c_up"][i], need_dx=i > 0)

    def _backward_hvae(self, f, dz, kl_grads, w):
        n_layers, top = len(self.latent), len(self.latent) - 1
        eps, z = f["eps"], f["z"]
        for i in range(1, n_layers):
            dz[i] = np.zeros_like(z[i])
        # generative terms -log p(z_i|z_{i+1}) = 1/2 (z_i - mu_p)^2 / sigma_p^2 + 1/2 logvar_p (+ const), i < L
        for i in range(top):
            diff, inv_var_p = kl_grads[i]
            r = diff * inv_var_p                                     # (z_i - mu_p) / sigma_p^2
            dz[i] += w * r
            dp = np.concatenate([-w * r, (0.5 * w) * (1 - diff * r)], axis=1)   # d/dmu_p, d/dlogvar_p
            dz[i + 1] += self.down[i].backward(dp, f["c_down"][i])
        # inference layers top-down: z_i feeds up[i+1], whose backward has run when i is visited
        for i in range(top, -1, -1):
            dmu, dlv = reparameterize_backward(dz[i], eps[i], f["logvar_q"][i])   # z_i = mu_q + sigma_q eps_i
            if i == top:
                dmu_kl, dlv_kl = kl_grads[top]                       # closed-form KL to N(0, I)
                dmu, dlv = dmu + dmu_kl, dlv + dlv_kl
            else:
                dlv = dlv - 0.5 * w                                  # log q's -1/2 logvar_q, eps fixed
            dd = self.head[i].backward(np.concatenate([dmu, dlv], axis=1), f["c_head"][i])
            dh = self.up[i].backward(dd, f["c_up"][i], need_dx=i > 0)
            if i > 0:
                dz[i - 1] += dh                                      # up[i] reads z_{i-1}

    # -- evaluation ----------------------------------------------------------------------------------
    def log_weights(self, x, K, rng):
        """log w_k = log p(x, z_1..L^(k)) - log q(z_1..L^(k) | x), z^(k) ~ q, for every row: (K, N).

            log w = log p(x|z_1) + log p(z_L) + sum_{i<L} log p(z_i|z_{i+1}) - sum_i log q(z_i|.)

        with each Gaussian log density at its sample (2 pi terms cancel; log q(z_i|.) =
        -1/2 eps_i^2 - 1/2 logvar_q,i).  Batch norms use running statistics.  Noise drawn
        sample-major, eps (K, N, sum L_i), so chunked calls draw the same samples.
        """
        x = self.check_input(x)
        K, N = int(K), x.shape[0]
        if K < 1:
            raise ValueError(f"expected K >= 1 samples, got {K}")
        eps = self._noise(make_rng(rng), K, N).reshape(K * N, -1)
        f = self._forward(x, eps, train=False)
        xk = x if K == 1 else np.broadcast_to(x, (K, N, self.x_dim)).reshape(K * N, self.x_dim)
        nll, _ = kernels.bernoulli_nll(xk, f["logits"])
        top = len(self.latent) - 1
        log_w = -nll - 0.5 * np.sum(f["z"][top] ** 2, axis=1)       # log p(x|z_1) + log p(z_L)
        for i in range(top + 1):
            e = f["eps"][i]
            log_w += 0.5 * np.sum(e * e + f["logvar_q"][i], axis=1)  # - log q(z_i|.)
            if i < top:
                diff = f["z"][i] - f["mu_p"][i]                      # + log p(z_i|z_{i+1})
                log_w -= 0.5 * np.sum(diff * diff * np.exp(-f["logvar_p"][i]) + f["logvar_p"][i], axis=1)
        return log_w.reshape(K, N)

    def kl_per_layer(self, x, rng):
        """The mean over x of each layer's KL term (nats, bottom layer first), one sample of the
        layers it conditions on; batch norms use running statistics.  (L,) float64."""
        x = self.check_input(x)
        f = self._forward(x, self._noise(make_rng(rng), 1, x.shape[0])[0], train=False)
        kls, _ = self._kl_terms(f)
        return np.array([float(np.mean(k)) for k in kls])

    def posterior_means(self, x, S, rng):
        """E_q[z_i] per layer, (N, L_i) each, bottom first: the mean of mu_q,i over S samples of the
        other layers (exact for the layer whose q depends on x alone)."""
        x = self.check_input(x)
        S, N = int(S), x.shape[0]
        f = self._forward(x, self._noise(make_rng(rng), S, N).reshape(S * N, -1), train=False)
        return [m.reshape(S, N, -1).mean(axis=0) for m in f["mu_q"]]

    def decode_noise(self, eps):
        """Bernoulli means of p(x|z_1) for the generative path driven by fixed noise eps (n, sum L_i):
        z_L = eps_L, z_i = mu_p,i(z_{i+1}) + sigma_p,i(z_{i+1}) eps_i.  (n, D)"""
        check_array(eps, "eps", ndim=2, shape=(None, sum(self.latent)))
        e = self._eps_layers(np.asarray(eps, dtype=self.dtype))
        z = e[-1]
        for i in range(len(self.latent) - 2, -1, -1):
            out, _ = self.down[i].forward(z, False)
            mu_p, logvar_p = _split(out, self.latent[i])
            z = _gauss_sample(mu_p, logvar_p, e[i])
        return kernels.reference.sigmoid(self.dec.forward(z, False)[0])

    def sample(self, n, rng, binary=False):
        """n draws from the model: z_L ~ N(0, I), z_i ~ p(z_i|z_{i+1}), then the Bernoulli means of
        p(x|z_1) (or binary x ~ p(x|z_1))."""
        g = make_rng(rng)
        p = self.decode_noise(g.standard_normal((int(n), sum(self.latent)), dtype=self.dtype))
        return (g.random(p.shape, dtype=self.dtype) < p).astype(np.uint8) if binary else p


@register("hvae")
class HVAE(_Hierarchy):
    """Hierarchical VAE with bottom-up inference q(z_1|x) prod q(z_i|z_{i-1}); see the module docstring."""

    kind = "hvae"
    ladder = False


@register("lvae")
class LVAE(_Hierarchy):
    """Ladder VAE: q shares the top-down path, merged with a bottom-up estimate by precision."""

    kind = "lvae"
    ladder = True


# ----------------------------------------------------------------------------------------------
# Diagnostics for any VAE-like model
# ----------------------------------------------------------------------------------------------

def _layer_means(model, x, S, rng):
    if hasattr(model, "posterior_means"):
        return model.posterior_means(x, S, rng)
    if hasattr(model, "encode"):                                     # a one-layer VAE: E_q[z] = mu(x)
        return [model.encode(x)[0]]
    raise TypeError(f"expected a model with posterior_means(x, S, rng) or encode(x), got {type(model).__name__}")


def active_units(model, x, S=10, rng=0, threshold=0.01, batch=500):
    """Burda et al.'s active units, per latent layer: unit j is active when

        A_j = Cov_x( E_{q(z|x)}[z_j] ) > threshold      (0.01 in the paper)

    i.e. its posterior mean moves with the data.  E_q[z_j] is the model's ``posterior_means``
    (S samples of the other layers) or, for a one-layer VAE, the encoder mean.  x: (N, D) with
    N >= 2.  Returns {"counts": [active units per layer], "sizes": [L_i], "variances": [(L_i,)]}.
    """
    if x.shape[0] < 2:
        raise DataError(f"expected at least 2 rows of x to measure a covariance over x, got {x.shape[0]}")
    if not threshold >= 0:
        raise ValueError(f"expected a threshold >= 0, got {threshold!r}")
    g = make_rng(rng)
    parts = [_layer_means(model, x[s:s + batch], S, g) for s in range(0, x.shape[0], batch)]
    means = [np.concatenate([p[i] for p in parts], axis=0).astype(np.float64) for i in range(len(parts[0]))]
    variances = [m.var(axis=0) for m in means]                     # Cov_x of each unit's E_q[z_j]
    return {"counts": [int((v > threshold).sum()) for v in variances],
            "sizes": [int(v.size) for v in variances], "variances": variances}


def kl_per_layer(model, x, rng=0, batch=500):
    """The mean KL term of each latent layer over x (nats, bottom first), (L,) float64.

    A hierarchy reports its own (``model.kl_per_layer``); a one-layer VAE its closed-form
    KL(q(z|x) || N(0, I)).  The sum over layers is the KL part of the NELBO."""
    g = make_rng(rng)
    total, n = None, x.shape[0]
    for s in range(0, n, batch):
        xb = x[s:s + batch]
        if hasattr(model, "kl_per_layer"):
            k = model.kl_per_layer(xb, g)
        else:
            mu, logvar = model.encode(xb)
            k = np.array([float(np.mean(kernels.gaussian_kl_std(mu, logvar)[0]))])
        total = k * len(xb) if total is None else total + k * len(xb)
    return total / n
