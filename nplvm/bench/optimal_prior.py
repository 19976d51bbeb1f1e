"""The optimal prior on static binarized MNIST: standard N(0, I) prior vs VampPrior vs the density-ratio
prior, the same encoder and decoder, matched epochs (issue 18).

    python -m nplvm.bench.optimal_prior --data ../shared/data/binarized_mnist.npz --out runs/optimal_prior.json
    python -m nplvm.bench.optimal_prior --models vampprior --epochs 12 --out runs/op_vamp.json   # one model
    python -m nplvm.bench.optimal_prior --quick --out /tmp/op.json                               # seconds

Every model: encoder 784-300-300-(40 mu, 40 logvar), decoder 40-300-300-784, tanh (Tomczak &
Welling's one-layer sizes, with plain instead of gated layers), Adam lr 5e-4, batch 100, trained on
the 50,000 training images for ``--epochs`` epochs (the same for all: matched epochs), with the
same KL warm-up for all (``--warmup`` W: the KL weighted by beta = 0, 1/W, ..., 1 in epochs
1..W+1, then 1, as Tomczak & Welling do over 100 epochs; without it the VampPrior stalls at the
collapsed encoder, see vampprior.py).  The VampPrior's K = 500 pseudo-inputs start at K random
training images and are learned (``--pseudo-init random``: grey noise, as in the paper; measured
here 1.2 nats worse at 12 epochs).  Scored on ``--n-test`` evenly spaced test images (the test file is sorted by digit):

    test NLL     -log p(x) by importance sampling with K samples (``objectives.importance_sampled_log_px``)
    test NELBO   one-sample -ELBO from ``log_weights`` (comparable across the three)
    E KL(q(z|x) || p(z)), I(x; z) and KL(q(z) || p(z)) by the decomposition (KLD) on ``--n-kl``
                 test images, q(z) their aggregated posterior (``vampprior.kl_decomposition``;
                 I <= log n-kl)
    active units (Burda et al.: Cov_x E_q[z_d] > 0.01), seconds per epoch

The density-ratio model's prior p_T = N(0, I) exp(T) / Z_T is normalised with Z_T estimated by
importance sampling (``DRVAE.estimate_log_normalizer`` with all training images in the proposal,
``--z-repeats`` independent estimates); its standard error is reported and added to the standard
error of that model's gain (it shifts every log w of that model by the same amount).

Anchor: Tomczak & Welling (2018), Table 2 (MNIST, one stochastic layer, gated layers, K = 500,
trained to convergence with warm-up): standard prior 88.56, VampPrior 85.57 nats.  These figures are
quoted from memory of the paper's table and could not be checked against the paper in this session.
Their runs take hundreds of epochs; compare the gap between the priors at matched epochs, not the
absolute values.

Writes ``--out`` (JSON: the settings and one record per model) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

TOMCZAK_WELLING = {"vae": 88.56, "vampprior": 85.57}      # Table 2, L = 1, MNIST (unverified here)
MODELS = ("vae", "vampprior", "drvae")


def build_model(kind, args, x_train=None):
    from nplvm.models.drvae import DRVAE
    from nplvm.models.vae import VAE
    from nplvm.models.vampprior import VampPrior
    net = dict(x_dim=784, hidden=args.hidden, latent=args.latent, activation=args.activation, seed=args.seed)
    if kind == "vae":
        return VAE(**net)
    if kind == "vampprior":
        m = VampPrior(n_pseudo=args.n_pseudo, **net)
        if args.pseudo_init == "data":
            m.init_pseudo_inputs(x_train, rng=args.seed)
        return m
    if kind == "drvae":
        return DRVAE(disc_hidden=args.disc_hidden, disc_lr=args.disc_lr, **net)
    raise ValueError(f"unknown model {kind!r}; expected one of {MODELS}")


def log_prior_fn(model):
    """log p(z) (M,) of the model's prior, float64 in and out."""
    if hasattr(model, "log_prior"):
        return lambda z: np.asarray(model.log_prior(z.astype(model.dtype)), dtype=np.float64)
    return lambda z: -0.5 * np.sum(np.log(2 * np.pi) + z * z, axis=1)


