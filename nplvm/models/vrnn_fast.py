"""The VRNN's fast twin: the same model, loss and gradients as ``nplvm.models.vrnn.VRNN``, with
the work batched over time steps and the GRU's gates stacked.

Read ``vrnn.py`` first: it is the model, written step by step with a readable BPTT.  This class
computes the same numbers (tested equal: the loss and every gradient, float64, 1e-12 relative)
and is what the VRNN benchmark trains.  Only ``loss`` differs; construction, parameters, config,
evaluation and generation are inherited.

What runs where (a training step): phi_x of all T*N rows in one call before the loop (it reads
data only), and with it the phi_x part of the GRU's input side, phi_x(x_t) W_g + b_g for the
three gates g = r, u, c (``nplvm.nn.gru_input_side``); inside the forward loop only what the
recurrence needs (encoder, z_t, phi_z, the phi_z part of the input side, the GRU's h-side
products); after it the prior and the decoder in one call each over all T*N rows, and the two
kernels (Bernoulli NLL, Gaussian KL) once over everything.  The backward mirrors it: decoder and
prior backward batched first, then the reverse loop over t (the GRU's recurrent products only,
phi_z, reparameterization, encoder), then, one product each over all T*N rows, the GRU's
parameter gradients (sum_t x_t^T da_t = X^T dA) and its share of dL/dphi_x, and phi_x backward.
The training step reuses its large time-major intermediate arrays from one call to the next
(``_buffers``): fresh multi-megabyte arrays cost page faults on first touch.  The gradients it
returns are new arrays each call (the caller owns them).  Measured (``loss`` at batch 100,
float32, OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1, the default sizes, CPU time on a shared
2-core machine, median of 10 interleaved runs of 8 steps): 72 ms per step with the step-by-step
``gru_forward`` / ``gru_backward`` loop, 64 ms with the fused GRU path and the reused buffers.

    VRNNFast(**config)      the same constructor as VRNN; not a registered kind (a checkpoint of
                            either is a "vrnn": build("vrnn", config) rebuilds the readable one)
"""
from __future__ import annotations

import numpy as np

import kernels

from ..distributions import reparameterize_backward
from ..nn import gru_fuse, gru_fused_grads, gru_input_grad, gru_input_side, gru_step_backward, gru_step_forward
from .vrnn import VRNN

__all__ = ["VRNNFast"]


class VRNNFast(VRNN):
    """``VRNN`` with a fused, batched training step (see the module docstring)."""

    def loss(self, x, rng, grad=True):
        """The same as ``VRNN.loss`` (the same eps from rng, the same numbers), computed fused."""
        X = self.sequences(x)
        N = X.shape[1]
        eps = self.noise(N, rng)                                    # (T, N, L)
        fwd = self._fused_forward(X, eps, keep_caches=grad)
        nll, kl, dterms = self._terms(X, fwd, weight=1.0 / N)     # d(mean over n)/d(row n) = 1/N
        loss = float((nll.sum() + kl.sum()) / N)
        if not grad:
            return loss, None
        self.release_grads()
        self.rnn.zero_grad()                  # new zero arrays: gru_fused_grads adds into them
        self._fused_backward(eps, fwd, dterms)
        return loss, self.take_grads()

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

    def _fused_forward(self, X, eps, keep_caches=True):
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

    def _fused_backward(self, eps, fwd, dterms):
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
        # SOLUTION vrnn-bptt: the fused twin of VRNN._backward (the same reverse loop, batched where it can be)
        dh = np.zeros((N, H), dtype=eps.dtype)        # dL/dh_T = 0: nothing reads the last state
        for t in range(T - 1, -1, -1):
            # h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1}): dh is the full dL/dh_t here
            da, dh_from_gru = gru_step_backward(gru, dh, h_prev[t], gates[:, t], d_gates[:, t])
            # phi_z(z_t) feeds the decoder (batched above) and the GRU (through the rows W_g^z)
            dz = self.phi_z.backward(d_phz[t] + gru_input_grad(gru_z, da), fwd["c_phz"][t])
            # z_t = mu_t + std_t * eps_t, std_t = exp(logvar_t / 2); plus the KL's direct terms
            dmu, dlogvar = reparameterize_backward(dz, eps[t], logvar_q[t])
            dq_out = np.concatenate([dmu + dmu_q_kl[t], dlogvar + dlv_q_kl[t]], axis=1)
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
