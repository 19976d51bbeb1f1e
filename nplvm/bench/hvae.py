"""Hierarchical VAEs on the static binarized MNIST: 1-layer VAE vs 2-layer HVAE vs 2-layer LVAE
(and optionally batch norm, KL warm-up, 5 layers), at matched epochs, against the anchors.

    # one model per process, one core each (the lead can run them in parallel):
    OMP_NUM_THREADS=1 python -m nplvm.bench.hvae --data /work/shared/data/binarized_mnist.npz \\
        --models vae,hvae2,lvae2 --epochs 20 --out runs/bench_hvae/results.json
    python -m nplvm.bench.hvae --table runs/bench_hvae/*.json        # one table from several runs
    python -m nplvm.bench.hvae --quick                               # seconds (the tests run it)

Models (``--models``, comma-separated): ``vae`` (nplvm.models.vae.VAE, latent = the bottom size),
``hvae<L>`` / ``lvae<L>`` with L in 1..5 stochastic layers of sizes 64, 32, 16, 8, 4 (bottom
first; ``--latent`` overrides), each optionally suffixed ``+bn`` (batch normalisation) and/or
``+wu`` (KL warm-up over ``--warmup`` epochs).  Every model: the same MLP widths (``--hidden``,
tanh), Adam at ``--lr``, batches of 100, ``--epochs`` epochs, the same seed.

Per model: test NELBO (one sample per image), test NLL -log p(x) by importance sampling with
``--K`` samples of the whole hierarchy z_1..L ~ q(z|x) per image on ``--n-test`` evenly spaced test
images (the test set is sorted by digit), active units per layer (Burda et al.: Cov_x E_q[z_j] >
0.01, on the same test images), the KL term of each layer on the test images, and its evolution
over training (on 1,000 validation images, every epoch), seconds per training epoch.
``--max-minutes`` stops a model's training after the epoch that passes it (the epochs actually
run are reported: compare rows only at equal epochs).

Measured here (README, 10 epochs): without batch norm the hierarchies sit on the "mean image"
plateau for epochs (the plain LVAE 57 nats behind the VAE); with ``+bn+wu`` the 2-layer LVAE beats
the 2-layer HVAE by 1.3 nats and the HVAE the 1-layer VAE by 3.8.  Compare models with the same
flags.

Anchors (not the same budget: printed for scale): Sonderby et al. (2016), a 5-layer LVAE with
batch norm, warm-up, 10 importance samples in training and fine-tuning, 81.74 nats on
dynamically binarized MNIST (5,000 samples for evaluation), and VAEs of the same depth that stop
improving after 2 layers without batch norm and warm-up; Burda et al. (2016), one stochastic layer,
the fixed binarization used here: 88.71 nats after 3,280 epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ANCHORS = {"Burda et al. (2016), VAE, 1 layer, fixed binarization, 3,280 epochs": 88.71,
           "Sonderby et al. (2016), LVAE, 5 layers, BN + warm-up + IW10 + fine-tuning, dynamic binarization": 81.74}
SIZES = (64, 32, 16, 8, 4)
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
NAME = re.compile(r"^(vae|hvae[1-5]|lvae[1-5])((?:\+bn|\+wu)*)$")


def model_from_name(name, args):
    """'lvae2+bn+wu' -> an untrained model (see the module docstring)."""
    from ..models import build
    m = NAME.match(name)
    if not m:
        raise ValueError(f"expected a model name like vae, hvae2, lvae2+wu, lvae5+bn+wu; got {name!r}")
    base, flags = m.group(1), m.group(2)
    hidden = [int(h) for h in str(args.hidden).split(",") if h]
    latent = [int(s) for s in args.latent.split(",")] if args.latent else list(SIZES)
    if base == "vae":
        if flags:
            raise ValueError(f"+bn and +wu apply to hvae/lvae models, got {name!r}")
        return build("vae", dict(x_dim=784, hidden=hidden, latent=latent[0], activation=args.activation,
                                 dtype="float32", seed=args.seed))
    n_layers = int(base[-1])
    if n_layers > len(latent):
        raise ValueError(f"{name!r} needs {n_layers} latent sizes, --latent gives {latent}")
    return build(base[:4], dict(x_dim=784, hidden=hidden, latent=latent[:n_layers], activation=args.activation,
                                batch_norm="+bn" in flags, warmup=args.warmup if "+wu" in flags else 0,
                                dtype="float32", seed=args.seed))


def run_model(name, ds, x_test, args, log):
    from ..models.hvae import active_units, kl_per_layer
    from ..objectives import importance_sampled_log_px, nelbo
    from ..optim import Adam
    from ..train import fit

    model = model_from_name(name, args)
    x_train = ds.train[:args.n_train] if args.n_train else ds.train
    x_kl = ds.valid[:1000]
    log(f"[{name}] {model!r}: {sum(a.size for k, a in model.params.items() if 'running_' not in k):,} parameters; "
        f"{len(x_train)} training images, up to {args.epochs} epochs")
    t_start = time.perf_counter()

    def eval_fn(m, epoch):
        return {"kl_weight": getattr(m, "kl_weight", 1.0),
                "kl_per_layer_valid": kl_per_layer(m, x_kl, rng=args.seed).tolist()}

    # One epoch per fit call, resuming from the run's own checkpoint: the same numbers as one call
    # (train.fit resumes bit for bit), with a chance to stop at the time budget between epochs.
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench_hvae_{name.replace('+', '_')}_"))
    optimizer, history, stopped = Adam(lr=args.lr), [], False
    for e in range(args.epochs):
        history = fit(model, optimizer, x_train, None, epochs=e + 1, batch_size=args.batch_size,
                      seed=args.seed, progress=False, eval_fn=eval_fn, out_dir=run_dir, resume=True,
                      clip_norm=args.clip_norm,
                      log=lambda line: None if line.startswith(("resumed", "no checkpoint")) else log("    " + line))
        if args.max_minutes and time.perf_counter() - t_start > 60 * args.max_minutes and e + 1 < args.epochs:
            stopped = True
            log(f"[{name}] stopped after {e + 1} epochs: the budget of {args.max_minutes} min is spent")
            break
    shutil.rmtree(run_dir, ignore_errors=True)
    t_train = time.perf_counter() - t_start
    t0 = time.perf_counter()
    test_nelbo = nelbo(model, x_test, rng=args.seed)
    log_px = importance_sampled_log_px(model, x_test, K=args.K, batch=args.eval_batch, rng=args.seed,
                                       max_rows=args.max_rows)
    au = active_units(model, x_test, S=args.au_samples, rng=args.seed)
    kl = kl_per_layer(model, x_test, rng=args.seed)
    t_eval = time.perf_counter() - t0
    res = {"model": name, "kind": model.kind, "config": model.config,
           "n_params": int(sum(a.size for k, a in model.params.items() if "running_" not in k)),
           "epochs": len(history), "train_seconds": t_train,
           # the median: the first epoch also compiles the Numba kernels
           "seconds_per_epoch": float(np.median([h["seconds"] for h in history])) if history else None,
           "train_loss": [h["train_loss"] for h in history],
           "kl_per_layer_valid": [h.get("kl_per_layer_valid") for h in history],
           "kl_weight": [h.get("kl_weight") for h in history],
           "test_nelbo": float(test_nelbo), "test_nll_is": float(-log_px.mean()),
           "test_nll_is_se": float(log_px.std(ddof=1) / np.sqrt(len(log_px))),
           "active_units": au["counts"], "layer_sizes": au["sizes"], "kl_per_layer_test": kl.tolist(),
           "K": int(args.K), "n_test": int(len(x_test)), "eval_seconds": t_eval, "stopped_by_budget": stopped,
           "test_log_px": [round(float(v), 4) for v in log_px]}       # per image: paired comparisons
    log(f"[{name}] {res['epochs']} epochs ({res['seconds_per_epoch'] or 0:.1f} s/epoch); test NELBO "
        f"{res['test_nelbo']:.2f}, IS NLL {res['test_nll_is']:.2f} +- {res['test_nll_is_se']:.2f} "
        f"(K = {args.K}, {len(x_test)} images); active units {au['counts']} of {au['sizes']}; "
        f"KL per layer {np.round(kl, 2).tolist()}; eval {t_eval:.0f} s")
    return res


def table(results, log=print):
    """Print one row per model and the anchors."""
    log("\nmodel           epochs  s/epoch  test NELBO  test NLL (IS)      active units   KL per layer (nats, bottom first)")
    for r in results:
        au = ", ".join(f"{a}/{s}" for a, s in zip(r["active_units"], r["layer_sizes"]))
        kl = ", ".join(f"{k:.1f}" for k in r["kl_per_layer_test"])
        spe = "-" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.1f}"
        log(f"{r['model']:<15} {r['epochs']:>6}  {spe:>7}  {r['test_nelbo']:>10.2f}  "
            f"{r['test_nll_is']:>7.2f} +- {r['test_nll_is_se']:.2f}  {au:>13}   {kl}")
    if results:
        r = results[0]
        log(f"(IS with K = {r['K']} on {r['n_test']} evenly spaced test images; NLL is an upper bound on -log p(x))")
    for k, v in ANCHORS.items():
        log(f"anchor: {k}: {v:.2f}")


def seconds_per_epoch(names, args, x, steps=12):
    """Measured training seconds per epoch of each model: ``steps`` Adam steps on batches of x
    after two warm-up steps (kernel compilation), times the batches of an epoch."""
    from ..optim import Adam
    n_batches = -(-(args.n_train or 50000) // args.batch_size)
    out = {}
    for name in names:
        m, opt = model_from_name(name, args), Adam(args.lr)
        xb = [x[(b * args.batch_size) % len(x):][:args.batch_size].astype(np.float32) for b in range(steps + 2)]
        for b in range(2):
            opt.step(m.params, m.loss(xb[b], b)[1])
        t0 = time.perf_counter()
        for b in range(2, steps + 2):
            opt.step(m.params, m.loss(xb[b], b)[1])
        out[name] = (time.perf_counter() - t0) / steps * n_batches
    return out


def run_parallel(names, args, argv, log):
    """Each model in its own process (one thread each), ``--jobs`` at a time; returns the results."""
    import subprocess
    tmp = Path(tempfile.mkdtemp(prefix="bench_hvae_jobs_"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    base = [a for a in argv]
    drop = {"--models", "--out", "--jobs", "--fit-minutes", "--epochs", "--warmup"}
    clean, skip = [], False
    for a in base:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if any(a.startswith(d + "=") for d in drop):
            continue
        clean.append(a)
    pending, running, results = list(names), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            n = pending.pop(0)
            cmd = [sys.executable, "-m", "nplvm.bench.hvae", *clean, "--models", n, "--epochs", str(args.epochs),
                   "--warmup", str(args.warmup), "--out", str(tmp / f"{n}.json")]
            logf = open(tmp / f"{n}.log", "w")
            running.append((n, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env), logf))
            log(f"started {n}: {' '.join(cmd[1:])}")
        time.sleep(1.0)
        for item in list(running):
            n, proc, logf = item
            if proc.poll() is not None:
                logf.close()
                running.remove(item)
                text = (tmp / f"{n}.log").read_text()
                log(f"---- {n} (exit {proc.returncode}) ----\n{text.rstrip()}")
                f = tmp / f"{n}.json"
                if f.is_file():
                    results.extend(json.loads(f.read_text())["models"])
    shutil.rmtree(tmp, ignore_errors=True)
    order = {n: i for i, n in enumerate(names)}
    return sorted(results, key=lambda r: order.get(r["model"], 0))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help=f"binarized_mnist.npz (default $NPLVM_DATA, else {DEFAULT_DATA})")
    p.add_argument("--models", default="vae,hvae2,lvae2", help="comma-separated (default %(default)s)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of every model (default %(default)s)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop a model's training after the epoch that passes this many minutes")
    p.add_argument("--hidden", default="200,200", help="MLP widths of every network (default %(default)s)")
    p.add_argument("--latent", default=None, help="layer sizes, bottom first (default 64,32,16,8,4)")
    p.add_argument("--activation", default="tanh")
    p.add_argument("--warmup", type=int, default=10, help="KL warm-up epochs of the +wu models (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--clip-norm", type=float, default=None)
    p.add_argument("--n-train", type=int, default=None, help="use the first n training images (default all 50,000)")
    p.add_argument("--n-test", type=int, default=2000, help="evenly spaced test images scored (default %(default)s)")
    p.add_argument("--K", type=int, default=1000, help="importance samples per test image (default %(default)s)")
    p.add_argument("--au-samples", type=int, default=10, help="samples of the other layers in E_q[z_i] (default %(default)s)")
    p.add_argument("--eval-batch", type=int, default=100)
    p.add_argument("--max-rows", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings on the offline data (seconds)")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--jobs", type=int, default=1,
                   help="run the models in this many processes at once, one thread each (default 1: in turn)")
    p.add_argument("--fit-minutes", type=float, default=None,
                   help="choose --epochs (and --warmup = epochs // 3) so that the slowest listed model trains "
                        "in about this many minutes, from a measured step time (x 1.25 when --jobs > 1)")
    p.add_argument("--table", nargs="+", default=None, metavar="JSON",
                   help="print one table from result files of earlier runs, and exit")
    return p


def main(argv=None, log=print):
    args = build_parser().parse_args(argv)
    if args.table:
        results = []
        for f in args.table:
            results.extend(json.loads(Path(f).read_text())["models"])
        table(results, log)
        return {"models": results}
    from ..data import load_dataset, strided_subset
    if args.quick:
        args.data = args.data or "offline"
        args.epochs, args.n_train, args.n_test, args.K = min(args.epochs, 2), 500, 50, 20
        args.hidden, args.au_samples, args.warmup = "32", 2, min(args.warmup, 1)
    source = args.data or os.environ.get("NPLVM_DATA") or str(DEFAULT_DATA)
    ds = load_dataset(source, seed=args.seed)
    x_test = strided_subset(ds.test, args.n_test)
    names = [s.strip() for s in args.models.split(",") if s.strip()]
    for n in names:                                                   # fail before any training
        model_from_name(n, args)
    log(f"data: {ds!r}; models {names}; {args.epochs} epochs; IS K = {args.K} on {len(x_test)} test images; "
        f"threads OMP {os.environ.get('OMP_NUM_THREADS', 'default')}")
    argv_used = sys.argv[1:] if argv is None else list(argv)
    result = {"command": "python -m nplvm.bench.hvae " + " ".join(argv_used), "data": ds.name,
              "anchors": ANCHORS, "models": []}
    if args.fit_minutes:
        spe = seconds_per_epoch(names, args, ds.train)
        slow = max(spe.values()) * (1.25 if args.jobs > 1 else 1.0)
        args.epochs = max(1, int(60 * args.fit_minutes // slow))
        args.warmup = max(1, args.epochs // 3)
        result["measured_seconds_per_epoch"] = spe
        log(f"measured s/epoch {({k: round(v, 1) for k, v in spe.items()})}: {args.epochs} epochs in "
            f"{args.fit_minutes} min; warm-up over {args.warmup} epochs")
    result["epochs"], result["warmup"] = args.epochs, args.warmup

    def save():
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1))

    if args.jobs > 1 and len(names) > 1:
        result["models"] = run_parallel(names, args, argv_used, log)
        save()
    else:
        for n in names:
            result["models"].append(run_model(n, ds, x_test, args, log))
            save()
    table(result["models"], log)
    return result


if __name__ == "__main__":
    main()
