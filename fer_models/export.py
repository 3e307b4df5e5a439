"""Plain-PyTorch twins of the fused layers, ``to_reference(model)`` and ONNX export.

The fused modules of :mod:`fer_kernels.nn` run custom ops that ONNX, TorchScript and other tools cannot
see into. Each one has here a plain twin built from ``nn.Conv2d``, ``nn.BatchNorm2d`` and tensor ops, with
the *same state-dict keys*, so :func:`to_reference` can swap them in a copy of a model with the weights
unchanged. The twins are also valid ``*_layer`` arguments of the model constructors (CONVENTIONS rule 12).

``DenseLayerPlain`` / ``DenseBlockPlain`` (children ``denselayer1..N``) are recognised by
:func:`fer_kernels.nn.convert`, so ``convert(to_reference(m))`` turns the copy back into fused layers.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import fer_kernels.nn as fnn

__all__ = [
    "DenseLayerPlain",
    "DenseBlockPlain",
    "TransitionPlain",
    "FusionConvPlain",
    "BilinearPoolPlain",
    "BilinearClassifierPlain",
    "PLAIN_LAYERS",
    "to_reference",
    "ExportWrapper",
    "export_onnx",
]


class DenseLayerPlain(nn.Module):
    """DenseNet-BC bottleneck ``BN-ReLU-Conv1x1-BN-ReLU-Conv3x3`` in plain PyTorch (keys of torchvision
    ``_DenseLayer``: ``norm1``, ``conv1``, ``norm2``, ``conv2``).

    Shape: ``(N, C, H, W) -> (N, growth_rate, H, W)``.
    """

    def __init__(self, in_channels: int, growth_rate: int = 12, bn_size: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class DenseBlockPlain(nn.Module):
    """Plain twin of :class:`fer_kernels.nn.DenseBlock`: ``(N, C0, H, W) -> (N, C0 + L*k, H, W)``."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int = 12, bn_size: int = 4):
        super().__init__()
        self.num_layers, self.in_channels, self.growth_rate, self.bn_size = (
            num_layers,
            in_channels,
            growth_rate,
            bn_size,
        )
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}", DenseLayerPlain(in_channels + i * growth_rate, growth_rate, bn_size)
            )

    @property
    def out_channels(self) -> int:
        return self.in_channels + self.num_layers * self.growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        for layer in self.children():
            features = torch.cat([features, layer(features)], 1)
        return features


class TransitionPlain(nn.Module):
    """Plain twin of :class:`fer_kernels.nn.Transition`: BN-ReLU-Conv1x1 (no bias)-AvgPool2d(pool).

    Shape: ``(N, C_in, H, W) -> (N, C_out, H // pool, W // pool)``.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: int = 2):
        super().__init__()
        self.pool = int(pool)
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.relu(self.norm(x)))
        return F.avg_pool2d(y, self.pool) if self.pool > 1 else y


class FusionConvPlain(nn.Module):
    """Plain twin of :class:`fer_kernels.nn.FusionConv`: ``AvgPool2d(pool)(conv1x1(cat(xs)))``.

    Shape: inputs ``(N, c_i, H, W)`` -> ``(N, out_channels, H // pool, W // pool)``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, pool: int = 2, bias: bool = True):
        super().__init__()
        self.in_channels = (
            (int(in_channels),) if isinstance(in_channels, int) else tuple(int(c) for c in in_channels)
        )
        self.pool = int(pool)
        self.conv = nn.Conv2d(sum(self.in_channels), out_channels, 1, bias=bias)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        y = self.conv(torch.cat(xs, 1) if len(xs) > 1 else xs[0])
        return F.avg_pool2d(y, self.pool) if self.pool > 1 else y


def _bilinear(
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    signed_sqrt: bool = True,
    l2_normalize: bool = True,
    mean: bool = False,
) -> torch.Tensor:
    y = torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2))
    if mean:
        y = y / (a.shape[2] * a.shape[3])
    s = (torch.sign(y) * torch.sqrt(y.abs() + eps) if signed_sqrt else y).flatten(1)
    return F.normalize(s, dim=1, eps=1e-12) if l2_normalize else s


class BilinearPoolPlain(nn.Module):
    """Plain twin of :class:`fer_kernels.nn.BilinearPool`: ``(N,Ca,H,W), (N,Cb,H,W) -> (N, Ca*Cb)``."""

    def __init__(
        self, eps: float = 1e-5, signed_sqrt: bool = True, l2_normalize: bool = True, mean: bool = False
    ):
        super().__init__()
        self.eps, self.signed_sqrt, self.l2_normalize, self.mean = eps, signed_sqrt, l2_normalize, mean

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return _bilinear(a, a if b is None else b, self.eps, self.signed_sqrt, self.l2_normalize, self.mean)


