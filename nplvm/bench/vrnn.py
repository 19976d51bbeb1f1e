"""The VRNN on the static binarized MNIST, read row by row, beside our VAE on the same images.

Both models are trained for the same number of epochs on the same training images, then scored
on the same test images with the same importance-sampling budget: the test NELBO (the training
objective) and the importance-sampled negative log-likelihood -log p(x) (K samples: whole latent
trajectories z_1:T ~ q for the VRNN), in nats per image, so the two stand side by side.  Seconds
per training epoch are measured without validation; ``--profile`` adds a cProfile of the VRNN's
training step (where the time goes: BLAS, elementwise NumPy, Python overhead).

    # full scale (the lead runs this; hours on a CPU: it prints s/epoch and the IS ETA):
    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python -m nplvm.bench.vrnn \\
        --data /work/shared/data/binarized_mnist.npz --epochs 50 --n-test 10000 --K 1000 \\
        --out runs/bench_vrnn
    # smoke test, seconds:
    python -m nplvm.bench.vrnn --data /work/shared/data/binarized_mnist.npz --epochs 1 \\
        --n-train 1000 --n-test 100 --K 10 --hidden 32 --vae-hidden 64 --profile

Threads: the VRNN's per-step matrices are small (batch x 128), too small to split across threads;
on a small or shared CPU run it with ``OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1`` (measured on
a loaded 2-core machine: 0.10 s per training step with one thread each, 1.1 s with the defaults).

``--data`` defaults to ``$NPLVM_DATA`` (else the offline subset, which is not the benchmark).
The test set of binarized_mnist.npz is sorted by digit, so a subset of ``--n-test`` images is
taken with a stride (every digit is represented).  ``--vae-checkpoint`` scores an already
trained VAE (a ``python -m nplvm train vae`` run) instead of training one here.
Writes ``result.json`` (and each model's metrics.jsonl / checkpoint.npz) to ``--out``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

import numpy as np

from ..data import load_dataset, strided_subset
from ..models import build
from ..models.vrnn_fast import VRNNFast
from ..objectives import importance_sampled_log_px
from ..optim import Adam
from ..train import evaluate, fit, load_checkpoint


def profile_step(model, x, n_steps=5, seed=0, top=12):
    """cProfile ``n_steps`` calls of model.loss on x; returns (seconds per step, report text).

    The report lists the functions with the most own time and the share of the step spent in
    BLAS (matmul), in the rest of NumPy and in Python code itself.
    """
    model.loss(x, seed)                                   # warm up (allocations, kernel dispatch)
    t0 = time.perf_counter()
    for s in range(n_steps):
        model.loss(x, seed + s)
    per_step = (time.perf_counter() - t0) / n_steps
    prof = cProfile.Profile()
    prof.enable()
    for s in range(n_steps):
        model.loss(x, seed + s)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    return per_step, buf.getvalue()


def train_and_score(name, model, ds, x_test, args, log):
    """Train (unless already trained), time the epochs, score NELBO and IS NLL on x_test."""
    out = Path(args.out) / name if args.out else None
    history = []
    if args.epochs > 0 and not getattr(model, "_pretrained", False):
        x_train = ds.train[:args.n_train] if args.n_train else ds.train
        log(f"[{name}] training {model!r} on {len(x_train)} images for {args.epochs} epochs")
        history = fit(model, Adam(lr=args.lr), x_train, None, epochs=args.epochs,
                      batch_size=args.batch_size, seed=args.seed, out_dir=out, progress=False,
                      clip_norm=args.clip_norm, log=lambda s: log("    " + s))
    # the IS budget: time a small call first and say how long the whole evaluation will take
    t0 = time.perf_counter()
    k_probe = min(args.K, 20)
    model.log_weights(x_test[:50], k_probe, np.random.default_rng(args.seed))
    rate = 50 * k_probe / (time.perf_counter() - t0)
    log(f"[{name}] importance sampling: ~{rate:,.0f} (image, sample) pairs per second, so about "
        f"{len(x_test) * args.K / rate / 60:.1f} min for {len(x_test)} images x K = {args.K}")
    t0 = time.perf_counter()
    nelbo = evaluate(model, x_test, batch_size=100, seed=args.seed)
    log_px = importance_sampled_log_px(model, x_test, K=args.K, batch=args.eval_batch,
                                       rng=args.seed, max_rows=args.max_rows)
    seconds_eval = time.perf_counter() - t0
    res = {"model": name, "kind": model.kind, "config": model.config,
           "n_params": int(sum(p.size for p in model.params.values())),
           "epochs": len(history),
           "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else None,
           "train_loss_last": history[-1]["train_loss"] if history else None,
           "test_nelbo": float(nelbo), "test_nll_is": float(-log_px.mean()),
           "test_nll_is_se": float(log_px.std() / np.sqrt(len(log_px))),
           "K": int(args.K), "n_test": int(len(x_test)), "seconds_eval": seconds_eval}
    log(f"[{name}] test NELBO {res['test_nelbo']:.2f}  IS NLL {res['test_nll_is']:.2f} "
        f"(+- {res['test_nll_is_se']:.2f}, K={args.K}, {len(x_test)} images; {seconds_eval:.1f} s)")
    return res


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="binarized_mnist.npz (default $NPLVM_DATA, else offline)")
    p.add_argument("--epochs", type=int, default=50, help="training epochs of each model (default %(default)s)")
    p.add_argument("--n-train", type=int, default=None, help="use only the first n training images")
    p.add_argument("--n-test", type=int, default=10000, help="test images scored (strided subset; default all)")
    p.add_argument("--K", type=int, default=1000,
                   help="importance samples per test image (default %(default)s; Burda et al. use 5000, "
                        "which takes 5x longer: the ETA is printed before the evaluation starts)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip-norm", type=float, default=50.0, help="global gradient-norm clipping (default %(default)s)")
    p.add_argument("--eval-batch", type=int, default=100, help="test images per IS batch")
    p.add_argument("--max-rows", type=int, default=20000, help="(sample, image) rows per log_weights call")
    p.add_argument("--seed", type=int, default=0)
    # the VRNN
    p.add_argument("--latent", type=int, default=16, help="VRNN: size of each z_t")
    p.add_argument("--hidden", type=int, default=128, help="VRNN: GRU state size")
    p.add_argument("--features", type=int, default=64, help="VRNN: phi_x / phi_z output size")
    p.add_argument("--mlp", type=int, default=128, help="VRNN: hidden width of its MLPs")
    # the VAE beside it
    p.add_argument("--vae-hidden", default="200,200", help="VAE hidden sizes (default Burda et al.'s 200,200)")
    p.add_argument("--vae-latent", type=int, default=50)
    p.add_argument("--vae-activation", default="tanh")
    p.add_argument("--vae-checkpoint", default=None, help="score this trained VAE instead of training one")
    p.add_argument("--no-vae", action="store_true", help="score the VRNN only")
    p.add_argument("--profile", action="store_true", help="cProfile the VRNN training step first")
    p.add_argument("--out", default=None, help="folder for result.json and the runs")
    return p


def main(argv=None, log=print):
    args = build_parser().parse_args(argv)
    source = args.data or os.environ.get("NPLVM_DATA")
    ds = load_dataset(source, seed=args.seed)
    if ds.name == "mnist5k":
        log("note: the offline 5,000-digit subset is not the benchmark; pass "
            "--data /work/shared/data/binarized_mnist.npz (or set NPLVM_DATA)")
    x_test = strided_subset(ds.test, args.n_test)
    log(f"data: {ds!r}; scoring {len(x_test)} test images, K = {args.K}; "
        f"threads: OPENBLAS {os.environ.get('OPENBLAS_NUM_THREADS') or os.environ.get('OMP_NUM_THREADS') or 'default'}, "
        f"NUMBA {os.environ.get('NUMBA_NUM_THREADS', 'default')}")
    # the fused twin of the readable VRNN (the same numbers, tested equal), for speed
    vrnn = VRNNFast(x_dim=784, row_size=28, latent=args.latent, rnn_hidden=args.hidden,
                    features=args.features, hidden=(args.mlp,), activation="relu",
                    dtype="float32", seed=args.seed)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    result = {"command": "python -m nplvm.bench.vrnn " + " ".join(argv_used), "data": ds.name,
              "models": []}
    if args.profile:
        xb = ds.train[:args.batch_size].astype(np.float32)
        per_step, text = profile_step(vrnn, xb, seed=args.seed)
        n_batches = -(-(args.n_train or len(ds.train)) // args.batch_size)
        log(f"[profile] VRNN loss+gradient, batch {args.batch_size}: {per_step * 1e3:.1f} ms per step "
            f"(~{per_step * n_batches:.1f} s per epoch of {n_batches} batches, before the Adam step)")
        log(text)
        result["ms_per_step"] = per_step * 1e3
    result["models"].append(train_and_score("vrnn", vrnn, ds, x_test, args, log))
    if not args.no_vae:
        if args.vae_checkpoint:
            vae, _, _ = load_checkpoint(args.vae_checkpoint if str(args.vae_checkpoint).endswith(".npz")
                                        else Path(args.vae_checkpoint) / "checkpoint.npz")
            vae._pretrained = True
        else:
            hidden = [int(h) for h in str(args.vae_hidden).split(",") if h]
            vae = build("vae", dict(x_dim=784, hidden=hidden, latent=args.vae_latent,
                                    activation=args.vae_activation, dtype="float32", seed=args.seed))
        result["models"].append(train_and_score("vae", vae, ds, x_test, args, log))
    log("\nmodel  params     s/epoch  test NELBO  test NLL (IS)   [nats per image]")
    for r in result["models"]:
        spe = "-" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.1f}"
        log(f"{r['model']:<6} {r['n_params']:>9,}  {spe:>7}  {r['test_nelbo']:>10.2f}  "
            f"{r['test_nll_is']:>8.2f} +- {r['test_nll_is_se']:.2f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
