"""Drop-in modules of the dense_block family, state-dict compatible with torchvision's DenseNet."""

from __future__ import annotations

import torch
from torch import nn

from fer_kernels.nn._bn import bn_buffers, bn_count_batch, bn_momentum, bn_uses_batch_stats
from fer_kernels.nn.convert import register_converter
from fer_kernels.ops.dense_block import dense_block
from fer_kernels.reference.dense_block import DenseLayerParams


class DenseLayer(nn.Module):
    """DenseNet-BC bottleneck ``BN-ReLU-Conv1x1-BN-ReLU-Conv3x3`` (torchvision ``_DenseLayer``).

    Keys: ``norm1``, ``conv1`` (1x1, ``bn_size * growth_rate`` out), ``norm2``, ``conv2`` (3x3, pad 1,
    ``growth_rate`` out); no conv bias. Called alone it returns the new features ``(N, growth_rate, H, W)``;
    inside :class:`DenseBlock` the whole block runs as one fused op (:func:`fer_kernels.dense_block`).
    """

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

    def params(self) -> DenseLayerParams:
        m1, v1 = bn_buffers(self.norm1)
        m2, v2 = bn_buffers(self.norm2)
        return DenseLayerParams(self.norm1.weight, self.norm1.bias, m1, v1, self.conv1.weight,
                                self.norm2.weight, self.norm2.bias, m2, v2, self.conv2.weight)

    def forward(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            x = torch.cat(list(x), 1)
        out = _run(x, [self], backend)
        return out[:, x.shape[1]:]

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, growth_rate={self.growth_rate}, bn_size={self.bn_size}"


def _run(x: torch.Tensor, layers: list[DenseLayer], backend: str | None) -> torch.Tensor:
    bns = [bn for layer in layers for bn in (layer.norm1, layer.norm2)]
    training = bn_uses_batch_stats(bns[0])
    if any(bn_uses_batch_stats(bn) != training for bn in bns):
        raise RuntimeError("DenseBlock: all BatchNorms of a block must be in the same mode (train or eval)")
    params = [layer.params() for layer in layers]
    factors = {bn_momentum(bn) for bn in bns}
    momentum = factors.pop() if len(factors) == 1 else bns[0].momentum
    out = dense_block(x, params, training, momentum, layers[0].norm1.eps, backend=backend)
    for bn in bns:
        bn_count_batch(bn)
    return out


class DenseBlock(nn.Module):
    """A DenseNet-BC dense block (torchvision ``_DenseBlock``): ``denselayer1 .. denselayerN``.

    Returns ``cat(x, new features)``, ``(N, in_channels + num_layers * growth_rate, H, W)``, computed by
    :func:`fer_kernels.dense_block`.
    """

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int = 12, bn_size: int = 4):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        self.num_layers, self.in_channels, self.growth_rate, self.bn_size = num_layers, in_channels, growth_rate, bn_size
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size))

    @property
    def out_channels(self) -> int:
        return self.in_channels + self.num_layers * self.growth_rate

    def forward(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] != self.in_channels:
            raise ValueError(f"x: DenseBlock expects {self.in_channels} input channels, got shape {tuple(x.shape)}")
        return _run(x, list(self.children()), backend)

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, in_channels={self.in_channels}, "
                f"growth_rate={self.growth_rate}, bn_size={self.bn_size}")


def _plain_dense_layer(m: nn.Module) -> bool:
    names = {n for n, _ in m.named_children()}
    return {"norm1", "conv1", "norm2", "conv2"} <= names and type(m).__name__ in ("_DenseLayer", "DenseLayerPlain")


def _copy_bn_settings(old: nn.Module, new: nn.Module) -> None:
    """Keep each BatchNorm's momentum and eps (not part of the state dict)."""
    for name in ("norm1", "norm2"):
        a, b = getattr(old, name), getattr(new, name)
        b.momentum, b.eps = a.momentum, a.eps


@register_converter
def _convert_dense(m: nn.Module):
    """torchvision-style ``_DenseBlock`` (children denselayer1..N) -> DenseBlock; ``_DenseLayer`` -> DenseLayer."""
    if isinstance(m, (DenseBlock, DenseLayer)):
        return None
    if _plain_dense_layer(m):
        conv1, conv2 = m.conv1, m.conv2
        new = DenseLayer(conv1.in_channels, conv2.out_channels, conv1.out_channels // conv2.out_channels)
        # Cast before loading, so float64 weights are not rounded through float32.
        new = new.to(conv1.weight.device, conv1.weight.dtype)
        new.load_state_dict(m.state_dict(), strict=True)
        _copy_bn_settings(m, new)
        return new.train(m.training)
    children = list(m.named_children())
    if children and all(n == f"denselayer{i + 1}" and _plain_dense_layer(c) for i, (n, c) in enumerate(children)):
        first = children[0][1]
        k = first.conv2.out_channels
        new = DenseBlock(len(children), first.conv1.in_channels, k, first.conv1.out_channels // k)
        new = new.to(first.conv1.weight.device, first.conv1.weight.dtype)
        new.load_state_dict(m.state_dict(), strict=True)
        for (_, old), fused in zip(children, new.children()):
            _copy_bn_settings(old, fused)
        return new.train(m.training)
    return None