def run_one(kind, args, ds, x_test, log=print):
    from nplvm import objectives
    from nplvm.data import strided_subset
    from nplvm.models.vampprior import active_units, kl_decomposition
    from nplvm.optim import Adam
    from nplvm.train import fit

    model = build_model(kind, args, ds.train[:args.n_train])

    def warmup(m, epoch):
        """KL warm-up: beta = epoch / W for the epoch after ``epoch`` (0, 1/W, ..., 1), then 1."""
        m.beta = min(1.0, epoch / args.warmup) if args.warmup > 0 else 1.0
        return {"beta_next": m.beta}

    warmup(model, 0)
    t0 = time.perf_counter()
    hist = fit(model, Adam(args.lr), ds.train[:args.n_train], None, epochs=args.epochs,
               batch_size=args.batch_size, seed=args.seed, progress=True, eval_fn=warmup,
               log=(lambda s: log(f"  [{kind}] {s}")) if log else None)
    if model.beta != 1.0:
        raise ValueError(f"--warmup {args.warmup} does not end within --epochs {args.epochs}: beta is {model.beta}")
    train_s = time.perf_counter() - t0
    rec = {"model": kind, "epochs": len(hist), "train_seconds": train_s,
           "seconds_per_epoch": train_s / max(len(hist), 1), "train_loss": hist[-1]["train_loss"],
           "config": model.config}
    if "disc_loss" in hist[-1]:
        rec["disc_loss"] = hist[-1]["disc_loss"]
    t1 = time.perf_counter()
    if args.save_dir:
        from nplvm.train import save_checkpoint
        state = {"discriminator": {"params": dict(model.discriminator.params)}} if kind == "drvae" else {}
        save_checkpoint(Path(args.save_dir) / f"{kind}.npz", model, state=state)
    if kind == "drvae":
        # Z_T with all training images in the proposal, from --z-repeats independent batches, pooled
        # (cached for log_weights); the batches' own estimates show whether the weights are heavy-tailed
        ref = ds.train[:args.n_train]
        reps = []
        for r in range(args.z_repeats):                  # the calls pool their samples
            rec["log_Z_T"], rec["log_Z_T_se"] = model.estimate_log_normalizer(args.n_z, rng=[args.seed, 7, r], x_ref=ref)
            reps.append(model.last_batch_log_z)
        rec["log_Z_T_repeats"] = reps
        log(f"  [drvae] log Z_T = {rec['log_Z_T']:.3f} +- {rec['log_Z_T_se']:.3f} (pooled); per batch {np.round(rec['log_Z_T_repeats'], 3).tolist()}")
    lw1 = objectives.sample_log_weights(model, x_test, 1, rng=args.seed + 1)
    rec["test_nelbo"] = -float(lw1.mean())
    lpx = objectives.importance_sampled_log_px(model, x_test, K=args.K, batch=100, rng=args.seed + 2, max_rows=20000)
    rec["test_nll"] = -float(lpx.mean())
    rec["test_nll_se"] = float(lpx.std() / math.sqrt(len(lpx)))
    rec["test_log_px"] = lpx.tolist()                    # per image: paired differences between models
    x_kl = strided_subset(x_test, args.n_kl)
    mu, logvar = model.encode(x_kl)
    d = kl_decomposition(mu.astype(np.float64), logvar.astype(np.float64), log_prior_fn(model), S=1, rng=args.seed + 3)
    for key in ("mean_kl", "mutual_info", "marginal_kl", "log_N"):
        rec[key] = d[key]
    rec["marginal_kl_se"] = float(d["marginal_kl_draws"].std() / math.sqrt(d["marginal_kl_draws"].size))
    mu_all, _ = model.encode(x_test)
    rec["active_units"], _ = active_units(mu_all)
    rec["eval_seconds"] = time.perf_counter() - t1
    rec["anchor_nll"] = TOMCZAK_WELLING.get(kind)
    return rec


