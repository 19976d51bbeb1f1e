"""Benchmark: factor-analysis EM against scikit-learn's FactorAnalysis, in one run.

    python -m nplvm.bench.fa                       # 10,000 x 784, 32 factors
    python -m nplvm.bench.fa --data /work/shared/data/mnist_test_labeled.npz
    NPLVM_MNIST_RAW=/path/mnist_test_labeled.npz python -m nplvm.bench.fa

Data: the grayscale MNIST test set (``images`` / 255) from ``--data`` or ``$NPLVM_MNIST_RAW``
when present, else the offline 5,000-image subset (train + valid + test, all of it).

Both fits see the same float64 matrix and the same noise floor (1e-12, scikit-learn's), so the
log-likelihoods are comparable.  Printed: seconds per iteration of each, the time our EM needs
to reach scikit-learn's final log-likelihood (``score`` of its fitted model, evaluated exactly),
the ratios, and both final log-likelihoods.  Our timings start at ``fit`` (covariance included).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from nplvm.models.fa import FactorAnalysis

ENV_VAR = "NPLVM_MNIST_RAW"


def load_data(path=None, n=10000):
    """(n, 784) float64 in [0, 1]: MNIST grayscale from an .npz with ``images``, else offline."""
    path = path or os.environ.get(ENV_VAR)
    if path and Path(path).is_file():
        with np.load(path) as f:
            X, source = f["images"], str(path)
    else:
        from nplvm.data import load_dataset
        ds = load_dataset("offline", binarization=None)
        X, source = np.vstack([ds.train, ds.valid, ds.test]), "offline MNIST subset"
    X = X.reshape(X.shape[0], -1)[:n].astype(np.float64) / 255.0
    return X, source


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help=f"an .npz with 'images' (default ${ENV_VAR})")
    p.add_argument("--n", type=int, default=10000, help="number of images (default 10000)")
    p.add_argument("--factors", type=int, default=32, help="L (default 32)")
    p.add_argument("--max-iter", type=int, default=1000, help="cap on our EM iterations")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from sklearn.decomposition import FactorAnalysis as SkFA

    X, source = load_data(args.data, args.n)
    N, D = X.shape
    print(f"data: {source}, {N} x {D}, {int(np.sum(X.var(0) == 0))} constant pixels; L = {args.factors}")

    # scikit-learn, default settings (randomized SVD, tol 1e-2 on the total log-likelihood)
    t0 = time.perf_counter()
    sk = SkFA(args.factors, random_state=args.seed).fit(X)
    t_sk = time.perf_counter() - t0
    target = FactorAnalysis(args.factors, n_features=D)        # evaluate sklearn's model exactly
    target._set_params(sk.components_.T, sk.mean_, sk.noise_variance_)
    ll_sk = target.score(X)
    print(f"scikit-learn: {sk.n_iter_} iterations in {t_sk:.2f} s ({t_sk / sk.n_iter_ * 1e3:.1f} ms/iter), "
          f"final log-likelihood {ll_sk:.4f} nats per image")

    # ours: EM with the same noise floor, tolerance as scikit-learn's (1e-2 total = 1e-2/N per image)
    times, lls = [], []
    t0 = time.perf_counter()

    def record(it, ll):
        times.append(time.perf_counter() - t0)
        lls.append(ll)

    ours = FactorAnalysis(args.factors, noise_floor=1e-12, tol=1e-2 / N, max_iter=args.max_iter,
                          seed=args.seed).fit(X, callback=record)
    t_ours = times[-1]
    lls, times = np.array(lls), np.array(times)
    per_iter = (times[-1] - times[0]) / max(len(times) - 1, 1)
    print(f"nplvm EM:     {ours.n_iter_} iterations in {t_ours:.2f} s ({per_iter * 1e3:.1f} ms/iter after "
          f"{times[0]:.2f} s of setup), final log-likelihood {lls[-1]:.4f} nats per image")
    reached = np.nonzero(lls >= ll_sk)[0]
    if len(reached):
        k = reached[0]
        t_reach = times[k]
        print(f"nplvm EM reaches scikit-learn's final log-likelihood after {k} iterations, {t_reach:.2f} s")
        print(f"ratio time-to-sklearn's-optimum: scikit-learn {t_sk:.2f} s / nplvm {t_reach:.2f} s = "
              f"{t_sk / t_reach:.2f}x (> 1: nplvm faster)")
    else:
        t_reach = None
        print(f"nplvm EM did not reach scikit-learn's log-likelihood within {ours.n_iter_} iterations "
              f"(best {lls.max():.4f} vs {ll_sk:.4f})")
    print(f"ratio seconds per iteration: scikit-learn {t_sk / sk.n_iter_ * 1e3:.1f} ms / nplvm "
          f"{per_iter * 1e3:.1f} ms = {(t_sk / sk.n_iter_) / per_iter:.1f}x")
    print(f"final log-likelihood difference (nplvm - scikit-learn): {lls[-1] - ll_sk:+.4f} nats per image")
    return {"t_sklearn": t_sk, "t_reach": t_reach, "ll_sklearn": ll_sk, "ll_ours": float(lls[-1]),
            "per_iter": per_iter, "n_iter": ours.n_iter_}


if __name__ == "__main__":
    main()
