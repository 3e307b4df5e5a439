"""Drop-in modules of the fusion_conv family."""

from __future__ import annotations

import torch
from torch import nn

from fer_kernels.nn._bn import bn_buffers, bn_count_batch, bn_momentum, bn_uses_batch_stats
from fer_kernels.nn.convert import (is_avg_pool, is_bn, is_conv, only_children, rebuild, register_converter,
                                   register_reference, same_place)
from fer_kernels.nn.plain import FusionConvLayout, FusionConvPlain, TransitionLayout, TransitionPlain
from fer_kernels.ops.fusion_conv import fusion_conv, transition


class FusionConv(FusionConvLayout):
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

    def forward(self, *xs: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        if len(xs) != len(self.in_channels):
            raise ValueError(f"xs: FusionConv expects {len(self.in_channels)} inputs, got {len(xs)}")
        # The op checks the total against the weight; only the module knows how it splits between the inputs.
        chans = tuple(x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 4 else None for x in xs)
        if None not in chans and sum(chans) == sum(self.in_channels) and chans != self.in_channels:
            raise ValueError(f"xs: FusionConv expects inputs with {self.in_channels} channels, got {chans}")
        return fusion_conv(xs, self.conv.weight, self.conv.bias, self.pool, backend=backend)


class Transition(TransitionLayout):
    """DenseNet transition (torchvision ``_Transition``): BN-ReLU, 1x1 conv (no bias), ``AvgPool2d(pool)``.

    Keys ``norm`` and ``conv``. Runs as :func:`fer_kernels.transition`: the BN-ReLU is the prologue of the
    pooled 1x1 convolution, so neither the activation nor the full-resolution conv output is written. The
    BatchNorm may have any settings (``affine=False``, ``track_running_stats=False``, ``momentum=None``).
    """

    def forward(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        mean, var = bn_buffers(self.norm)
        training = bn_uses_batch_stats(self.norm)
        out = transition(x, self.norm.weight, self.norm.bias, mean, var, self.conv.weight, self.conv.bias,
                         training, bn_momentum(self.norm), self.norm.eps, self.pool, backend=backend)
        bn_count_batch(self.norm)  # after the op accepted its inputs, so a rejected input changes nothing
        return out


# ---- convert / to_reference ----


def _transition_parts(m: nn.Module):
    """``(norm, conv, pool)`` of a transition :class:`Transition` computes exactly: a :class:`TransitionPlain`
    or a torchvision-style ``_Transition`` (children norm, relu, conv, pool=AvgPool2d(p, p), in this order);
    else None."""
    if isinstance(m, TransitionPlain):
        if not only_children(m, {"norm", "conv"}):
            return None
        pool = m.pool
    elif type(m).__name__ == "_Transition":
        # an nn.Sequential: its children run in this order
        names = [n for n, _ in m.named_children()]
        if names != ["norm", "relu", "conv", "pool"] or type(m.relu) is not nn.ReLU:
            return None
        pool = is_avg_pool(m.pool)
    else:
        return None
    norm, conv = m.norm, m.conv
    if (pool is None or pool < 1 or not is_bn(norm) or not is_conv(conv, 1, 0)
            or norm.num_features != conv.in_channels or not same_place(norm, conv)):
        return None
    return norm, conv, pool


@register_converter
def _convert_fusion(m: nn.Module):
    """``TransitionPlain`` / torchvision ``_Transition`` -> Transition; ``FusionConvPlain`` -> FusionConv."""
    parts = _transition_parts(m)
    if parts is not None:
        norm, conv, pool = parts
        return rebuild(lambda: Transition(conv.in_channels, conv.out_channels, pool), m.training,
                       norm=norm, conv=conv)
    if isinstance(m, FusionConvPlain) and only_children(m, {"conv"}):
        conv = m.conv
        if is_conv(conv, 1, 0) and conv.in_channels == sum(m.in_channels) and m.pool >= 1:
            bias = conv.bias is not None
            return rebuild(lambda: FusionConv(m.in_channels, conv.out_channels, m.pool, bias), m.training,
                           conv=conv)
    return None


@register_reference
def _reference_fusion(m: nn.Module):
    """Transition -> TransitionPlain, FusionConv -> FusionConvPlain, adopting BatchNorm and convolution."""
    if isinstance(m, Transition):
        return rebuild(lambda: TransitionPlain(m.norm.num_features, m.conv.out_channels, m.pool), m.training,
                       norm=m.norm, conv=m.conv)
    if isinstance(m, FusionConv):
        bias = m.conv.bias is not None
        return rebuild(lambda: FusionConvPlain(m.in_channels, m.conv.out_channels, m.pool, bias), m.training,
                       conv=m.conv)
    return None
