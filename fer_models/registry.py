"""timm-style model registry: ``create_model(name, **kwargs)``, ``list_models()``, ``@register_model``.

The registry drives the model tests (CONVENTIONS rule 9) and the command line (``--model NAME``).
Every registered builder takes keyword arguments (at least ``num_expressions`` and ``num_identities``)
and returns an ``nn.Module`` whose forward gives an object with ``.expression`` (N, E) logits and
``.identity`` (N, I) logits or None, and whose ``loss(out, expression, identity)`` returns a dict with
``total``, ``expression`` and ``identity`` (identity -1 = unknown). Builders also record
``input_size`` (channels, height, width) on the model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a builder under ``name`` (default: the function's name); usable as a decorator."""

    def wrap(f):
        key = name or f.__name__
        if key in _MODELS and _MODELS[key] is not f:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the glob ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` (e.g. ``num_expressions``, ``num_identities``)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models()) or 'none'}")
    return _MODELS[name](**kwargs)
