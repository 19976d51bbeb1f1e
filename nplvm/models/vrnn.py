"""The variational recurrent neural network (VRNN, Chung et al. 2015) on images read row by row.

An image x (784 binary pixels) is read as a sequence x_1:T of T = 28 rows, each x_t in {0, 1}^D
with D = 28.  Every step has its own Gaussian latent z_t in R^L, and a recurrent state h_t
(a GRU) carries what the model has seen so far.  With feature extractors phi_x and phi_z:

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
VAE's), and its gradient with respect to every parameter, computed by backpropagation through
time written by hand (see ``_backward``): the reverse loop over t carries dL/dh_t, which every
later step depends on through the recurrence.

Parameter names: ``phi_x.*``, ``phi_z.*``, ``prior.*``, ``encoder.*``, ``decoder.*`` (MLPs, names
``layers.<l>.W`` / ``layers.<l>.b``) and ``rnn.*`` (the GRU cell: ``W_r``, ``U_r``, ``b_r``, ...).

Shapes: N images, T steps, D pixels per row, L latent dims, H GRU state, F features.  Inside,
arrays are time-major, (T, N, .), so step t is the contiguous slice [t] and a computation that
does not feed the recurrence runs once on all T*N rows at the end of the loop.

What runs where (a training step): phi_x of all T*N rows in one call before the loop (it reads
data only), and with it the phi_x part of the GRU's input side, phi_x(x_t) W_g + b_g for the
three gates g = r, u, c (``nplvm.nn.gru_input_side``); inside the forward loop only what the
recurrence needs (encoder, z_t, phi_z, the phi_z part of the input side, the GRU's h-side
products); after it the prior and the decoder in one call each over all T*N rows, and the two
kernels (Bernoulli NLL, Gaussian KL) once over everything.  The backward mirrors it: decoder and
prior backward batched first, then the reverse loop over t (the GRU's recurrent products only,
phi_z, reparameterization, encoder), then, one product each over all T*N rows, the GRU's
parameter gradients (sum_t x_t^T da_t = X^T dA) and its share of dL/dphi_x, and phi_x backward.
The training step reuses its large time-major arrays from one call to the next (``_buffers``):
fresh multi-megabyte arrays cost page faults on first touch.  Measured (``loss`` at batch 100,
float32, OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1, the default sizes, CPU time on a shared 2-core
machine, median of 10 interleaved runs of 8 steps): 72 ms per step with the step-by-step
``gru_forward`` / ``gru_backward`` loop, 64 ms with the fused GRU path and the reused buffers.

Public API
----------
VRNN(n_steps=28, row_size=28, n_latent=16, n_hidden=128, n_features=64, n_mlp=128,
     activation="relu", dtype="float32", seed=0)                       kind "vrnn"
    .params / .grads                         name -> live array ("rnn.U_c", "encoder.layers.0.W", ...)
    .loss(x, rng) -> (loss, grads)           x: (N, T*D) binary images or (N, T, D) rows
    .log_weights(x, K, rng) -> (K, N)        log p(x, z_1:T) - log q(z_1:T | x), whole trajectories
    .step_terms(x, rng) -> {"nll", "kl"}     (N, T) per-step terms of -ELBO
    .generate(n, rng) -> (x uint8, probs)    (n, T*D) each, row by row from the prior
    .complete(x, n_observed, rng) -> (x uint8, probs)   rows > n_observed from the prior
    .sequences(x) -> (T, N, D)               validated, time-major, model dtype
"""
from __future__ import annotations

import numpy as np

import kernels

from ..backend import check_dtype, rng as make_rng
from ..checks import DataError, check_array, check_binary, check_finite, nonneg_int, one_of, positive_int
from ..distributions import LOG_2PI
from ..nn import (GRUCell, MLP, Module, gru_fuse, gru_fused_grads, gru_input_grad, gru_input_side,
                  gru_step_backward, gru_step_forward)
from . import register

__all__ = ["VRNN"]


