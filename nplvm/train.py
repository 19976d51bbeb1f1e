"""The fit loop every model uses: seeded minibatches, logging, checkpoints, resuming.

Training minimises the loss of the model contract (README): for a minibatch B,

    L(B) = (1/|B|) sum_{i in B} loss(x_i)          (nats per example; model.loss(x_B, rng))

with an optimiser step on its gradient after every batch.  The loss is the model's training
objective: -ELBO for the VAE, -L_k for the IWAE, the beta-weighted objective of a beta-VAE, ...
The epoch's ``train_loss`` is the batch-size-weighted mean of the batch losses (each evaluated with
the parameters of its own batch).  Because objectives differ between models, every epoch also
records the ``valid_nelbo``, the same quantity for every model: -(1/N) sum_i log w(x_i, z_i) with
one z_i ~ q(z|x_i) (``objectives.nelbo``, from the model's ``log_weights``), so curves of k = 1
and k = 50, or of beta = 1 and beta = 4, can be read on one axis.

A second player.  A model with a ``discriminator`` attribute (an object with ``params`` and
``loss(x, rng, grad=True) -> (loss, grads)``, the same contract; it holds its model to draw what it
classifies) is trained alternately: after the model's step on batch b, the discriminator takes
one step on the same batch with its own optimiser (the model's optimiser class, learning rate
``discriminator.lr`` when it sets one) and its own noise stream.  Its parameters and optimiser
state are checkpointed with the model's.

Reproducibility.  Every random number comes from a Generator derived from (seed, what, epoch,
batch):

    permutation of epoch e:        default_rng([seed, 1, e])
    noise of batch b in epoch e:   default_rng([seed, 2, e, b])
    noise of valid batch b:        default_rng([seed, 3, b])      (the same every epoch)
    discriminator noise, batch b:  default_rng([seed, 4, e, b])

so the run is a pure function of (initial params, optimiser, data, seed), and a run resumed
from the checkpoint of epoch k continues bit for bit as if it had never stopped.  (The tags
1, 2, 3 keep the streams apart: NumPy's SeedSequence treats trailing zeros as absent, so
[seed, e] and [seed, e, 0] would give the same stream.)

Files in ``out_dir``:
    metrics.jsonl   one JSON object per epoch: epoch, train_loss (the training objective),
                    valid_loss, valid_nelbo, grad_norm (mean global gradient norm), seconds,
                    disc_loss (with a discriminator) and whatever eval_fn returns
    checkpoint.npz  params, optimiser state, kind, config, training state (epoch, seed,
                    history): rewritten atomically at the end of every epoch
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .backend import to_numpy, xp_of

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
FORMAT = "nplvm-checkpoint"
VERSION = 1

_PERM, _BATCH, _EVAL, _DISC = 1, 2, 3, 4      # stream tags, see the module docstring


class TrainingDiverged(RuntimeError):
    """A loss, gradient or parameter became NaN/inf.  Carries epoch, batch and what went bad."""

    def __init__(self, message, epoch=None, batch=None, name=None):
        super().__init__(message)
        self.epoch, self.batch, self.name = epoch, batch, name


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model it is loaded into."""


# ----------------------------------------------------------------------------------------------
# Seeded streams
# ----------------------------------------------------------------------------------------------

def epoch_permutation(n, seed, epoch):
    """The order in which epoch ``epoch`` (0-based) visits the n training examples."""
    return np.random.default_rng([seed, _PERM, epoch]).permutation(n)


def batch_rng(seed, epoch, batch):
    """The Generator handed to model.loss for batch ``batch`` of epoch ``epoch``."""
    return np.random.default_rng([seed, _BATCH, epoch, batch])


def disc_rng(seed, epoch, batch):
    """The Generator handed to model.discriminator.loss for batch ``batch`` of epoch ``epoch``."""
    return np.random.default_rng([seed, _DISC, epoch, batch])


