"""bilinear: bilinear pooling (returning z) and the fused bilinear classifier, forward and forward+backward.

Shapes: EIFN's head (32, 512, 4, 4) x (32, 512, 4, 4) with 7 classes; B-CNN at 448x448, (32, 512, 28, 28)
with 200 classes; and (16, 256, 14, 14) with 7 classes. Providers: ``eager`` (the plain composition: bmm,
sign*sqrt, F.normalize, F.linear), ``compile`` (torch.compile of it), ``reference`` (fer_kernels' reference
backend), ``cpp``, and ``triton`` / ``cuda`` on GPU. dtypes: float32, and bfloat16 under autocast on GPU
(bfloat16 feature maps, float32 classifier weights; see fer_kernels/benchmarks/plugin.py). Groups
``bilinear-<mode>-<op>_<shape>`` (``-bf16`` for bfloat16); extra_info records FLOPs, minimal bytes moved, for
``full`` the bytes saved for backward by one forward, and on GPU the peak memory.

Run: ``python -m pytest -p fer_kernels.benchmarks.plugin fer_kernels/benchmarks/bench_bilinear.py -q``
(``-k eifn`` for the issue's target shape), or ``fer-bench --ops bilinear``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fer_kernels as fk
from fer_kernels.benchmarks import plugin

FUSED = ("cpp",) if plugin.DEVICE == "cpu" else ("triton", "cuda")

SHAPES = {  # name -> (N, Ca, Cb, H, W, classes)
    "eifn_32x512x4x4_k7": (plugin.batch(32), 512, 512, 4, 4, 7),
    "16x256x14x14_k7": (plugin.batch(16), 256, 256, 14, 14, 7),
    "bcnn_32x512x28x28_k200": (plugin.batch(32), 512, 512, 28, 28, 200),
}
BIG = {"bcnn_32x512x28x28_k200"}  # a few rounds only
# --gpu-check: EIFN's head and a B-CNN-sized map, pool and classifier, training (forward + backward); the
# reference provider (the same PyTorch ops as eager) is left out
GPU_CHECK = {"test_bilinear": {"shape_name": ["eifn_32x512x4x4_k7", "bcnn_32x512x28x28_k200"],
                               "mode": ["full"], "provider": ["eager", "compile", "triton", "cuda", "cpp"]}}


def plain_pool(a, b, eps=1e-5):
    y = torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2))
    s = torch.sign(y) * torch.sqrt(y.abs() + eps)
    return F.normalize(s.flatten(1), dim=1)


def plain_classifier(a, b, weight, bias, eps=1e-5):
    return F.linear(plain_pool(a, b, eps), weight, bias)


_COMPILED: dict = {}


def _fn(op: str, provider: str):
    if provider in ("eager", "compile"):
        f = plain_pool if op == "pool" else plain_classifier
        if provider == "compile":
            f = _COMPILED.setdefault(op, torch.compile(f))
        return f
    if op == "pool":
        return lambda a, b: fk.bilinear_pool(a, b, backend=provider)
    return lambda a, b, w, bias: fk.bilinear_classifier(a, b, w, bias, backend=provider)


def _inputs(shape, requires_grad: bool, dtype: str = "float32"):
    n, ca, cb, h, w, k = shape
    g = torch.Generator().manual_seed(0)
    act = plugin.activation_dtype(dtype)
    a = torch.randn(n, ca, h, w, generator=g).relu().to(plugin.DEVICE, act)  # post-ReLU conv5_3 features
    b = torch.randn(n, cb, h, w, generator=g).relu().to(plugin.DEVICE, act)
    weight = (torch.randn(k, ca * cb, generator=g) * 1e-3).to(plugin.DEVICE)
    bias = torch.zeros(k).to(plugin.DEVICE)
    for t in (a, b, weight, bias):
        t.requires_grad_(requires_grad)
    return a, b, weight, bias


@pytest.mark.parametrize(
    "provider", plugin.provider_params("eager", "compile", "reference", *FUSED, device=plugin.DEVICE)
)
@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("op", ["pool", "classifier"])
@pytest.mark.parametrize(
    "shape_name",
    [pytest.param(n, marks=[] if i == 0 else [pytest.mark.full_only]) for i, n in enumerate(SHAPES)],
)
@pytest.mark.parametrize("dtype", plugin.dtype_params())
def test_bilinear(benchmark, shape_name, op, mode, provider, dtype):
    shape = SHAPES[shape_name]
    n, ca, cb, h, w, k = shape
    full = mode == "full"
    a, b, weight, bias = _inputs(shape, full, dtype)
    fn = _fn(op, provider)
    args = (a, b) if op == "pool" else (a, b, weight, bias)
    out_numel = n * ca * cb if op == "pool" else n * k
    grad_out = torch.randn(n, out_numel // n, device=plugin.DEVICE)

    def forward():
        with plugin.autocast(dtype, plugin.DEVICE):
            return fn(*args)

    if full:
        grad_as: dict = {}  # grad_out in the output's dtype (under autocast, eager's and fused's may differ)

        def run():
            out = forward()
            go = grad_as.get(out.dtype)
            if go is None:
                go = grad_as[out.dtype] = grad_out.to(out.dtype)
            grads = torch.autograd.grad(out, args, go)
            plugin.sync(plugin.DEVICE)
            return grads
    else:
        def run():
            with torch.no_grad():
                out = forward()
            plugin.sync(plugin.DEVICE)
            return out

    gemm = 2 * n * ca * cb * h * w
    flops = gemm + (2 * n * k * ca * cb if op == "classifier" else 0)
    elem = a.element_size()
    moved = ((a.numel() + b.numel()) * elem + (out_numel * elem)
             + (weight.numel() * elem if op == "classifier" else 0))
    extra = dict(provider=provider, op=op, mode=mode, shape=list(shape), dtype=dtype,
                 flops=3 * flops if full else flops, bytes=2 * moved if full else moved)
    if full:
        if provider == "compile" or plugin.DEVICE == "cuda":
            extra["warmup_s"] = plugin.first_call(run)  # compile / JIT outside the measurement
        extra["saved_bytes"] = plugin.saved_bytes(forward)
    rounds = 3 if shape_name in BIG else None
    plugin.bench(benchmark, run, group=plugin.group_name(f"bilinear-{mode}-{op}_{shape_name}", dtype),
                 device=plugin.DEVICE, rounds=rounds, **extra)
