"""nplvm.data: the offline dataset, file formats (npz, idx, amat), download checks, validation.

Every file read here is written by the test itself into tmp_path; nothing touches the network
(downloads are exercised with file:// mirrors).
"""
import gzip
import hashlib
import os

import numpy as np
import pytest

from nplvm import data
from nplvm.checks import DataError


@pytest.fixture(scope="module")
def offline():
    return data.load_offline_mnist()


def _gray(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 784), dtype=np.uint8)


# ---------------------------------------------------------------- offline dataset

def test_offline_shapes_dtypes_binary(offline):
    ds = offline
    assert ds.binary and ds.name.startswith("mnist5k")
    assert ds.train.shape == (4000, 784) and ds.valid.shape == (500, 784) and ds.test.shape == (500, 784)
    for x in (ds.train, ds.valid, ds.test):
        assert x.dtype == np.uint8
        assert set(np.unique(x)) <= {0, 1}
    # real digits: about 13% of MNIST pixels are on after stochastic binarization
    assert 0.10 < ds.train.mean() < 0.16
    for y, n in ((ds.train_labels, 4000), (ds.valid_labels, 500), (ds.test_labels, 500)):
        assert y.shape == (n,) and y.dtype == np.int64


def test_offline_split_is_stratified_and_disjoint(offline):
    assert np.bincount(offline.train_labels).tolist() == [400] * 10
    assert np.bincount(offline.valid_labels).tolist() == [50] * 10
    assert np.bincount(offline.test_labels).tolist() == [50] * 10
    # the three splits are disjoint subsets of the 5,000 images: compare grayscale rows
    gray = data.load_offline_mnist(binarization=None)
    rows = {r.tobytes() for r in gray.train}
    assert not any(r.tobytes() in rows for r in np.concatenate([gray.valid, gray.test]))
    assert gray.train.max() == 255 and not gray.binary


def test_offline_reproducible_and_seed_dependent(offline):
    again = data.load_dataset("offline")
    for k in ("train", "valid", "test", "train_labels", "test_labels"):
        assert np.array_equal(getattr(offline, k), getattr(again, k))
    other = data.load_offline_mnist(seed=1, binarize_seed=1)
    assert not np.array_equal(other.test_labels, offline.test_labels)


def test_offline_binarization_is_bernoulli_of_the_pixels():
    gray = data.load_offline_mnist(binarization=None)
    binary = data.load_offline_mnist(binarization="stochastic")
    p = gray.train / 255.0
    # E[x] = p: the mean over 4000 x 784 draws matches the mean intensity to ~1e-3
    assert abs(binary.train.mean() - p.mean()) < 3e-3
    assert np.all(binary.train[p == 0] == 0) and np.all(binary.train[p == 1] == 1)
    thr = data.load_offline_mnist(binarization="threshold")
    assert np.array_equal(thr.train, (p > 0.5).astype(np.uint8))


def test_env_var_sets_the_default(monkeypatch, tmp_path):
    path = tmp_path / "bin.npz"
    np.savez(path, train=np.ones((3, 784), np.uint8), valid=np.zeros((2, 784), np.uint8),
             test=np.zeros((2, 784), np.uint8))
    monkeypatch.setenv("NPLVM_DATA", str(path))
    assert data.load_dataset().train.shape == (3, 784)
    monkeypatch.setenv("NPLVM_DATA", str(tmp_path / "gone.npz"))
    with pytest.raises(FileNotFoundError, match="NPLVM_DATA"):
        data.load_dataset()


# ---------------------------------------------------------------- binarize / views / checks

def test_binarize_stochastic_and_threshold():
    x = np.array([[0] * 392 + [255] * 392], np.uint8).repeat(4, axis=0)
    assert np.array_equal(data.binarize(x, seed=3), (x == 255).astype(np.uint8))
    half = np.full((2000, 784), 0.5)
    b1, b2 = data.binarize(half, seed=7, max_value=1.0), data.binarize(half, seed=7, max_value=1.0)
    assert np.array_equal(b1, b2) and b1.dtype == np.uint8
    assert abs(b1.mean() - 0.5) < 0.005          # Bernoulli(0.5): sd of the mean ~ 4e-4
    assert not np.array_equal(b1, data.binarize(half, seed=8, max_value=1.0))
    assert data.binarize(np.full((1, 784), 128), method="threshold").all()
    with pytest.raises(ValueError, match="method"):
        data.binarize(x, method="otsu")
    with pytest.raises(DataError, match=r"\[0, 1.0\]"):
        data.binarize(x, max_value=1.0)


def test_as_sequences_round_trip():
    x = _gray(5)
    s = data.as_sequences(x)
    assert s.shape == (5, 28, 28)
    assert np.array_equal(s[2, 3], x[2, 3 * 28:4 * 28])     # x_t is pixel row t
    assert np.array_equal(data.from_sequences(s), x)
    with pytest.raises(DataError, match=r"\(N, 784\)"):
        data.as_sequences(np.zeros((5, 783)))