def eval_rng(seed, batch):
    """The Generator for valid batch ``batch``: the same every epoch (common random numbers, so
    valid NELBOs of different epochs differ only through the parameters)."""
    return np.random.default_rng([seed, _EVAL, batch])


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def _pack(tree, arrays, prefix):
    """JSON-able copy of a nested dict/list of scalars and arrays; arrays move to ``arrays``
    under generated keys and are replaced by {"__array__": key}."""
    if isinstance(tree, dict):
        bad = [k for k in tree if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"checkpoint state keys must be strings, got {bad[:3]}")
        return {k: _pack(v, arrays, prefix) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_pack(v, arrays, prefix) for v in tree]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, np.generic) or isinstance(tree, np.ndarray) or hasattr(tree, "__array__"):
        key = f"{prefix}{len(arrays)}"
        arrays[key] = np.asarray(to_numpy(tree))        # 0-d arrays keep numpy scalars' dtype
        return {"__array__": key}
    raise CheckpointError(f"cannot store a {type(tree).__name__} in a checkpoint "
                          "(allowed: dict, list, str, int, float, bool, None, arrays)")


def _unpack(tree, arrays):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            a = arrays[tree["__array__"]]
            return a[()] if a.ndim == 0 else a
        return {k: _unpack(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unpack(v, arrays) for v in tree]
    return tree


def _atomic_write(path, write):
    """Call write(file object) on a temporary file in path's folder, then os.replace it onto
    path: a reader (or a crash) never sees a half-written file.  No temporary is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_checkpoint(path, model, optimizer=None, state=None):
    """Write model params, optimiser state, kind, config and training state to an .npz.

    Layout: ``param/<name>`` arrays for the params; ``meta`` a JSON string with format,
    version, kind, config, param names and shapes, and the optimiser and training state (their
    arrays stored as ``optim/<i>`` and ``state/<i>``).  Written atomically (temporary file in
    the same folder, then os.replace).  Returns the path.
    """
    try:
        config = json.loads(json.dumps(model.config))
    except TypeError as e:
        raise CheckpointError(f"model.config of {model.kind!r} is not JSON-serialisable ({e}); "
                              "the contract asks for a dict that rebuilds the model") from e
    arrays = {f"param/{name}": np.asarray(to_numpy(p)) for name, p in model.params.items()}
    meta = {
        "format": FORMAT, "version": VERSION, "kind": model.kind, "config": config,
        "params": {name: list(a.shape) for name, a in
                   ((n, arrays[f"param/{n}"]) for n in model.params)},
        "optimizer": None if optimizer is None else _pack(optimizer.state_dict(), arrays, "optim/"),
        "optimizer_class": None if optimizer is None else type(optimizer).__name__,
        "state": _pack(state or {}, arrays, "state/"),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    return _atomic_write(path, lambda f: np.savez(f, **arrays))


def read_checkpoint(path):
    """(meta dict, params dict of arrays, optimiser state or None, training state) from a file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as e:
        raise CheckpointError(f"{str(path)!r} is not a readable nplvm checkpoint ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an nplvm checkpoint (format {meta.get('format')!r})")
    params = {name: arrays[f"param/{name}"] for name in meta["params"]}
    optim = None if meta["optimizer"] is None else _unpack(meta["optimizer"], arrays)
    return meta, params, optim, _unpack(meta["state"], arrays)


def load_checkpoint(path, model=None):
    """Load a checkpoint: returns (model, optimizer_state or None, state).

    With ``model`` given, its kind and every parameter's name and shape must match the file's
    (a CheckpointError lists the differences); the values are copied into the live arrays of
    ``model.params`` in place, so an optimiser holding them sees the loaded values.  Without
    ``model``, the model is rebuilt with ``nplvm.models.build(kind, config)`` first.
    Pass optimizer_state to ``optimizer.load_state_dict``.
    """
    meta, params, optim, state = read_checkpoint(path)
    if model is None:
        from .models import build          # models sit below train; imported on use
        model = build(meta["kind"], meta["config"])
    if model.kind != meta["kind"]:
        raise CheckpointError(f"{str(path)!r} holds a {meta['kind']!r} model, "
                              f"but it is being loaded into a {model.kind!r}")
    problems = []
    for name in sorted(set(params) | set(model.params)):
        if name not in model.params:
            problems.append(f"{name}: in the checkpoint, not in the model")
        elif name not in params:
            problems.append(f"{name}: in the model, not in the checkpoint")
        elif tuple(model.params[name].shape) != params[name].shape:
            problems.append(f"{name}: checkpoint shape {params[name].shape}, "
                            f"model shape {tuple(model.params[name].shape)}")
    if problems:
        raise CheckpointError(f"{str(path)!r} does not fit this {model.kind!r} model "
                              f"(config {meta['config']} in the file):\n  " + "\n  ".join(problems))
    for name, value in params.items():
        p = model.params[name]
        p[...] = xp_of(p).asarray(value)     # in place: keep the arrays the optimiser holds
    disc = getattr(model, "discriminator", None)
    if disc is not None and "discriminator" in state:
        _load_params(disc.params, state["discriminator"]["params"], f"{str(path)!r} (discriminator)")
    return model, optim, state


def _load_params(live, saved, where):
    """Copy saved arrays into the live parameter arrays in place, after checking names and shapes."""
    if set(live) != set(saved) or any(tuple(live[k].shape) != np.shape(saved[k]) for k in live):
        raise CheckpointError(f"{where}: parameters {sorted((k, np.shape(v)) for k, v in saved.items())} "
                              f"do not fit {sorted((k, tuple(v.shape)) for k, v in live.items())}")
    for name, value in saved.items():
        live[name][...] = xp_of(live[name]).asarray(value)


# ----------------------------------------------------------------------------------------------
# Resuming: the same run, or a difference the caller allowed by name
# ----------------------------------------------------------------------------------------------

def data_fingerprint(x):
    """The training data's identity: "sha256:<hex>" of its dtype, shape and bytes (C order).

    Two arrays with the same fingerprint hold the same values in the same order; the VRNN's
    (N, 28, 28) view of the same images has another fingerprint than the (N, 784) rows."""
    a = np.ascontiguousarray(to_numpy(x))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8).data if a.size else b"")
    return "sha256:" + h.hexdigest()


