"""fusion_conv op family: concatenation + 1x1 convolution + average pool.

Backends: ``reference`` (fer_kernels.reference.fusion_conv). Fused backends register in ``IMPLS``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fer_kernels.backends import resolve
from fer_kernels.ops._common import check_same_device_dtype, check_tensor
from fer_kernels.reference.fusion_conv import fusion_conv_reference, transition_reference

IMPLS = {"reference": fusion_conv_reference}
TRANSITION_IMPLS = {"reference": transition_reference}


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


def fusion_conv(xs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None = None,
                pool: int = 2, *, backend: str | None = None) -> torch.Tensor:
    """``AvgPool2d(pool)(conv1x1(cat(xs), weight, bias))``, fused: pool first, then multiply.

    Args:
        xs (Sequence[Tensor[N, C_i, H, W]]): inputs, concatenated along channels (never materialised).
        weight (Tensor[C_out, sum C_i, 1, 1]): 1x1 convolution weight.
        bias (Tensor[C_out] | None): convolution bias.
        pool (int): average-pool kernel and stride (floor semantics); 1 means no pool.
        backend (str | None): force a backend for this call (see :mod:`fer_kernels.backends`).

    Returns:
        Tensor[N, C_out, H // pool, W // pool]
    """
    xs = _check(xs, weight, bias, pool)
    name = resolve("fusion_conv", IMPLS, [*xs, weight, bias], backend)
    return IMPLS[name](xs, weight, bias, pool)


def transition(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None, conv_weight: torch.Tensor,
               conv_bias: torch.Tensor | None = None, training: bool = True, momentum: float = 0.1,
               eps: float = 1e-5, pool: int = 2, *, backend: str | None = None) -> torch.Tensor:
    """DenseNet transition, fused: BN-ReLU applied as the prologue of the pooled 1x1 convolution.

    Args:
        x (Tensor[N, C, H, W]); norm_weight, norm_bias, running_mean, running_var (Tensor[C]);
        conv_weight (Tensor[C_out, C, 1, 1]); conv_bias (Tensor[C_out] | None).
        training, momentum, eps: as ``F.batch_norm`` (running buffers updated in place when training).
        pool (int): average-pool size.

    Returns:
        Tensor[N, C_out, H // pool, W // pool]
    """
    _check([x], conv_weight, conv_bias, pool)
    c = x.shape[1]
    for name, t in (("norm_weight", norm_weight), ("norm_bias", norm_bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is None and name.startswith("running"):
            continue
        check_tensor(t, name, 1, f"({c},)")
        if t.shape[0] != c:
            raise ValueError(f"{name}: expected shape ({c},) for x with {c} channels, got {tuple(t.shape)}")
        check_same_device_dtype(x, "x", **{name: t})
    name = resolve("transition", TRANSITION_IMPLS, [x, conv_weight], backend)
    return TRANSITION_IMPLS[name](x, norm_weight, norm_bias, running_mean, running_var, conv_weight, conv_bias,
                                  training, momentum, eps, pool)


def demo_case():
    """Built-in shape for ``python -m fer_kernels``: IDEnNet's spatial fusion, two (64, 48, 24, 24) -> 48."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 48, 24, 24, generator=g) for _ in range(2)]
    w = torch.randn(48, 96, 1, 1, generator=g) * 0.1
    b = torch.zeros(48)
    return "fusion_conv 2x(64,48,24,24)->48 pool 2", (lambda backend: fusion_conv(xs, w, b, 2, backend=backend))
