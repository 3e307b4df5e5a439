"""Reference (spec) of the fusion_conv family: ``y = AvgPool_p(W * cat(xs) + b)``.

Pure PyTorch; the forward is differentiable by autograd, and :func:`fusion_conv_backward_reference` writes
out the backward that the fused kernels implement (tested against autograd).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def fusion_conv_reference(xs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None = None,
                          pool: int = 2) -> torch.Tensor:
    """1x1 convolution over the concatenation of ``xs``, then ``AvgPool2d(pool)`` (floor semantics).

    Args:
        xs (Sequence[Tensor[N, C_i, H, W]]): inputs to concatenate along channels.
        weight (Tensor[C_out, sum C_i, 1, 1]): 1x1 convolution weight.
        bias (Tensor[C_out] | None): convolution bias.
        pool (int): average-pool kernel and stride; 1 means no pool.

    Returns:
        Tensor[N, C_out, H // pool, W // pool]
    """
    y = F.conv2d(torch.cat(list(xs), dim=1), weight, bias)
    return F.avg_pool2d(y, pool) if pool > 1 else y


def pool_concat_reference(xs: Sequence[torch.Tensor], pool: int) -> torch.Tensor:
    """``AvgPool_p(cat(xs))``: the pooled concatenation that the fused forward multiplies by W."""
    x = torch.cat(list(xs), dim=1)
    return F.avg_pool2d(x, pool) if pool > 1 else x


def fusion_conv_backward_reference(grad_out: torch.Tensor, xs: Sequence[torch.Tensor], weight: torch.Tensor,
                                   pool: int = 2, has_bias: bool = True):
    """Gradients of :func:`fusion_conv_reference`, by the pool-first identity.

    ``dx_i = spread_p(W_i^T dy) / p^2`` (zero outside the pooled area), ``dW = dy . AvgPool_p(cat(xs))^T``
    summed over batch and pixels, ``db = sum(dy)``.

    Returns:
        (list of Tensor[N, C_i, H, W], Tensor[C_out, sum C_i, 1, 1], Tensor[C_out] | None)
    """
    pooled = pool_concat_reference(xs, pool)
    w2 = weight.flatten(1)
    grad_w = torch.einsum("nohw,nchw->oc", grad_out, pooled).reshape(weight.shape)
    grad_b = grad_out.sum(dim=(0, 2, 3)) if has_bias else None
    grad_pooled = torch.einsum("oc,nohw->nchw", w2, grad_out)
    n, _, h, w = xs[0].shape
    ho, wo = grad_out.shape[-2:]
    grad_cat = grad_pooled.new_zeros(n, pooled.shape[1], h, w)
    spread = grad_pooled.repeat_interleave(pool, 2).repeat_interleave(pool, 3) / (pool * pool)
    grad_cat[:, :, : ho * pool, : wo * pool] = spread
    grad_xs = list(torch.split(grad_cat, [x.shape[1] for x in xs], dim=1))
    return grad_xs, grad_w, grad_b


def transition_reference(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                         running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                         conv_weight: torch.Tensor, conv_bias: torch.Tensor | None = None, training: bool = True,
                         momentum: float = 0.1, eps: float = 1e-5, pool: int = 2) -> torch.Tensor:
    """DenseNet transition (torchvision ``_Transition``): BN-ReLU, 1x1 conv, ``AvgPool2d(pool)``.

    Args:
        x (Tensor[N, C, H, W]); norm_* (Tensor[C]); conv_weight (Tensor[C_out, C, 1, 1]).
        training, momentum, eps: as ``F.batch_norm`` (running buffers updated in place when training).

    Returns:
        Tensor[N, C_out, H // pool, W // pool]
    """
    a = F.relu(F.batch_norm(x, running_mean, running_var, norm_weight, norm_bias, training, momentum, eps))
    return fusion_conv_reference([a], conv_weight, conv_bias, pool)
