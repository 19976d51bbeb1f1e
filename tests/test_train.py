"""nplvm.train: the fit loop, checkpoints, resuming bit for bit, divergence errors.

A toy model and a toy optimiser defined here keep these tests independent of the real models
and of nplvm.optim; they follow the same contracts (README: params, loss(x, rng) -> (loss,
grads), kind, config; optimiser: step, state_dict, load_state_dict).
"""
import json
import os

import numpy as np
import pytest

from nplvm import train
from nplvm.models import register
from nplvm.train import CheckpointError, TrainingDiverged, fit, load_checkpoint, save_checkpoint

LOG2PI = np.log(2 * np.pi)


@register("toy_gauss")
class ToyGauss:
    """x ~ N(mu, diag exp(logvar)), fitted to a noisy copy y = x + noise * eps of each batch.

    loss = (1/B) sum_i 1/2 sum_d [(y_id - mu_d)^2 exp(-logvar_d) + logvar_d + log 2 pi]
    The noise makes the loss depend on the rng, like a real ELBO estimate.
    """

    def __init__(self, dim=3, noise=0.1, seed=0):
        self.config = {"dim": dim, "noise": noise, "seed": seed}
        r = np.random.default_rng(seed)
        self.params = {"mu": r.normal(size=dim), "logvar": np.zeros(dim)}
        self.calls = 0

    def loss(self, x, rng, grad=True):
        assert x.dtype == np.float64           # fit casts batches to the params' dtype
        self.calls += 1
        mu, logvar = self.params["mu"], self.params["logvar"]
        y = x + self.config["noise"] * rng.standard_normal(x.shape)
        r, iv = y - mu, np.exp(-logvar)
        loss = 0.5 * np.mean(np.sum(r * r * iv + logvar + LOG2PI, axis=1))
        grads = {"mu": -np.mean(r * iv, axis=0),                   # d loss / d mu
                 "logvar": 0.5 * np.mean(1.0 - r * r * iv, axis=0)}  # d loss / d logvar
        return loss, grads


@register("toy_other")
class ToyOther(ToyGauss):
    pass


class Poisoned(ToyGauss):
    """Returns a NaN gradient (or loss) on call number ``at``."""
    kind = "toy_gauss"

    def __init__(self, at, what="grad", **kw):
        super().__init__(**kw)
        self.at, self.what = at, what

    def loss(self, x, rng, grad=True):
        loss, grads = super().loss(x, rng)
        if self.calls == self.at:
            if self.what == "loss":
                loss = float("nan")
            else:
                grads["logvar"] = grads["logvar"].copy()
                grads["logvar"][1] = np.inf
        return loss, grads


class Momentum:
    """SGD with momentum: v <- beta v + g, theta <- theta - lr v (in place), with state."""

    def __init__(self, lr=0.1, beta=0.5):
        self.lr, self.beta, self.t, self.v = lr, beta, 0, {}

    def step(self, params, grads):
        self.t += 1
        for k, p in params.items():
            self.v[k] = self.beta * self.v.get(k, np.zeros_like(p)) + grads[k]
            p -= self.lr * self.v[k]

    def state_dict(self):
        return {"lr": self.lr, "beta": self.beta, "t": np.int64(self.t),
                "v": {k: v.copy() for k, v in self.v.items()}}

    def load_state_dict(self, d):
        self.lr, self.beta, self.t = d["lr"], d["beta"], int(d["t"])
        self.v = {k: np.array(v) for k, v in d["v"].items()}


def _data(n=90, dim=3, seed=1):
    return 2.0 + 0.5 * np.random.default_rng(seed).standard_normal((n, dim))


def _fit(out_dir=None, epochs=3, model=None, opt=None, **kw):
    model = model or ToyGauss()
    opt = opt or Momentum()
    kw.setdefault("batch_size", 20)
    kw.setdefault("log", None)
    hist = fit(model, opt, _data(), _data(30, seed=2), epochs=epochs, out_dir=out_dir,
               progress=False, **kw)
    return model, opt, hist


def _no_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


# ---------------------------------------------------------------- training

def test_toy_model_trains():
    model, _, hist = _fit(epochs=6)
    nelbo = [r["train_loss"] for r in hist]
    assert nelbo[-1] < nelbo[0] - 1.0
    assert hist[-1]["valid_loss"] < hist[0]["valid_loss"]
    assert np.allclose(model.params["mu"], 2.0, atol=0.3)        # the data mean


