"""Drop-in modules of the bilinear family."""

from __future__ import annotations

import math

import torch
from torch import nn

from fer_kernels.ops.bilinear import bilinear_classifier, bilinear_pool


class BilinearPool(nn.Module):
    """Bilinear pooling, signed sqrt, L2 norm: ``(N,Ca,H,W), (N,Cb,H,W) -> (N, Ca*Cb)``.

    See :func:`fer_kernels.bilinear_pool`. With one input, pools it with itself.
    """

    def __init__(self, eps: float = 1e-5, signed_sqrt: bool = True, l2_normalize: bool = True, mean: bool = False):
        super().__init__()
        self.eps, self.signed_sqrt, self.l2_normalize, self.mean = eps, signed_sqrt, l2_normalize, mean

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return bilinear_pool(a, a if b is None else b, self.eps, self.signed_sqrt, self.l2_normalize, self.mean)

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, signed_sqrt={self.signed_sqrt}, l2_normalize={self.l2_normalize}, "
                f"mean={self.mean}")


class BilinearClassifier(nn.Module):
    """``nn.Linear(ca*cb, num_classes)`` on :class:`BilinearPool` output, fused so the ``ca*cb`` vector is
    never materialised (:func:`fer_kernels.bilinear_classifier`).

    Its state dict is that of ``nn.Linear(ca*cb, num_classes)``: ``weight`` (K, ca*cb), ``bias`` (K,).
    """

    def __init__(self, ca: int, cb: int, num_classes: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.ca, self.cb, self.num_classes, self.eps = ca, cb, num_classes, eps
        self.weight = nn.Parameter(torch.empty(num_classes, ca * cb))
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's initialisation, so the plain and fused heads start alike.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        b = a if b is None else b
        if a.dim() == 4 and b.dim() == 4 and (a.shape[1], b.shape[1]) != (self.ca, self.cb):
            raise ValueError(f"BilinearClassifier expects a with {self.ca} and b with {self.cb} channels, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        return bilinear_classifier(a, b, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"ca={self.ca}, cb={self.cb}, num_classes={self.num_classes}, bias={self.bias is not None}, eps={self.eps}"
