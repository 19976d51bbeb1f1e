"""Never a traceback for a user's mistake, never a lost run (issue 14).

Command-line cases run the real CLI in a subprocess (``python -m nplvm ...`` with PYTHONPATH at
the repository root), as a user would; each asserts the exit status, the ``error: ...`` line, that
no traceback was printed, and what is (not) on disk afterwards.  The API cases check that every
public constructor and function names the argument it refuses.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--quick", "--hidden", "16", "--latent", "2", "--batch-size", "100", "--no-progress"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("NPLVM_DATA", None)                      # the offline default data
    return env


def cli(*args, cwd, timeout=300, module="nplvm"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc, *fragments):
    """Exit status 2, one ``error: ...`` line naming each fragment, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr, proc.stderr
    for f in fragments:
        assert f in proc.stderr, (f, proc.stderr)


def snapshot(folder):
    """name -> bytes of every file in a run folder (the lock file aside)."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.name != ".lock"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder holding one epoch of a tiny VAE (trained once for the module)."""
    base = tmp_path_factory.mktemp("base")
    proc = cli("train", "vae", *TINY, "--epochs", "1", "--out", "run", cwd=base)
    assert proc.returncode == 0, proc.stderr
    return base / "run"


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


# ---------------------------------------------------------------- one error path, exit 2

@pytest.mark.parametrize("argv, fragment", [
    (["train", "vae", "--epochs", "-1"], "--epochs"),
    (["train", "vae", "--batch-size", "0"], "--batch-size"),
    (["train", "vae", "--lr", "-1"], "--lr"),
    (["train", "vae", "--lr", "nan"], "nan"),
    (["train", "vae", "--seed", "-1"], "--seed"),
    (["train", "vae", "--clip-norm", "-1"], "--clip-norm"),
    (["train", "vae", "--hidden", "64,,64"], "--hidden"),
    (["train", "vae", "--resume", "--overwrite"], "--overwrite"),
    (["train", "vae", "--allow-change", "lr"], "--resume"),
    (["train", "fa"], "unknown model kind 'fa'"),
    (["train", "nosuchmodel"], "unknown model kind"),
])
def test_bad_flag_values_are_errors_before_anything_is_written(tmp_path, argv, fragment):
    proc = cli(*argv, "--out", "out", cwd=tmp_path)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, fragment", [
    ("--latent", "0", "latent"), ("--k", "0", "k must"), ("--beta", "-1", "beta"),
    ("--activation", "swish", "activation"), ("--dtype", "float16", "float32 or float64"),
])
def test_bad_model_settings_are_errors_naming_the_argument(tmp_path, flag, value, fragment):
    proc = cli("train", "vae", "--quick", flag, value, "--out", "out", cwd=tmp_path)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_or_not_writable(tmp_path):
    (tmp_path / "afile").write_text("keep me")
    assert_user_error(cli("train", "vae", *TINY, "--out", "afile", cwd=tmp_path), "is a file")
    assert (tmp_path / "afile").read_text() == "keep me"
    if os.geteuid() != 0:                            # root writes anywhere: nothing to test then
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert_user_error(cli("train", "vae", *TINY, "--out", ro / "run", cwd=tmp_path), "cannot write")
        finally:
            ro.chmod(0o700)


def test_evaluate_checks_its_flags_and_out_before_computing(run, tmp_path):
    for args, fragment in ((["--K", "0"], "--K"), (["--n", "0"], "--n"), (["--n", "-5"], "--n"),
                           (["--batch-size", "0"], "--batch-size"), (["--seed", "-1"], "--seed")):
        assert_user_error(cli("evaluate", "--checkpoint", run, *args, cwd=tmp_path), fragment)
    (tmp_path / "afile").write_text("")
    t0 = time.perf_counter()
    proc = cli("evaluate", "--checkpoint", run, "--K", "5000", "--out", "afile", cwd=tmp_path)
    assert_user_error(proc, "is a file")
    assert "importance sampling" not in proc.stderr        # refused before computing anything
    assert time.perf_counter() - t0 < 60
    assert_user_error(cli("evaluate", "--checkpoint", tmp_path / "nothing", cwd=tmp_path), "no checkpoint")
    assert not (run / "evaluation.json").exists()


