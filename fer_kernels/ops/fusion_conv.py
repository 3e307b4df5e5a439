"""fusion_conv op family: concatenation + 1x1 convolution + average pool, and the DenseNet transition.

Backends: ``reference`` (fer_kernels.reference.fusion_conv), ``cpp`` (csrc/cpu/fusion_conv.cpp, ops
``fer_kernels::fusion_conv`` / ``transition`` and their ``_*_backward``), ``triton``
(fer_kernels/triton/fusion_conv.py, ops ``fer_kernels::fusion_conv_triton`` / ``transition_triton``) and
``cuda`` for fusion_conv (csrc/cuda/fusion_conv_binding.cpp, where the library was built with CUDA).

Every fused backend computes ``y = W * AvgPool_p(cat(xs)) + b`` (pool first) and returns the pooled input as a
second output, which is what its backward saves instead of the concatenation and the full-size conv output.
The transition ops never mutate running buffers: they return the statistics they used, and
:func:`transition` updates the buffers here under ``no_grad`` (unbiased variance), like ``F.batch_norm``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from fer_kernels import _extension
from fer_kernels.backends import resolve
from fer_kernels.ops._common import (autocast_dtype, autocast_off, cast, check_same_device_dtype, check_tensor,
                                     register_cpp, register_triton, update_running)
from fer_kernels.reference.fusion_conv import fusion_conv_reference, transition_reference

# ---- autograd and fake kernels: one formula per op, registered for the C++ (CPU, CUDA) and Triton ops ----


def make_fusion_conv_autograd(backward_op):
    """setup_context / backward for a fusion_conv op ``(xs, weight, bias, pool) -> (y, P)``; saves P and W."""

    def setup_context(ctx, inputs, output):
        xs, weight, bias, pool = inputs
        ctx.save_for_backward(output[1], weight)
        ctx.channels = [x.shape[1] for x in xs]
        ctx.hw = (xs[0].shape[2], xs[0].shape[3])
        ctx.pool, ctx.has_bias = pool, bias is not None

    def backward(ctx, grad_out, grad_pooled):
        pooled, weight = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_x = any(need_x) if isinstance(need_x, (list, tuple)) else bool(need_x)
        gxs, gw, gb = backward_op(grad_out, grad_pooled, pooled, weight, ctx.channels, ctx.hw[0], ctx.hw[1],
                                  ctx.pool, need_x)
        return (list(gxs) if need_x else [None] * len(ctx.channels)), gw, (gb if ctx.has_bias else None), None

    return setup_context, backward


def _fusion_conv_fake(xs, weight, bias, pool):
    n, _, h, w = xs[0].shape
    c = sum(x.shape[1] for x in xs)
    out = xs[0].new_empty(n, weight.shape[0], h // pool, w // pool)
    return out, xs[0].new_empty(n, c, h // pool, w // pool)


def _fusion_conv_backward_fake(grad_out, grad_pooled, pooled, weight, channels, height, width, pool, input_grad):
    n = pooled.shape[0]
    gxs = [pooled.new_empty(n, c, height, width) for c in channels] if input_grad else []
    return gxs, torch.empty_like(weight), weight.new_empty(weight.shape[0])


def make_transition_autograd(backward_op):
    """setup_context / backward for a transition op ``(x, gamma, beta, mean|None, var|None, W, b, eps, pool)
    -> (y, mean, var)``; saves x, the BN parameters, the statistics used and W. The statistics outputs carry no
    gradient (they feed the running buffers)."""

    def setup_context(ctx, inputs, output):
        x, norm_weight, norm_bias, mean, var, conv_weight, conv_bias, eps, pool = inputs
        _, used_mean, used_var = output
        ctx.save_for_backward(x, norm_weight, norm_bias, used_mean, used_var, conv_weight)
        ctx.batch_stats = mean is None
        ctx.eps, ctx.pool, ctx.has_bias = eps, pool, conv_bias is not None
        ctx.mark_non_differentiable(used_mean, used_var)

    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, norm_weight, norm_bias, mean, var, conv_weight = ctx.saved_tensors
        gx, gg, gb, gw, gcb = backward_op(grad_out, x, norm_weight, norm_bias, mean, var, conv_weight,
                                          ctx.batch_stats, ctx.eps, ctx.pool)
        return gx, gg, gb, None, None, gw, (gcb if ctx.has_bias else None), None, None

    return setup_context, backward


def _transition_fake(x, norm_weight, norm_bias, mean, var, conv_weight, conv_bias, eps, pool):
    n, c, h, w = x.shape
    return (x.new_empty(n, conv_weight.shape[0], h // pool, w // pool), x.new_empty(c), x.new_empty(c))


def _transition_backward_fake(grad_out, x, norm_weight, norm_bias, mean, var, conv_weight, batch_stats, eps, pool):
    return (torch.empty_like(x), torch.empty_like(norm_weight), torch.empty_like(norm_bias),
            torch.empty_like(conv_weight), conv_weight.new_empty(conv_weight.shape[0]))


@functools.cache
def triton_ops():
    """The Triton ops (fusion_conv, transition), registered on first use: importing triton is deferred to here."""
    from fer_kernels.triton import fusion_conv as kernels

    return register_triton(kernels, fusion_conv=make_fusion_conv_autograd, transition=make_transition_autograd)


# ---- backends: callables with the reference's signature ----


def _fusion_conv_with(op):
    def run(xs, weight, bias=None, pool=2):
        return op()(list(xs), weight, bias, pool)[0]

    return run


def _transition_with(op):
    def run(x, norm_weight, norm_bias, running_mean, running_var, conv_weight, conv_bias=None, training=True,
            momentum=0.1, eps=1e-5, pool=2):
        mean_in, var_in = (None, None) if training else (running_mean, running_var)
        out, mean, var = op()(x, norm_weight, norm_bias, mean_in, var_in, conv_weight, conv_bias, float(eps), pool)
        if training:
            update_running(running_mean, running_var, mean, var, x.numel() // x.shape[1], momentum)
        return out

    return run


IMPLS = {"reference": fusion_conv_reference, "triton": _fusion_conv_with(lambda: triton_ops()[0])}
TRANSITION_IMPLS = {"reference": transition_reference, "triton": _transition_with(lambda: triton_ops()[1])}
# Why here: autograd and fake kernels are registered once, in Python, for every device the C++ library has.
if _extension.has_op("fusion_conv"):
    _fusion_conv_op = register_cpp("fusion_conv", make_fusion_conv_autograd, _fusion_conv_fake,
                                   _fusion_conv_backward_fake)
    IMPLS["cpp"] = _fusion_conv_with(lambda: _fusion_conv_op)
    if _extension.cuda_built():
        IMPLS["cuda"] = IMPLS["cpp"]  # the same op; the dispatcher picks the CUDA kernel
if _extension.has_op("transition"):
    _transition_op = register_cpp("transition", make_transition_autograd, _transition_fake,
                                  _transition_backward_fake)
    TRANSITION_IMPLS["cpp"] = _transition_with(lambda: _transition_op)


# ---- input checks and the public functions ----


def _check(xs, weight, bias, pool):
    if isinstance(xs, torch.Tensor):
        xs = [xs]
    xs = list(xs)
    if not xs:
        raise ValueError("xs: expected at least one input tensor (N, C_i, H, W)")
    if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
        raise ValueError(f"pool: expected an int >= 1, got {pool!r}")
    for i, x in enumerate(xs):
        check_tensor(x, f"xs[{i}]", 4, "(N, C_i, H, W)")
    n, _, h, w = xs[0].shape
    for i, x in enumerate(xs[1:], 1):
        check_same_device_dtype(xs[0], "xs[0]", **{f"xs[{i}]": x})
        if x.shape[0] != n or x.shape[2:] != xs[0].shape[2:]:
            raise ValueError(
                f"xs[{i}]: batch and spatial sizes must match xs[0] (N={n}, H={h}, W={w}), "
                f"got shape {tuple(x.shape)}"
            )
    c_in = sum(x.shape[1] for x in xs)
    check_tensor(weight, "weight", 4, f"(C_out, {c_in}, 1, 1)")
    check_same_device_dtype(xs[0], "xs[0]", weight=weight, bias=bias)
    if weight.shape[1] != c_in or weight.shape[2:] != (1, 1):
        chans = " + ".join(str(x.shape[1]) for x in xs)
        raise ValueError(
            f"weight: expected shape (C_out, {c_in}, 1, 1) for inputs with {chans} channels, "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor(bias, "bias", 1, f"({weight.shape[0]},)")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if h < pool or w < pool:
        raise ValueError(f"xs: spatial size {h}x{w} is smaller than pool={pool}")
    return xs


def fusion_conv(
    xs: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pool: int = 2,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``AvgPool2d(pool)(conv1x1(cat(xs), weight, bias))``, fused: pool first, then multiply.

    Args:
        xs (Sequence[Tensor[N, C_i, H, W]]): inputs, concatenated along channels (never materialised).
        weight (Tensor[C_out, sum C_i, 1, 1]): 1x1 convolution weight.
        bias (Tensor[C_out] | None): convolution bias.
        pool (int): average-pool kernel and stride (floor semantics); 1 means no pool.
        backend (str | None): force a backend for this call (see :mod:`fer_kernels.backends`).

    Returns:
        Tensor[N, C_out, H // pool, W // pool]: under ``torch.autocast``, in the dtype of the autocast rule
        (:mod:`fer_kernels.ops._common`: the autocast dtype on CUDA, float32 on CPU).
    """
    if isinstance(xs, (list, tuple)):
        dt = autocast_dtype(*xs, weight, bias)
        xs, weight, bias = [cast(x, dt) for x in xs], cast(weight, dt), cast(bias, dt)
    else:
        dt = None
    xs = _check(xs, weight, bias, pool)
    name = resolve("fusion_conv", IMPLS, [*xs, weight, bias], backend)
    with autocast_off(dt, weight):
        return IMPLS[name](xs, weight, bias, pool)


