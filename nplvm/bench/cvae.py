"""MNIST quadrant completion (Sohn, Lee & Yan, 2015): the deterministic baseline, the GSNN, the
CVAE and the hybrid, trained in one run on the static binarized MNIST and scored by the
conditional negative log-likelihood -log p(y|x) of the unobserved pixels (nats per image).

For each number of observed quadrants (1: bottom-left; 2: left half; 3: all but bottom-right)
the script trains the four models on the 50,000 training images and scores, on a strided subset
of the test set (it is sorted by digit; the stride keeps every digit):

    CLL (IS)  -log p(y|x) ~= -log (1/K) sum_k p(y|x, z_k) p(z_k|x) / q(z_k|x, y),  z_k ~ q(z|x, y)
              (the GSNN has no q: its prior is the proposal; the baseline's value is exact)
    -ELBO     -(E_q log p(y|x, z) - KL(q || p)) from one draw (the GSNN: -E_p log p(y|x, z))

against Pyro's CVAE tutorial (deterministic network 100.4 / 61.9 / 25.4, CVAE 71.8 / 51.0 / 24.2
for 1 / 2 / 3 quadrants).  Read those beside ours, not as equals: Pyro's targets are GRAYSCALE
pixels under a BCE loss (a different number, with its own entropy floor), and its CVAE figure is
the -ELBO, an upper bound on the CLL.

Time budget: ``--budget`` seconds per quadrant setting (default 480, i.e. ~8 minutes on one
core) are split between the models' training (baseline 10%, GSNN 20%, CVAE 30%, hybrid 40% of
what the evaluation leaves); each model trains whole epochs until its share or ``--epochs`` is
used up.  The evaluation's cost is measured first and printed.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python -m nplvm.bench.cvae \\
        --data /work/shared/data/binarized_mnist.npz --quadrants 1 --out results.json
    python -m nplvm.bench.cvae --quick --data offline          # seconds: the tests run this

Every model's run folder (metrics.jsonl, checkpoint.npz) goes under ``--runs``; a checkpoint
can be scored again with ``python -m nplvm evaluate --checkpoint DIR --K 1000 --n 1000``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ..data import load_dataset, strided_subset
from ..models import build
from ..objectives import importance_sampled_log_px, nelbo
from ..optim import Adam
from ..train import fit

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"

# Pyro's CVAE tutorial (examples/cvae), negative conditional log-likelihood in nats per image;
# grayscale targets under BCE; the CVAE figure is its -ELBO.
PYRO = {1: {"baseline": 100.4, "cvae": 71.8}, 2: {"baseline": 61.9, "cvae": 51.0},
        3: {"baseline": 25.4, "cvae": 24.2}}
MODELS = ("baseline", "gsnn", "cvae", "hybrid")
SHARE = {"baseline": 0.10, "gsnn": 0.20, "cvae": 0.30, "hybrid": 0.40}


def make_model(name, quadrants, args):
    common = dict(x_dim=784, hidden=list(args.hidden), quadrants=quadrants, activation="relu",
                  dtype="float32", seed=args.seed)
    if name == "baseline":
        return build("cvae-baseline", common)
    return build("cvae", {**common, "latent": args.latent, "objective": name, "alpha": args.alpha})


def train_for(model, x_train, x_valid, budget_s, args, run_dir, log):
    """Whole epochs of Adam until ``budget_s`` seconds or ``args.epochs`` epochs are used up.

    One ``fit`` call per epoch, resumed from the run folder's checkpoint (bit-identical to one
    long call), so the run can stop at any epoch boundary.  Returns the history.
    """
    t0, history = time.perf_counter(), []
    for epoch in range(args.epochs):
        history = fit(model, Adam(args.lr), x_train, x_valid, epochs=epoch + 1,
                      batch_size=args.batch_size, seed=args.seed, out_dir=run_dir, resume=True,
                      progress=False, log=None)
        h = history[-1]
        elapsed = time.perf_counter() - t0
        log(f"    epoch {h['epoch']:>2}  train {h['train_loss']:.2f}  valid {h['valid_loss']:.2f}  "
            f"({h['seconds']:.1f} s; {elapsed:.0f} of {budget_s:.0f} s)")
        if elapsed + h["seconds"] > budget_s:          # another epoch would overrun the share
            break
    return history


def score(model, x_test, args, seed):
    """Test -ELBO (one draw) and the IS estimate of the CLL, nats per image."""
    t0 = time.perf_counter()
    K = 1 if model.kind == "cvae-baseline" else args.K             # the baseline's value is exact
    log_p = importance_sampled_log_px(model, x_test, K=K, batch=args.eval_batch, rng=seed,
                                      max_rows=args.max_rows)
    return {"test_nelbo": nelbo(model, x_test, rng=seed + 1, batch=500),
            "test_cll": float(-log_p.mean()),
            "test_cll_se": float(log_p.std() / math.sqrt(len(log_p))),
            "K": K, "seconds_eval": time.perf_counter() - t0}


def run_setting(quadrants, ds, x_valid, x_test, args, log):
    """Train and score the four models with ``quadrants`` observed quadrants; returns their rows."""
    log(f"\n== {quadrants} observed quadrant(s) ==")
    # the evaluation's cost, measured: (image, sample) pairs per second of log_weights
    probe = make_model("cvae", quadrants, args)
    probe.log_weights(x_test[:5], 2, 0)                            # warm-up: kernel compilation, caches
    t0 = time.perf_counter()
    probe.log_weights(x_test[:50], 40, 0)
    rate = 50 * 40 / (time.perf_counter() - t0)
    eval_s = 3 * len(x_test) * args.K / rate
    train_s = max(args.budget - eval_s, 0.0)
    log(f"evaluation: ~{rate:,.0f} (image, sample) pairs/s, so ~{eval_s:.0f} s for 3 models x "
        f"{len(x_test)} images x K = {args.K}; training budget {train_s:.0f} s")
    x_train = ds.train[:args.n_train] if args.n_train else ds.train
    rows = {}
    for name in MODELS:
        model = make_model(name, quadrants, args)
        log(f"[{name}] {model!r}")
        run_dir = Path(args.runs) / f"q{quadrants}" / name
        for f in ("checkpoint.npz", "metrics.jsonl"):              # a fresh run, not a resume of an old one
            (run_dir / f).unlink(missing_ok=True)
        hist = train_for(model, x_train, x_valid, SHARE[name] * train_s, args, run_dir, log)
        res = score(model, x_test, args, seed=args.seed + 7)
        res.update(model=name, kind=model.kind, config=model.config, run_dir=str(run_dir),
                   n_params=int(sum(p.size for p in model.params.values())), epochs=len(hist),
                   seconds_train=float(sum(h["seconds"] for h in hist)),
                   seconds_per_epoch=float(np.mean([h["seconds"] for h in hist])),
                   valid_loss_last=hist[-1]["valid_loss"], train_loss_last=hist[-1]["train_loss"])
        log(f"[{name}] {len(hist)} epochs: test -ELBO {res['test_nelbo']:.2f}, CLL {res['test_cll']:.2f} "
            f"+- {res['test_cll_se']:.2f} (K = {res['K']}; eval {res['seconds_eval']:.0f} s)")
        rows[name] = res
    return rows


def table(results):
    lines = ["quadrants | model    | epochs | s/epoch | test -ELBO | test CLL (IS)    | Pyro (grayscale)",
             "----------+----------+--------+---------+------------+------------------+-----------------"]
    for q, rows in results.items():
        for name, r in rows.items():
            pyro = PYRO.get(int(q), {}).get(name)
            lines.append(f"{q:>9} | {name:<8} | {r['epochs']:>6} | {r['seconds_per_epoch']:>7.1f} | "
                         f"{r['test_nelbo']:>10.2f} | {r['test_cll']:>7.2f} +- {r['test_cll_se']:<5.2f} | "
                         f"{'' if pyro is None else pyro}")
        b, c = rows["baseline"]["test_cll"], rows["cvae"]["test_cll"]
        pyro = PYRO.get(int(q))
        lines.append(f"{'':>9}   CVAE gain over the baseline: {b - c:.1f} nats"
                     + (f" (Pyro: {pyro['baseline'] - pyro['cvae']:.1f})" if pyro else ""))
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help=f"binarized_mnist.npz or 'offline' (default $NPLVM_DATA, else {DEFAULT_DATA})")
    p.add_argument("--quadrants", default="1,2,3", help="observed quadrant settings, e.g. 1 or 1,2,3")
    p.add_argument("--epochs", type=int, default=30, help="at most this many epochs per model")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds per quadrant setting, training and evaluation (default %(default)s)")
    p.add_argument("--n-train", type=int, default=None, help="only the first n training images")
    p.add_argument("--n-valid", type=int, default=1000, help="validation images (strided) scored per epoch")
    p.add_argument("--n-test", type=int, default=1000, help="test images scored (strided; 10000 = all)")
    p.add_argument("--K", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--hidden", default="500,500", help="hidden widths (Pyro's tutorial: 500,500)")
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--alpha", type=float, default=0.5, help="the hybrid's weight on the CVAE term")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-batch", type=int, default=100)
    p.add_argument("--max-rows", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench_cvae"), help="folder of the models' runs")
    p.add_argument("--out", default=None, help="write the results as JSON here (e.g. results.json)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (seconds): 500 training images, 40 test images, K = 20, hidden 32")
    return p


def main(argv=None, log=print):
    args = build_parser().parse_args(argv)
    try:
        args.hidden = [int(h) for h in str(args.hidden).split(",") if h.strip()]
        quadrant_list = [int(q) for q in str(args.quadrants).split(",") if q.strip()]
    except ValueError:
        raise SystemExit(f"error: expected comma-separated integers for --hidden and --quadrants, "
                         f"got {args.hidden!r} and {args.quadrants!r}")
    if not quadrant_list or any(q not in (1, 2, 3) for q in quadrant_list):
        raise SystemExit(f"error: --quadrants takes 1, 2 and/or 3, got {args.quadrants!r}")
    if args.quick:
        args.n_train, args.n_valid, args.n_test = args.n_train or 500, 50, 40
        args.K, args.hidden, args.latent, args.epochs = min(args.K, 20), [32], 4, min(args.epochs, 2)
    source = args.data or os.environ.get("NPLVM_DATA") or str(DEFAULT_DATA)
    t_start = time.perf_counter()
    ds = load_dataset(source, seed=args.seed)
    if ds.name == "mnist5k" and not args.quick:
        log("note: the offline 5,000-digit subset is not the benchmark; pass "
            "--data /work/shared/data/binarized_mnist.npz")
    x_valid = strided_subset(ds.valid, args.n_valid)
    x_test = strided_subset(ds.test, args.n_test)
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
    log(f"data: {ds!r}; test: {len(x_test)} strided images, K = {args.K}; threads {threads}")
    results = {}
    for q in quadrant_list:
        results[str(q)] = run_setting(q, ds, x_valid, x_test, args, log)
    log("\n" + table(results))
    argv_used = sys.argv[1:] if argv is None else list(argv)
    out = {"command": "python -m nplvm.bench.cvae " + " ".join(argv_used), "data": ds.name,
           "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, threads {threads}",
           "seconds_total": time.perf_counter() - t_start, "results": results,
           "pyro": {str(k): v for k, v in PYRO.items()},
           "note": "CLL = -log p(y|x) over the unobserved pixels, nats per image; Pyro's targets are "
                   "grayscale (BCE) and its CVAE figure is a -ELBO, so they are a reference, not a like-for-like"}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        log(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
