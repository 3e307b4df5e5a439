"""Reference (spec) of the bilinear family: outer-product sum pooling, signed sqrt, L2 norm, classifier.

With ``A = a.flatten(2)`` (N, Ca, L) and ``B = b.flatten(2)`` (N, Cb, L): ``Y = A @ B^T`` (/ L when
``mean``), ``s = sign(Y) * sqrt(|Y| + eps)`` (when ``signed_sqrt``), ``z = s / max(||s||_2, 1e-12)``
per sample (when ``l2_normalize``), flattened row-major (index i*Cb + j). At Y = 0, sign(0) = 0, so s = 0
and autograd's gradient through s is 0 there (no infinite or NaN gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bilinear_pool_reference(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5, signed_sqrt: bool = True,
                            l2_normalize: bool = True, mean: bool = False) -> torch.Tensor:
    """Bilinear pooling.

    Args:
        a (Tensor[N, Ca, H, W]), b (Tensor[N, Cb, H, W]): feature maps (may be the same tensor).
        eps (float): added inside the signed square root.
        signed_sqrt (bool), l2_normalize (bool), mean (bool): the optional steps.

    Returns:
        Tensor[N, Ca * Cb]
    """
    A, B = a.flatten(2), b.flatten(2)
    y = torch.bmm(A, B.transpose(1, 2))
    if mean:
        y = y / A.shape[-1]
    s = torch.sign(y) * torch.sqrt(y.abs() + eps) if signed_sqrt else y
    s = s.flatten(1)
    return F.normalize(s, dim=1, eps=1e-12) if l2_normalize else s


def bilinear_classifier_reference(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor,
                                  bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``Linear(Ca*Cb, K)`` on :func:`bilinear_pool_reference` (signed sqrt and L2 norm on, sum pooling).

    Args:
        a (Tensor[N, Ca, H, W]), b (Tensor[N, Cb, H, W]): feature maps.
        weight (Tensor[K, Ca * Cb]), bias (Tensor[K] | None): the classifier.

    Returns:
        Tensor[N, K]: logits.
    """
    return F.linear(bilinear_pool_reference(a, b, eps), weight, bias)
