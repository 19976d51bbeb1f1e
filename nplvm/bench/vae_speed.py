"""Seconds per training epoch of a VAE: nplvm (NumPy + Numba, hand-written backward) vs PyTorch.

    python -m nplvm.bench.vae_speed --data ../shared/data/binarized_mnist.npz
    NPLVM_DATA=../shared/data/binarized_mnist.npz python -m nplvm.bench.vae_speed --repeats 3

The setting: one epoch over the 50,000 training images of the static binarized MNIST, a
784-512-512-32 ReLU VAE (encoder 784-512-512-64 for mu and logvar, decoder 32-512-512-784),
analytic KL, minibatches of 128, Adam with learning rate 1e-3, float32, BLAS limited to
``--threads`` (2) threads.  Without the file the offline 4,000 training images are tiled to
50,000 rows (same shapes, same work).

Timed for nplvm, each on its own epoch after a few warm-up steps (JIT compilation):

  step loop   for each batch: cast the uint8 rows to float32, model.loss, Adam.step
              (the work of training, the same loop the PyTorch side runs)
  fit         nplvm.train.fit for one epoch without validation (adds the finiteness checks and
              gradient norm the fit loop does on every step)

Threads.  ``--threads`` (default 2) is the number of threads each side may keep busy.  PyTorch
gets ``torch.set_num_threads(threads)``: one pool for products and elementwise work.  nplvm
gets BLAS (OpenBLAS, pthreads) limited to ``threads`` for the products, and its Numba kernels
(the elementwise passes, Bernoulli NLL, Adam) on the calling thread, which is one of BLAS's
threads anyway: never more than ``threads`` busy threads.  That is also what a student gets
by default (BLAS on every core, the kernels serial; see "Threads" in kernels/cpu.py).
``--kernel-threads n`` lets the Bernoulli and Adam kernels use a second pool of n Numba
threads (kernels.cpu.set_num_threads); on 2 cores the two pools fight, each one's idle threads
spinning while the other works (measured on a busy machine, 100 steps with 2 BLAS threads:
5.0 s with serial kernels, 11.4 s with 2 Numba threads).

Data.  The rows of each batch are gathered from a row-major copy of the training set (the .npz
stores it column-major, where every batch would be a strided gather, 0.7 ms instead of
0.05 ms), the same array for both sides.

When PyTorch is importable the same model, loss (BCE with logits + analytic KL, mean over the
batch), optimiser and loop run in the same process with ``torch.set_num_threads(threads)`` and
``torch.set_flush_denormal(True)``, and the ratio nplvm / PyTorch is printed (< 1 means nplvm
is faster).  Repeats alternate the two sides; the best epoch of each is reported.  The machine
may be shared, so compare numbers from one run only.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def load_train(source):
    """uint8 (50000, 784) training rows: the file if there is one, else the offline set tiled."""
    from nplvm.data import load_dataset
    source = source or os.environ.get("NPLVM_DATA")
    if source and os.path.exists(source):
        ds = load_dataset(source)
        return np.ascontiguousarray(ds.train), ds.name          # row-major: batches gather rows
    ds = load_dataset("offline")
    reps = -(-50000 // len(ds.train))
    return np.tile(ds.train, (reps, 1))[:50000], ds.name + " tiled to 50,000 rows"


def nplvm_epoch(model, opt, x, batch_size, seed, epoch, max_steps=None):
    """One epoch of the plain step loop; returns (seconds, mean loss)."""
    n = len(x)
    order = np.random.default_rng([seed, 1, epoch]).permutation(n)
    noise = np.random.default_rng([seed, 2, epoch])
    nb = -(-n // batch_size) if max_steps is None else max_steps
    total = 0.0
    t0 = time.perf_counter()
    for b in range(nb):
        xb = x[order[b * batch_size:(b + 1) * batch_size]].astype(np.float32)
        loss, grads = model.loss(xb, noise)
        opt.step(model.params, grads)
        total += loss
    return time.perf_counter() - t0, total / nb


def nplvm_fit_epoch(model, opt, x, batch_size, seed):
    from nplvm.train import fit
    t0 = time.perf_counter()
    h = fit(model, opt, x, None, epochs=1, batch_size=batch_size, seed=seed, progress=False, log=None)
    return time.perf_counter() - t0, h[-1]["train_loss"]


def torch_setup(hidden, latent, threads, lr, seed):
    import torch
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    nn = torch.nn

    def mlp(sizes):
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    enc = mlp([784, *hidden, 2 * latent])
    dec = mlp([latent, *reversed(hidden), 784])
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    F = torch.nn.functional

    def step(xb):
        h = enc(xb)
        mu, logvar = h[:, :latent], h[:, latent:]
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = dec(z)
        rec = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum") / xb.shape[0]
        kl = 0.5 * torch.sum(torch.exp(logvar) + mu * mu - 1.0 - logvar) / xb.shape[0]
        loss = rec + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return torch, step


def torch_epoch(torch, step, x, batch_size, seed, epoch, max_steps=None):
    n = len(x)
    order = np.random.default_rng([seed, 1, epoch]).permutation(n)
    nb = -(-n // batch_size) if max_steps is None else max_steps
    xt = torch.from_numpy(x)
    total = 0.0
    t0 = time.perf_counter()
    for b in range(nb):
        idx = torch.from_numpy(order[b * batch_size:(b + 1) * batch_size])
        loss = step(xt[idx].to(torch.float32))
        total += float(loss)
    return time.perf_counter() - t0, total / nb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="binarized_mnist.npz (default $NPLVM_DATA, else offline tiled)")
    p.add_argument("--hidden", default="512,512")
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2,
                   help="threads each side may keep busy: PyTorch's pool, nplvm's BLAS (default 2)")
    p.add_argument("--kernel-threads", "--numba-threads", dest="kernel_threads", type=int, default=1,
                   help="Numba threads of nplvm's Bernoulli and Adam kernels (default 1: the calling "
                        "thread; see the module docstring)")
    p.add_argument("--repeats", type=int, default=1, help="epochs timed per side (best reported)")
    p.add_argument("--steps", type=int, default=None, help="time only this many steps per epoch (smoke test)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if importable")
    p.add_argument("--no-fit", action="store_true", help="skip timing nplvm.train.fit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)

    import kernels
    from nplvm.models.vae import VAE, parse_hidden
    from nplvm.optim import Adam

    hidden = parse_hidden(args.hidden)
    backend = kernels.resolve_backend(np.zeros((1, 1), np.float32))
    if backend == "cpu":
        import kernels.cpu
        kernels.cpu.set_num_threads(args.kernel_threads)
    x, name = load_train(args.data)
    steps = args.steps
    nb = -(-len(x) // args.batch_size) if steps is None else steps
    print(f"data: {name}, {x.shape}; batch {args.batch_size} -> {nb} steps per epoch; "
          f"784-{'-'.join(map(str, hidden))}-{args.latent}; threads {args.threads} "
          f"(nplvm: BLAS {args.threads}, kernels '{backend}' on "
          f"{args.kernel_threads if backend == 'cpu' else 1} thread(s))")

    model = VAE(x_dim=x.shape[1], hidden=hidden, latent=args.latent, activation="relu", seed=args.seed)
    opt = Adam(args.lr)
    nplvm_epoch(model, opt, x, args.batch_size, args.seed, 100, max_steps=5)       # JIT warm-up
    results = {"nplvm": [], "fit": [], "torch": []}
    torch_side = None
    if not args.no_torch:
        try:
            torch_side = torch_setup(hidden, args.latent, args.threads, args.lr, args.seed)
            torch_epoch(*torch_side, x, args.batch_size, args.seed, 100, max_steps=5)
            print(f"PyTorch {torch_side[0].__version__} (threads {torch_side[0].get_num_threads()}, flush denormal on)")
        except ImportError:
            print("PyTorch not importable: nplvm only")

    for r in range(args.repeats):
        t, loss = nplvm_epoch(model, opt, x, args.batch_size, args.seed, r, max_steps=steps)
        results["nplvm"].append(t)
        print(f"  nplvm step loop   epoch {r + 1}: {t:6.2f} s  ({1e3 * t / nb:.2f} ms/step, mean loss {loss:.2f})")
        if torch_side is not None:
            t, loss = torch_epoch(*torch_side, x, args.batch_size, args.seed, r, max_steps=steps)
            results["torch"].append(t)
            print(f"  PyTorch           epoch {r + 1}: {t:6.2f} s  ({1e3 * t / nb:.2f} ms/step, mean loss {loss:.2f})")
    if not args.no_fit and steps is None:
        t, loss = nplvm_fit_epoch(model, opt, x, args.batch_size, args.seed)
        results["fit"].append(t)
        print(f"  nplvm train.fit   epoch:   {t:6.2f} s  ({1e3 * t / nb:.2f} ms/step, train NELBO {loss:.2f})")

    best = {k: min(v) for k, v in results.items() if v}
    print(f"seconds per epoch (best of {args.repeats}): " + ", ".join(f"{k} {v:.2f}" for k, v in best.items()))
    if "torch" in best:
        print(f"ratio nplvm / PyTorch = {best['nplvm'] / best['torch']:.2f} (step loop)"
              + (f", {best['fit'] / best['torch']:.2f} (fit)" if "fit" in best else "")
              + "   (< 1: nplvm faster)")
    return best


if __name__ == "__main__":
    main()