def test_train_loss_is_batch_weighted_mean():
    """With lr = 0 the params never move, so the epoch's train NELBO must equal the mean of
    the per-example losses (a last batch of 10 examples weighs 10, not 20)."""
    model, _, hist = _fit(epochs=1, opt=Momentum(lr=0.0), batch_size=40)   # 40 + 40 + 10
    x, order = _data(), train.epoch_permutation(90, 0, 0)
    ref = ToyGauss()
    per_batch = [ref.loss(x[order[s:s + 40]], train.batch_rng(0, 0, b))[0] * len(order[s:s + 40])
                 for b, s in enumerate(range(0, 90, 40))]
    assert hist[0]["train_loss"] == pytest.approx(sum(per_batch) / 90, rel=1e-12)
    assert hist[0]["valid_loss"] == pytest.approx(train.evaluate(ref, _data(30, seed=2), 40), rel=1e-12)


def test_same_seed_same_run_and_seed_matters():
    a, _, ha = _fit(seed=5)
    b, _, hb = _fit(seed=5)
    c, _, _ = _fit(seed=6)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert _no_time(ha) == _no_time(hb)
    assert not np.array_equal(a.params["mu"], c.params["mu"])


def test_evaluate_uses_fixed_noise():
    m = ToyGauss()
    x = _data(50)
    assert train.evaluate(m, x, 16, seed=3) == train.evaluate(m, x, 16, seed=3)
    assert train.evaluate(m, x, 16, seed=3) != train.evaluate(m, x, 16, seed=4)


def test_uint8_data_is_cast_to_the_params_dtype():
    x = (np.random.default_rng(0).random((40, 3)) < 0.5).astype(np.uint8)
    hist = fit(ToyGauss(), Momentum(), x, epochs=1, batch_size=10, progress=False, log=None)
    assert hist[0]["valid_nelbo"] is None and np.isfinite(hist[0]["train_loss"])


def test_clip_norm_bounds_the_step():
    x = 100.0 + _data(20)                 # far from mu: a huge gradient
    model, opt = ToyGauss(), Momentum(lr=1.0, beta=0.0)
    before = {k: v.copy() for k, v in model.params.items()}
    hist = fit(model, opt, x, epochs=1, batch_size=20, clip_norm=0.5, progress=False, log=None)
    step = np.sqrt(sum(np.sum((model.params[k] - before[k]) ** 2) for k in before))
    assert step == pytest.approx(0.5, rel=1e-9)       # lr * clip_norm
    assert hist[0]["grad_norm"] > 50                  # the unclipped norm is what is logged


def test_metrics_jsonl_and_eval_fn(tmp_path):
    def eval_fn(model, epoch):
        return {"mu0": np.float64(model.params["mu"][0]), "epoch_seen": epoch}

    lines = []
    hist = fit(ToyGauss(), Momentum(), _data(), _data(30, seed=2), epochs=3, batch_size=20,
               out_dir=tmp_path, progress=False, log=lines.append, eval_fn=eval_fn)
    records = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == hist and len(records) == 3
    for i, r in enumerate(records):
        assert {"epoch", "train_loss", "valid_nelbo", "seconds", "grad_norm", "mu0"} <= set(r)
        assert r["epoch"] == r["epoch_seen"] == i + 1 and r["seconds"] >= 0
    assert len(lines) == 3 and "train loss" in lines[0] and "valid loss" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.jsonl"]   # no temp files


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_exact(tmp_path):
    model, opt, hist = _fit(epochs=2)
    state = {"epoch": 2, "history": hist, "scale": np.float32(0.1), "nested": [1, {"a": None}]}
    path = save_checkpoint(tmp_path / "c.npz", model, opt, state)

    fresh = ToyGauss(seed=9)                       # other values, same shapes
    held = fresh.params["mu"]
    loaded, optim_state, st = load_checkpoint(path, fresh)
    assert loaded is fresh and fresh.params["mu"] is held     # loaded in place
    for k in model.params:
        assert np.array_equal(fresh.params[k], model.params[k])
        assert fresh.params[k].tobytes() == model.params[k].tobytes()
    assert optim_state["t"] == opt.t and isinstance(optim_state["t"], np.int64)
    assert all(np.array_equal(optim_state["v"][k], opt.v[k]) for k in opt.v)
    assert st["history"] == hist and st["nested"] == [1, {"a": None}]
    assert st["scale"] == np.float32(0.1) and st["scale"].dtype == np.float32

    rebuilt, _, _ = load_checkpoint(path)          # rebuilt from kind and config by the registry
    assert isinstance(rebuilt, ToyGauss) and rebuilt.config == model.config
    assert all(np.array_equal(rebuilt.params[k], model.params[k]) for k in model.params)


def test_load_rejects_other_kind_and_shapes(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", ToyGauss(dim=3))
    with pytest.raises(CheckpointError, match="holds a 'toy_gauss' model.*'toy_other'"):
        load_checkpoint(path, ToyOther(dim=3))
    with pytest.raises(CheckpointError, match=r"mu: checkpoint shape \(3,\), model shape \(5,\)"):
        load_checkpoint(path, ToyGauss(dim=5))
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(CheckpointError, match="not a readable nplvm checkpoint"):
        load_checkpoint(tmp_path / "other.npz")


def test_failed_save_keeps_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    model = ToyGauss()
    path = save_checkpoint(tmp_path / "checkpoint.npz", model, state={"epoch": 1})
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(train.np, "savez", broken_savez)
    model.params["mu"] += 1.0
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, state={"epoch": 2})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.npz"]