@register("vrnn")
class VRNN(Module):
    """VRNN with a GRU state, Gaussian latents per step and a Bernoulli decoder per row.

    Config (all JSON-serialisable; ``VRNN(**model.config)`` rebuilds the same model):
      n_steps     T, rows per image (28)
      row_size    D, pixels per row (28); inputs are (N, T*D) images or (N, T, D) sequences
      n_latent    L, dimension of each z_t
      n_hidden    H, size of the GRU state h_t
      n_features  F, output size of phi_x and phi_z
      n_mlp       width of the hidden layer of phi_x, prior, encoder and decoder
      activation  hidden activation of every MLP (the feature extractors end with it too)
      dtype       "float32" to train, "float64" to check gradients
      seed        seeds the initial weights
    """

    kind = "vrnn"

    def __init__(self, n_steps=28, row_size=28, n_latent=16, n_hidden=128, n_features=64,
                 n_mlp=128, activation="relu", dtype="float32", seed=0):
        for name, v in (("n_steps", n_steps), ("row_size", row_size), ("n_latent", n_latent),
                        ("n_hidden", n_hidden), ("n_features", n_features), ("n_mlp", n_mlp)):
            positive_int(name, v)
        one_of("activation", activation, kernels.reference.ACTIVATIONS)
        nonneg_int("seed", seed)
        dt = check_dtype(dtype)
        self.T, self.D, self.L = int(n_steps), int(row_size), int(n_latent)
        self.H, self.F, M = int(n_hidden), int(n_features), int(n_mlp)
        self.config = dict(n_steps=self.T, row_size=self.D, n_latent=self.L, n_hidden=self.H,
                           n_features=self.F, n_mlp=M, activation=activation, dtype=dt.name,
                           seed=int(seed))
        g = make_rng(int(seed))
        D, L, H, F = self.D, self.L, self.H, self.F
        # feature extractors: phi_x(x_t), phi_z(z_t), both ending with the hidden activation
        self.phi_x = MLP([D, M, F], activation, g, dt, out_activation=activation)
        self.phi_z = MLP([L, F], activation, g, dt, out_activation=activation)
        # prior(h_{t-1}) -> [mu_0,t, logvar_0,t]
        self.prior = MLP([H, M, 2 * L], activation, g, dt)
        # encoder([phi_x(x_t), h_{t-1}]) -> [mu_t, logvar_t]
        self.encoder = MLP([F + H, M, 2 * L], activation, g, dt)
        # decoder([phi_z(z_t), h_{t-1}]) -> Bernoulli logits of the row x_t
        self.decoder = MLP([F + H, M, D], activation, g, dt)
        # h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1})
        self.rnn = GRUCell(2 * F, H, g, dt)
        self.dtype = dt
        # live arrays, fetched once (Module.parameters() walks the attributes on every call)
        self._parameters = self.parameters()
        self.params = {k: p.value for k, p in self._parameters.items()}
        self.grads = {k: p.grad for k, p in self._parameters.items()}

    # ------------------------------------------------------------------------------------------
    # input
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

    # ------------------------------------------------------------------------------------------
    # forward: the filtering pass over t, then everything that does not feed the recurrence
    # ------------------------------------------------------------------------------------------

    def _buffers(self, reuse):
        """``buf(name, shape)``: an uninitialised array of the model dtype for the time-major
        arrays of one pass.  With ``reuse`` (the training step) each name keeps its array and
        hands it out again on the next call of the same shape: the kernel maps a fresh array of
        megabytes page by page on first touch, which measured ~1/8 of a training step at batch 100.
        Reused arrays hold their values only until the next ``loss`` call."""
        if not reuse:
            return lambda name, shape: np.empty(shape, dtype=self.dtype)
        cache = self.__dict__.setdefault("_workspace", {})

        def buf(name, shape):
            a = cache.get(name)
            if a is None or a.shape != tuple(shape) or a.dtype != self.dtype:
                a = cache[name] = np.empty(shape, dtype=self.dtype)
            return a
        return buf

    def _forward(self, X, eps, keep_caches=True):
        """Run q and p over the whole sequence for given noise.

        X: (T, N, D) rows, eps: (T, N, L) standard normal noise.  Returns a dict of time-major
        arrays: mu_q, logvar_q, z (T, N, L); mu_p, logvar_p (T*N, L); logits (T*N, D);
        h_prev (T, N, H) (h_{t-1} for each t) and, if ``keep_caches``, what backward needs: the
        layer caches, gru_in = [phi_x(x_t), phi_z(z_t)] (T, N, 2F), the fused GRU parameters
        ``gru`` (``gru_fuse``), its gates [r_t, u_t, c_t] (3, T, N, H) and r_t * h_{t-1}
        (T, N, H).  With ``keep_caches`` (the training step) the arrays are reused buffers,
        valid until the next call.
        """
        T, N, D = X.shape
        L, H, F = self.L, self.H, self.F
        # phi_x(x_t) for all T rows at once: it depends on the data only
        phx_flat, c_phx = self.phi_x.forward(X.reshape(T * N, D))
        phx = phx_flat.reshape(T, N, F)
        buf = self._buffers(keep_caches)
        h_prev = buf("h_prev", (T, N, H))               # h_{t-1}, t = 1..T
        # the GRU's input [phi_x(x_t), phi_z(z_t)] for every t, one contiguous array, so that
        # its weight gradient after BPTT is one product per gate
        gru_in = buf("gru_in", (T, N, 2 * F))
        gru_in[:, :, :F] = phx
        phz = gru_in[:, :, F:]                          # phi_z(z_t), filled in the loop
        z = buf("z", (T, N, L))
        mu_q = buf("mu_q", (T, N, L))
        logvar_q = buf("logvar_q", (T, N, L))
        c_enc, c_phz = [], []
        # The GRU's input is [phi_x(x_t), phi_z(z_t)], so the input side of each gate splits by
        # the rows of W_g:  [phi_x, phi_z] W_g + b_g = phi_x W_g^x + phi_z W_g^z + b_g.  The phi_x
        # part is known before the loop: one product over all T*N rows.  ``gates`` (3, T, N, H)
        # starts as that; step t adds phi_z(z_t) W_g^z and the h side, and gru_step_forward
        # overwrites gates[:, t] with [r_t, u_t, c_t], which the backward reads.
        gru = gru_fuse(self.rnn.param_arrays())
        gru_z = {"W": gru["W"][:, F:]}                  # the phi_z rows of each W_g
        gates = gru_input_side({"W": gru["W"][:, :F], "b": gru["b"]}, phx_flat,
                               out=buf("gates", (3, T * N, H))).reshape(3, T, N, H)
        rh = buf("rh", (T, N, H)) if keep_caches else None     # r_t * h_{t-1}, for dU_c
        h = self.rnn.initial_state(N)                    # h_0 = 0
        for t in range(T):
            h_prev[t] = h
            # q(z_t | x_<=t, z_<t): [mu_t, logvar_t] = encoder([phi_x(x_t), h_{t-1}])
            q_out, c = self.encoder.forward(np.concatenate([phx[t], h], axis=1))
            mu_q[t], logvar_q[t] = q_out[:, :L], q_out[:, L:]
            # reparameterization: z_t = mu_t + exp(logvar_t / 2) * eps_t
            z[t] = mu_q[t] + np.exp(0.5 * logvar_q[t]) * eps[t]
            phz[t], c_z = self.phi_z.forward(z[t])
            # recurrence: h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1})
            a = gates[:, t]
            a += np.matmul(phz[t], gru_z["W"])             # a_g = x_t W_g + b_g, both input parts
            h = gru_step_forward(gru, a, h, None if rh is None else rh[t])
            if keep_caches:
                c_enc.append(c)
                c_phz.append(c_z)
        # The prior and the decoder read h_{t-1} (and z_t) but feed nothing back into the
        # recurrence: one batched call each over all T*N rows instead of T small ones.
        p_out, c_prior = self.prior.forward(h_prev.reshape(T * N, H))
        dec_in = np.concatenate([phz, h_prev], axis=2, out=buf("dec_in", (T, N, F + H)))
        dec_in = dec_in.reshape(T * N, F + H)
        logits, c_dec = self.decoder.forward(dec_in)
        out = dict(mu_q=mu_q, logvar_q=logvar_q, z=z, h_prev=h_prev, logits=logits,
                   mu_p=p_out[:, :L], logvar_p=p_out[:, L:])
        if keep_caches:
            out.update(c_phx=c_phx, c_enc=c_enc, c_phz=c_phz, c_prior=c_prior, c_dec=c_dec,
                       gru_in=gru_in, gru=gru, gates=gates, rh=rh)
        return out

    def _terms(self, X, fwd, weight=None):
        """The per-step terms of -ELBO (*) and their gradients, from the fused kernels.

        Returns nll (T, N) = -log p(x_t | z_t, h_{t-1}), kl (T, N) = KL(q(z_t|.) || p(z_t|.)),
        and the gradients of the loss w.r.t. the logits, mu_q, logvar_q, mu_p, logvar_p
        (each row's gradient multiplied by ``weight``), all flattened to (T*N, .).
        """
        T, N, D = X.shape
        L = self.L
        nll, dlogits = kernels.bernoulli_nll(X.reshape(T * N, D), fwd["logits"], weight)
        kl, dmu_q, dlv_q, dmu_p, dlv_p = kernels.gaussian_kl(
            fwd["mu_q"].reshape(T * N, L), fwd["logvar_q"].reshape(T * N, L),
            np.ascontiguousarray(fwd["mu_p"]), np.ascontiguousarray(fwd["logvar_p"]), weight)
        return nll.reshape(T, N), kl.reshape(T, N), (dlogits, dmu_q, dlv_q, dmu_p, dlv_p)

    # ------------------------------------------------------------------------------------------
    # the loss and its gradient
    # ------------------------------------------------------------------------------------------

    def noise(self, n, rng, k=1):
        """eps_t ~ N(0, I) for every step of k trajectories of n images, time-major (T, k*n, L).

        Drawn sample-major, shape (k, n, T, L), from ``rng`` and then transposed, so trajectory
        (k, n) gets the same numbers however the samples are split into calls: ``loss(x, s)``
        and ``log_weights(x, 1, s)`` follow the same trajectories.  Model dtype.
        """
        eps = make_rng(rng).standard_normal((k * n, self.T, self.L))
        return np.ascontiguousarray(eps.transpose(1, 0, 2), dtype=self.dtype)

    def loss(self, x, rng, grad=True):
        """Mean over images of -ELBO (*) in nats per image, and its gradients.

        x: (N, T*D) binary images (or (N, T, D)); rng: a seed or Generator for eps.
        Returns (loss: float, grads: dict like ``params``).  One z_t sample per step.
        """
        X = self.sequences(x)
        N = X.shape[1]
        eps = self.noise(N, rng)                                    # (T, N, L)
        fwd = self._forward(X, eps)
        nll, kl, dterms = self._terms(X, fwd, weight=1.0 / N)     # d(mean over n)/d(row n) = 1/N
        loss = float((nll.sum() + kl.sum()) / N)
        if not grad:
            return loss, None
        for g in self.grads.values():
            g.fill(0)
        self._backward(eps, fwd, dterms)
        return loss, self.grads

    def _backward(self, eps, fwd, dterms):
        """Backpropagation through time; parameter grads accumulate into ``Parameter.grad``.

        dterms: (dlogits, dmu_q, dlogvar_q, dmu_p, dlogvar_p) from ``_terms``, each (T*N, .).
        """
        dlogits, dmu_q_kl, dlv_q_kl, dmu_p, dlv_p = dterms
        T, N, L = eps.shape
        H, F = self.H, self.F
        # The batched consumers of h_{t-1} and phi_z(z_t): decoder and prior, one call each.
        d_dec_in = self.decoder.backward(dlogits, fwd["c_dec"]).reshape(T, N, F + H)
        d_phz = d_dec_in[:, :, :F]                                          # dL/dphi_z(z_t) so far
        buf = self._buffers(True)
        d_p_out = np.concatenate([dmu_p, dlv_p], axis=1, out=buf("d_p_out", (T * N, 2 * L)))
        d_prior_in = self.prior.backward(d_p_out, fwd["c_prior"]).reshape(T, N, H)
        d_hprev = np.add(d_dec_in[:, :, F:], d_prior_in, out=buf("d_hprev", (T, N, H)))
        dmu_q_kl = dmu_q_kl.reshape(T, N, L)
        dlv_q_kl = dlv_q_kl.reshape(T, N, L)
        d_phx = buf("d_phx", (T, N, F))                                     # dL/dphi_x(x_t)
        logvar_q = fwd["logvar_q"]
        gru, gates, h_prev = fwd["gru"], fwd["gates"], fwd["h_prev"]
        gru_z = {"W": gru["W"][:, F:]}                      # the phi_z rows of each W_g
        d_gates = buf("d_gates", gates.shape)               # (3, T, N, H): dL/d[a_r, a_u, a_c] at each t
        # SOLUTION vrnn-bptt: backpropagation through time: the reverse loop over t carrying dh
        # HINT Start from dh = dL/dh_T = 0 and go t = T-1, ..., 0.  At step t, gru_step_backward(gru, dh,
        # HINT h_prev[t], gates[:, t], d_gates[:, t]) fills d_gates[:, t] = dL/d[a_r, a_u, a_c] and returns the
        # HINT GRU's share of dL/dh_{t-1}; gru_input_grad(gru_z, d_gates[:, t]) is the GRU's dL/dphi_z(z_t).
        # HINT phi_z(z_t) also feeds the decoder (d_phz[t]); z_t = mu_t + exp(logvar_t / 2) eps_t; add the
        # HINT KL's direct gradients; h_{t-1} reaches the loss through the GRU, the encoder and d_hprev[t].
        # HINT Fill d_phx[t] with the encoder's dL/dphi_x(x_t): the GRU's share and phi_x's backward run after the loop.
        dh = np.zeros((N, H), dtype=eps.dtype)        # dL/dh_T = 0: nothing reads the last state
        for t in range(T - 1, -1, -1):
            # h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1}): dh is the full dL/dh_t here
            da, dh_from_gru = gru_step_backward(gru, dh, h_prev[t], gates[:, t], d_gates[:, t])
            # phi_z(z_t) feeds the decoder (batched above) and the GRU (through the rows W_g^z)
            dz = self.phi_z.backward(d_phz[t] + gru_input_grad(gru_z, da), fwd["c_phz"][t])
            # z_t = mu_t + std_t * eps_t, std_t = exp(logvar_t / 2); plus the KL's direct terms
            std_eps = np.exp(0.5 * logvar_q[t]) * eps[t]
            dq_out = np.concatenate([dz + dmu_q_kl[t],                      # dL/dmu_t
                                     0.5 * dz * std_eps + dlv_q_kl[t]], axis=1)  # dL/dlogvar_t
            d_enc_in = self.encoder.backward(dq_out, fwd["c_enc"][t])
            d_phx[t] = d_enc_in[:, :F]                     # the GRU's share is added after the loop
            # h_{t-1} feeds the GRU, the encoder, the prior and the decoder at step t
            dh = dh_from_gru + d_enc_in[:, F:] + d_hprev[t]
        # dh is now dL/dh_0; h_0 = 0 is a constant, so the chain stops here
        # END SOLUTION
        # What the loop left for after it, one product each over all T*N rows (sum_t x_t^T da_t =
        # X^T dA): the GRU's parameter gradients and its share of dL/dphi_x(x_t), sum_g da_g W_g^x^T.
        d_gates = d_gates.reshape(3, T * N, H)
        gru_fused_grads(self.rnn.grad_arrays(), fwd["gru_in"].reshape(T * N, 2 * F),
                        h_prev.reshape(T * N, H), fwd["rh"].reshape(T * N, H), d_gates)
        d_phx = gru_input_grad({"W": gru["W"][:, :F]}, d_gates, add_to=d_phx.reshape(T * N, F))
        # phi_x(x_t) depends on the data only: one batched backward, no dL/dx needed
        self.phi_x.backward(d_phx, fwd["c_phx"], need_dx=False)

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
        fwd = self._forward(X, self.noise(X.shape[1], rng), keep_caches=False)
        nll, kl, _ = self._terms(X, fwd)
        return {"nll": nll.T.astype(np.float64), "kl": kl.T.astype(np.float64)}

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
        Returns float64 (K, N).
        """
        if isinstance(K, bool) or int(K) != K or K < 1:
            raise ValueError(f"expected K to be a positive integer, got {K!r}")
        K = int(K)
        X = self.sequences(x)
        T, N, D = X.shape
        rng = make_rng(rng)
        out = np.empty((K, N), dtype=np.float64)
        per_pass = max(1, min(K, int(max_rows) // N))           # copies of the batch per pass
        for k in range(0, K, per_pass):
            kk = min(per_pass, K - k)
            Xk = np.tile(X, (1, kk, 1))                          # (T, kk*N, D), row j*N + n = x_n
            out[k:k + kk] = self._log_weight(Xk, self.noise(N, rng, kk)).reshape(kk, N)
        return out

    def _log_weight(self, X, eps):
        """log p(x, z) - log q(z | x) of each row for the trajectories driven by eps, (N,)."""
        T, N, D = X.shape
        L = self.L
        fwd = self._forward(X, eps, keep_caches=False)
        nll, _ = kernels.bernoulli_nll(X.reshape(T * N, D), fwd["logits"])
        z = fwd["z"].reshape(T * N, L).astype(np.float64)
        mu_p = fwd["mu_p"].astype(np.float64)
        lv_p = fwd["logvar_p"].astype(np.float64)
        # log N(z; mu_0, var_0) = -1/2 sum_l [log 2 pi + logvar_0 + (z - mu_0)^2 / var_0]
        log_p_z = -0.5 * np.sum(LOG_2PI + lv_p + (z - mu_p) ** 2 * np.exp(-lv_p), axis=1)
        # log N(z; mu, var) with (z - mu)^2 / var = eps^2 exactly
        lv_q = fwd["logvar_q"].reshape(T * N, L).astype(np.float64)
        e = eps.reshape(T * N, L).astype(np.float64)
        log_q_z = -0.5 * np.sum(LOG_2PI + lv_q + e * e, axis=1)
        lw = -nll.astype(np.float64) + log_p_z - log_q_z                     # (T*N,)
        return lw.reshape(T, N).sum(axis=0)

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
        if int(n) != n or n < 1:
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
        return (f"VRNN(T={c['n_steps']}, D={c['row_size']}, L={c['n_latent']}, H={c['n_hidden']}, "
                f"F={c['n_features']}, mlp={c['n_mlp']}, {c['activation']}, {c['dtype']})")
