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


def _pool_forward_parts(a, b, eps, signed_sqrt, mean):
    """(Y, s, ||s||) per sample: Y (N, Ca, Cb), s (N, Ca*Cb), norms (N,)."""
    y = torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2))
    if mean:
        y = y / a[0, 0].numel()
    s = torch.sign(y) * torch.sqrt(y.abs() + eps) if signed_sqrt else y
    s = s.flatten(1)
    return y, s, torch.linalg.vector_norm(s, dim=1)


def _grad_through_sqrt_and_bmm(ds, y, a, b, eps, signed_sqrt, mean):
    """``dY = ds * sign(Y)^2 * 0.5 / sqrt(|Y| + eps)`` (0 at Y = 0, as autograd through sign(0) = 0), then
    ``dA = dY @ B``, ``dB = dY^T @ A``."""
    dy = ds.view_as(y)
    if signed_sqrt:
        dy = torch.where(y != 0, dy * 0.5 / torch.sqrt(y.abs() + eps), torch.zeros_like(dy))
    if mean:
        dy = dy / a[0, 0].numel()
    da = torch.bmm(dy, b.flatten(2)).view_as(a)
    db = torch.bmm(dy.transpose(1, 2), a.flatten(2)).view_as(b)
    return da, db


def bilinear_pool_backward_reference(grad_z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5,
                                     signed_sqrt: bool = True, l2_normalize: bool = True, mean: bool = False):
    """Gradients of :func:`bilinear_pool_reference`, written out (DESIGN section 4).

    ``ds = (dz - z <z, dz>) / ||s||`` (``dz / 1e-12`` where ``||s|| < 1e-12``, as ``F.normalize``'s clamp),
    ``dY = ds * sign(Y)^2 * 0.5 / sqrt(|Y| + eps)``, ``dA = dY @ B``, ``dB = dY^T @ A``.

    Args:
        grad_z (Tensor[N, Ca * Cb]); a (Tensor[N, Ca, H, W]), b (Tensor[N, Cb, H, W]); the forward's flags.

    Returns:
        (Tensor[N, Ca, H, W], Tensor[N, Cb, H, W]): grad_a, grad_b (for ``a is b`` add them).
    """
    y, s, norms = _pool_forward_parts(a, b, eps, signed_sqrt, mean)
    ds = grad_z
    if l2_normalize:
        d = norms.clamp_min(1e-12)[:, None]
        z = s / d
        proj = (z * grad_z).sum(1, keepdim=True)
        ds = torch.where(norms[:, None] >= 1e-12, (grad_z - z * proj) / d, grad_z / d)
    return _grad_through_sqrt_and_bmm(ds, y, a, b, eps, signed_sqrt, mean)


def bilinear_classifier_backward_reference(grad_logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                                           weight: torch.Tensor, bias: torch.Tensor | None = None,
                                           eps: float = 1e-5):
    """Gradients of :func:`bilinear_classifier_reference` from what the fused forward saves.

    ``<z, dz> = sum_k dlogits_k (logits_k - bias_k)`` (no pass over z), ``dz = dlogits @ W``,
    ``ds = (dz - z <z, dz>) / ||s||``, then as :func:`bilinear_pool_backward_reference`;
    ``dW = dlogits^T @ z``, ``dbias = sum_n dlogits``.

    Returns:
        (grad_a, grad_b, grad_weight (Tensor[K, Ca*Cb]), grad_bias (Tensor[K] | None))
    """
    y, s, norms = _pool_forward_parts(a, b, eps, True, False)
    d = norms.clamp_min(1e-12)[:, None]
    z = s / d
    logits_minus_bias = z @ weight.t()
    proj = (grad_logits * logits_minus_bias).sum(1, keepdim=True)
    dz = grad_logits @ weight
    ds = torch.where(norms[:, None] >= 1e-12, (dz - z * proj) / d, dz / d)
    da, db = _grad_through_sqrt_and_bmm(ds, y, a, b, eps, True, False)
    grad_w = grad_logits.t() @ z
    grad_b = grad_logits.sum(0) if bias is not None else None
    return da, db, grad_w, grad_b