def test_to_float():
    x = np.array([[0, 1] * 392], np.uint8)
    f = data.to_float(x)
    assert f.dtype == np.float32 and np.array_equal(f, x)
    assert data.to_float(_gray(2), np.float64, scale=255).max() <= 1.0
    with pytest.raises(TypeError, match="float32 or float64"):
        data.to_float(x, np.int32)


def test_bad_data_raises_data_error():
    x = np.zeros((4, 784))
    x[1, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        data.check_images(x)
    with pytest.raises(DataError, match=r"expected x with shape \(N, 784\), got shape \(4, 28, 28\)"):
        data.check_images(np.zeros((4, 28, 28)))
    with pytest.raises(DataError, match="values range"):
        data.check_images(np.full((2, 784), 300.0))
    with pytest.raises(DataError, match="binary"):
        data.check_images(np.full((2, 784), 0.5), binary=True)
    with pytest.raises(DataError, match="NaN"):
        data.binarize(x)


# ---------------------------------------------------------------- npz files

def test_load_binarized_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrs = {k: (rng.random((n, 784)) < 0.2).astype(np.uint8) for k, n in
            (("train", 20), ("valid", 6), ("test", 10))}
    path = tmp_path / "binarized_mnist.npz"
    np.savez(path, **arrs, test_labels=np.repeat(np.arange(5), 2).astype(np.uint8))
    ds = data.load_dataset(path)
    assert ds.binary and ds.train_labels is None
    for k in arrs:
        assert np.array_equal(getattr(ds, k), arrs[k])
    assert ds.test_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]

    np.savez(tmp_path / "gray.npz", train=arrs["train"] * 255, valid=arrs["valid"], test=arrs["test"])
    with pytest.raises(DataError, match="binary"):
        data.load_binarized_mnist(tmp_path / "gray.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="keys"):
        data.load_dataset(tmp_path / "other.npz")


def test_load_raw_npz_split_and_binarize(tmp_path):
    labels = np.repeat(np.arange(10), 20).astype(np.uint8)        # 200 images, 20 per digit
    images = _gray(200)
    path = tmp_path / "raw.npz"
    np.savez(path, images=images, labels=labels)
    gray = data.load_dataset(path, binarization=None)
    assert not gray.binary and gray.train.dtype == np.uint8
    assert (len(gray.train), len(gray.valid), len(gray.test)) == (160, 20, 20)
    assert np.bincount(gray.test_labels).tolist() == [2] * 10
    # each split's rows are images of the right label
    for x, y in ((gray.train, gray.train_labels), (gray.test, gray.test_labels)):
        where = [np.flatnonzero((images == row).all(1))[0] for row in x]
        assert np.array_equal(labels[where], y)
    binary = data.load_dataset(path)
    assert binary.binary and np.array_equal(binary.test_labels, gray.test_labels)
    assert np.array_equal(binary.train, data.binarize(gray.train, seed=[0, 0]))


def test_load_keras_style_npz(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=_gray(30).reshape(30, 28, 28), y_train=np.arange(30) % 10,
             x_test=_gray(7, 1).reshape(7, 28, 28), y_test=np.arange(7) % 10)
    ds = data.load_mnist_npz(path, n_valid=10)
    assert ds.train.shape == (20, 784) and ds.valid.shape == (10, 784) and ds.test.shape == (7, 784)
    assert ds.valid_labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_missing_file_error_names_path_and_options(tmp_path):
    missing = tmp_path / "nothing_here.npz"
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset(missing)
    msg = str(info.value)
    assert str(missing) in msg and "offline" in msg and "NPLVM_DATA" in msg
    assert isinstance(info.value, DataError)
    with pytest.raises(data.DataNotFoundError, match="train-images-idx3-ubyte"):
        data.load_dataset(tmp_path)                      # a directory without the idx files


# ---------------------------------------------------------------- idx files

def _write_mnist_idx(directory, gz, n_train=12, n_test=5):
    rng = np.random.default_rng(1)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8)}
    for stem, a in arrays.items():
        data.write_idx(directory / (stem + (".gz" if gz else "")), a)
    return arrays


