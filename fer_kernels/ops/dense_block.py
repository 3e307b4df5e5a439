"""dense_block op family: the DenseNet-BC dense block (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 + concatenation).

Backends: ``reference`` (fer_kernels.reference.dense_block), ``cpp`` (``fer_kernels::dense_block``, CPU
kernels in csrc/cpu/dense_block.cpp) and ``triton`` (``fer_kernels::dense_block_triton``,
fer_kernels/triton/dense_block.py). The fused ops never write running buffers: they return the batch
statistics, and :func:`update_running_stats` folds them in here, once per forward, as ``F.batch_norm`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fer_kernels import _extension
from fer_kernels.backends import resolve
from fer_kernels.ops._common import autocast_dtype, autocast_off, cast, check_same_device_dtype, check_tensor
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
    """Running-buffer update from the fused op's batch statistics (float64), exactly as ``F.batch_norm``:
    ``r = (1 - momentum) * r + momentum * stat`` with the unbiased variance."""
    with torch.no_grad():
        unbias = m_count / max(m_count - 1, 1)
        for l, p in enumerate(layers):
            c = p.conv1_weight.shape[1]
            for rm, rv, mean, var in ((p.norm1_running_mean, p.norm1_running_var, xmean[:c], xvar[:c]),
                                      (p.norm2_running_mean, p.norm2_running_var, hmean[l], hvar[l])):
                if rm is not None:
                    rm.mul_(1 - momentum).add_(mean.to(rm.dtype), alpha=momentum)
                if rv is not None:
                    rv.mul_(1 - momentum).add_((var * unbias).to(rv.dtype), alpha=momentum)


def _fused(op):
    """A backend callable with the reference's signature around a fused op that returns statistics."""

    def impl(x, layers, training=True, momentum=0.1, eps=1e-5):
        if training and x.shape[0] * x.shape[2] * x.shape[3] <= 1:
            raise ValueError(f"x: expected more than 1 value per channel when training, got shape {tuple(x.shape)}")
        if not training and any(getattr(p, n) is None for p in layers for n in _LISTS if "running" in n):
            raise ValueError("layers: eval mode needs running_mean and running_var in every BatchNorm")
        out, _h, xmean, xvar, hmean, hvar = op(*op_args(x, layers, training, eps))
        if training and momentum:
            update_running_stats(layers, xmean, xvar, hmean, hvar, x.shape[0] * x.shape[2] * x.shape[3],
                                 float(momentum))
        return out

    return impl


IMPLS = {"reference": dense_block_reference}


def _check(x, layers, momentum, eps):
    check_tensor(x, "x", 4, "(N, C0, H, W)")
    layers = [p if isinstance(p, DenseLayerParams) else DenseLayerParams(*p) for p in layers]
    if not layers:
        raise ValueError("layers: expected at least one DenseLayerParams")
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
                if t is None and suffix.startswith("running"):
                    continue
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
            conv2 (k, b, 3, 3), with C = C0 + (l-1)k. Running buffers are updated in place when training.
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
    layers = _check(x, layers, momentum, eps)
    name = resolve("dense_block", IMPLS, [x, layers[0].conv1_weight], backend)
    with autocast_off(dt, x):
        return IMPLS[name](x, layers, training, momentum, eps)


# ---- registration: autograd and fake kernels, shared by the C++ and Triton ops ----


def _fake_forward(x, g1, b1, m1, v1, w1, g2, b2, m2, v2, w2, training, eps):
    n, c0, h, w = x.shape
    n_layers, k, width = len(w1), w2[0].shape[0], w1[0].shape[0]
    out = x.new_empty(n, c0 + n_layers * k, h, w)
    if not training:
        e = x.new_empty(0, dtype=torch.float64)
        return out, x.new_empty(0), e, e.new_empty(0), e.new_empty(0), e.new_empty(0)
    return (out, x.new_empty(n_layers, n, width, h, w), x.new_empty(c0 + n_layers * k, dtype=torch.float64),
            x.new_empty(c0 + n_layers * k, dtype=torch.float64), x.new_empty(n_layers, width, dtype=torch.float64),
            x.new_empty(n_layers, width, dtype=torch.float64))