def test_unserialisable_config_is_a_clear_error(tmp_path):
    model = ToyGauss()
    model.config = {"dim": 3, "act": np.tanh}
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "c.npz", model)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- resuming

def test_resume_is_bit_identical(tmp_path):
    straight, opt_s, hist_s = _fit(tmp_path / "a", epochs=4)

    _fit(tmp_path / "b", epochs=2)                  # stops after 2 epochs...
    resumed, opt_r = ToyGauss(), Momentum()        # ...a new process: fresh model, optimiser
    hist_r = fit(resumed, opt_r, _data(), _data(30, seed=2), epochs=4, batch_size=20,
                 out_dir=tmp_path / "b", resume=True, progress=False, log=None)

    for k in straight.params:
        assert straight.params[k].tobytes() == resumed.params[k].tobytes()
    assert opt_r.t == opt_s.t and all(opt_r.v[k].tobytes() == opt_s.v[k].tobytes() for k in opt_s.v)
    assert _no_time(hist_r) == _no_time(hist_s) and len(hist_r) == 4
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 4
    _, _, state = load_checkpoint(tmp_path / "b" / "checkpoint.npz", ToyGauss())
    assert state["epoch"] == 4


def test_resume_without_checkpoint_starts_fresh_and_mismatch_is_refused(tmp_path):
    lines = []
    _, _, hist = _fit(tmp_path, epochs=1, resume=True, log=lines.append)
    assert len(hist) == 1 and "from scratch" in lines[0]
    with pytest.raises(CheckpointError, match="seed=0.*seed=1"):
        _fit(tmp_path, epochs=2, resume=True, seed=1)
    with pytest.raises(ValueError, match="out_dir"):
        _fit(None, resume=True)


# ---------------------------------------------------------------- divergence

@pytest.mark.parametrize("what, name", [("grad", "'logvar'"), ("loss", "loss")])
def test_nan_raises_and_last_good_checkpoint_survives(tmp_path, what, name):
    # 90 examples / batch 20 = 5 train batches per epoch, then 2 valid batches (30 / 20):
    # calls 1-5 train and 6-7 evaluate epoch 1, so call 9 is epoch 2, batch 1
    model = Poisoned(at=9, what=what)
    with pytest.raises(TrainingDiverged) as info:
        _fit(tmp_path, epochs=3, model=model)
    err = info.value
    assert (err.epoch, err.batch) == (2, 1) and name.strip("'") == err.name
    msg = str(err)
    assert "epoch 2, batch 1" in msg and name in msg and "epoch 1) is untouched" in msg

    # the checkpoint is epoch 1's, intact, and equal to an undisturbed one-epoch run
    ref, _, _ = _fit(tmp_path / "ref", epochs=1)
    loaded, _, state = load_checkpoint(tmp_path / "checkpoint.npz", ToyGauss())
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(loaded.params[k].tobytes() == ref.params[k].tobytes() for k in ref.params)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.jsonl", "ref"]
    # the model in memory holds the last good step: the bad gradient was never applied
    assert all(np.isfinite(v).all() for v in model.params.values())


def test_checked_norm_one_pass_names_the_culprit_and_survives_overflow():
    """The fit loop's single norm computation: a finite norm is the global norm; inf or NaN in
    one array is named; finite float32 gradients whose squares overflow are not 'diverged'."""
    params = {"a": np.zeros(3), "b": np.zeros(2)}
    g = {"a": np.array([3.0, 0.0, 0.0]), "b": np.array([0.0, 4.0])}
    assert train._checked_norm(1.0, g, params, 0, 0, "") == pytest.approx(5.0, rel=1e-15)
    for bad in (np.inf, -np.inf, np.nan):
        g_bad = {"a": g["a"], "b": np.array([0.0, bad])}
        with pytest.raises(TrainingDiverged, match="gradient of 'b'.*epoch 3, batch 7") as info:
            train._checked_norm(1.0, g_bad, params, 2, 7, "")
        assert info.value.name == "b"
    huge = {"a": np.full(3, 3e19, np.float32), "b": np.zeros(2, np.float32)}   # 9e38 > float32 max
    with np.errstate(over="ignore"):
        assert np.isinf(np.dot(huge["a"], huge["a"]))
    assert train._checked_norm(1.0, huge, params, 0, 0, "") == pytest.approx(3e19 * np.sqrt(3), rel=1e-6)
    with pytest.raises(KeyError, match="no gradient for \\['b'\\]"):
        train._checked_norm(1.0, {"a": g["a"]}, params, 0, 0, "")


