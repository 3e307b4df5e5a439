"""dense_block op family: the DenseNet-BC dense block (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 + concatenation).

Backends: ``reference`` (fer_kernels.reference.dense_block), ``cpp`` (``fer_kernels::dense_block``, CPU
kernels in csrc/cpu/dense_block.cpp) and ``triton`` (``fer_kernels::dense_block_triton``,
fer_kernels/triton/dense_block.py). The fused ops never write running buffers: they return the batch
statistics, and :func:`update_running_stats` folds them in here, once per forward, as ``F.batch_norm`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from fer_kernels import _extension
from fer_kernels.backends import resolve
from fer_kernels.ops._common import (autocast_dtype, autocast_off, cast, check_same_device_dtype, check_tensor,
                                     register_cpp, register_triton, update_running)
from fer_kernels.reference.dense_block import DenseLayerParams, dense_block_reference

_LISTS = ("norm1_weight", "norm1_bias", "norm1_running_mean", "norm1_running_var", "conv1_weight",
          "norm2_weight", "norm2_bias", "norm2_running_mean", "norm2_running_var", "conv2_weight")


def op_args(x, layers, training, eps):
    """Positional arguments of ``fer_kernels::dense_block`` (and of the Triton op): x, ten per-layer lists
    (running statistics only in eval, empty lists when training), training, eps."""
    lists = []
    for name in _LISTS:
        if "running" in name and training:
            lists.append([])
        else:
            lists.append([getattr(p, name) for p in layers])
    return (x, *lists, bool(training), float(eps))


def update_running_stats(layers, xmean, xvar, hmean, hvar, m_count, momentum):
    """Running-buffer update of every BatchNorm of the block from the fused op's batch statistics."""
    for i, p in enumerate(layers):
        c = p.conv1_weight.shape[1]
        update_running(p.norm1_running_mean, p.norm1_running_var, xmean[:c], xvar[:c], m_count, momentum)
        update_running(p.norm2_running_mean, p.norm2_running_var, hmean[i], hvar[i], m_count, momentum)


def _fused(op):
    """A backend callable with the reference's signature around a fused op (``op()`` returns it) that returns
    statistics."""

    def impl(x, layers, training=True, momentum=0.1, eps=1e-5):
        out, _h, xmean, xvar, hmean, hvar = op()(*op_args(x, layers, training, eps))
        if training and momentum:
            update_running_stats(layers, xmean, xvar, hmean, hvar, x.shape[0] * x.shape[2] * x.shape[3],
                                 float(momentum))
        return out

    return impl


def _affine_defaults(p: DenseLayerParams) -> DenseLayerParams:
    """None BatchNorm weight / bias (``affine=False``) as ones / zeros: ``1 * xhat + 0`` is ``xhat`` exactly."""
    fill = {}
    w1 = p.conv1_weight
    dtype = torch.float64 if w1.dtype == torch.float64 else torch.float32
    for bn, ch in (("norm1", w1.shape[1]), ("norm2", w1.shape[0])):
        for suffix, make in (("weight", torch.ones), ("bias", torch.zeros)):
            if getattr(p, f"{bn}_{suffix}") is None:
                fill[f"{bn}_{suffix}"] = make(ch, dtype=dtype, device=w1.device)
    return p._replace(**fill) if fill else p


