"""Drop-in modules of the fusion_conv family."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fer_kernels.nn.convert import register_converter
from fer_kernels.ops.fusion_conv import fusion_conv, transition


class FusionConv(nn.Module):
    """Concatenate feature maps, 1x1 convolution, ``AvgPool2d(pool)``: see :func:`fer_kernels.fusion_conv`.

    ``.conv`` is a plain ``nn.Conv2d(sum(in_channels), out_channels, 1)``, so state dicts load from the
    unfused layer.

    Args:
        in_channels (Sequence[int]): channels of each input, in concatenation order.
        out_channels (int): output channels.
        pool (int): average-pool kernel and stride; 1 means no pool.
        bias (bool): whether the convolution has a bias.

    Shape:
        inputs ``(N, c_i, H, W)`` each -> ``(N, out_channels, H // pool, W // pool)``.
    """

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

    def forward(self, *xs: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        if len(xs) != len(self.in_channels):
            raise ValueError(f"FusionConv expects {len(self.in_channels)} inputs, got {len(xs)}")
        for i, (x, c) in enumerate(zip(xs, self.in_channels)):
            if x.dim() == 4 and x.shape[1] != c:
                raise ValueError(f"xs[{i}]: expected {c} channels, got shape {tuple(x.shape)}")
        return fusion_conv(xs, self.conv.weight, self.conv.bias, self.pool, backend=backend)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.conv.out_channels}, pool={self.pool}"


class Transition(nn.Module):
    """DenseNet transition (torchvision ``_Transition``): BN-ReLU, 1x1 conv (no bias), ``AvgPool2d(pool)``.

    Keys ``norm`` and ``conv``. Runs as :func:`fer_kernels.transition`: the BN-ReLU is the prologue of the
    pooled 1x1 convolution, so neither the activation nor the full-resolution conv output is written.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: int = 2):
        super().__init__()
        self.pool = int(pool)
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        from fer_kernels.nn._bn import bn_buffers, bn_count_batch, bn_momentum, bn_uses_batch_stats

        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] != self.norm.num_features:
            raise ValueError(f"x: Transition expects {self.norm.num_features} channels, got shape {tuple(x.shape)}")
        mean, var = bn_buffers(self.norm)
        training = bn_uses_batch_stats(self.norm)
        out = transition(x, self.norm.weight, self.norm.bias, mean, var, self.conv.weight, self.conv.bias,
                         training, bn_momentum(self.norm), self.norm.eps, self.pool, backend=backend)
        bn_count_batch(self.norm)  # after the op accepted its inputs, so a rejected input changes nothing
        return out

    def extra_repr(self) -> str:
        return f"in_channels={self.norm.num_features}, out_channels={self.conv.out_channels}, pool={self.pool}"


@register_converter
def _convert_transition(m: nn.Module):
    """torchvision ``_Transition`` (norm, relu, conv, pool=AvgPool2d) -> Transition."""
    if type(m).__name__ != "_Transition" or isinstance(m, Transition):
        return None
    pool = m.pool.kernel_size if isinstance(m.pool.kernel_size, int) else m.pool.kernel_size[0]
    new = Transition(m.conv.in_channels, m.conv.out_channels, pool)
    new.load_state_dict(m.state_dict())
    return new.to(m.conv.weight.device, m.conv.weight.dtype).train(m.training)