def test_fortran_ordered_data_gives_the_same_run():
    """fit gathers rows from a row-major copy of a Fortran-ordered x_train: same history."""
    x = _data()
    h_c = fit(ToyGauss(), Momentum(), x, epochs=1, batch_size=20, progress=False, log=None)
    h_f = fit(ToyGauss(), Momentum(), np.asfortranarray(x), epochs=1, batch_size=20,
              progress=False, log=None)
    assert h_c[0]["train_loss"] == h_f[0]["train_loss"]


def test_nan_without_out_dir_still_raises():
    with pytest.raises(TrainingDiverged, match="no checkpoint of this run was written"):
        _fit(None, model=Poisoned(at=2))


def test_nan_valid_nelbo_raises_before_the_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="valid_loss.*epoch 2") as info:
        _fit(tmp_path, model=Poisoned(at=13, what="loss"))        # epoch 2's first valid batch
    assert info.value.name == "valid_loss"
    _, _, state = load_checkpoint(tmp_path / "checkpoint.npz", ToyGauss())
    assert state["epoch"] == 1


# ---------------------------------------------------------------- with the real pieces

def test_vae_with_adam_resumes_bit_for_bit(tmp_path):
    """The loop with a real model (nplvm.models.vae), optimiser (nplvm.optim.Adam) and data
    (uint8 binary MNIST): 2 epochs straight == 1 epoch + resume 1, and the loss goes down."""
    from nplvm.data import load_offline_mnist
    from nplvm.models.vae import VAE
    from nplvm.optim import Adam

    ds = load_offline_mnist()
    x, xv = ds.train[:120], ds.valid[:40]
    kw = dict(epochs=2, batch_size=40, seed=3, progress=False, log=None)
    a = VAE(hidden=(16,), latent=2, seed=0)
    hist = fit(a, Adam(1e-2), x, xv, out_dir=tmp_path / "a", **kw)
    assert hist[1]["train_loss"] < hist[0]["train_loss"]

    fit(VAE(hidden=(16,), latent=2, seed=0), Adam(1e-2), x, xv, out_dir=tmp_path / "b",
        **{**kw, "epochs": 1})
    b = VAE(hidden=(16,), latent=2, seed=0)
    fit(b, Adam(1e-2), x, xv, out_dir=tmp_path / "b", resume=True, **kw)
    assert all(a.params[k].tobytes() == b.params[k].tobytes() for k in a.params)

    rebuilt, opt_state, state = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert type(rebuilt) is VAE and opt_state["t"] == 6 and state["epoch"] == 2
    assert all(rebuilt.params[k].tobytes() == a.params[k].tobytes() for k in a.params)


# -- a second player ---------------------------------------------------------------------------

class ToyCritic:
    """A second player with the model contract: c fits the mean of the model's noisy draws
    y = x + noise (loss 1/2 (c - mean y)^2), so it needs its model, as a discriminator does."""

    def __init__(self, model, lr=0.3):
        self.model, self.lr = model, lr
        self.params = {"c": np.zeros(model.config["dim"])}

    def loss(self, x, rng, grad=True):
        y = x + self.model.config["noise"] * rng.standard_normal(x.shape)
        r = self.params["c"] - y.mean(axis=0)
        return 0.5 * float(r @ r), ({"c": r.copy()} if grad else None)


@register("toy_with_critic")
class ToyWithCritic(ToyGauss):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.discriminator = ToyCritic(self)


def test_discriminator_steps_after_the_model_and_is_checkpointed(tmp_path):
    model, _, hist = _fit(tmp_path, epochs=4, model=ToyWithCritic(), opt=train_optim_sgd(0.05))
    assert all("disc_loss" in r for r in hist) and hist[-1]["disc_loss"] < hist[0]["disc_loss"]
    np.testing.assert_allclose(model.discriminator.params["c"], 2.0, atol=0.2)   # the data mean
    fresh = ToyWithCritic()
    _, _, state = load_checkpoint(tmp_path / "checkpoint.npz", fresh)
    np.testing.assert_array_equal(fresh.discriminator.params["c"], model.discriminator.params["c"])
    # resumed after 2 epochs == 4 epochs straight, the critic included
    part = tmp_path / "part"
    _fit(part, epochs=2, model=ToyWithCritic(), opt=train_optim_sgd(0.05))
    resumed, _, _ = _fit(part, epochs=4, model=ToyWithCritic(), opt=train_optim_sgd(0.05), resume=True)
    np.testing.assert_array_equal(resumed.discriminator.params["c"], model.discriminator.params["c"])
    np.testing.assert_array_equal(resumed.params["mu"], model.params["mu"])


def train_optim_sgd(lr):
    from nplvm.optim import SGD
    return SGD(lr, momentum=0.5)