def _check(x, layers, training, momentum, eps):
    check_tensor(x, "x", 4, "(N, C0, H, W)")
    layers = [p if isinstance(p, DenseLayerParams) else DenseLayerParams(*p) for p in layers]
    if not layers:
        raise ValueError("layers: expected at least one DenseLayerParams")
    w1 = layers[0].conv1_weight
    if isinstance(w1, torch.Tensor) and w1.dim() == 4 and w1.shape[1] != x.shape[1]:
        raise ValueError(f"x: expected {w1.shape[1]} channels (layers[0].conv1_weight has shape {tuple(w1.shape)}), "
                         f"got shape {tuple(x.shape)}")
    if training and x.shape[0] * x.shape[2] * x.shape[3] <= 1:
        raise ValueError(f"x: expected more than 1 value per channel when training, got shape {tuple(x.shape)}")
    c = x.shape[1]
    growth = layers[0].conv2_weight.shape[0] if layers[0].conv2_weight.dim() == 4 else None
    for i, p in enumerate(layers):
        name = f"layers[{i}]"
        w1, w2 = p.conv1_weight, p.conv2_weight
        check_tensor(w1, f"{name}.conv1_weight", 4, "(bottleneck, C, 1, 1)")
        check_tensor(w2, f"{name}.conv2_weight", 4, "(growth, bottleneck, 3, 3)")
        if w1.shape[1] != c or w1.shape[2:] != (1, 1):
            raise ValueError(
                f"{name}.conv1_weight: layer {i + 1} reads {c} channels (C0={x.shape[1]} + {i} x growth "
                f"{growth}), so expected shape ({w1.shape[0]}, {c}, 1, 1), got {tuple(w1.shape)}"
            )
        if w2.shape[1] != w1.shape[0] or w2.shape[2:] != (3, 3) or w2.shape[0] != growth:
            raise ValueError(
                f"{name}.conv2_weight: expected shape ({growth}, {w1.shape[0]}, 3, 3), got {tuple(w2.shape)}"
            )
        for bn, ch in (("norm1", c), ("norm2", w1.shape[0])):
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(p, f"{bn}_{suffix}")
                if t is None and suffix.startswith("running") and training:
                    continue
                if t is None and suffix.startswith("running"):
                    raise ValueError(f"{name}.{bn}_{suffix}: expected a tensor ({ch},) when training=False "
                                     "(running statistics are used), got None")
                if t is None:
                    continue  # affine=False: ones / zeros (_affine_defaults)
                check_tensor(t, f"{name}.{bn}_{suffix}", 1, f"({ch},)")
                if t.shape[0] != ch:
                    raise ValueError(f"{name}.{bn}_{suffix}: expected shape ({ch},), got {tuple(t.shape)}")
        check_same_device_dtype(x, "x", **{f"{name}.{f}": getattr(p, f) for f in ("conv1_weight", "conv2_weight")})
        check_same_device_dtype(x, "x", norm=True, **{f"{name}.{f}": getattr(p, f) for f in DenseLayerParams._fields
                                                      if f.startswith("norm")})
        c += growth
    if not (momentum is None or isinstance(momentum, (int, float))):
        raise TypeError(f"momentum: expected a float, got {type(momentum).__name__}")
    if eps <= 0:
        raise ValueError(f"eps: expected > 0, got {eps}")
    return layers


def dense_block(x: torch.Tensor, layers: Sequence[DenseLayerParams], training: bool = True,
                momentum: float = 0.1, eps: float = 1e-5, *, backend: str | None = None) -> torch.Tensor:
    """A DenseNet-BC dense block, fused: ``cat(x, y_1, ..., y_L)`` with ``y_l`` the l-th bottleneck layer.

    Args:
        x (Tensor[N, C0, H, W]): block input.
        layers (Sequence[DenseLayerParams]): per layer: norm1 (C), conv1 (b, C, 1, 1), norm2 (b),
            conv2 (k, b, 3, 3), with C = C0 + (l-1)k. Running buffers are updated in place when training
            (None running buffers are not tracked); None BatchNorm weight / bias mean ``affine=False``.
        training (bool): batch statistics when True, running statistics when False.
        momentum (float): effective running-average factor (``1/num_batches_tracked`` for momentum=None).
        eps (float): BatchNorm epsilon.
        backend (str | None): force a backend for this call.

    Returns:
        Tensor[N, C0 + L*k, H, W]: under ``torch.autocast``, x and the convolutions run in the autocast rule's
        dtype (:mod:`fer_kernels.ops._common`); the BatchNorm parameters and running statistics keep theirs.
    """
    dt = autocast_dtype(x)
    if dt is not None:
        x = cast(x, dt)
        layers = [p if isinstance(p, DenseLayerParams) else DenseLayerParams(*p) for p in layers]
        layers = [p._replace(conv1_weight=cast(p.conv1_weight, dt), conv2_weight=cast(p.conv2_weight, dt))
                  for p in layers]
    layers = [_affine_defaults(p) for p in _check(x, layers, training, momentum, eps)]
    name = resolve("dense_block", IMPLS, [x, layers[0].conv1_weight], backend)
    with autocast_off(dt, x):
        return IMPLS[name](x, layers, training, momentum, eps)


