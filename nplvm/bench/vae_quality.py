"""Test log-likelihood of a VAE / IWAE on the static binarized MNIST, against Burda et al. (2016).

    python -m nplvm.bench.vae_quality --data ../shared/data/binarized_mnist.npz --k 1  --out runs/q_vae
    python -m nplvm.bench.vae_quality --data ../shared/data/binarized_mnist.npz --k 50 --out runs/q_iwae50
    python -m nplvm.bench.vae_quality --k 1 --rounds 2 --n-test 100 --K 100 --out /tmp/q   # a smoke run

The setting of Burda, Grosse & Salakhutdinov (2016), "one stochastic layer" on MNIST: encoder
784-200-200-(50 mu, 50 logvar), decoder 50-200-200-784, tanh, Bernoulli likelihood, trained on
the 50,000 training images (``train``; ``--with-valid`` adds the 10,000 validation images, as
some papers do) with Adam (beta1 0.9, beta2 0.999, eps 1e-4), minibatches of 20, and their
schedule: rounds i = 0 ... 7 of 3^i epochs at learning rate 1e-3 * 10^(-i/7) (3,280 epochs in all;
``--rounds`` shortens it, ``--epochs E`` replaces it by E epochs at 1e-3).  The test NLL is
-log p(x) by importance sampling with K = 5000 samples per image, averaged over the 10,000 test
images.  Their table: 88.71 nats (VAE, k = 1) and 87.10 nats (IWAE, k = 50); the ELBO of the
same models 88.71... is reported too.

Writes ``--out``/checkpoint.npz after every round (``--resume`` continues from it),
metrics.jsonl (one line per epoch) and result.json (the final numbers).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

BURDA = {1: 88.71, 50: 87.10}          # test NLL, one stochastic layer, VAE k=1 / IWAE k=50


def schedule(args):
    """[(epochs, lr), ...]: Burda's rounds, or one constant-rate round of --epochs."""
    if args.epochs is not None:
        return [(args.epochs, args.lr)]
    return [(3 ** i, args.lr * 10 ** (-i / 7)) for i in range(args.rounds)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="the static binarized MNIST .npz (default $NPLVM_DATA, else ../shared/data/binarized_mnist.npz)")
    p.add_argument("--k", type=int, default=1, help="samples in the training bound: 1 = VAE, 50 = IWAE")
    p.add_argument("--rounds", type=int, default=8, help="rounds of Burda's schedule (8: 3,280 epochs)")
    p.add_argument("--epochs", type=int, default=None, help="instead of the schedule: this many epochs at --lr")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--hidden", default="200,200")
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--activation", default="tanh")
    p.add_argument("--K", type=int, default=5000, help="importance samples for the test NLL")
    p.add_argument("--n-test", type=int, default=None, help="evaluate on n test images, a strided subset (the file's test set is sorted by digit; default all)")
    p.add_argument("--with-valid", action="store_true", help="train on train + valid (60,000 images)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default 1: batches of 20 make small matrix products, which a second "
                        "thread slows down on a busy machine: 7.6 s vs 70 s per epoch measured here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/vae_quality")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.npz")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)           # BLAS; the Numba kernels run serially (see vae_speed)
    try:
        import numba
        numba.set_num_threads(1)
    except Exception:
        pass

    from nplvm import objectives
    from nplvm.data import load_dataset, strided_subset
    from nplvm.models.vae import IWAE, VAE, parse_hidden
    from nplvm.optim import Adam
    from nplvm.train import fit, load_checkpoint, save_checkpoint

    source = args.data or os.environ.get("NPLVM_DATA") or "../shared/data/binarized_mnist.npz"
    ds = load_dataset(source)
    x_train = np.concatenate([ds.train, ds.valid]) if args.with_valid else ds.train
    x_test = strided_subset(ds.test, args.n_test)       # the test set is sorted by digit
    cls = VAE if args.k == 1 else IWAE
    model = cls(x_dim=784, hidden=parse_hidden(args.hidden), latent=args.latent, activation=args.activation,
                k=args.k, seed=args.seed)
    opt = Adam(args.lr, eps=1e-4)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.npz"
    plan = schedule(args)
    done_rounds, history = 0, []
    if args.resume and ckpt.is_file():
        _, opt_state, state = load_checkpoint(ckpt, model)
        opt.load_state_dict(opt_state)
        done_rounds, history = int(state["round"]), list(state["history"])
        print(f"resumed after round {done_rounds} ({len(history)} epochs)")
    print(f"data: {ds!r}; training on {len(x_train):,} images; model {model!r}")
    print(f"schedule: {' + '.join(f'{e} ep @ {lr:.2e}' for e, lr in plan)} = {sum(e for e, _ in plan)} epochs, "
          f"batch {args.batch_size}")

    t_start = time.perf_counter()
    for r in range(done_rounds, len(plan)):
        epochs, lr = plan[r]
        opt.lr = lr
        h = fit(model, opt, x_train, None, epochs=epochs, batch_size=args.batch_size,
                seed=args.seed * 1000 + r, progress=True, log=None)
        for rec in h:
            rec.update(epoch=len(history) + 1, round=r, lr=lr)
            history.append(rec)
        sec = sum(rec["seconds"] for rec in h) / len(h)
        print(f"round {r + 1}/{len(plan)}: {epochs} epochs at lr {lr:.2e}, train -L_{args.k} "
              f"{h[-1]['train_loss']:.2f}, {sec:.1f} s per epoch")
        save_checkpoint(ckpt, model, opt, state={"round": r + 1, "history": history})
        with open(out / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(rec) + "\n" for rec in history)
    train_seconds = time.perf_counter() - t_start

    t0 = time.perf_counter()
    lw1 = objectives.sample_log_weights(model, x_test, 1, rng=args.seed + 1)
    elbo = float(lw1.mean())
    log_px = objectives.importance_sampled_log_px(model, x_test, K=args.K, batch=100, rng=args.seed + 2,
                                                  max_rows=50000)
    nll = -float(log_px.mean())
    res = {"k": args.k, "epochs": len(history), "n_train": len(x_train), "n_test": len(x_test), "K": args.K,
           "test_nelbo": -elbo, "test_nll": nll, "test_nll_se": float(log_px.std() / math.sqrt(len(log_px))),
           "burda_nll": BURDA.get(args.k), "train_seconds": train_seconds,
           "eval_seconds": time.perf_counter() - t0,
           "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])) if history else None}
    print(f"test NELBO (1 sample)      {res['test_nelbo']:.2f} nats")
    print(f"test NLL (IS, K = {args.K})  {nll:.2f} +- {res['test_nll_se']:.2f} nats"
          + (f"   (Burda et al.: {BURDA[args.k]:.2f})" if args.k in BURDA else ""))
    (out / "result.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
