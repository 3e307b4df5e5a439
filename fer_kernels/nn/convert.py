"""``convert(module)``: replace recognised plain-PyTorch sub-modules in place with fused ones, weights kept.

Each op family registers a converter with :func:`register_converter`: a function that takes a module and
returns its fused replacement, or None when it does not recognise it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Converter = Callable[[nn.Module], "nn.Module | None"]
_CONVERTERS: list[Converter] = []


def register_converter(fn: Converter) -> Converter:
    """Register ``fn(module) -> fused module | None``; usable as a decorator."""
    _CONVERTERS.append(fn)
    return fn


def _convert_one(module: nn.Module) -> nn.Module | None:
    for fn in _CONVERTERS:
        fused = fn(module)
        if fused is not None:
            return fused
    return None


def convert(module: nn.Module) -> nn.Module:
    """Replace, in place, every recognised plain sub-module of ``module`` with its fused equivalent.

    The fused modules hold the same parameters and buffers (same state_dict keys), keep the training
    mode, device and dtype. Returns ``module`` itself, or its replacement when ``module`` is recognised.
    """
    fused = _convert_one(module)
    if fused is not None:
        return fused
    for name, child in list(module.named_children()):
        new = convert(child)
        if new is not child:
            setattr(module, name, new)
    return module
