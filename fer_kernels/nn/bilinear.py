"""Drop-in modules of the bilinear family."""

from __future__ import annotations

import torch
from torch import nn

from fer_kernels.nn.convert import rebuild, register_converter, register_reference
from fer_kernels.nn.plain import (BilinearClassifierLayout, BilinearClassifierPlain, BilinearPoolLayout,
                                 BilinearPoolPlain)
from fer_kernels.ops.bilinear import bilinear_classifier, bilinear_pool


class BilinearPool(BilinearPoolLayout):
    """Bilinear pooling, signed sqrt, L2 norm: ``(N,Ca,H,W), (N,Cb,H,W) -> (N, Ca*Cb)``.

    See :func:`fer_kernels.bilinear_pool`. With one input, pools it with itself.
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return bilinear_pool(a, a if b is None else b, self.eps, self.signed_sqrt, self.l2_normalize, self.mean)


class BilinearClassifier(BilinearClassifierLayout):
    """``nn.Linear(ca*cb, num_classes)`` on :class:`BilinearPool` output, fused so the ``ca*cb`` vector is
    never materialised (:func:`fer_kernels.bilinear_classifier`).

    Its state dict is that of ``nn.Linear(ca*cb, num_classes)``: ``weight`` (K, ca*cb), ``bias`` (K,).
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        b = a if b is None else b
        # The op checks Ca*Cb against the weight; only the module knows how the product splits.
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() == 4 and b.dim() == 4:
            ca, cb = a.shape[1], b.shape[1]
            if ca * cb == self.ca * self.cb and (ca, cb) != (self.ca, self.cb):
                raise ValueError(f"a, b: BilinearClassifier expects a with {self.ca} and b with {self.cb} "
                                 f"channels, got {tuple(a.shape)} and {tuple(b.shape)}")
        return bilinear_classifier(a, b, self.weight, self.bias, self.eps)


# ---- convert / to_reference ----


def _pool_args(m) -> tuple:
    return m.eps, m.signed_sqrt, m.l2_normalize, m.mean


@register_converter
def _convert_bilinear(m: nn.Module):
    """``BilinearPoolPlain`` -> BilinearPool; ``BilinearClassifierPlain`` -> BilinearClassifier (adopting the
    ``weight`` and ``bias`` Parameters)."""
    if isinstance(m, BilinearPoolPlain) and not list(m.children()):
        new = BilinearPool(*_pool_args(m))
        new.training = m.training
        return new
    if isinstance(m, BilinearClassifierPlain) and not list(m.children()):
        w, b = m.weight, m.bias
        if w.dim() != 2 or w.shape[1] != m.ca * m.cb:
            return None
        if b is not None and (b.shape != (w.shape[0],) or (b.device, b.dtype) != (w.device, w.dtype)):
            return None
        return rebuild(lambda: BilinearClassifier(m.ca, m.cb, w.shape[0], b is not None, m.eps), m.training,
                       weight=w, bias=b)
    return None


@register_reference
def _reference_bilinear(m: nn.Module):
    """BilinearPool -> BilinearPoolPlain, BilinearClassifier -> BilinearClassifierPlain (same Parameters)."""
    if isinstance(m, BilinearPool):
        new = BilinearPoolPlain(*_pool_args(m))
        new.training = m.training
        return new
    if isinstance(m, BilinearClassifier):
        return rebuild(lambda: BilinearClassifierPlain(m.ca, m.cb, m.num_classes, m.bias is not None, m.eps),
                       m.training, weight=m.weight, bias=m.bias)
    return None
