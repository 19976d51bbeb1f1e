"""The variational recurrent neural network (VRNN, Chung et al. 2015) on images read row by row.

An image x (``x_dim`` = 784 binary pixels) is read as a sequence x_1:T of T = x_dim / D rows,
each x_t in {0, 1}^D with D = ``row_size`` = 28.  Every step has its own Gaussian latent z_t in R^L,
and a recurrent state h_t (a GRU) carries what the model has seen so far.  With feature
extractors phi_x and phi_z:

    h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1}),   h_0 = 0                           (recurrence)

Generative story, p(x_1:T, z_1:T) = prod_t p(x_t | x_<t, z_<=t) p(z_t | x_<t, z_<t):

    p(z_t | h_{t-1})      = N(mu_0,t, diag exp(logvar_0,t)),  [mu_0,t, logvar_0,t] = prior(h_{t-1})
    p(x_t | z_t, h_{t-1}) = Bern(sigmoid(l_t)),                 l_t = decoder([phi_z(z_t), h_{t-1}])

(h_{t-1} is a function of x_<t and z_<t, which is how the factors condition on the past.)
Approximate posterior, filtering (it sees the present row and the past through h):

    q(z_t | x_<=t, z_<t)  = N(mu_t, diag exp(logvar_t)),     [mu_t, logvar_t] = encoder([phi_x(x_t), h_{t-1}])

The ELBO sums one term per time step; with one reparameterized sample z_t = mu_t + std_t * eps_t
per step, eps_t ~ N(0, I) (the KL between the two Gaussians is in closed form):

    ELBO(x) = sum_t E_q [ log p(x_t | z_t, h_{t-1}) - KL(q(z_t | .) || p(z_t | h_{t-1})) ]      (*)

``loss(x, rng)`` returns the mean over images of -ELBO, in nats per image (comparable with the
VAE's), and its gradient with respect to every parameter.

This file is the readable VRNN: ``_step`` is one step of the equations above, ``loss`` runs it
for t = 1..T keeping each step's caches, and ``_backward`` is backpropagation through time
written by hand, the reverse loop over t carrying dL/dh_t, which every later step depends on
through the recurrence.  Each layer (``nn.MLP``, ``nn.GRUCell``) is called once per step with its
own forward and backward.  ``nplvm.models.vrnn_fast.VRNNFast`` computes the same numbers (tested
equal to 1e-12 in float64) with the work batched over steps and the GRU's gates stacked: about
twice as fast, and what the VRNN benchmark trains.

Parameter names: ``phi_x.*``, ``phi_z.*``, ``prior.*``, ``encoder.*``, ``decoder.*`` (MLPs, names
``layers.<l>.W`` / ``layers.<l>.b``) and ``rnn.*`` (the GRU cell: ``W_r``, ``U_r``, ``b_r``, ...).

Shapes: N images, T steps, D pixels per row, L latent dims, H GRU state, F features.  Inside,
arrays are time-major, (T, N, .), so step t is the slice [t].

Public API
----------
VRNN(x_dim=784, row_size=28, latent=16, rnn_hidden=128, features=64, hidden=(128,),
     activation="relu", dtype="float32", seed=0)                       kind "vrnn"
    .params                                  name -> live array ("rnn.U_c", "encoder.layers.0.W", ...)
    .loss(x, rng, grad=True) -> (loss, grads)   x: (N, T*D) binary images or (N, T, D) rows
    .log_weights(x, K, rng) -> (K, N)        log p(x, z_1:T) - log q(z_1:T | x), whole trajectories
    .step_terms(x, rng) -> {"nll", "kl"}     (N, T) per-step terms of -ELBO
    .sample(n, rng, binary=False) -> (n, T*D)   Bernoulli means (or binary pixels), row by row
    .generate(n, rng) -> (x uint8, probs)    (n, T*D) each, row by row from the prior
    .complete(x, n_observed, rng) -> (x uint8, probs)   rows > n_observed from the prior
    .sequences(x) -> (T, N, D)               validated, time-major, model dtype
"""
from __future__ import annotations

