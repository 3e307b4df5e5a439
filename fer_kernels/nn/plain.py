"""Plain-PyTorch twins of the fused modules of :mod:`fer_kernels.nn`.

Each twin is built from ``nn.Conv2d``, ``nn.BatchNorm2d`` and tensor ops, with the *same state-dict keys*
as its fused module, so checkpoints move between the two. :func:`fer_kernels.nn.to_reference` swaps them in
(a copy of a model that runs no custom op: ONNX, ``torch.jit`` and FLOP counters accept it) and
:func:`fer_kernels.nn.convert` swaps the fused modules back. The twins are also valid ``*_layer`` arguments
of the model constructors (CONVENTIONS rule 12).

The ``*Layout`` base classes hold what a fused module and its twin share (constructor, attributes, repr); each
side adds its forward. This file imports torch only: the fused modules import it, never the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DenseLayerPlain",
    "DenseBlockPlain",
    "TransitionPlain",
    "FusionConvPlain",
    "BilinearPoolPlain",
    "BilinearClassifierPlain",
]


# ---- layouts: the constructor, attributes and repr a fused module and its twin share ----


class DenseLayerLayout(nn.Module):
    """Children ``norm1``, ``conv1`` (1x1, ``bn_size * growth_rate`` out), ``norm2``, ``conv2`` (3x3, pad 1,
    ``growth_rate`` out); no conv bias (torchvision ``_DenseLayer``'s keys)."""

    def __init__(self, in_channels: int, growth_rate: int = 12, bn_size: int = 4):
        super().__init__()
        if in_channels < 1 or growth_rate < 1 or bn_size < 1:
            raise ValueError(f"in_channels, growth_rate and bn_size must be >= 1, got "
                             f"{in_channels}, {growth_rate}, {bn_size}")
        width = bn_size * growth_rate
        self.in_channels, self.growth_rate, self.bn_size = in_channels, growth_rate, bn_size
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, growth_rate, 3, padding=1, bias=False)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, growth_rate={self.growth_rate}, bn_size={self.bn_size}"


class DenseBlockLayout(nn.Module):
    """Children ``denselayer1 .. denselayerN`` of type ``layer_type`` (torchvision ``_DenseBlock``'s keys)."""

    layer_type: type[nn.Module] = DenseLayerLayout

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int = 12, bn_size: int = 4):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        self.num_layers, self.in_channels, self.growth_rate, self.bn_size = num_layers, in_channels, growth_rate, bn_size
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", self.layer_type(in_channels + i * growth_rate, growth_rate, bn_size))

    @property
    def out_channels(self) -> int:
        return self.in_channels + self.num_layers * self.growth_rate

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, in_channels={self.in_channels}, "
                f"growth_rate={self.growth_rate}, bn_size={self.bn_size}")


class TransitionLayout(nn.Module):
    """Children ``norm`` (BatchNorm2d) and ``conv`` (1x1, no bias); ``pool``, the average-pool size."""

    def __init__(self, in_channels: int, out_channels: int, pool: int = 2):
        super().__init__()
        if pool < 1:
            raise ValueError(f"pool: expected an int >= 1, got {pool!r}")
        self.pool = int(pool)
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def extra_repr(self) -> str:
        return f"in_channels={self.norm.num_features}, out_channels={self.conv.out_channels}, pool={self.pool}"