def _check_transition(x, norm_weight, norm_bias, running_mean, running_var, conv_weight, conv_bias, training,
                      momentum, eps, pool):
    check_tensor(x, "x", 4, "(N, C, H, W)")
    if isinstance(conv_weight, torch.Tensor) and conv_weight.dim() == 4 and conv_weight.shape[1] != x.shape[1]:
        raise ValueError(f"x: expected {conv_weight.shape[1]} channels (conv_weight has shape "
                         f"{tuple(conv_weight.shape)}), got shape {tuple(x.shape)}")
    _check([x], conv_weight, conv_bias, pool)
    c = x.shape[1]
    for name, t in (
        ("norm_weight", norm_weight),
        ("norm_bias", norm_bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ):
        if t is None:  # untracked running statistics, or affine=False
            continue
        check_tensor(t, name, 1, f"({c},)")
        if t.shape[0] != c:
            raise ValueError(f"{name}: expected shape ({c},) for x with {c} channels, got {tuple(t.shape)}")
        check_same_device_dtype(x, "x", norm=True, **{name: t})
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):
        raise TypeError(f"momentum: expected a float, got {type(momentum).__name__}")
    if not eps > 0:
        raise ValueError(f"eps: expected > 0, got {eps}")
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise ValueError(
            f"{missing}: expected a tensor ({c},) when training=False (running statistics are used), got None"
        )
    if training and x.numel() // max(c, 1) <= 1:
        raise ValueError(
            f"x: expected more than 1 value per channel when training (batch statistics), "
            f"got shape {tuple(x.shape)}"
        )


