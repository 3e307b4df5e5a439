"""Reference (spec) of the dense_block family: a DenseNet-BC dense block, exactly as torchvision computes it.

Layer ``l`` reads ``x = cat(x0, y_1 .. y_{l-1})`` and computes
``y_l = conv3x3(relu(bn2(conv1x1(relu(bn1(x))))))``; the block returns ``cat(x0, y_1 .. y_L)``.
BatchNorm in training mode uses batch statistics (biased variance to normalise) and updates the running
buffers in place with the unbiased variance and ``momentum``, as ``F.batch_norm``; in eval mode it uses
the running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F


class DenseLayerParams(NamedTuple):
    """Parameters and buffers of one bottleneck layer (torchvision ``_DenseLayer`` names).

    Shapes, with C the layer's input channels, k the growth rate and b the bottleneck width (bn_size * k):
    norm1_* (C,), conv1_weight (b, C, 1, 1), norm2_* (b,), conv2_weight (k, b, 3, 3).
    Running buffers may be None when the BatchNorms do not track running statistics.
    """

    norm1_weight: torch.Tensor
    norm1_bias: torch.Tensor
    norm1_running_mean: torch.Tensor | None
    norm1_running_var: torch.Tensor | None
    conv1_weight: torch.Tensor
    norm2_weight: torch.Tensor
    norm2_bias: torch.Tensor
    norm2_running_mean: torch.Tensor | None
    norm2_running_var: torch.Tensor | None
    conv2_weight: torch.Tensor


def dense_layer_reference(x: torch.Tensor, p: DenseLayerParams, training: bool = True, momentum: float = 0.1,
                          eps: float = 1e-5) -> torch.Tensor:
    """One bottleneck layer: ``(N, C, H, W) -> (N, k, H, W)``; updates running buffers when training."""
    a = F.relu(F.batch_norm(x, p.norm1_running_mean, p.norm1_running_var, p.norm1_weight, p.norm1_bias,
                            training, momentum, eps))
    h = F.conv2d(a, p.conv1_weight)
    c = F.relu(F.batch_norm(h, p.norm2_running_mean, p.norm2_running_var, p.norm2_weight, p.norm2_bias,
                            training, momentum, eps))
    return F.conv2d(c, p.conv2_weight, padding=1)


def dense_block_reference(x: torch.Tensor, layers: Sequence[DenseLayerParams], training: bool = True,
                          momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """A dense block.

    Args:
        x (Tensor[N, C0, H, W]): block input.
        layers (Sequence[DenseLayerParams]): per layer, in order; layer l has C0 + (l-1)k input channels.
        training (bool): batch statistics (and running-buffer updates) when True, running statistics when False.
        momentum (float): running-statistics factor (the effective one: 1/num_batches_tracked for a
            cumulative average).
        eps (float): BatchNorm epsilon.

    Returns:
        Tensor[N, C0 + L*k, H, W]: ``cat(x, y_1, ..., y_L)``.
    """
    features = [x]
    for p in layers:
        features.append(dense_layer_reference(torch.cat(features, 1), p, training, momentum, eps))
    return torch.cat(features, 1)