_MISSING = "<absent>"
RUN_SETTINGS = ("optimizer", "data", "seed", "batch_size", "clip_norm")   # besides config and hyper


def _optimizer_hyper(optimizer):
    """{name: value} of the optimiser's scalar hyperparameters (``hyper``; "lr" at least)."""
    names = getattr(type(optimizer), "hyper", ("lr",))
    return {k: getattr(optimizer, k) for k in names if hasattr(optimizer, k)}


def resume_differences(meta, state, optim_state, model, optimizer, x_train, seed, batch_size,
                       clip_norm, fingerprint=None):
    """{setting: (in the checkpoint, in this call)} for every setting of a resumed run that
    differs from the checkpoint's: each key of the model config, the optimiser's class
    ("optimizer") and hyperparameters ("lr", "momentum", ...), the training data ("data", by
    ``data_fingerprint``), "seed", "batch_size" and "clip_norm".  Settings the checkpoint does
    not record (older files) are not compared."""
    diffs = {}
    saved_cfg = meta.get("config") or {}
    now_cfg = json.loads(json.dumps(model.config))
    for k in sorted(set(saved_cfg) | set(now_cfg)):
        if k != "seed" and saved_cfg.get(k, _MISSING) != now_cfg.get(k, _MISSING):
            diffs[k] = (saved_cfg.get(k, _MISSING), now_cfg.get(k, _MISSING))
    saved_cls, now_cls = meta.get("optimizer_class"), type(optimizer).__name__
    if saved_cls is not None and saved_cls != now_cls:
        diffs["optimizer"] = (saved_cls, now_cls)
    if optim_state is not None:                       # hyperparameters both classes have, too
        for k, v in _optimizer_hyper(optimizer).items():
            if k in optim_state and float(np.asarray(optim_state[k])) != float(v):
                diffs[k] = (float(np.asarray(optim_state[k])), float(v))
    if "data_fingerprint" in state:
        now = fingerprint or data_fingerprint(x_train)
        if state["data_fingerprint"] != now:
            diffs["data"] = (f"{state.get('n_train')} examples, {state['data_fingerprint'][:19]}...",
                             f"{len(x_train)} examples, {now[:19]}...")
    elif state.get("n_train") != len(x_train):
        diffs["data"] = (f"{state.get('n_train')} examples", f"{len(x_train)} examples")
    for key, now in (("seed", seed), ("batch_size", batch_size), ("clip_norm", clip_norm)):
        if key in state and state[key] != now:
            diffs[key] = (state[key], now)
    return diffs


