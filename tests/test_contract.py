"""The model contract (README, "Model contract"), checked for every registered kind.

One test, parametrized over ``nplvm.models._MODULES``: a kind with no small config in CONFIGS
below fails, so a new model must add its own entry here.
"""
import inspect
import json

import numpy as np
import pytest

from nplvm import models
from nplvm.models import build, get_class

# Small float64 models: seconds for the whole file.  x_dim is the data width each one reads.
CONFIGS = {
    "vae": dict(x_dim=12, hidden=[7, 5], latent=3, activation="tanh", dtype="float64", seed=1),
    "iwae": dict(x_dim=12, hidden=[7], latent=3, k=4, activation="tanh", dtype="float64", seed=1),
    "gmvae": dict(x_dim=12, n_components=3, latent=2, hidden=[6], activation="tanh",
                  dtype="float64", seed=1),
    "vrnn": dict(x_dim=12, row_size=4, latent=2, rnn_hidden=5, features=4, hidden=[6],
                 activation="tanh", dtype="float64", seed=1),
    "cvae": dict(x_dim=16, hidden=[6], latent=2, quadrants=2, objective="hybrid", alpha=0.3,
                 activation="tanh", dtype="float64", seed=1),
    "cvae-baseline": dict(x_dim=16, hidden=[6], quadrants=1, activation="tanh", dtype="float64", seed=1),
    "nvdm": dict(x_dim=12, hidden=[6], latent=2, activation="tanh", dtype="float64", seed=1),
    "vampprior": dict(x_dim=12, hidden=[7], latent=3, activation="tanh", n_pseudo=4, dtype="float64", seed=1),
    "drvae": dict(x_dim=12, hidden=[7], latent=3, activation="tanh", disc_hidden=[5], disc_lr=1e-3,
                  dtype="float64", seed=1),
    "hvae": dict(x_dim=12, hidden=[7], latent=[4, 2], activation="tanh", dtype="float64", seed=1),
    "lvae": dict(x_dim=12, hidden=[7], latent=[4, 3, 2], activation="tanh", batch_norm=True,
                 dtype="float64", seed=1),
    "vade": dict(x_dim=12, hidden=[7], latent=2, n_components=3, activation="tanh", dtype="float64", seed=1),
    "factorvae": dict(x_dim=12, hidden=[7], latent=3, activation="tanh", gamma=2.0, disc_hidden=[5],
                      disc_lr=1e-3, dtype="float64", seed=1),
}

# The shared constructor names (README naming table) and what each must be.
NAMES = {"x_dim": int, "hidden": (list, tuple), "latent": (int, list, tuple), "activation": str,
         "dtype": str, "seed": int}
RETIRED = ("z_dim", "n_latent", "n_hidden", "n_mlp", "n_steps")     # names the table replaced


def binary(n, d, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.uint8)


@pytest.mark.parametrize("kind", sorted(models._MODULES))
def test_model_contract(kind):
    assert kind in CONFIGS, (f"kind {kind!r} has no small config in tests/test_contract.py::CONFIGS; "
                             f"add one so the contract is checked for it")
    cfg = CONFIGS[kind]
    cls = get_class(kind)
    assert cls.kind == kind

    # constructor: the shared names, no retired ones, every argument in the config
    sig = inspect.signature(cls.__init__)
    names = [p for p in sig.parameters if p != "self"]
    for retired in RETIRED:
        assert retired not in names, f"{kind}: constructor argument {retired!r} is retired"
    for name in ("x_dim", "dtype", "seed"):
        assert name in names, f"{kind}: constructor lacks {name!r}"
    m = build(kind, cfg)
    assert set(m.config) == set(names), f"{kind}: config keys {sorted(m.config)} != arguments {names}"
    for name, types in NAMES.items():
        if name in m.config:
            assert isinstance(m.config[name], types), f"{kind}: config[{name!r}] = {m.config[name]!r}"
    # a bad size raises ValueError naming the argument
    for name in ("x_dim", "latent"):
        if name in names and isinstance(cfg.get(name), int):
            with pytest.raises(ValueError, match=name):
                build(kind, {**cfg, name: 0})

    # loss: a finite float; grads keyed like params, same shapes and dtypes
    D = m.config["x_dim"]
    x = binary(5, D)
    loss, grads = m.loss(x, 1)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert set(grads) == set(m.params)
    for k, p in m.params.items():
        assert grads[k].shape == p.shape and grads[k].dtype == p.dtype == np.float64, k
        assert np.isfinite(grads[k]).all(), k
    assert any(np.abs(g).max() > 0 for g in grads.values())

    # the caller owns the arrays: a second call (other noise) leaves the first call's unchanged
    kept = {k: g.copy() for k, g in grads.items()}
    loss2, grads2 = m.loss(x, 2)                   # other noise (the same loss for a deterministic model)
    for k in grads:
        assert grads2[k] is not grads[k] and not np.shares_memory(grads2[k], grads[k]), k
        np.testing.assert_array_equal(grads[k], kept[k], err_msg=f"{kind}: {k} changed by a later call")
        assert not np.shares_memory(grads[k], m.params[k])

    # grad=False: the same loss, no gradients (a model with batch norms evaluates with its running
    # statistics there, as in evaluation, so only the missing gradients are asserted for it)
    value, none = m.loss(x, 1, grad=False)
    assert none is None and np.isfinite(value)
    if not cfg.get("batch_norm"):
        assert value == loss
        assert m.loss(x, 1)[0] == loss

    # config: JSON round trip rebuilds the same model (same parameters, same loss) -- compared with a
    # fresh build, since training-mode calls above may have moved state such as running statistics
    again, fresh = build(kind, json.loads(json.dumps(m.config))), build(kind, cfg)
    assert again.config == m.config == fresh.config
    for k in m.params:
        np.testing.assert_array_equal(again.params[k], fresh.params[k])
    assert again.loss(x, 1)[0] == fresh.loss(x, 1)[0]

    # sample(n, rng): (n, x_dim), seeded; a conditional model (it says what it conditions on in
    # ``conditional``) samples given one input, sample(n, rng, x=...), and refuses without it
    given = {}
    if getattr(m, "conditional", False):
        given = {"x": x[0]}
        with pytest.raises(ValueError, match="x"):
            m.sample(3, 0)
    s = m.sample(3, 0, **given)
    assert s.shape == (3, D)
    np.testing.assert_array_equal(s, m.sample(3, 0, **given))

    # log_weights(x, K, rng): (K, N) in the model's dtype, float32 included
    if hasattr(m, "log_weights"):
        lw = m.log_weights(x, 4, 0)
        assert lw.shape == (4, 5) and lw.dtype == np.float64 and np.isfinite(lw).all()
        m32 = build(kind, {**cfg, "dtype": "float32"})
        assert m32.log_weights(x, 2, 0).dtype == np.float32
        loss32, grads32 = m32.loss(x, 1)
        assert all(g.dtype == np.float32 for g in grads32.values())
