"""``convert(module)`` and ``to_reference(model)``: swap plain-PyTorch modules for fused ones and back.

Each op family registers, with :func:`register_converter`, a function that takes a module and returns its
fused replacement, or None when it does not recognise it; and with :func:`register_reference` the reverse
(fused module -> plain twin of :mod:`fer_kernels.nn.plain`).

Both directions are exact: the new module *adopts* the old one's sub-modules and parameters (the same
``nn.BatchNorm2d`` / ``nn.Conv2d`` objects, the same ``nn.Parameter`` objects) rather than building new
ones and loading a state dict. So dtype, device, training modes, ``requires_grad``, BatchNorm settings
(eps, momentum, affine, track_running_stats) and the weights' bits are kept, and an optimizer built on the
old module still holds the new module's parameters. A module is converted only when its structure matches
exactly what the other side computes; anything else is left as it is.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import torch
from torch import nn

Converter = Callable[[nn.Module], "nn.Module | None"]
_CONVERTERS: list[Converter] = []
_REFERENCES: list[Converter] = []


def register_converter(fn: Converter) -> Converter:
    """Register ``fn(module) -> fused module | None`` for :func:`convert`; usable as a decorator."""
    _CONVERTERS.append(fn)
    return fn


def register_reference(fn: Converter) -> Converter:
    """Register ``fn(fused module) -> plain twin | None`` for :func:`to_reference`; usable as a decorator."""
    _REFERENCES.append(fn)
    return fn


def _first(fns: list[Converter], module: nn.Module) -> nn.Module | None:
    for fn in fns:
        new = fn(module)
        if new is not None:
            return new
    return None


def _swap(fns: list[Converter], module: nn.Module) -> nn.Module:
    new = _first(fns, module)
    if new is not None:
        return new
    for name, child in list(module.named_children()):
        new = _swap(fns, child)
        if new is not child:
            setattr(module, name, new)
    return module


def convert(module: nn.Module) -> nn.Module:
    """Replace, in place, every recognised plain sub-module of ``module`` with its fused equivalent.

    Recognised: the twins of :mod:`fer_kernels.nn.plain` and torchvision's ``_DenseLayer`` / ``_DenseBlock`` /
    ``_Transition`` layouts, when their children are exactly what the fused module computes (BatchNorm2d,
    Conv2d with the expected kernel, padding, stride, groups and dilation, AvgPool2d with stride = kernel).
    A dense block whose BatchNorms differ in eps, momentum, track_running_stats or mode (the fused block op
    takes one of each) is converted layer by layer where each layer agrees, and otherwise left plain.

    The fused modules adopt the plain ones' sub-modules and parameters (see the module docstring), so
    dtype, device, training modes, ``requires_grad``, BatchNorm settings and weights are kept exactly.

    Returns:
        ``module`` itself, or its replacement when ``module`` itself is recognised.
    """
    return _swap(_CONVERTERS, module)


def to_reference(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every fused :mod:`fer_kernels.nn` module is replaced by its plain
    twin (:mod:`fer_kernels.nn.plain`), which adopts the copy's sub-modules and parameters: the same
    ``state_dict`` (bit-identical), dtype, device, training modes, ``requires_grad`` and BatchNorm settings.
    ``model`` itself is not changed; ``convert(to_reference(model))`` gives back the fused layout.

    The copy runs no custom op, so ``torch.onnx.export``, ``torch.jit`` and FLOP counters accept it.
    """
    return _swap(_REFERENCES, copy.deepcopy(model))


def reference_of(module: nn.Module) -> nn.Module | None:
    """The plain twin of one fused module, sharing its sub-modules and parameters; None if not fused."""
    return _first(_REFERENCES, module)


# ---- helpers for the converters ----


def rebuild(factory: Callable[[], nn.Module], training: bool, **adopt) -> nn.Module:
    """``factory()`` built on the meta device (no memory, no random numbers drawn), then given the adopted
    sub-modules / parameters ``adopt`` (every tensor must be replaced) and the training flag ``training``
    (of this module only: the adopted children keep their own)."""
    with torch.device("meta"):
        new = factory()
    for name, value in adopt.items():
        setattr(new, name, value)
    left = [n for n, t in itertools.chain(new.named_parameters(), new.named_buffers()) if t.is_meta]
    if left:  # a converter bug, never a user error
        raise AssertionError(f"{type(new).__name__}: not adopted: {left}")
    new.training = training
    return new


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def is_bn(m) -> bool:
    """A plain ``nn.BatchNorm2d`` (not a subclass, whose forward may differ)."""
    return type(m) is nn.BatchNorm2d


def is_conv(m, kernel: int, padding: int, bias: bool | None = None) -> bool:
    """A plain ``nn.Conv2d`` with a square ``kernel``, zero ``padding`` of that size, stride 1, dilation 1,
    groups 1, and (when ``bias`` is given) with or without a bias."""
    if type(m) is not nn.Conv2d:
        return False
    if isinstance(m.padding, str):  # "same" / "valid"
        pad_ok = (m.padding == "valid" and padding == 0) or (
            m.padding == "same" and 2 * padding + 1 == kernel
        )
    else:
        pad_ok = _pair(m.padding) == (padding, padding)
    return (
        pad_ok
        and _pair(m.kernel_size) == (kernel, kernel)
        and _pair(m.stride) == (1, 1)
        and _pair(m.dilation) == (1, 1)
        and m.groups == 1
        and (padding == 0 or m.padding_mode == "zeros")
        and (bias is None or (m.bias is not None) == bias)
    )


def is_avg_pool(m) -> int | None:
    """The size of a plain square ``nn.AvgPool2d`` with stride = kernel, no padding, floor mode and no
    divisor override (what the fused ops pool with), else None."""
    if type(m) is not nn.AvgPool2d:
        return None
    k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
    if k[0] != k[1] or s != k or _pair(m.padding) != (0, 0) or m.ceil_mode or m.divisor_override is not None:
        return None
    return int(k[0])


def same_place(*modules: nn.Module) -> bool:
    """Whether the floating tensors of ``modules`` share one device and dtype, BatchNorm tensors being allowed
    float32 next to float16/bfloat16 (the mixed precision the fused ops accept)."""
    main, norm = [], []
    for m in modules:
        ts = [t for t in itertools.chain(m.parameters(), m.buffers()) if t.is_floating_point()]
        (norm if isinstance(m, nn.modules.batchnorm._BatchNorm) else main).extend(ts)
    if not main:
        return False
    dev, dt = main[0].device, main[0].dtype
    low = dt in (torch.float16, torch.bfloat16)
    return all(t.device == dev and t.dtype == dt for t in main) and all(
        t.device == dev and (t.dtype == dt or (low and t.dtype == torch.float32)) for t in norm
    )


def only_children(m: nn.Module, required: set[str], optional: dict[str, type] | None = None) -> bool:
    """Whether ``m``'s children are exactly ``required`` plus some of ``optional`` (name -> exact type)."""
    optional = optional or {}
    names = dict(m.named_children())
    extra = set(names) - required
    return required <= set(names) and all(n in optional and type(names[n]) is optional[n] for n in extra)