def test_idx_header_bytes(tmp_path):
    """The idx layout, byte by byte: 00 00 08 03, then 3 big-endian int32 sizes, then pixels."""
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = data.write_idx(tmp_path / "x-idx3-ubyte", a)
    raw = path.read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert raw[4:16] == b"\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04"
    assert raw[16:] == a.tobytes()
    # a hand-written big-endian int32 file
    (tmp_path / "i4").write_bytes(b"\x00\x00\x0c\x01\x00\x00\x00\x02" + b"\x00\x00\x01\x00\xff\xff\xff\xff")
    assert data.read_idx(tmp_path / "i4").tolist() == [256, -1]


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx(tmp_path, gz):
    arrays = _write_mnist_idx(tmp_path, gz)
    ds = data.load_mnist_idx(tmp_path, n_valid=4)
    train_images = arrays["train-images-idx3-ubyte"].reshape(12, 784)
    assert np.array_equal(ds.train, train_images[:8]) and np.array_equal(ds.valid, train_images[8:])
    assert np.array_equal(ds.test, arrays["t10k-images-idx3-ubyte"].reshape(5, 784))
    assert ds.test_labels.tolist() == [0, 1, 2, 3, 4] and not ds.binary
    assert data.load_dataset(tmp_path, binarization="threshold").binary   # via the entry point
    first = (tmp_path / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))).read_bytes()[:2]
    assert (first == b"\x1f\x8b") == gz                # the files really are gzipped, or not


def test_idx_truncated_or_garbage(tmp_path):
    a = np.zeros((3, 28, 28), np.uint8)
    path = data.write_idx(tmp_path / "a", a)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="header promises shape"):
        data.read_idx(path)
    (tmp_path / "b").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="not an idx file"):
        data.read_idx(tmp_path / "b")


def test_amat_files(tmp_path):
    rng = np.random.default_rng(2)
    splits = {s: (rng.random((n, 784)) < 0.3).astype(np.uint8) for s, n in
              (("train", 4), ("valid", 2), ("test", 3))}
    for s, x in splits.items():
        (tmp_path / f"binarized_mnist_{s}.amat").write_text(
            "".join(" ".join(map(str, row)) + "\n" for row in x))
    ds = data.load_dataset(tmp_path)
    assert ds.binary and all(np.array_equal(getattr(ds, s), x) for s, x in splits.items())
    (tmp_path / "binarized_mnist_test.amat").write_text("0 1 2\n")
    with pytest.raises(DataError, match="amat"):
        data.read_amat(tmp_path / "binarized_mnist_test.amat")


# ---------------------------------------------------------------- download and checksums

def test_download_verifies_checksum_and_is_atomic(tmp_path):
    good = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03" + bytes([7, 8, 9]))
    files = {"tiny-labels-idx1-ubyte.gz": (hashlib.sha256(good).hexdigest(), len(good))}
    bad_mirror, good_mirror, cache = tmp_path / "bad", tmp_path / "good", tmp_path / "cache"
    bad_mirror.mkdir(), good_mirror.mkdir()
    (bad_mirror / "tiny-labels-idx1-ubyte.gz").write_bytes(good[:-1] + b"X")   # tampered
    (good_mirror / "tiny-labels-idx1-ubyte.gz").write_bytes(good)

    with pytest.raises(data.ChecksumError, match="SHA-256"):
        data.download_files(files, [bad_mirror.as_uri()], cache, log=None)
    assert os.listdir(cache) == []                       # no partial or bad file left behind

    logs = []
    data.download_files(files, [bad_mirror.as_uri(), good_mirror.as_uri()], cache, log=logs.append)
    assert os.listdir(cache) == ["tiny-labels-idx1-ubyte.gz"]
    assert data.read_idx(cache / "tiny-labels-idx1-ubyte.gz").tolist() == [7, 8, 9]
    # a cached file with the right hash is kept without touching any mirror
    data.download_files(files, ["file:///nonexistent-mirror"], cache, log=None)

    # tampering with the cached file is detected by verify_file
    (cache / "tiny-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    with pytest.raises(data.ChecksumError, match="expected " + files["tiny-labels-idx1-ubyte.gz"][0]):
        data.verify_file(cache / "tiny-labels-idx1-ubyte.gz", files["tiny-labels-idx1-ubyte.gz"][0])
    with pytest.raises(DataError, match="nonexistent-mirror"):
        data.download_files(files, ["file:///nonexistent-mirror"], cache, log=None)


def test_published_checksum_table_is_well_formed():
    for table in (data.MNIST_FILES, data.BINARIZED_MNIST_FILES):
        for name, (sha, size) in table.items():
            assert len(sha) == 64 and int(sha, 16) >= 0 and size > 0
    assert set(data.MNIST_FILES) == {s + ".gz" for s in data.MNIST_IDX.values()}


def test_strided_subset_spans_a_sorted_set():
    from nplvm.data import strided_subset
    labels = np.repeat(np.arange(10), 100)             # sorted by digit, like the binarized test set
    sub = strided_subset(labels, 50)
    assert len(sub) == 50 and set(sub.tolist()) == set(range(10))
    assert sub[0] == 0 and sub[-1] == 9                 # first and last rows included
    assert strided_subset(labels, None) is labels and strided_subset(labels, 5000) is labels
