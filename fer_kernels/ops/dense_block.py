"""dense_block op family: the DenseNet-BC dense block (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 + concatenation).

Backends: ``reference`` (fer_kernels.reference.dense_block). Fused backends register in ``IMPLS``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fer_kernels.backends import resolve
from fer_kernels.ops._common import check_same_device_dtype, check_tensor
from fer_kernels.reference.dense_block import DenseLayerParams, dense_block_reference

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
        check_same_device_dtype(x, "x", **{f"{name}.{f}": getattr(p, f) for f in DenseLayerParams._fields})
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
        Tensor[N, C0 + L*k, H, W]
    """
    layers = _check(x, layers, momentum, eps)
    name = resolve("dense_block", IMPLS, [x, layers[0].conv1_weight], backend)
    return IMPLS[name](x, layers, training, momentum, eps)


def demo_case():
    """Built-in shape: block 1 of DenseNet-BC-40 (N=64, C0=24, 6 layers, growth 12, 48x48), eval mode."""
    from fer_kernels.nn.dense_block import DenseBlock

    torch.manual_seed(0)
    block = DenseBlock(6, 24, growth_rate=12, bn_size=4).eval()
    x = torch.randn(64, 24, 48, 48)
    return "dense_block C0=24 L=6 k=12 (64,24,48,48) eval", (lambda backend: block(x, backend=backend))