def table(records, K):
    head = (f"{'prior':<10} | {'epochs':>6} | {'s/epoch':>7} | {'test NLL (IS, K=' + str(K) + ')':>22} | "
            f"{'NELBO':>7} | {'E KL(q(z|x)||p)':>15} | {'I(x;z)':>6} | {'KL(q(z)||p)':>11} | {'AU':>3} | anchor")
    lines = [head, "-" * len(head)]
    names = {"vae": "N(0, I)", "vampprior": "VampPrior", "drvae": "DR prior"}
    for r in records:
        anchor = "" if r["anchor_nll"] is None else f"{r['anchor_nll']:.2f}"
        lines.append(f"{names[r['model']]:<10} | {r['epochs']:>6} | {r['seconds_per_epoch']:>7.1f} | "
                     f"{r['test_nll']:>15.2f} +- {r['test_nll_se']:.2f} | {r['test_nelbo']:>7.2f} | "
                     f"{r['mean_kl']:>15.2f} | {r['mutual_info']:>6.2f} | {r['marginal_kl']:>11.2f} | "
                     f"{r['active_units']:>3} | {anchor}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="static binarized MNIST .npz (default $NPLVM_DATA, else ../shared/data/binarized_mnist.npz)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {MODELS}")
    p.add_argument("--epochs", type=int, default=12,
                   help="epochs for every model (matched; 12 fits ~8 min for the VampPrior on one core)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=4,
                   help="KL warm-up epochs W for every model: beta = 0, 1/W, ..., then 1 (0: none)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--hidden", default="300,300")
    p.add_argument("--latent", type=int, default=40)
    p.add_argument("--activation", default="tanh")
    p.add_argument("--n-pseudo", type=int, default=500, help="VampPrior pseudo-inputs K")
    p.add_argument("--pseudo-init", choices=("random", "data"), default="data",
                   help="VampPrior pseudo-inputs start at K training images (data, the default: measured 1.2 nats better than random at 12 epochs) or as grey noise (random, the paper's)")
    p.add_argument("--disc-hidden", default="256,256", help="the density-ratio model's discriminator")
    p.add_argument("--disc-lr", type=float, default=5e-4)
    p.add_argument("--n-train", type=int, default=None, help="train on the first n images (default all 50,000)")
    p.add_argument("--n-test", type=int, default=2000, help="evenly spaced test images scored by IS")
    p.add_argument("--K", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--n-kl", type=int, default=1000, help="test images whose aggregated posterior is q(z)")
    p.add_argument("--n-z", type=int, default=20000, help="samples for the DR prior's normaliser Z_T")
    p.add_argument("--z-repeats", type=int, default=3, help="independent estimates of Z_T (their spread is printed)")
    p.add_argument("--save-dir", default=None, help="also write each trained model to DIR/<model>.npz")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings (the tests): offline data, 2 epochs")
    p.add_argument("--out", default="runs/optimal_prior.json", help="results as JSON")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)
    from nplvm.data import load_dataset, strided_subset
    from nplvm.models.vae import parse_hidden

    args.hidden, args.disc_hidden = parse_hidden(args.hidden), parse_hidden(args.disc_hidden)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in kinds if k not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}; expected some of {MODELS}")
    if args.quick:
        args.data = args.data or "offline"
        args.epochs, args.n_train, args.n_test, args.K, args.n_kl, args.n_z = 2, 500, 50, 20, 50, 2000
        args.z_repeats = 2
        args.warmup = 1
        args.hidden, args.latent, args.n_pseudo, args.disc_hidden = [32], 4, 10, [16]
    source = args.data or os.environ.get("NPLVM_DATA") or str(
        Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "binarized_mnist.npz")
    ds = load_dataset(source)
    args.n_train = args.n_train or len(ds.train)
    x_test = strided_subset(ds.test, args.n_test)
    print(f"data: {ds!r}; {args.n_train:,} training images, {len(x_test):,} test images; "
          f"{args.epochs} epochs per model, batch {args.batch_size}, Adam {args.lr}")
    records = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    for kind in kinds:
        records.append(run_one(kind, args, ds, x_test))
        out.write_text(json.dumps({"settings": settings, "results": records}, indent=1) + "\n")
    print(table(records, args.K))
    by = {r["model"]: r for r in records}
    if "vae" in by:
        for k in ("vampprior", "drvae"):
            if k in by:
                gain = by["vae"]["test_nll"] - by[k]["test_nll"]
                diff = np.array(by[k]["test_log_px"]) - np.array(by["vae"]["test_log_px"])
                se = float(diff.std() / math.sqrt(len(diff)))              # paired: the same images
                se = math.hypot(se, by[k].get("log_Z_T_se", 0.0))          # + the normaliser's, shared by all
                by[k]["gain_over_vae"], by[k]["gain_over_vae_se"] = gain, se
                print(f"{k}: {gain:+.2f} +- {se:.2f} nats better than N(0, I) at {args.epochs} epochs "
                      "(paired standard error over the same test images)")
    print("anchor (Tomczak & Welling 2018, Table 2, converged, unverified here): N(0, I) 88.56, VampPrior 85.57")
    out.write_text(json.dumps({"settings": settings, "results": records}, indent=1) + "\n")
    print(f"wrote {out}")
    return {"settings": settings, "results": records}


if __name__ == "__main__":
    main()
