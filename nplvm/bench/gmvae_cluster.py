"""Unsupervised clustering of MNIST with the GMVAE, scored by Hungarian-matched accuracy.

The GMVAE is trained WITHOUT labels (the ELBO only); afterwards each image is assigned to
argmax_y q(y|x) and the components are matched one-to-one to the digits so as to maximise the
number of correct assignments (``nplvm.models.gmvae.cluster_accuracy``).  Anchor: VaDE (Jiang et
al., 2017) reports 94.46% on MNIST (with autoencoder pretraining).

Recipes used here: a linear KL warm-up (beta from 1/W to 1 over the first W epochs, weighting
both KL terms), prior means initialised spread apart (``--prior-spread``), and the categorical
KL term summed exactly (it is part of the exact-sum ELBO).

    # full scale (the lead runs this; about a minute per epoch per the timing printed):
    python -m nplvm.bench.gmvae_cluster --data /work/shared/data/binarized_mnist.npz \
        --epochs 100 --warmup-epochs 20 --out runs/gmvae_cluster
    # smoke test, seconds:
    python -m nplvm.bench.gmvae_cluster --data offline --epochs 2 --max-train 1000 --max-eval 500

Data: ``--data offline`` is the labeled 5,000-image subset (scored on its test split); a
binarized-MNIST .npz with ``test_labels`` (the 50,000 static binarized training images, no
labels) is scored on its 10,000 test images.  Writes ``metrics.jsonl``, ``checkpoint.npz`` and
``result.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..data import load_dataset
from ..models.gmvae import GMVAE, cluster_accuracy
from ..optim import Adam
from ..train import fit


def kl_warmup(epoch, warmup_epochs):
    """The KL weight beta for a 1-based ``epoch``: min(1, epoch / W), W = ``warmup_epochs``
    (W = 0: beta = 1 from the start)."""
    if warmup_epochs < 0:
        raise ValueError(f"expected warmup_epochs >= 0, got {warmup_epochs}")
    return 1.0 if warmup_epochs == 0 else min(1.0, epoch / warmup_epochs)


def clustering_report(model, x, labels, batch_size=500):
    """Accuracy of argmax q(y|x) against labels (Hungarian), component usage and mean H[q(y|x)].

    x: (N, D) binary; labels: (N,) ints.  Returns a dict of floats / lists (JSON-ready).
    """
    pis = np.concatenate([model.responsibilities(x[i:i + batch_size])
                          for i in range(0, len(x), batch_size)])
    assign = pis.argmax(axis=1)
    usage = np.bincount(assign, minlength=model.n_components) / len(x)
    entropy = -(pis * np.log(np.maximum(pis, 1e-30))).sum(axis=1).mean()
    return {"accuracy": cluster_accuracy(np.asarray(labels, dtype=np.int64), assign, model.n_components),
            "usage": usage.round(4).tolist(), "q_y_entropy": float(entropy)}


def train_clustering(model, x_train, x_eval, labels_eval, epochs, batch_size=100, lr=1e-3,
                     warmup_epochs=10, seed=0, out_dir=None, log=print, eval_every=1):
    """Fit the GMVAE with a KL warm-up, scoring clustering accuracy on (x_eval, labels_eval).

    The warm-up is applied through ``fit``'s end-of-epoch hook: after epoch e, ``model.beta`` is
    set to ``kl_warmup(e + 1, warmup_epochs)`` for the next epoch.  During warm-up the logged
    train/valid NELBO are the beta-weighted objective; ``nelbo_beta1`` in the record is the true
    -ELBO on x_eval (beta = 1).  Returns fit's history, each record with ``beta``, ``accuracy``,
    ``usage``, ``q_y_entropy``.
    """
    model.beta = kl_warmup(1, warmup_epochs)

    def eval_fn(m, epoch):
        rec = {"beta": m.beta}
        if eval_every and (epoch % eval_every == 0 or epoch == epochs):
            rec.update(clustering_report(m, x_eval, labels_eval))
            rec["nelbo_beta1"] = float(-np.mean(np.concatenate(
                [m.elbo(x_eval[i:i + 500], np.random.default_rng([seed, 4, i]))
                 for i in range(0, len(x_eval), 500)])))
            if log:
                log(f"  epoch {epoch}: beta {m.beta:.2f}  accuracy {rec['accuracy']:.4f}  "
                    f"-ELBO {rec['nelbo_beta1']:.2f}  H[q(y|x)] {rec['q_y_entropy']:.3f}")
        m.beta = kl_warmup(epoch + 1, warmup_epochs)           # the next epoch's KL weight
        return rec

    return fit(model, Adam(lr), x_train, None, epochs=epochs, batch_size=batch_size, seed=seed,
               out_dir=out_dir, eval_fn=eval_fn, log=log)


def _parser():
    p = argparse.ArgumentParser(prog="python -m nplvm.bench.gmvae_cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/binarized_mnist.npz",
                   help="'offline' or a binarized-MNIST .npz with test_labels")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-epochs", type=int, default=20, help="linear KL warm-up length (0: none)")
    p.add_argument("--n-components", type=int, default=10)
    p.add_argument("--z-dim", type=int, default=10)
    p.add_argument("--hidden", type=int, nargs="+", default=[500, 500])
    p.add_argument("--activation", default="relu")
    p.add_argument("--prior-spread", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--max-eval", type=int, default=None, help="score only N test images (a seeded subset)")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--out", default="runs/gmvae_cluster")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    ds = load_dataset(args.data, seed=args.seed)
    if ds.test_labels is None:
        raise SystemExit(f"{args.data!r} has no test_labels: clustering accuracy needs them")
    x_train = ds.train if args.max_train is None else ds.train[:args.max_train]
    x_eval, y_eval = ds.test, ds.test_labels
    if args.max_eval is not None and args.max_eval < len(x_eval):
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(x_eval))[:args.max_eval])
        x_eval, y_eval = x_eval[keep], y_eval[keep]      # the test set is sorted by digit
    model = GMVAE(x_dim=ds.train.shape[1], n_components=args.n_components, z_dim=args.z_dim,
                  hidden=args.hidden, activation=args.activation, prior_spread=args.prior_spread,
                  seed=args.seed)
    print(f"GMVAE {model.config}, {model.num_parameters()} parameters; train {x_train.shape}, "
          f"scored on {x_eval.shape[0]} test images")
    t0 = time.perf_counter()
    hist = train_clustering(model, x_train, x_eval, y_eval, args.epochs, args.batch_size, args.lr,
                            args.warmup_epochs, args.seed, args.out, eval_every=args.eval_every)
    total = time.perf_counter() - t0
    final = clustering_report(model, x_eval, y_eval)
    result = {"data": args.data, "n_train": len(x_train), "n_eval": len(x_eval), "epochs": args.epochs,
              "final_accuracy": final["accuracy"], "usage": final["usage"],
              "best_accuracy": max((r.get("accuracy", 0.0) for r in hist), default=None),
              "final_nelbo_beta1": hist[-1].get("nelbo_beta1") if hist else None,
              "seconds_per_epoch": float(np.mean([r["seconds"] for r in hist])) if hist else None,
              "total_seconds": total, "vade_reference_accuracy": 0.9446, "args": vars(args)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1))
    print(f"clustering accuracy {final['accuracy']:.4f} (VaDE reports 0.9446); "
          f"{result['seconds_per_epoch']:.1f} s per epoch (training + scoring); -> {args.out}/result.json")
    return result


if __name__ == "__main__":
    main()
