"""bilinear op family: bilinear (outer-product sum) pooling with signed sqrt and L2 norm, and the fused
bilinear classifier.

Backends: ``reference`` (fer_kernels.reference.bilinear), ``cpp`` (csrc/cpu/bilinear.cpp, ops
``fer_kernels::bilinear_pool`` / ``bilinear_classifier`` and their ``_*_backward``), ``triton``
(fer_kernels/triton/bilinear.py, ops ``fer_kernels::bilinear_*_triton``, imported on first use) and ``cuda``
(csrc/cuda/bilinear.cu, the same C++ ops dispatched on CUDA tensors, when built with CUDA).

The forward ops return ``(out, norms)``: the per-sample ``||s||`` is all backward needs besides a, b and the
output (the pool's z, the classifier's logits). Autograd and fake kernels are written here, once, and
registered for the C++ ops and the Triton ops alike.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fer_kernels import _extension
from fer_kernels.backends import resolve
from fer_kernels.ops._common import (autocast_dtype, autocast_off, cast, check_same_device_dtype, check_tensor,
                                     register_cpp, register_triton)
from fer_kernels.reference.bilinear import bilinear_classifier_reference, bilinear_pool_reference

POOL_IMPLS = {"reference": bilinear_pool_reference}
CLASSIFIER_IMPLS = {"reference": bilinear_classifier_reference}
IMPLS = CLASSIFIER_IMPLS  # the demo op


# The C++ classifier's register tiles pay up to 8x8 locations and 8 classes (csrc/cpu/bilinear.cpp, use_gemm_path).
CPP_TILE_LOCATIONS = 64
CPP_TILE_CLASSES = 8


# ---- autograd and fake kernels shared by the C++ ops (CPU and CUDA) and the Triton ops ----

def pool_fake(a, b, eps, signed_sqrt, l2_normalize, mean):
    return a.new_empty(a.shape[0], a.shape[1] * b.shape[1]), a.new_empty(a.shape[0])


def pool_backward_fake(grad_z, a, b, z, norms, eps, signed_sqrt, l2_normalize, mean):
    return torch.empty_like(a), torch.empty_like(b)


def classifier_fake(a, b, weight, bias, eps):
    return a.new_empty(a.shape[0], weight.shape[0]), a.new_empty(a.shape[0])


def classifier_backward_fake(grad_logits, a, b, weight, bias, norms, logits, eps):
    return torch.empty_like(a), torch.empty_like(b), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def make_pool_autograd(backward_op):
    """setup_context / backward for a pool op ``(a, b, eps, flags) -> (z, norms)``; saves a, b, z, norms."""

    def setup_context(ctx, inputs, output):
        a, b, eps, signed_sqrt, l2_normalize, mean = inputs
        z, norms = output
        ctx.save_for_backward(a, b, z, norms)
        ctx.args = (eps, signed_sqrt, l2_normalize, mean)

    def backward(ctx, grad_z, grad_norms):
        # norms is an internal output (the public functions return z only), so its gradient is not propagated.
        a, b, z, norms = ctx.saved_tensors
        da, db = backward_op(grad_z.contiguous(), a, b, z, norms, *ctx.args)
        return da, db, None, None, None, None

    return setup_context, backward


def make_classifier_autograd(backward_op):
    """setup_context / backward for a classifier op; saves a, b, weight, bias, norms, logits (never z)."""

    def setup_context(ctx, inputs, output):
        a, b, weight, bias, eps = inputs
        logits, norms = output
        ctx.save_for_backward(a, b, weight, bias, norms, logits)
        ctx.eps = eps

    def backward(ctx, grad_logits, grad_norms):
        a, b, weight, bias, norms, logits = ctx.saved_tensors
        da, db, dw, dbias = backward_op(grad_logits.contiguous(), a, b, weight, bias, norms, logits, ctx.eps)
        return da, db, dw, (dbias if bias is not None else None), None

    return setup_context, backward


def _classifier_via_pool(pool_op, classifier_op):
    """The classifier backend around a fused pool op and a fused classifier op, with the auto policy of the C++
    CPU kernels: their register tiles pay up to ``CPP_TILE_LOCATIONS`` locations and ``CPP_TILE_CLASSES``
    classes; past them the GEMMs dominate, so the pool (whose saved z spares the backward a second Y) and a
    linear layer run instead (benchmarks/RESULTS.md, "B-CNN classifier")."""

    def run(a, b, weight, bias=None, eps=1e-5):
        large = a.shape[2] * a.shape[3] > CPP_TILE_LOCATIONS or weight.shape[0] > CPP_TILE_CLASSES
        if a.device.type == "cpu" and large:
            return F.linear(pool_op(a, b, eps, True, True, False)[0], weight, bias)
        return classifier_op(a, b, weight, bias, eps)[0]

    return run


if _extension.has_op("bilinear_pool"):
    # Why here: one autograd/fake registration serves the CPU and CUDA kernels of each C++ op (rule 4).
    _pool_op = register_cpp("bilinear_pool", make_pool_autograd, pool_fake, pool_backward_fake)
    _classifier_op = register_cpp("bilinear_classifier", make_classifier_autograd, classifier_fake,
                                  classifier_backward_fake)

    def _pool_cpp(a, b, eps=1e-5, signed_sqrt=True, l2_normalize=True, mean=False):
        return _pool_op(a, b, eps, signed_sqrt, l2_normalize, mean)[0]

    POOL_IMPLS["cpp"] = _pool_cpp
    CLASSIFIER_IMPLS["cpp"] = _classifier_via_pool(_pool_op, _classifier_op)
    if _extension.cuda_built():  # the same ops, dispatched to csrc/cuda/bilinear_binding.cpp
        POOL_IMPLS["cuda"] = POOL_IMPLS["cpp"]
        CLASSIFIER_IMPLS["cuda"] = CLASSIFIER_IMPLS["cpp"]


@functools.cache
def triton_ops():
    """The Triton ops (pool, classifier), registered on first use: importing triton is deferred to here."""
    from fer_kernels.triton import bilinear as kernels

    return register_triton(kernels, bilinear_pool=make_pool_autograd, bilinear_classifier=make_classifier_autograd)


def _pool_triton(a, b, eps=1e-5, signed_sqrt=True, l2_normalize=True, mean=False):
    return triton_ops()[0](a, b, eps, signed_sqrt, l2_normalize, mean)[0]


def _classifier_triton(a, b, weight, bias=None, eps=1e-5):
    return triton_ops()[1](a, b, weight, bias, eps)[0]


POOL_IMPLS["triton"] = _pool_triton
CLASSIFIER_IMPLS["triton"] = _classifier_triton


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
        Tensor[N, Ca * Cb]: under ``torch.autocast``, in the dtype of the autocast rule
        (:mod:`fer_kernels.ops._common`: the autocast dtype on CUDA, float32 on CPU).
    """
    dt = autocast_dtype(a, b)
    a, b = cast(a, dt), cast(b, dt)
    _check_ab(a, b, eps)
    name = resolve("bilinear_pool", POOL_IMPLS, [a, b], backend)
    with autocast_off(dt, a):
        return POOL_IMPLS[name](a, b, eps, signed_sqrt, l2_normalize, mean)


