"""The models, one per file, and a registry that rebuilds a model from its kind and config.

Every model follows the contract in the README: ``params``, ``loss(x, rng, grad=True) -> (loss,
grads)`` (gradient arrays the caller owns), ``kind``, ``config`` (``build(kind, config)`` returns
``Model(**config)``), ``sample(n, rng)`` and ``log_weights(x, K, rng)`` in the model's dtype;
``tests/test_contract.py`` checks it for every kind listed here.

Factor analysis and PPCA (``nplvm.models.fa``) are fitted in closed form by EM (``.fit``), not by
the gradient training loop, so they are not kinds here: ``python -m nplvm models`` does not list
them and ``python -m nplvm train`` does not take them.
"""
from __future__ import annotations

import importlib

REGISTRY: dict[str, type] = {}

# kind -> module that defines it; imported on first use so one model's import cost is not all's.
_MODULES = {
    "vae": "nplvm.models.vae",
    "iwae": "nplvm.models.vae",
    "gmvae": "nplvm.models.gmvae",
    "vade": "nplvm.models.vade",
    "vrnn": "nplvm.models.vrnn",
    "factorvae": "nplvm.models.factorvae",
    "cvae": "nplvm.models.cvae",
    "cvae-baseline": "nplvm.models.cvae",
    "nvdm": "nplvm.models.nvdm",
    "vampprior": "nplvm.models.vampprior",
    "drvae": "nplvm.models.drvae",
    "hvae": "nplvm.models.hvae",
    "lvae": "nplvm.models.hvae",
}


def register(kind):
    """Class decorator: make ``build(kind, ...)`` able to rebuild this model."""
    def deco(cls):
        REGISTRY[kind] = cls
        cls.kind = kind
        return cls
    return deco


def get_class(kind):
    if kind not in REGISTRY and kind in _MODULES:
        importlib.import_module(_MODULES[kind])
    if kind not in REGISTRY:
        raise KeyError(f"unknown model kind {kind!r}; known: {sorted(set(_MODULES) | set(REGISTRY))}")
    return REGISTRY[kind]


def build(kind, config):
    """Rebuild a model of this kind from its config dict."""
    return get_class(kind)(**config)