class FusionConvLayout(nn.Module):
    """Child ``conv`` (``nn.Conv2d(sum(in_channels), out_channels, 1)``); ``in_channels`` per input, ``pool``."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, pool: int = 2, bias: bool = True):
        super().__init__()
        if isinstance(in_channels, int):
            in_channels = (in_channels,)
        self.in_channels = tuple(int(c) for c in in_channels)
        if not self.in_channels or any(c < 1 for c in self.in_channels):
            raise ValueError(f"in_channels: expected positive channel counts, got {in_channels!r}")
        if pool < 1:
            raise ValueError(f"pool: expected an int >= 1, got {pool!r}")
        self.pool = int(pool)
        self.conv = nn.Conv2d(sum(self.in_channels), out_channels, 1, bias=bias)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.conv.out_channels}, pool={self.pool}"


class BilinearPoolLayout(nn.Module):
    """The pooling options: ``eps`` inside the signed square root, ``signed_sqrt``, ``l2_normalize``, ``mean``."""

    def __init__(self, eps: float = 1e-5, signed_sqrt: bool = True, l2_normalize: bool = True, mean: bool = False):
        super().__init__()
        self.eps, self.signed_sqrt, self.l2_normalize, self.mean = eps, signed_sqrt, l2_normalize, mean

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, signed_sqrt={self.signed_sqrt}, l2_normalize={self.l2_normalize}, "
                f"mean={self.mean}")


class BilinearClassifierLayout(nn.Module):
    """Parameters ``weight`` (K, ca*cb) and ``bias`` (K,) of ``nn.Linear(ca*cb, num_classes)``, with its
    initialisation (so the plain and fused heads start alike)."""

    def __init__(self, ca: int, cb: int, num_classes: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.ca, self.cb, self.num_classes, self.eps = ca, cb, num_classes, eps
        self.weight = nn.Parameter(torch.empty(num_classes, ca * cb))
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"ca={self.ca}, cb={self.cb}, num_classes={self.num_classes}, bias={self.bias is not None}, "
                f"eps={self.eps}")


# ---- the twins ----


class DenseLayerPlain(DenseLayerLayout):
    """Twin of :class:`fer_kernels.nn.DenseLayer`: DenseNet-BC bottleneck ``BN-ReLU-Conv1x1-BN-ReLU-Conv3x3``.

    Shape: ``(N, C, H, W)`` (or a list of tensors, concatenated along channels) -> ``(N, growth_rate, H, W)``.
    """

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            x = torch.cat(list(x), 1)
        return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class DenseBlockPlain(DenseBlockLayout):
    """Twin of :class:`fer_kernels.nn.DenseBlock` (children ``denselayer1..N``):
    ``(N, C0, H, W) -> (N, C0 + L*k, H, W)``."""

    layer_type = DenseLayerPlain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        for layer in self.children():
            features = torch.cat([features, layer(features)], 1)
        return features


class TransitionPlain(TransitionLayout):
    """Twin of :class:`fer_kernels.nn.Transition`: BN-ReLU-Conv1x1-AvgPool2d(pool).

    Shape: ``(N, C_in, H, W) -> (N, C_out, H // pool, W // pool)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.relu(self.norm(x)))
        return F.avg_pool2d(y, self.pool) if self.pool > 1 else y


class FusionConvPlain(FusionConvLayout):
    """Twin of :class:`fer_kernels.nn.FusionConv`: ``AvgPool2d(pool)(conv1x1(cat(xs)))``.

    Shape: inputs ``(N, c_i, H, W)`` -> ``(N, out_channels, H // pool, W // pool)``.
    """

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        y = self.conv(torch.cat(xs, 1) if len(xs) > 1 else xs[0])
        return F.avg_pool2d(y, self.pool) if self.pool > 1 else y


def _bilinear(a: torch.Tensor, b: torch.Tensor, eps: float, signed_sqrt: bool = True, l2_normalize: bool = True,
              mean: bool = False) -> torch.Tensor:
    y = torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2))
    if mean:
        y = y / (a.shape[2] * a.shape[3])
    s = (torch.sign(y) * torch.sqrt(y.abs() + eps) if signed_sqrt else y).flatten(1)
    return F.normalize(s, dim=1, eps=1e-12) if l2_normalize else s


class BilinearPoolPlain(BilinearPoolLayout):
    """Twin of :class:`fer_kernels.nn.BilinearPool`: ``(N,Ca,H,W), (N,Cb,H,W) -> (N, Ca*Cb)``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return _bilinear(a, a if b is None else b, self.eps, self.signed_sqrt, self.l2_normalize, self.mean)


class BilinearClassifierPlain(BilinearClassifierLayout):
    """Twin of :class:`fer_kernels.nn.BilinearClassifier`: ``Linear(ca*cb, K)`` on the signed-sqrt,
    L2-normalised sum-pooled outer product (the ``ca*cb`` vector is materialised here).

    Shape: ``(N, ca, H, W), (N, cb, H, W) -> (N, num_classes)``; keys ``weight`` (K, ca*cb), ``bias`` (K,).
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(_bilinear(a, a if b is None else b, self.eps), self.weight, self.bias)