def bilinear_classifier(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        eps: float = 1e-5, *, backend: str | None = None) -> torch.Tensor:
    """``Linear(Ca*Cb, K)`` on :func:`bilinear_pool` without materialising the pooled vector.

    Args:
        a (Tensor[N, Ca, H, W]), b (Tensor[N, Cb, H, W]): feature maps.
        weight (Tensor[K, Ca * Cb]), bias (Tensor[K] | None): the classifier.

    Returns:
        Tensor[N, K]: logits (under ``torch.autocast``, in the dtype of the autocast rule, as the pool).
    """
    dt = autocast_dtype(a, b, weight, bias)
    a, b, weight, bias = (cast(t, dt) for t in (a, b, weight, bias))
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
    with autocast_off(dt, a):
        return CLASSIFIER_IMPLS[name](a, b, weight, bias, eps)




def demo_case():
    """Built-in shape: EIFN's head, (32, 512, 4, 4) x (32, 512, 4, 4) -> 7 classes."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 512, 4, 4, generator=g).relu()
    b = torch.randn(32, 512, 4, 4, generator=g).relu()
    w = torch.randn(7, 512 * 512, generator=g) * 1e-3
    return "bilinear_classifier (32,512,4,4)^2 -> 7", (lambda backend: bilinear_classifier(a, b, w, backend=backend))
