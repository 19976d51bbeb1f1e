"""beta-VAE against FactorVAE on dSprites: disentanglement, reconstruction, total correlation.

Every model is trained on the same rendered dSprites images (``nplvm.data.dsprites``, a uniform sample
of the 737,280-image grid) with the same networks, optimiser, batches and epochs, then scored the
same way:

* Kim & Mnih's disentanglement metric (``nplvm.disentanglement.kim_mnih_metric``: majority vote
  over the dimension of least normalised variance, ``--votes`` training and held-out votes of 64
  images);
* reconstruction error: -log p(x|z) in nats per image, one z ~ q(z|x), on held-out images;
* the mutual information gap, MIG (``nplvm.disentanglement.mig``: the means of q(z|x) on 10,000
  random grid images, 20 bins per dimension);
* the total correlation of the codes, TC(z) = KL(q(z) || prod_j q(z_j)), by a fresh discriminator
  trained after the fact on each model's codes (``estimate_tc``; the same procedure for every
  model, so the numbers compare; the FactorVAE's own discriminator is not used for it);
* KL(q(z|x) || p(z)) and the -ELBO on the held-out images.

Anchor (as quoted in issue 19, not re-checked here): Kim & Mnih (2018), dSprites, convolutional
networks and 3e5 iterations: FactorVAE about 0.82, beta-VAE about 0.73 at comparable
reconstruction.  Ours are MLPs trained for minutes on a CPU, so read them as a same-run comparison.

    python -m nplvm.bench.factorvae --out runs/bench_factorvae              # ~40 min on one core
    python -m nplvm.bench.factorvae --models factor35 --seeds 1 --out runs/f35s1   # one cell
    python -m nplvm.bench.factorvae --quick --out /tmp/fv                   # seconds

Models (``--models``, comma-separated): ``vae`` (beta = 1), ``betaB`` (a beta-VAE, e.g. beta4),
``factorG`` (a FactorVAE with gamma = G, e.g. factor35).  Writes ``results.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..data.dsprites import DSprites
from ..disentanglement import disentanglement_scores
from ..models.factorvae import FactorVAE
from ..models.vae import VAE
from ..optim import Adam
from ..train import fit

ANCHOR = {"factorvae": 0.82, "beta-vae": 0.73}


def build_model(name, hidden, latent, seed, disc_lr):
    """'vae' | 'beta4' | 'factor35' -> a model with the shared networks."""
    m = re.fullmatch(r"(vae|beta([0-9.]+)|factor([0-9.]+))", name)
    if m is None:
        raise SystemExit(f"error: expected models like vae, beta4, factor35; got {name!r}")
    if m.group(3) is not None:
        return FactorVAE(x_dim=4096, hidden=hidden, latent=latent, gamma=float(m.group(3)),
                         disc_lr=disc_lr, seed=seed)
    beta = 1.0 if m.group(1) == "vae" else float(m.group(2))
    return VAE(x_dim=4096, hidden=hidden, latent=latent, beta=beta, seed=seed)


def score(model, ds, x_test, x_codes, seed, votes):
    """The measures of the module docstring for a trained model (VAE or FactorVAE), timed."""
    t0 = time.perf_counter()
    out = disentanglement_scores(model, ds, x_test, x_codes, np.random.default_rng([seed, 7]), votes)
    return {**out, "score_seconds": time.perf_counter() - t0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vae,beta4,factor10,factor35")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    p.add_argument("--n-train", type=int, default=50000, help="training images (default 50000)")
    p.add_argument("--n-test", type=int, default=2000, help="held-out images (default 2000)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--disc-lr", type=float, default=5e-4)
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--latent", type=int, default=10)
    p.add_argument("--votes", type=int, default=400, help="training and held-out votes of the metric")
    p.add_argument("--quick", action="store_true", help="tiny sizes: seconds")
    p.add_argument("--out", default="runs/bench_factorvae")
    a = p.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.epochs, a.votes, a.hidden = 512, 128, 1, 20, "32"
    hidden = tuple(int(h) for h in a.hidden.split(","))
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    ds = DSprites()
    t0 = time.perf_counter()
    data_rng = np.random.default_rng(12345)                      # the same images for every model and seed
    x_train = ds.images(ds.sample_index(a.n_train, data_rng))
    x_test = ds.images(ds.sample_index(a.n_test, data_rng))
    print(f"dSprites: {a.n_train:,} training and {a.n_test:,} held-out images rendered in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    x_codes = x_train[:10000]

    rows = []
    for seed in seeds:
        for name in a.models.split(","):
            model = build_model(name, hidden, a.latent, seed, a.disc_lr)
            t1 = time.perf_counter()
            hist = fit(model, Adam(a.lr), x_train, None, epochs=a.epochs, batch_size=a.batch_size,
                       seed=seed, progress=sys.stderr.isatty(),
                       log=lambda line: print(f"{name:>9} seed {seed}: {line}", flush=True))
            train_s = time.perf_counter() - t1
            r = {"model": name, "seed": seed, "epochs": a.epochs, "train_seconds": train_s,
                 "train_loss": [h["train_loss"] for h in hist],
                 "disc_loss": [h.get("disc_loss") for h in hist], **score(model, ds, x_test, x_codes, seed, a.votes)}
            rows.append(r)
            print(f"{name:>9} seed {seed}: metric {r['metric']:.3f} +- {r['metric_se']:.3f}  MIG {r['mig']:.3f}  "
                  f"recon {r['recon']:7.2f}  KL {r['kl']:5.2f}  TC {r['tc']:5.2f} +- {r['tc_se']:.2f}  "
                  f"active {r['active_dims']:2d}  ({train_s:.0f} s training)", flush=True)
            (out / "results.json").write_text(json.dumps({"args": vars(a), "anchor": ANCHOR, "rows": rows}, indent=1))

    print(f"\nKim & Mnih metric (anchor: FactorVAE ~{ANCHOR['factorvae']}, beta-VAE ~{ANCHOR['beta-vae']}; "
          f"their conv nets, 3e5 steps), means over seeds {seeds}:")
    print(f"{'model':>9} {'metric':>7} {'sd':>6} {'MIG':>6} {'recon':>8} {'KL':>6} {'TC':>6}")
    for name in a.models.split(","):
        rs = [r for r in rows if r["model"] == name]
        mean = lambda k: float(np.mean([r[k] for r in rs]))
        sd = float(np.std([r["metric"] for r in rs], ddof=1)) if len(rs) > 1 else float("nan")
        print(f"{name:>9} {mean('metric'):7.3f} {sd:6.3f} {mean('mig'):6.3f} {mean('recon'):8.2f} "
              f"{mean('kl'):6.2f} {mean('tc'):6.2f}")
    print(f"wrote {out / 'results.json'}")
    return rows


if __name__ == "__main__":
    main()