def _fake_backward(grad_out, out, h, xmean, xvar, hmean, hvar, g1, b1, m1, v1, w1, g2, b2, m2, v2, w2,
                   training, eps):
    c0 = out.shape[1] - len(w1) * w2[0].shape[0]
    return (grad_out.new_empty(out.shape[0], c0, out.shape[2], out.shape[3]),
            [t.new_empty(t.shape) for t in g1], [t.new_empty(t.shape) for t in b1],
            [t.new_empty(t.shape) for t in w1], [t.new_empty(t.shape) for t in g2],
            [t.new_empty(t.shape) for t in b2], [t.new_empty(t.shape) for t in w2])


def _setup_context(ctx, inputs, output):
    x, g1, b1, m1, v1, w1, g2, b2, m2, v2, w2, training, eps = inputs
    out, h, xmean, xvar, hmean, hvar = output
    n_layers = len(w1)
    ctx.n_layers, ctx.n_running, ctx.training, ctx.eps = n_layers, len(m1), training, eps
    ctx.save_for_backward(out, h, xmean, xvar, hmean, hvar, *g1, *b1, *m1, *v1, *w1, *g2, *b2, *m2, *v2, *w2)


def _unpack(ctx):
    saved = ctx.saved_tensors
    out, h, xmean, xvar, hmean, hvar = saved[:6]
    rest, n, r = list(saved[6:]), ctx.n_layers, ctx.n_running
    lists = []
    for size in (n, n, r, r, n, n, n, r, r, n):
        lists.append(rest[:size])
        rest = rest[size:]
    return out, h, xmean, xvar, hmean, hvar, lists


def _make_backward(backward_op):
    # The statistics and h outputs are bookkeeping (running buffers, saved activations): their gradients
    # are not propagated.
    def backward(ctx, grad_out, _gh, _gxm, _gxv, _ghm, _ghv):
        out, h, xmean, xvar, hmean, hvar, lists = _unpack(ctx)
        gx, gg1, gb1, gw1, gg2, gb2, gw2 = backward_op(grad_out.contiguous(), out, h, xmean, xvar, hmean, hvar,
                                                       *lists, ctx.training, ctx.eps)
        none = [None] * ctx.n_running
        return gx, gg1, gb1, none, none, gw1, gg2, gb2, none, none, gw2, None, None

    return backward


def _register_cpp():
    # Why: autograd and fake kernels for the C++ op are registered once, here (CONVENTIONS 4).
    torch.library.register_fake("fer_kernels::dense_block")(_fake_forward)
    torch.library.register_fake("fer_kernels::_dense_block_backward")(_fake_backward)
    torch.library.register_autograd("fer_kernels::dense_block",
                                    _make_backward(torch.ops.fer_kernels._dense_block_backward),
                                    setup_context=_setup_context)
    IMPLS["cpp"] = _fused(torch.ops.fer_kernels.dense_block)


if _extension.has_op("dense_block"):
    _register_cpp()


def _triton_impl(x, layers, training=True, momentum=0.1, eps=1e-5):
    from fer_kernels.triton.dense_block import dense_block_triton_op  # triton is imported lazily

    return _fused(dense_block_triton_op())(x, layers, training, momentum, eps)


IMPLS["triton"] = _triton_impl


def demo_case():
    """Built-in shape: block 1 of DenseNet-BC-40 (N=64, C0=24, 6 layers, growth 12, 48x48), eval mode."""
    from fer_kernels.nn.dense_block import DenseBlock

    torch.manual_seed(0)
    block = DenseBlock(6, 24, growth_rate=12, bn_size=4).eval()
    x = torch.randn(64, 24, 48, 48)
    return "dense_block C0=24 L=6 k=12 (64,24,48,48) eval", (lambda backend: block(x, backend=backend))