def transition(x: torch.Tensor, norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None, conv_weight: torch.Tensor,
               conv_bias: torch.Tensor | None = None, training: bool = True, momentum: float = 0.1,
               eps: float = 1e-5, pool: int = 2, *, backend: str | None = None) -> torch.Tensor:
    """DenseNet transition, fused: BN-ReLU applied as the prologue of the pooled 1x1 convolution.

    Args:
        x (Tensor[N, C, H, W]); norm_weight, norm_bias, running_mean, running_var (Tensor[C]; None weight and
        bias mean ``affine=False``, None running statistics are not tracked);
        conv_weight (Tensor[C_out, C, 1, 1]); conv_bias (Tensor[C_out] | None).
        training, momentum, eps: as ``F.batch_norm`` (running buffers updated in place when training).
        pool (int): average-pool size.

    Returns:
        Tensor[N, C_out, H // pool, W // pool]: under ``torch.autocast``, x and the convolution run in the
        autocast rule's dtype; the BatchNorm parameters and running statistics keep theirs.
    """
    dt = autocast_dtype(x, conv_weight, conv_bias)
    x, conv_weight, conv_bias = cast(x, dt), cast(conv_weight, dt), cast(conv_bias, dt)
    _check_transition(x, norm_weight, norm_bias, running_mean, running_var, conv_weight, conv_bias, training,
                      momentum, eps, pool)
    if norm_weight is None or norm_bias is None:  # affine=False: 1 * xhat + 0 is xhat exactly
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        c = x.shape[1]
        norm_weight = torch.ones(c, dtype=dtype, device=x.device) if norm_weight is None else norm_weight
        norm_bias = torch.zeros(c, dtype=dtype, device=x.device) if norm_bias is None else norm_bias
    name = resolve("transition", TRANSITION_IMPLS, [x, conv_weight], backend)
    with autocast_off(dt, x):
        return TRANSITION_IMPLS[name](x, norm_weight, norm_bias, running_mean, running_var, conv_weight, conv_bias,
                                      training, momentum, eps, pool)


def demo_case():
    """Built-in shape for ``python -m fer_kernels``: IDEnNet's spatial fusion, two (64, 48, 24, 24) -> 48."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 48, 24, 24, generator=g) for _ in range(2)]
    w = torch.randn(48, 96, 1, 1, generator=g) * 0.1
    b = torch.zeros(48)
    return "fusion_conv 2x(64,48,24,24)->48 pool 2", (
        lambda backend: fusion_conv(xs, w, b, 2, backend=backend)
    )