class BilinearClassifierPlain(nn.Module):
    """Plain twin of :class:`fer_kernels.nn.BilinearClassifier`: ``Linear(ca*cb, K)`` on the signed-sqrt,
    L2-normalised sum-pooled outer product (the ``ca*cb`` vector is materialised here).

    Shape: ``(N, ca, H, W), (N, cb, H, W) -> (N, num_classes)``; keys ``weight`` (K, ca*cb), ``bias`` (K,).
    """

    def __init__(self, ca: int, cb: int, num_classes: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.ca, self.cb, self.num_classes, self.eps = ca, cb, num_classes, eps
        self.weight = nn.Parameter(torch.empty(num_classes, ca * cb))
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        # nn.Linear's initialisation, as the fused module.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(ca * cb), 1 / math.sqrt(ca * cb))

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(_bilinear(a, a if b is None else b, self.eps), self.weight, self.bias)


def _plain_dense_block(m: fnn.DenseBlock) -> nn.Module:
    return DenseBlockPlain(m.num_layers, m.in_channels, m.growth_rate, m.bn_size)


def _plain_transition(m: fnn.Transition) -> nn.Module:
    return TransitionPlain(m.norm.num_features, m.conv.out_channels, m.pool)


def _plain_fusion(m: fnn.FusionConv) -> nn.Module:
    return FusionConvPlain(m.in_channels, m.conv.out_channels, m.pool, m.conv.bias is not None)


def _plain_bilinear_pool(m: fnn.BilinearPool) -> nn.Module:
    return BilinearPoolPlain(m.eps, m.signed_sqrt, m.l2_normalize, m.mean)


def _plain_bilinear_classifier(m: fnn.BilinearClassifier) -> nn.Module:
    return BilinearClassifierPlain(m.ca, m.cb, m.num_classes, m.bias is not None, m.eps)


#: fused module type -> builder of its (uninitialised) plain twin; the weights are copied afterwards.
PLAIN_LAYERS = {
    fnn.DenseBlock: _plain_dense_block,
    fnn.Transition: _plain_transition,
    fnn.FusionConv: _plain_fusion,
    fnn.BilinearPool: _plain_bilinear_pool,
    fnn.BilinearClassifier: _plain_bilinear_classifier,
}


def _swap(module: nn.Module) -> nn.Module:
    make = PLAIN_LAYERS.get(type(module))
    if make is not None:
        plain = make(module)
        plain.load_state_dict(module.state_dict())
        ref = next(iter(module.parameters()), None)
        if ref is not None:
            plain = plain.to(ref.device, ref.dtype)
        for (name, p), (name2, q) in zip(plain.named_parameters(), module.named_parameters(), strict=True):
            assert name == name2, (name, name2)
            p.requires_grad_(q.requires_grad)
        return plain.train(module.training)
    for name, child in list(module.named_children()):
        new = _swap(child)
        if new is not child:
            setattr(module, name, new)
    return module


def to_reference(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every fused :mod:`fer_kernels.nn` layer is replaced by its plain
    PyTorch twin holding the same weights and buffers (same ``state_dict``), training mode and
    ``requires_grad`` flags. ``model`` itself is not changed.

    The copy runs no custom op, so ``torch.onnx.export``, ``torch.jit`` and FLOP counters accept it.
    """
    return _swap(copy.deepcopy(model))


class ExportWrapper(nn.Module):
    """Returns ``(expression,)`` or ``(expression, identity)`` logits as a tuple, for exporters.

    Args:
        model: a fer_models model (its forward returns an object with ``.expression`` / ``.identity``).
        identity (bool): also return the identity logits (the model must produce them).
    """

    def __init__(self, model: nn.Module, identity: bool = True):
        super().__init__()
        self.model, self.identity = model, identity

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        if self.identity:
            if out.identity is None:
                raise ValueError("ExportWrapper(identity=True): this model produces no identity logits")
            return out.expression, out.identity
        return (out.expression,)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    batch_size: int = 2,
    identity: bool | None = None,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
):
    """Export ``model`` (eval mode, plain-PyTorch copy from :func:`to_reference`) to ONNX.

    Args:
        model: a fer_models model with ``input_size`` (C, H, W).
        path: the ``.onnx`` file to write.
        batch_size (int): batch of the example input used for tracing.
        identity (bool | None): export the identity logits too; None = when the model has an identity head.
        dynamic_batch (bool): make the batch dimension dynamic.
        opset_version (int | None): ONNX opset; None = the exporter's default.

    Returns:
        list[str]: the output names, ``["expression"]`` or ``["expression", "identity"]``. The input is
        named ``image`` with shape ``(batch, C, H, W)``.
    """
    ref = to_reference(model).eval()
    example = torch.randn(batch_size, *model.input_size)
    if identity is None:
        with torch.no_grad():
            identity = ref(example).identity is not None
    wrapped = ExportWrapper(ref, identity).eval()
    names = ["expression", "identity"] if identity else ["expression"]
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    torch.onnx.export(wrapped, (example,), str(path), input_names=["image"], output_names=names, **kwargs)
    return names