def test_homework_and_lessons_share_the_error_path(tmp_path):
    (tmp_path / "afile").write_text("")
    assert_user_error(cli("make", "fa-em", tmp_path / "afile", cwd=tmp_path, module="nplvm.homework"),
                      "is a file")
    assert_user_error(cli("grade", "fa-em", tmp_path / "missing", cwd=tmp_path, module="nplvm.homework"),
                      "no student copy")
    proc = subprocess.run([sys.executable, str(ROOT / "lessons" / "02_kl_gaussian.py"), "--seed", "-1",
                           "--out", str(tmp_path / "fig")], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert_user_error(proc, "--seed")
    assert not (tmp_path / "fig").exists()
    # a lesson's --data that cannot be read, or that has no labels where the lesson needs them
    np.savez(tmp_path / "unlabeled.npz", train=np.zeros((20, 784), np.uint8), valid=np.zeros((5, 784), np.uint8),
             test=np.zeros((5, 784), np.uint8))
    for data, words in ((tmp_path / "missing.npz", ("--data", "no dataset at")),
                        (tmp_path / "unlabeled.npz", ("--data", "expected a dataset with test labels"))):
        proc = subprocess.run([sys.executable, str(ROOT / "lessons" / "16_vade.py"), "--quick", "--data", str(data),
                               "--out", str(tmp_path / "fig16")], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert_user_error(proc, *words)


# ---------------------------------------------------------------- runs are never lost

def test_a_non_empty_out_needs_resume_or_overwrite(run, tmp_path):
    before = snapshot(run)
    proc = cli("train", "vae", *TINY, "--epochs", "1", "--out", run, cwd=tmp_path)
    assert_user_error(proc, "not empty", "--resume", "--overwrite")
    assert snapshot(run) == before                    # checkpoint, metrics and run.json untouched
    (run / "evaluation.json").write_text("{}")
    proc = cli("train", "vae", *TINY, "--epochs", "1", "--seed", "3", "--out", run, "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (run / "evaluation.json").exists()   # the old run's score is gone with it
    assert json.loads((run / "run.json").read_text())["args"]["seed"] == 3


def test_epochs_0_writes_nothing(run, tmp_path):
    before = snapshot(run)
    for out in (run, tmp_path / "fresh"):
        proc = cli("train", "vae", *TINY, "--epochs", "0", "--resume", "--out", out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "nothing written" in proc.stdout
    assert snapshot(run) == before
    assert not (tmp_path / "fresh").exists()


def test_a_failed_start_leaves_run_json_alone(run, tmp_path):
    before = snapshot(run)
    proc = cli("train", "vae", *TINY, "--epochs", "2", "--resume", "--data", tmp_path / "absent.npz",
               "--out", run, cwd=tmp_path)
    assert_user_error(proc, "absent.npz")
    assert snapshot(run) == before


def test_a_second_writer_is_kept_out(run, tmp_path):
    """While another process holds the run's lock, a training into it is refused, untouched."""
    before = snapshot(run)
    with open(run / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("pid 12345 (a test holding the lock)\n")
        f.flush()
        proc = cli("train", "vae", *TINY, "--epochs", "2", "--resume", "--out", run, cwd=tmp_path)
    assert_user_error(proc, "being written by", "pid 12345")
    assert snapshot(run) == before
    # the lock goes with its holder: the same command now continues the run
    proc = cli("train", "vae", *TINY, "--epochs", "2", "--resume", "--out", run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# ---------------------------------------------------------------- resume compares, or records a change

def test_resume_refuses_each_difference_and_lists_them(run, tmp_path):
    before = snapshot(run)
    proc = cli("train", "vae", *TINY, "--epochs", "2", "--resume", "--lr", "0.01", "--beta", "2",
               "--activation", "tanh", "--optimizer", "sgd", "--out", run, cwd=tmp_path)
    assert_user_error(proc, "lr=0.001", "lr=0.01", "beta=1.0", "beta=2.0", "activation='relu'", "activation='tanh'",
                      "optimizer='Adam'", "optimizer='SGD'", "--allow-change")
    assert snapshot(run) == before
    # other training data: its fingerprint differs
    x = np.random.default_rng(0).random((300, 784)) < 0.3
    np.savez(tmp_path / "other.npz", train=x[:200].astype(np.uint8), valid=x[200:250].astype(np.uint8),
             test=x[250:].astype(np.uint8))
    proc = cli("train", "vae", *TINY, "--epochs", "2", "--resume", "--data", tmp_path / "other.npz",
               "--out", run, cwd=tmp_path)
    assert_user_error(proc, "data:")
    assert snapshot(run) == before


def test_a_deliberate_change_is_allowed_by_name_and_recorded(run, tmp_path):
    assert_user_error(cli("train", "vae", *TINY, "--epochs", "2", "--resume", "--lr", "0.01",
                          "--allow-change", "lrr", "--out", run, cwd=tmp_path), "unknown setting(s) lrr")
    proc = cli("train", "vae", *TINY, "--epochs", "2", "--resume", "--lr", "0.01",
               "--allow-change", "lr", "--out", run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["changed"] == {"lr": {"from": 0.001, "to": 0.01}} and "changed" not in records[0]
    history = json.loads((run / "run.json").read_text())["history"]
    assert len(history) == 2 and history[1]["changed"]["lr"]["to"] == 0.01
    from nplvm.train import read_checkpoint
    _, _, optim_state, state = read_checkpoint(run / "checkpoint.npz")
    assert float(optim_state["lr"]) == 0.01
    assert state["changes"] == [{"epoch": 1, "changed": {"lr": {"from": 0.001, "to": 0.01}}}]


# ---------------------------------------------------------------- Ctrl-C

def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(tmp_path):
    argv = [sys.executable, "-m", "nplvm", "train", "vae", *TINY, "--epochs", "100000", "--out", "run"]
    # (so many epochs that the run cannot finish before the signal, even on a loaded machine)
    proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "run" / "checkpoint.npz").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert "checkpoint.npz" in err and "--resume" in err
    resume = err.strip().splitlines()[-1].split()
    assert resume[:3] == ["python", "-m", "nplvm"]
    from nplvm.train import read_checkpoint
    done = read_checkpoint(tmp_path / "run" / "checkpoint.npz")[3]["epoch"]
    assert f"epoch {done} of 100000" in err
    # the printed command resumes (with fewer epochs, so that it ends at once)
    again = cli(*[a if a != "100000" else str(done) for a in resume[3:]], cwd=tmp_path)
    assert again.returncode == 0 and "nothing to train" in again.stdout, again.stderr


# ---------------------------------------------------------------- data ranges

def _raw_npz(path, images):
    np.savez(path, images=images, labels=np.repeat(np.arange(10), len(images) // 10))


def test_float_images_in_0_1_are_not_divided_by_255_again(tmp_path):
    from nplvm import data
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (200, 784)).astype(np.uint8)
    _raw_npz(tmp_path / "bytes.npz", gray)
    _raw_npz(tmp_path / "unit.npz", gray / 255.0)                 # the same images, in [0, 1]
    a, b = data.load_dataset(tmp_path / "bytes.npz"), data.load_dataset(tmp_path / "unit.npz")
    assert b.binary and abs(b.train.mean() - gray.mean() / 255) < 0.01     # not a near-blank set
    assert abs(a.train.mean() - b.train.mean()) < 0.01
    assert data.load_dataset(tmp_path / "unit.npz", binarization=None).max_value == 1.0
    assert data.pixel_range(gray / 255.0) == 1.0 and data.pixel_range(gray) == 255.0
    with pytest.raises(data.DataError, match="max_value=1.0"):
        data.binarize(gray / 255.0, max_value=255)
    np.testing.assert_array_equal(data.binarize(gray / 255.0, seed=1), data.binarize(gray, seed=1))


def test_splits_in_different_ranges_are_refused(tmp_path):
    from nplvm import data
    rng = np.random.default_rng(1)
    path = tmp_path / "mixed.npz"
    np.savez(path, x_train=rng.integers(0, 256, (30, 784)).astype(np.float32), y_train=np.arange(30) % 10,
             x_test=rng.random((10, 784)), y_test=np.arange(10) % 10)
    with pytest.raises(data.DataError, match="ambiguous"):
        data.load_dataset(path)
    proc = cli("train", "vae", *TINY, "--data", path, "--out", "out", cwd=tmp_path)
    assert_user_error(proc, "ambiguous")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the API names the wrong argument

def _refused(call, *fragments):
    with pytest.raises(ValueError) as e:
        call()
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_model_constructors_name_the_wrong_argument():
    from nplvm.models.gmvae import GMVAE
    from nplvm.models.vae import IWAE, VAE
    from nplvm.models.vrnn import VRNN
    _refused(lambda: VAE(latent=None), "latent", "None")
    _refused(lambda: VAE(seed=1.5), "seed", "1.5")
    _refused(lambda: VAE(hidden=(64, 0)), "hidden[1]")
    _refused(lambda: VAE(hidden=(64, 2.5)), "hidden[1]", "2.5")
    _refused(lambda: VAE(k=True), "k", "True")
    _refused(lambda: VAE(beta=float("nan")), "beta", "nan")
    _refused(lambda: VAE(activation="swish"), "activation", "swish")
    _refused(lambda: IWAE(k=0), "k")
    _refused(lambda: GMVAE(n_components=None), "n_components")
    _refused(lambda: GMVAE(prior_spread=-1.0), "prior_spread")
    _refused(lambda: VRNN(rnn_hidden=0), "rnn_hidden")
    _refused(lambda: VRNN(seed=-1), "seed")
    assert VAE(hidden=[8], latent=2.0, seed=3.0).config["seed"] == 3     # integral floats are fine


def test_classical_models_name_the_wrong_argument():
    from nplvm.models.fa import FactorAnalysis
    from nplvm.models.gmm import GaussianMixture
    from nplvm.models.linear_gaussian_q import LinearGaussianQ
    _refused(lambda: FactorAnalysis(n_components=2.5), "n_components", "2.5")
    _refused(lambda: FactorAnalysis(2, init="pca"), "init", "pca")
    _refused(lambda: FactorAnalysis(2, tol=float("nan")), "tol")
    _refused(lambda: GaussianMixture(3, reg_covar=-1), "reg_covar")
    _refused(lambda: GaussianMixture(3, seed=-2), "seed")
    _refused(lambda: GaussianMixture(0), "n_components")
    W, mu, psi = np.ones((4, 2)), np.zeros(4), np.ones(4)
    _refused(lambda: LinearGaussianQ(W, mu, psi, n_samples=0), "n_samples")
    q = LinearGaussianQ(W, mu, psi)
    _refused(lambda: q.fit(np.zeros((5, 4)), n_steps=-1), "n_steps")
    _refused(lambda: q.fit(np.zeros((5, 4)), lr=0), "lr")


def test_functions_name_the_wrong_argument():
    import kernels
    from nplvm import objectives, optim
    from nplvm.gradcheck import check_grad
    from nplvm.train import fit
    from nplvm.models.vae import VAE
    _refused(lambda: optim.Adam(lr=float("nan")), "lr")
    _refused(lambda: optim.Adam(beta1=1.0), "beta1")
    _refused(lambda: optim.SGD(0.1, momentum=-0.5), "momentum")
    _refused(lambda: optim.Adagrad(0.1, eps=0), "eps")
    _refused(lambda: optim.clip_grad_norm({"a": np.ones(2)}, None), "max_norm")
    m, x = VAE(hidden=[4], latent=2, x_dim=6), np.zeros((4, 6), np.uint8)
    for kw, name in ((dict(epochs=-1), "epochs"), (dict(batch_size=0), "batch_size"),
                     (dict(seed=1.5), "seed"), (dict(clip_norm=0.0), "clip_norm")):
        _refused(lambda: fit(m, optim.Adam(), x, **kw, log=None, progress=False), name)
    _refused(lambda: objectives.importance_sampled_log_px(m, x, K=0), "K")
    _refused(lambda: objectives.importance_sampled_log_px(m, x, K=2, batch=0), "batch")
    _refused(lambda: objectives.nelbo(m, x, rng=-1), "seed")
    _refused(lambda: check_grad(lambda: 0.0, np.zeros(2), np.zeros(2), eps=0), "eps")
    p = np.zeros((2, 3), np.float32)
    _refused(lambda: kernels.adam_step(p, p, p.copy(), p.copy(), -1.0, 0.9, 0.999, 1e-8, 1), "lr")
    _refused(lambda: kernels.adam_step(p, p, p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0), "t ")
    _refused(lambda: kernels.linear_forward(p, np.zeros((3, 2), np.float32), None, act="swish"), "act")


def test_checks_validators():
    from nplvm import checks
    assert checks.positive_int("n", 3.0) == 3 and checks.nonneg_int("seed", np.int64(0)) == 0
    assert checks.int_tuple("hidden", [64, 32]) == (64, 32) and checks.int_tuple("hidden", 8) == (8,)
    assert checks.one_of("kl", None, ("analytic", "mc", None)) is None
    assert checks.unit_interval("momentum", 0.0) == 0.0
    for call in (lambda: checks.positive_int("n", "3"), lambda: checks.nonneg_int("seed", False),
                 lambda: checks.positive_float("lr", float("inf")), lambda: checks.one_of("kl", 1, ("1",)),
                 lambda: checks.int_tuple("hidden", "64,32"), lambda: checks.unit_interval("m", 1.0),
                 lambda: checks.seed_value("seed", [1, -1])):
        with pytest.raises(ValueError):
            call()