import numpy as np

import kernels

from ..backend import check_dtype, rng as make_rng
from ..checks import DataError, check_array, check_binary, check_finite
from ..distributions import gaussian_log_prob, reparameterize_backward
from ..nn import GRUCell, MLP, Module
from . import register

__all__ = ["VRNN"]


def _positive_int(name, v):
    if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"expected {name} to be a positive integer, got {v!r}")
    return int(v)


@register("vrnn")
class VRNN(Module):
    """VRNN with a GRU state, Gaussian latents per step and a Bernoulli decoder per row.

    Config (all JSON-serialisable; ``VRNN(**model.config)`` rebuilds the same model):
      x_dim       pixels per image (784); read as T = x_dim / row_size rows
      row_size    D, pixels per row (28); inputs are (N, T*D) images or (N, T, D) sequences
      latent      L, dimension of each z_t
      rnn_hidden  H, size of the GRU state h_t
      features    F, output size of phi_x and phi_z
      hidden      widths of the hidden layers of phi_x, prior, encoder and decoder (a tuple)
      activation  hidden activation of every MLP (the feature extractors end with it too)
      dtype       "float32" to train, "float64" to check gradients
      seed        seeds the initial weights
    """

    kind = "vrnn"

    def __init__(self, x_dim=784, row_size=28, latent=16, rnn_hidden=128, features=64,
                 hidden=(128,), activation="relu", dtype="float32", seed=0):
        x_dim, D = _positive_int("x_dim", x_dim), _positive_int("row_size", row_size)
        if x_dim % D:
            raise ValueError(f"expected row_size to divide x_dim (an image of x_dim pixels is read as "
                             f"x_dim / row_size rows), got x_dim={x_dim} and row_size={D}")
        L, H = _positive_int("latent", latent), _positive_int("rnn_hidden", rnn_hidden)
        F = _positive_int("features", features)
        if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
            hidden = (hidden,)
        if not isinstance(hidden, (list, tuple)):
            raise ValueError(f"expected hidden to be a tuple of layer widths like (128,), got {hidden!r}")
        hidden = tuple(_positive_int("hidden", h) for h in hidden)
        dt = check_dtype(dtype)
        self.T, self.D, self.L, self.H, self.F = x_dim // D, D, L, H, F
        self.hidden = hidden
        self.config = dict(x_dim=x_dim, row_size=D, latent=L, rnn_hidden=H, features=F,
                           hidden=list(hidden), activation=activation, dtype=dt.name, seed=int(seed))
        g = make_rng(int(seed))
        # feature extractors: phi_x(x_t), phi_z(z_t), both ending with the hidden activation
        self.phi_x = MLP([D, *hidden, F], activation, g, dt, out_activation=activation)
        self.phi_z = MLP([L, F], activation, g, dt, out_activation=activation)
        # prior(h_{t-1}) -> [mu_0,t, logvar_0,t]
        self.prior = MLP([H, *hidden, 2 * L], activation, g, dt)
        # encoder([phi_x(x_t), h_{t-1}]) -> [mu_t, logvar_t]
        self.encoder = MLP([F + H, *hidden, 2 * L], activation, g, dt)
        # decoder([phi_z(z_t), h_{t-1}]) -> Bernoulli logits of the row x_t
        self.decoder = MLP([F + H, *hidden, D], activation, g, dt)
        # h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1})
        self.rnn = GRUCell(2 * F, H, g, dt)
        self.dtype = dt
        # live arrays, fetched once (Module.parameters() walks the attributes on every call)
        self._parameters = self.parameters()
        self.params = {k: p.value for k, p in self._parameters.items()}

    # ------------------------------------------------------------------------------------------
    # input and noise
    # ------------------------------------------------------------------------------------------

    def sequences(self, x, name="x"):
        """Validate binary images and return them as time-major rows, (T, N, D), model dtype.

        x: (N, T*D) images (uint8, bool or float in {0, 1}), or (N, T, D) sequences.
        """
        T, D = self.T, self.D
        check_array(x, name, dtype_kind="fuib")
        if x.ndim == 2 and x.shape[1] == T * D:
            seq = x.reshape(x.shape[0], T, D)
        elif x.ndim == 3 and x.shape[1:] == (T, D):
            seq = x
        else:
            raise DataError(f"expected {name} of shape (N, {T * D}) (images of {T} rows of {D} "
                            f"pixels) or (N, {T}, {D}) (sequences of rows), got {tuple(x.shape)}")
        if x.shape[0] < 1:
            raise DataError(f"expected at least one image in {name}, got shape {tuple(x.shape)}")
        # fast check first (x (x - 1) is nonzero for anything but 0 and 1, NaN and inf included);
        # the slow checks run only to name the culprit
        if x.dtype.kind in "ui" and (x.max() > 1 or x.min() < 0):
            check_binary(x, name)
        if x.dtype.kind == "f" and np.any(x * (x - 1)):
            check_finite(x, name)
            check_binary(x, name)
        return np.ascontiguousarray(seq.transpose(1, 0, 2), dtype=self.dtype)

    def noise(self, n, rng, k=1):
        """eps_t ~ N(0, I) for every step of k trajectories of n images, time-major (T, k*n, L).

        Drawn sample-major, shape (k, n, T, L), from ``rng`` and then transposed, so trajectory
        (k, n) gets the same numbers however the samples are split into calls: ``loss(x, s)``
        and ``log_weights(x, 1, s)`` follow the same trajectories.  Model dtype.
        """
        eps = make_rng(rng).standard_normal((k * n, self.T, self.L))
        return np.ascontiguousarray(eps.transpose(1, 0, 2), dtype=self.dtype)

    # ------------------------------------------------------------------------------------------
    # one step of the equations, and the loss
    # ------------------------------------------------------------------------------------------

    def _step(self, x_t, h, eps_t):
        """One step t of (*) from h = h_{t-1}: returns h_t and a dict of the step's outputs and
        the layer caches its backward needs.  x_t (N, D), h (N, H), eps_t (N, L)."""
        L = self.L
        phx, c_phx = self.phi_x.forward(x_t)                                 # phi_x(x_t)
        # p(z_t | h_{t-1}): [mu_0,t, logvar_0,t] = prior(h_{t-1})
        p_out, c_prior = self.prior.forward(h)
        # q(z_t | x_<=t, z_<t): [mu_t, logvar_t] = encoder([phi_x(x_t), h_{t-1}])
        q_out, c_enc = self.encoder.forward(np.concatenate([phx, h], axis=1))
        mu_q, logvar_q = q_out[:, :L], q_out[:, L:]
        z = mu_q + np.exp(0.5 * logvar_q) * eps_t                            # z_t = mu_t + std_t eps_t
        phz, c_phz = self.phi_z.forward(z)                                   # phi_z(z_t)
        # p(x_t | z_t, h_{t-1}) = Bern(sigmoid(l_t)),  l_t = decoder([phi_z(z_t), h_{t-1}])
        logits, c_dec = self.decoder.forward(np.concatenate([phz, h], axis=1))
        # h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1})
        h_new, c_rnn = self.rnn.forward(np.concatenate([phx, phz], axis=1), h)
        return h_new, dict(mu_q=mu_q, logvar_q=logvar_q, z=z, mu_p=p_out[:, :L], logvar_p=p_out[:, L:],
                           logits=logits, c_phx=c_phx, c_prior=c_prior, c_enc=c_enc, c_phz=c_phz,
                           c_dec=c_dec, c_rnn=c_rnn)

    @staticmethod
    def _step_terms(x_t, s, weight=None):
        """The step's two terms of -ELBO (*), per image, and their gradients (each row's times
        ``weight``): nll (N,) = -log p(x_t | z_t, h_{t-1}), kl (N,) = KL(q(z_t|.) || p(z_t|.)),
        and (dlogits, dmu_q, dlogvar_q, dmu_p, dlogvar_p)."""
        nll, dlogits = kernels.bernoulli_nll(x_t, s["logits"], weight)
        kl, dmu_q, dlv_q, dmu_p, dlv_p = kernels.gaussian_kl(s["mu_q"], s["logvar_q"], s["mu_p"],
                                                             s["logvar_p"], weight)
        return nll, kl, (dlogits, dmu_q, dlv_q, dmu_p, dlv_p)

    def loss(self, x, rng, grad=True):
        """Mean over images of -ELBO (*) in nats per image, and its gradients.

        x: (N, T*D) binary images (or (N, T, D)); rng: a seed or Generator for eps.
        Returns (loss: float, grads: dict like ``params``, new arrays the caller owns; None with
        ``grad=False``, which skips the backward pass).  One z_t sample per step.
        """
        X = self.sequences(x)
        T, N, _ = X.shape
        eps = self.noise(N, rng)                                    # (T, N, L)
        h = self.rnn.initial_state(N)                               # h_0 = 0
        steps, terms = [], []
        for t in range(T):
            h, s = self._step(X[t], h, eps[t])
            steps.append(s)
            terms.append(self._step_terms(X[t], s, 1.0 / N))       # d(mean over n)/d(row n) = 1/N
        loss = float(sum(nll.sum() + kl.sum() for nll, kl, _ in terms) / N)
        if not grad:
            return loss, None
        self.release_grads()
        self._backward(steps, [d for _, _, d in terms], eps)
        return loss, self.take_grads()

    def _backward(self, steps, dterms, eps):
        """Backpropagation through time; parameter grads accumulate into ``Parameter.grad``.

        steps: the per-step dicts of ``_step``; dterms[t] = (dlogits, dmu_q, dlogvar_q, dmu_p,
        dlogvar_p) of step t (``_step_terms``); eps (T, N, L).
        """
        T, N, _ = eps.shape
        F = self.F
        # SOLUTION vrnn-bptt: backpropagation through time: the reverse loop over t carrying dh
        # HINT Start from dh = dL/dh_T = 0 and go t = T-1, ..., 0, undoing _step in reverse order:
        # HINT self.rnn.backward(dh, s["c_rnn"]) gives dL/d[phi_x(x_t), phi_z(z_t)] and the GRU's share of
        # HINT dL/dh_{t-1}; phi_z(z_t) also feeds the decoder; reparameterize_backward(dz, eps[t], logvar)
        # HINT goes through z_t = mu_t + std_t eps_t; add the KL's direct gradients (dterms[t]) to the
        # HINT encoder's and the prior's outputs; h_{t-1} feeds the GRU, the encoder, the decoder and the prior.
        dh = np.zeros((N, self.H), dtype=eps.dtype)       # dL/dh_T = 0: nothing reads the last state
        for t in range(T - 1, -1, -1):
            s = steps[t]
            dlogits, dmu_kl, dlv_kl, dmu_p, dlv_p = dterms[t]
            # h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1}): dh is the full dL/dh_t here
            d_rnn_in, dh_prev = self.rnn.backward(dh, s["c_rnn"])
            # l_t = decoder([phi_z(z_t), h_{t-1}])
            d_dec_in = self.decoder.backward(dlogits, s["c_dec"])
            # phi_z(z_t) feeds the decoder and the GRU
            dz = self.phi_z.backward(d_dec_in[:, :F] + d_rnn_in[:, F:], s["c_phz"])
            # z_t = mu_t + exp(logvar_t / 2) eps_t, plus the KL's direct gradients on mu_t, logvar_t
            dmu, dlogvar = reparameterize_backward(dz, eps[t], s["logvar_q"])
            d_enc_in = self.encoder.backward(np.concatenate([dmu + dmu_kl, dlogvar + dlv_kl], axis=1),
                                             s["c_enc"])
            # [mu_0,t, logvar_0,t] = prior(h_{t-1}): only the KL reads it
            d_prior_in = self.prior.backward(np.concatenate([dmu_p, dlv_p], axis=1), s["c_prior"])
            # phi_x(x_t) feeds the encoder and the GRU; the data needs no gradient
            self.phi_x.backward(d_enc_in[:, :F] + d_rnn_in[:, :F], s["c_phx"], need_dx=False)
            # h_{t-1} feeds the GRU, the encoder, the decoder and the prior at step t
            dh = dh_prev + d_enc_in[:, F:] + d_dec_in[:, F:] + d_prior_in
        # dh is now dL/dh_0; h_0 = 0 is a constant, so the chain stops here
        # END SOLUTION

    # ------------------------------------------------------------------------------------------
    # evaluation
    # ------------------------------------------------------------------------------------------

    def step_terms(self, x, rng):
        """The per-step terms of (*) for one sampled trajectory per image, without gradients.

        Returns a dict of (N, T) float64 arrays: "nll" = -log p(x_t | z_t, h_{t-1}) and
        "kl" = KL(q(z_t | .) || p(z_t | h_{t-1})) (nats).  Their sum over t is -ELBO per image;
        "kl" per step shows where in the image the model spends its information.
        """
        X = self.sequences(x)
        eps = self.noise(X.shape[1], rng)
        h = self.rnn.initial_state(X.shape[1])
        nll, kl = [], []
        for t in range(self.T):
            h, s = self._step(X[t], h, eps[t])
            a, b, _ = self._step_terms(X[t], s)
            nll.append(a)
            kl.append(b)
        return {"nll": np.stack(nll, 1).astype(np.float64), "kl": np.stack(kl, 1).astype(np.float64)}

    def log_weights(self, x, K, rng, max_rows=8192):
        """log w_k = log p(x, z_1:T^k) - log q(z_1:T^k | x) for K trajectories z^k ~ q, (K, N).

        A whole latent trajectory is sampled from q step by step (each z_t given the h_{t-1}
        that the earlier samples produced), and
            log w = sum_t [ log p(x_t | z_t, h_{t-1}) + log N(z_t; mu_0,t, var_0,t)
                            - log N(z_t; mu_t, var_t) ],
        so logmeanexp_k log w_k is the importance-sampled estimate of log p(x_1:T) and the mean
        over k an unbiased estimate of the ELBO.  The K copies of the batch run stacked along the
        batch axis (row k*N + n holds x_n), at most ``max_rows`` rows per pass (at least one
        copy).  The noise is drawn sample-major, so the result does not depend on max_rows.
        Returns (K, N) in the model's dtype.
        """
        if isinstance(K, bool) or int(K) != K or K < 1:
            raise ValueError(f"expected K to be a positive integer, got {K!r}")
        K = int(K)
        X = self.sequences(x)
        T, N, D = X.shape
        rng = make_rng(rng)
        out = np.empty((K, N), dtype=self.dtype)
        per_pass = max(1, min(K, int(max_rows) // N))           # copies of the batch per pass
        for k in range(0, K, per_pass):
            kk = min(per_pass, K - k)
            Xk = np.tile(X, (1, kk, 1))                          # (T, kk*N, D), row j*N + n = x_n
            out[k:k + kk] = self._log_weight(Xk, self.noise(N, rng, kk)).reshape(kk, N)
        return out

    def _log_weight(self, X, eps):
        """log p(x, z) - log q(z | x) of each row for the trajectories driven by eps, (N,)."""
        T, N, _ = X.shape
        h = self.rnn.initial_state(N)
        lw = np.zeros(N, dtype=self.dtype)
        for t in range(T):
            h, s = self._step(X[t], h, eps[t])
            lw -= kernels.bernoulli_nll(X[t], s["logits"])[0]                     # log p(x_t | z_t, h)
            lw += gaussian_log_prob(s["z"], s["mu_p"], s["logvar_p"])            # log p(z_t | h_{t-1})
            lw -= gaussian_log_prob(s["z"], s["mu_q"], s["logvar_q"])            # log q(z_t | x_<=t, z_<t)
        return lw

    # ------------------------------------------------------------------------------------------
    # generation: the prior runs the recurrence on its own samples
    # ------------------------------------------------------------------------------------------

    def _step_prior(self, h, rng):
        """One generative step from h_{t-1}: z_t ~ p(z_t | h_{t-1}), the row's Bernoulli means
        and a binary sample x_t.  Returns (x_t, probs_t, phi_z(z_t))."""
        L = self.L
        p_out, _ = self.prior.forward(h)
        z = p_out[:, :L] + np.exp(0.5 * p_out[:, L:]) * rng.standard_normal(
            (h.shape[0], L)).astype(self.dtype)
        phz, _ = self.phi_z.forward(z)
        logits, _ = self.decoder.forward(np.concatenate([phz, h], axis=1))
        probs = kernels.reference.sigmoid(logits)
        x = (rng.random(probs.shape) < probs).astype(self.dtype)
        return x, probs, phz

    def _advance(self, h, x_t, phz):
        """h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1})."""
        phx, _ = self.phi_x.forward(x_t)
        h, _ = self.rnn.forward(np.concatenate([phx, phz], axis=1), h)
        return h

    def generate(self, n, rng):
        """Sample n images row by row from the prior: returns (x (n, T*D) uint8 in {0, 1},
        probs (n, T*D) float64, the Bernoulli mean of each row given the sampled past)."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"expected n to be a positive integer, got {n!r}")
        rng = make_rng(rng)
        n = int(n)
        h = self.rnn.initial_state(n)
        xs, ps = [], []
        for t in range(self.T):
            x_t, p_t, phz = self._step_prior(h, rng)
            h = self._advance(h, x_t, phz)
            xs.append(x_t)
            ps.append(p_t)
        return self._images(xs), self._images(ps, np.float64)

    def sample(self, n, rng, binary=False):
        """n images from the model, (n, T*D): the Bernoulli means of each row given the sampled
        past (model dtype), or the binary pixels themselves (uint8).  See ``generate``."""
        x, probs = self.generate(n, rng)
        return x if binary else probs.astype(self.dtype)

    def complete(self, x, n_observed, rng):
        """Complete images given their first ``n_observed`` rows.

        The observed rows are read with the posterior (z_t ~ q(z_t | x_<=t, z_<t)), which
        updates h; the remaining rows are generated from the prior, feeding back the sampled
        rows.  x: (N, T*D) binary.  Returns (x (N, T*D) uint8, the observed rows copied,
        probs (N, T*D) float64, the observed rows' pixels as given).
        """
        if int(n_observed) != n_observed or not 0 <= n_observed <= self.T:
            raise ValueError(f"expected n_observed in 0..{self.T}, got {n_observed!r}")
        X = self.sequences(x)
        rng = make_rng(rng)
        T, N, D = X.shape
        L = self.L
        h = self.rnn.initial_state(N)
        xs, ps = [], []
        for t in range(int(n_observed)):
            phx, _ = self.phi_x.forward(X[t])
            q_out, _ = self.encoder.forward(np.concatenate([phx, h], axis=1))
            z = q_out[:, :L] + np.exp(0.5 * q_out[:, L:]) * rng.standard_normal(
                (N, L)).astype(self.dtype)
            phz, _ = self.phi_z.forward(z)
            h, _ = self.rnn.forward(np.concatenate([phx, phz], axis=1), h)
            xs.append(X[t])
            ps.append(X[t])
        for t in range(int(n_observed), T):
            x_t, p_t, phz = self._step_prior(h, rng)
            h = self._advance(h, x_t, phz)
            xs.append(x_t)
            ps.append(p_t)
        return self._images(xs), self._images(ps, np.float64)

    def _images(self, rows, dtype=np.uint8):
        """T arrays (N, D) -> (N, T*D) images."""
        return np.stack(rows, axis=1).reshape(rows[0].shape[0], self.T * self.D).astype(dtype)

    # ------------------------------------------------------------------------------------------
    # ------------------------------------------------------------------------------------------

    def __repr__(self):
        c = self.config
        return (f"VRNN(T={self.T}, D={c['row_size']}, L={c['latent']}, H={c['rnn_hidden']}, "
                f"F={c['features']}, hidden={tuple(c['hidden'])}, {c['activation']}, {c['dtype']})")