def check_resume(path, model, optimizer, x_train, seed, batch_size, clip_norm=None, allow_change=(),
                 fingerprint=None):
    """Read the checkpoint at ``path`` and compare it with this run (``resume_differences``).

    Returns (changes, meta, optimizer_state, state): ``changes`` maps each allowed difference to
    {"from": ..., "to": ...}.  Raises CheckpointError listing every difference not named in
    ``allow_change`` (the command line's ``--allow-change``).  Reads only; loads nothing."""
    meta, _, optim_state, state = read_checkpoint(path)
    if meta["kind"] != model.kind:
        raise CheckpointError(f"{str(path)!r} holds a {meta['kind']!r} model, "
                              f"but it is being loaded into a {model.kind!r}")
    diffs = resume_differences(meta, state, optim_state, model, optimizer, x_train, seed,
                               batch_size, clip_norm, fingerprint)
    refused = {k: v for k, v in diffs.items() if k not in set(allow_change)}
    if refused:
        lines = [f"{k}: the checkpoint has {k}={a!r}, this run {k}={b!r}" for k, (a, b) in refused.items()]
        raise CheckpointError(
            f"cannot resume {str(path)!r}: this run differs from the checkpoint (epoch "
            f"{state.get('epoch')}) in {len(refused)} setting(s):\n  " + "\n  ".join(lines) +
            "\nresume with the checkpoint's settings, or name each deliberate change "
            f"(--allow-change {','.join(refused)} on the command line, allow_change=[...] in "
            "fit); the change is recorded in the run's history")
    return ({k: {"from": a, "to": b} for k, (a, b) in diffs.items()}, meta, optim_state, state)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def _sq_norm(g):
    """||g||^2 of one gradient array by one BLAS dot (in g's dtype), as a Python float."""
    flat = g.ravel()
    return float(xp_of(g).dot(flat, flat))


