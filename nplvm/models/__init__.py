"""The models, one per file, and a registry that rebuilds a model from its kind and config.

Every model follows the contract in the README: ``params``, ``loss(x, rng) -> (loss, grads)``,
``kind`` and ``config`` (``build(kind, config)`` returns ``Model(**config)``).
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
    "fa": "nplvm.models.fa",
    "ppca": "nplvm.models.fa",
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
