"""bilinear op family: bilinear (outer-product sum) pooling with signed sqrt and L2 norm, and the fused
bilinear classifier.

Backends: ``reference`` (fer_kernels.reference.bilinear). Fused backends register in ``POOL_IMPLS`` and
``CLASSIFIER_IMPLS``.
"""

from __future__ import annotations

import torch

from fer_kernels.backends import resolve
from fer_kernels.ops._common import check_same_device_dtype, check_tensor
from fer_kernels.reference.bilinear import bilinear_classifier_reference, bilinear_pool_reference

POOL_IMPLS = {"reference": bilinear_pool_reference}
CLASSIFIER_IMPLS = {"reference": bilinear_classifier_reference}
IMPLS = CLASSIFIER_IMPLS  # the demo op


def _check_ab(a, b, eps):
    check_tensor(a, "a", 4, "(N, Ca, H, W)")
    check_tensor(b, "b", 4, "(N, Cb, H, W)")
    check_same_device_dtype(a, "a", b=b)
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(
            f"b: batch and spatial sizes must match a (N={a.shape[0]}, H={a.shape[2]}, W={a.shape[3]}), "
            f"got shape {tuple(b.shape)}"
        )
    if not eps >= 0:
        raise ValueError(f"eps: expected >= 0, got {eps}")


def bilinear_pool(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5, signed_sqrt: bool = True,
                  l2_normalize: bool = True, mean: bool = False, *, backend: str | None = None) -> torch.Tensor:
    """Bilinear pooling ``z = normalize(signed_sqrt(sum_l a_l b_l^T))``, flattened row-major.

    Args:
        a (Tensor[N, Ca, H, W]), b (Tensor[N, Cb, H, W]): feature maps (may be the same tensor).
        eps (float): added inside the signed square root.
        signed_sqrt, l2_normalize (bool): the optional steps; mean (bool): divide by H*W.
        backend (str | None): force a backend for this call.

    Returns:
        Tensor[N, Ca * Cb]
    """
    _check_ab(a, b, eps)
    name = resolve("bilinear_pool", POOL_IMPLS, [a, b], backend)
    return POOL_IMPLS[name](a, b, eps, signed_sqrt, l2_normalize, mean)


def bilinear_classifier(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        eps: float = 1e-5, *, backend: str | None = None) -> torch.Tensor:
    """``Linear(Ca*Cb, K)`` on :func:`bilinear_pool` without materialising the pooled vector.

    Args:
        a (Tensor[N, Ca, H, W]), b (Tensor[N, Cb, H, W]): feature maps.
        weight (Tensor[K, Ca * Cb]), bias (Tensor[K] | None): the classifier.

    Returns:
        Tensor[N, K]: logits.
    """
    _check_ab(a, b, eps)
    width = a.shape[1] * b.shape[1]
    check_tensor(weight, "weight", 2, f"(K, {width})")
    if weight.shape[1] != width:
        raise ValueError(
            f"weight: expected shape (K, {width}) = (K, Ca*Cb) for Ca={a.shape[1]}, Cb={b.shape[1]}, "
            f"got {tuple(weight.shape)}"
        )
    check_same_device_dtype(a, "a", weight=weight, bias=bias)
    if bias is not None:
        check_tensor(bias, "bias", 1, f"({weight.shape[0]},)")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    name = resolve("bilinear_classifier", CLASSIFIER_IMPLS, [a, b, weight, bias], backend)
    return CLASSIFIER_IMPLS[name](a, b, weight, bias, eps)


def demo_case():
    """Built-in shape: EIFN's head, (32, 512, 4, 4) x (32, 512, 4, 4) -> 7 classes."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 512, 4, 4, generator=g).relu()
    b = torch.randn(32, 512, 4, 4, generator=g).relu()
    w = torch.randn(7, 512 * 512, generator=g) * 1e-3
    return "bilinear_classifier (32,512,4,4)^2 -> 7", (lambda backend: bilinear_classifier(a, b, w, backend=backend))