def _global_norm(grads):
    """sqrt(sum_k ||g_k||^2) over all gradient arrays, as a Python float (inf or NaN, silently,
    when an entry is, or when the squares overflow the dtype)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return math.sqrt(sum(_sq_norm(g) for g in grads.values()))


def _checked_norm(loss, grads, params, epoch, batch, ckpt_note):
    """The global gradient norm ||g|| = sqrt(sum_k ||g_k||^2), after checking the loss, that
    every parameter has a gradient, and that every gradient is finite.

    One pass over the gradients: a NaN or inf entry makes its array's sum of squares NaN or inf,
    so a finite norm proves every entry finite, and the arrays are searched one by one (to name
    the culprit in the TrainingDiverged) only when it is not.  A norm that overflows although
    every entry is finite (float32 squares above 3.4e38, entries above ~1.8e19) is recomputed
    in float64.
    """
    where = f"epoch {epoch + 1}, batch {batch}"
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss} at {where}; {ckpt_note}", epoch + 1, batch, "loss")
    missing = set(params) - set(grads)
    if missing:
        raise KeyError(f"model.loss returned no gradient for {sorted(missing)}")
    norm = _global_norm(grads)
    if math.isfinite(norm):
        return norm
    for name, g in grads.items():
        if not bool(xp_of(g).isfinite(g).all()):
            raise TrainingDiverged(f"the gradient of {name!r} holds NaN/inf at {where} "
                                   f"(loss {loss:.6g}); {ckpt_note}", epoch + 1, batch, name)
    return math.sqrt(sum(_sq_norm(g.astype("float64")) for g in grads.values()))


def evaluate(model, x, batch_size=100, seed=0):
    """The model's mean loss (its training objective, nats per example) on x, in batches with
    fixed noise, computed without gradients (``loss(x, rng, grad=False)``).

    Batch b uses ``eval_rng(seed, b)``; the result is the batch-size-weighted mean of the batch
    losses, i.e. (1/N) sum_i loss(x_i).
    """
    dtype, xp = _model_dtype(model)
    n, total = len(x), 0.0
    for b, start in enumerate(range(0, n, batch_size)):
        xb = xp.asarray(x[start:start + batch_size], dtype=dtype)
        total += loss_value(model, xb, eval_rng(seed, b)) * len(xb)
    return total / n


def loss_value(model, x, rng):
    """The loss alone: ``model.loss(x, rng, grad=False)[0]`` as a float (no backward pass)."""
    return float(model.loss(x, rng, grad=False)[0])


def valid_nelbo(model, x, batch_size=100, seed=0):
    """(1/N) sum_i -log w(x_i, z_i), one z_i ~ q(z|x_i): the NELBO, comparable across objectives.
    None for a model without ``log_weights``."""
    if not hasattr(model, "log_weights"):
        return None
    from .objectives import nelbo
    return nelbo(model, x, rng=np.random.default_rng([seed, _EVAL]), batch=batch_size)


def _model_dtype(model):
    p = next(iter(model.params.values()))
    return p.dtype, xp_of(p)


def _jsonable(v):
    if isinstance(v, (np.generic, np.ndarray)) and np.ndim(v) == 0:
        return v.item()
    if isinstance(v, dict):
        return {k: _jsonable(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    return v


def _write_metrics(path, history):
    text = "".join(json.dumps(r) + "\n" for r in history)
    _atomic_write(path, lambda f: f.write(text.encode()))


def fit(model, optimizer, x_train, x_valid=None, epochs=10, batch_size=100, seed=0,
        out_dir=None, progress=True, clip_norm=None, eval_fn=None, resume=False, log=print,
        eval_batch_size=None, discriminator_optimizer=None, allow_change=()):
    """Train ``model`` with ``optimizer`` on x_train; returns the history (one dict per epoch).

    model       follows the contract: params, loss(x, rng) -> (loss, grads), kind, config
    optimizer   has step(params, grads) (in place), state_dict(), load_state_dict(d)
    x_train     (N, ...) array; batches are taken along axis 0 and cast to the params' dtype
                (uint8 binary images stay small in memory).  (N, 28, 28) works for the VRNN.
    x_valid     optional array; valid_nelbo = evaluate(model, x_valid, ..., seed) every epoch
    epochs      total number of epochs (a resumed run continues up to this number)
    seed        seeds every permutation and every batch's noise (see the module docstring)
    out_dir     if given: metrics.jsonl and checkpoint.npz are rewritten there every epoch
    progress    tqdm bar over batches (only when stderr is a terminal)
    clip_norm   if given, rescale gradients so their global norm is at most clip_norm:
                g <- g * min(1, clip_norm / ||g||)
    eval_fn     optional eval_fn(model, epoch) -> dict of extra metrics for the epoch record
                (a model with a ``set_epoch(epoch)`` method has it called with the 0-based epoch
                before the epoch's first batch: a schedule such as KL warm-up, resume-safe)
                (a "valid_nelbo" it returns replaces the built-in one)
    resume      continue from out_dir/checkpoint.npz (params, optimiser state, history);
                bit-identical to an uninterrupted run with the same arguments.  The model
                config, the optimiser (class and hyperparameters), the training data
                (``data_fingerprint``), seed, batch_size and clip_norm must equal the
                checkpoint's: a CheckpointError lists every difference (``check_resume``)
    allow_change  names of settings that may differ on resume (e.g. ["lr"]): the new value
                is used (a new optimiser class starts with a fresh state) and the change is
                recorded in the history: "changed" in the first resumed epoch's record, and
                in the checkpoint's state["changes"]
    discriminator_optimizer   optional optimiser of ``model.discriminator`` (see the module
                docstring; default: the model's optimiser class at ``discriminator.lr``)
    log         function taking one line per epoch (None: quiet)

    With epochs <= the epochs already done nothing is written.  Raises TrainingDiverged (naming epoch, batch and the loss or gradient) as soon as a
    loss or gradient is NaN/inf, before the bad step is taken, or when a parameter or the
    valid NELBO is NaN/inf at the end of an epoch; checkpoint.npz then still holds the last
    completed epoch, untouched.
    """
    from .checks import nonneg_int, optional, positive_float, positive_int
    n = len(x_train)
    if n == 0:
        raise ValueError("x_train is empty")
    batch_size = positive_int("batch_size", batch_size)
    epochs = nonneg_int("epochs", epochs)
    clip_norm = optional(positive_float, "clip_norm", clip_norm)
    if not isinstance(seed, (list, tuple)):
        seed = nonneg_int("seed", seed)
    if eval_batch_size is not None:
        eval_batch_size = positive_int("eval_batch_size", eval_batch_size)
    allow_change = [allow_change] if isinstance(allow_change, str) else list(allow_change)
    dtype, xp = _model_dtype(model)
    disc = getattr(model, "discriminator", None)
    d_opt = discriminator_optimizer
    if disc is not None and d_opt is None:
        d_opt = type(optimizer)(getattr(disc, "lr", None) or optimizer.lr)
    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / CHECKPOINT if out is not None else None
    history, start = [], 0
    saved = None                                       # epoch of the checkpoint this run wrote/read

    fingerprint = data_fingerprint(x_train) if out is not None else None
    changes, past_changes = {}, []
    if resume:
        if out is None:
            raise ValueError("resume=True needs out_dir (where checkpoint.npz lives)")
        if ckpt.is_file():
            # compare first (read only), then load: a refused resume leaves the model untouched
            changes, meta, optim_state, state = check_resume(
                ckpt, model, optimizer, x_train, seed, batch_size, clip_norm, allow_change, fingerprint)
            load_checkpoint(ckpt, model)
            if optim_state is not None and "optimizer" not in changes:
                hyper = _optimizer_hyper(optimizer)
                optimizer.load_state_dict(optim_state)
                for k in changes:                          # an allowed new lr, momentum, ...
                    if k in hyper:
                        setattr(optimizer, k, hyper[k])
            if disc is not None:
                d_opt.load_state_dict(state["discriminator"]["optimizer"])
            history, start = list(state["history"]), int(state["epoch"])
            past_changes = list(state.get("changes", []))
            if changes:
                past_changes.append({"epoch": start, "changed": changes})
            saved = start
            if log:
                log(f"resumed from {ckpt} at epoch {start}")
                for k, c in changes.items():
                    log(f"  changed on purpose: {k} {c['from']!r} -> {c['to']!r}")
        elif log:
            log(f"no checkpoint at {ckpt}: starting from scratch")
    if out is not None and start < epochs:
        out.mkdir(parents=True, exist_ok=True)
        _write_metrics(out / METRICS, history)         # drop lines past the checkpoint, if any

    if isinstance(x_train, np.ndarray) and not x_train.flags.c_contiguous:
        # Every batch gathers rows: from a Fortran-ordered array (as np.load returns arrays saved
        # in that order) each row is a strided gather and the batch comes out column-major,
        # which measured 0.7 ms per (128, 784) batch against 0.05 ms from a row-major copy.
        x_train = np.ascontiguousarray(x_train)
    n_batches = -(-n // batch_size)
    show_bar = progress and sys.stderr.isatty()
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        if hasattr(model, "set_epoch"):                # per-epoch schedules, e.g. KL warm-up
            model.set_epoch(epoch)
        ckpt_note = (f"the last good checkpoint ({str(ckpt)!r}, epoch {saved}) is untouched"
                     if saved is not None else "no checkpoint of this run was written")
        order = epoch_permutation(n, seed, epoch)
        total, norm_sum, d_total = 0.0, 0.0, 0.0
        bar = None
        if show_bar:
            from tqdm import tqdm
            bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb = xp.asarray(x_train[idx], dtype=dtype)
            loss, grads = model.loss(xb, batch_rng(seed, epoch, b))
            loss = float(loss)
            norm = _checked_norm(loss, grads, model.params, epoch, b, ckpt_note)   # NaN/inf: raises
            norm_sum += norm
            if clip_norm is not None and norm > clip_norm:
                scale = clip_norm / norm                  # g <- g * clip_norm / ||g||
                grads = {k: g * g.dtype.type(scale) for k, g in grads.items()}
            optimizer.step(model.params, grads)
            total += loss * len(idx)
            if disc is not None:                        # the second player: one step on the same batch
                d_loss, d_grads = disc.loss(xb, disc_rng(seed, epoch, b))
                d_loss = float(d_loss)
                _checked_norm(d_loss, d_grads, disc.params, epoch, b, ckpt_note)
                d_opt.step(disc.params, d_grads)
                d_total += d_loss * len(idx)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
                bar.update(1)                           # redraws at most every 0.1 s
        if bar is not None:
            bar.close()
        for name, p in model.params.items():
            if not bool(xp_of(p).isfinite(p).all()):
                raise TrainingDiverged(f"parameter {name!r} holds NaN/inf after epoch {epoch + 1} "
                                       f"(finite gradients: the step size is too large?); {ckpt_note}",
                                       epoch + 1, n_batches - 1, name)

        record = {"epoch": epoch + 1, "train_loss": total / n, "valid_loss": None, "valid_nelbo": None}
        if changes and epoch == start:
            record["changed"] = changes
        if disc is not None:
            record["disc_loss"] = d_total / n
        if x_valid is not None:
            eb = eval_batch_size or batch_size
            record["valid_loss"] = evaluate(model, x_valid, eb, seed)
            record["valid_nelbo"] = valid_nelbo(model, x_valid, eb, seed)
        if eval_fn is not None:
            record.update(_jsonable(eval_fn(model, epoch + 1) or {}))
        for key in ("valid_loss", "valid_nelbo"):
            valid = record[key]
            if valid is not None and not math.isfinite(valid):
                raise TrainingDiverged(f"the {key} is {valid} after epoch {epoch + 1}; "
                                       f"{ckpt_note}", epoch + 1, None, key)
        record["grad_norm"] = norm_sum / n_batches
        record["seconds"] = time.perf_counter() - t0
        history.append(record)

        if out is not None:
            _write_metrics(out / METRICS, history)
            state = {"epoch": epoch + 1, "seed": seed, "batch_size": batch_size, "n_train": n,
                     "clip_norm": clip_norm, "data_fingerprint": fingerprint, "history": history,
                     "changes": past_changes}
            if disc is not None:
                state["discriminator"] = {"params": dict(disc.params), "optimizer": d_opt.state_dict()}
            save_checkpoint(ckpt, model, optimizer, state=state)
            saved = epoch + 1
        if log:
            valid = "" if record["valid_loss"] is None else f"  valid loss {record['valid_loss']:.3f}"
            if record["valid_nelbo"] is not None:
                valid += f"  valid NELBO {record['valid_nelbo']:.3f}"
            log(f"epoch {epoch + 1}/{epochs}  train loss {record['train_loss']:.3f}{valid}  "
                f"({record['seconds']:.1f} s)")
    return history