# ---- autograd and fake kernels, one formula registered for the C++ and the Triton op ----
# Arguments: x, the ten per-layer lists of _LISTS, training, eps; outputs: out, h, xmean, xvar, hmean, hvar.


def _split(args):
    """(x, lists, training, eps) from the op's positional arguments."""
    return args[0], args[1:11], args[11], args[12]


def _fake_forward(*args):
    x, lists, training, _ = _split(args)
    w1, w2 = lists[4], lists[9]
    n, c0, h, w = x.shape
    n_layers, k, width = len(w1), w2[0].shape[0], w1[0].shape[0]
    out = x.new_empty(n, c0 + n_layers * k, h, w)
    if not training:
        e = x.new_empty(0, dtype=torch.float64)
        return out, x.new_empty(0), e, e.new_empty(0), e.new_empty(0), e.new_empty(0)
    stats = [x.new_empty(c0 + n_layers * k, dtype=torch.float64) for _ in range(2)]
    stats += [x.new_empty(n_layers, width, dtype=torch.float64) for _ in range(2)]
    return (out, x.new_empty(n_layers, n, width, h, w), *stats)


def _fake_backward(grad_out, out, h, xmean, xvar, hmean, hvar, *args):
    lists = args[:10]
    c0 = out.shape[1] - len(lists[4]) * lists[9][0].shape[0]
    grads = [[t.new_empty(t.shape) for t in lists[i]] for i in (0, 1, 4, 5, 6, 9)]
    return (grad_out.new_empty(out.shape[0], c0, out.shape[2], out.shape[3]), *grads)


def make_autograd(backward_op):
    """setup_context / backward for a dense_block op. Saved: the output buffer, h, the statistics and every
    parameter; the statistics and h outputs are bookkeeping (running buffers, saved activations), so their
    gradients are not propagated."""

    def setup_context(ctx, inputs, output):
        _, lists, training, eps = _split(inputs)
        ctx.sizes = [len(t) for t in lists]
        ctx.training, ctx.eps = training, eps
        ctx.save_for_backward(*output, *(t for ts in lists for t in ts))

    def backward(ctx, grad_out, *_bookkeeping):
        saved = ctx.saved_tensors
        rest, lists = list(saved[6:]), []
        for size in ctx.sizes:
            lists.append(rest[:size])
            rest = rest[size:]
        gx, gg1, gb1, gw1, gg2, gb2, gw2 = backward_op(grad_out.contiguous(), *saved[:6], *lists, ctx.training,
                                                       ctx.eps)
        none1, none2 = [None] * ctx.sizes[2], [None] * ctx.sizes[7]
        return gx, gg1, gb1, none1, none1, gw1, gg2, gb2, none2, none2, gw2, None, None

    return setup_context, backward


IMPLS = {"reference": dense_block_reference}
if _extension.has_op("dense_block"):
    # Why: autograd and fake kernels for the C++ op are registered once, here (CONVENTIONS 4).
    _cpp_op = register_cpp("dense_block", make_autograd, _fake_forward, _fake_backward)
    IMPLS["cpp"] = _fused(lambda: _cpp_op)


@functools.cache
def triton_op():
    """The Triton op, registered on first use: importing triton is deferred to here."""
    from fer_kernels.triton import dense_block as kernels

    return register_triton(kernels, dense_block=make_autograd)[0]


IMPLS["triton"] = _fused(triton_op)


def demo_case():
    """Built-in shape: block 1 of DenseNet-BC-40 (N=64, C0=24, 6 layers, growth 12, 48x48), eval mode."""
    g = torch.Generator().manual_seed(0)
    layers = []
    for i in range(6):
        c = 24 + 12 * i
        norm1 = [torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.1, torch.zeros(c), torch.ones(c)]
        norm2 = [torch.rand(48, generator=g) + 0.5, torch.randn(48, generator=g) * 0.1, torch.zeros(48),
                 torch.ones(48)]
        layers.append(DenseLayerParams(*norm1, torch.randn(48, c, 1, 1, generator=g) / c ** 0.5,
                                       *norm2, torch.randn(12, 48, 3, 3, generator=g) / 432 ** 0.5))
    x = torch.randn(64, 24, 48, 48, generator=g)
    return "dense_block C0=24 L=6 k=12 (64,24,48,48) eval", (
        lambda backend: dense_block(x, layers, False, backend=backend))
