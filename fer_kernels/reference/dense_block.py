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


def bn_relu_backward_reference(grad_a: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                               mean: torch.Tensor, var: torch.Tensor, eps: float, training: bool):
    """Backward of ``a = relu(weight * (x - mean) / sqrt(var + eps) + bias)`` (DESIGN section 4).

    Args:
        grad_a (Tensor[N, C, H, W]): gradient of ``a``.
        x (Tensor[N, C, H, W]): the BatchNorm input.
        weight, bias, mean, var (Tensor[C]): affine parameters and the statistics used to normalise (batch
            statistics with the biased variance when ``training``, running statistics otherwise).

    Returns:
        (grad_x, grad_weight, grad_bias). With ``dz = grad_a * [pre-activation > 0]`` and ``M = N*H*W``:
        ``grad_bias = sum(dz)``, ``grad_weight = sum(dz * xhat)`` and, when training,
        ``grad_x = weight * invstd / M * (M * dz - grad_bias - xhat * grad_weight)`` (else ``weight * invstd * dz``).
    """
    shape = (1, -1, 1, 1)
    invstd = (var + eps).rsqrt().view(shape)
    xhat = (x - mean.view(shape)) * invstd
    dz = grad_a * ((weight.view(shape) * xhat + bias.view(shape)) > 0)
    grad_bias = dz.sum((0, 2, 3))
    grad_weight = (dz * xhat).sum((0, 2, 3))
    scale = weight.view(shape) * invstd
    if training:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        grad_x = scale * (dz - grad_bias.view(shape) / m - xhat * grad_weight.view(shape) / m)
    else:
        grad_x = scale * dz
    return grad_x, grad_weight, grad_bias


def dense_block_backward_reference(grad_out: torch.Tensor, x: torch.Tensor, layers: Sequence[DenseLayerParams],
                                   training: bool = True, eps: float = 1e-5):
    """Hand-written backward of :func:`dense_block_reference` (the formulas the fused kernels implement).

    Recomputes the forward (without touching running buffers), then walks the layers in reverse; the
    gradient of each block-buffer channel accumulates over every later layer that reads it.

    Args:
        grad_out (Tensor[N, C0 + L*k, H, W]): gradient of the block output.
        x (Tensor[N, C0, H, W]), layers, training, eps: as in :func:`dense_block_reference`.

    Returns:
        (grad_x (Tensor[N, C0, H, W]), list of DenseLayerParams holding the gradients of every parameter,
        with None for the running buffers).
    """
    with torch.no_grad():
        return _dense_block_backward(grad_out, x, layers, training, eps)


def _dense_block_backward(grad_out, x, layers, training, eps):
    feats = [x]
    saved = []
    for p in layers:
        inp = torch.cat(feats, 1)
        if training:
            m1, v1 = inp.mean((0, 2, 3)), inp.var((0, 2, 3), unbiased=False)
        else:
            m1, v1 = p.norm1_running_mean, p.norm1_running_var
        a = F.relu(F.batch_norm(inp, m1, v1, p.norm1_weight, p.norm1_bias, False, 0.0, eps))
        h = F.conv2d(a, p.conv1_weight)
        if training:
            m2, v2 = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        else:
            m2, v2 = p.norm2_running_mean, p.norm2_running_var
        c = F.relu(F.batch_norm(h, m2, v2, p.norm2_weight, p.norm2_bias, False, 0.0, eps))
        feats.append(F.conv2d(c, p.conv2_weight, padding=1))
        saved.append((inp, a, h, c, m1, v1, m2, v2))
    grad_buf = grad_out.clone()
    grads: list[DenseLayerParams] = [None] * len(layers)  # type: ignore[list-item]
    for i in range(len(layers) - 1, -1, -1):
        p = layers[i]
        inp, a, h, c, m1, v1, m2, v2 = saved[i]
        cin = inp.shape[1]
        k = p.conv2_weight.shape[0]
        gy = grad_buf[:, cin:cin + k]
        gw2 = torch.nn.grad.conv2d_weight(c, p.conv2_weight.shape, gy, padding=1)
        gc = torch.nn.grad.conv2d_input(c.shape, p.conv2_weight, gy, padding=1)
        gh, gg2, gb2 = bn_relu_backward_reference(gc, h, p.norm2_weight, p.norm2_bias, m2, v2, eps, training)
        gw1 = torch.nn.grad.conv2d_weight(a, p.conv1_weight.shape, gh)
        ga = torch.nn.grad.conv2d_input(a.shape, p.conv1_weight, gh)
        gx, gg1, gb1 = bn_relu_backward_reference(ga, inp, p.norm1_weight, p.norm1_bias, m1, v1, eps, training)
        grad_buf[:, :cin] += gx
        grads[i] = DenseLayerParams(gg1, gb1, None, None, gw1, gg2, gb2, None, None, gw2)
    return grad_buf[:, :x.shape[1]], grads
