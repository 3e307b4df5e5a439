"""fusion_conv benchmarks: concat + 1x1 conv + AvgPool (IDEnNet spatial fusion), DenseNet-BC-40 transitions.

Shapes (batch 64; float32, and bfloat16 under autocast on GPU, see fer_kernels/benchmarks/plugin.py):
- ``fusion``: two (64, 48, 24, 24) inputs -> 48 channels, pool 2 (issue 5).
- ``transition1..3``: BN-ReLU-Conv1x1-AvgPool2 on DenseNet-BC-40 (growth 12, 6 bottleneck layers per block,
  stem 2k = 24 channels, compression 0.5) block outputs: 24 + 6*12 = 96 ch at 48x48 -> 48; 48 + 72 = 120 ch at
  24x24 -> 60; 60 + 72 = 132 ch at 12x12 -> 66. A 3-block DenseNet-BC has transitions after blocks 1 and 2;
  the third shape is the same pattern on block 3's output (the conv + pool that follows a third block).

Providers: ``eager`` (torch.cat + nn.Conv2d + nn.AvgPool2d / nn.BatchNorm2d-ReLU-Conv-Pool), ``compile``
(torch.compile of that eager code), ``reference`` (fer_kernels' reference backend), ``cpp``, ``triton`` and
``cuda`` (GPU only). Modes: ``fwd`` (forward, no grad) and ``full`` (forward with grad + backward).
``extra_info`` records saved-for-backward bytes, FLOPs, ``bytes`` (the least any provider must move) and, on
GPU, the peak memory.

Run:  python -m pytest -p fer_kernels.benchmarks.plugin fer_kernels/benchmarks/bench_fusion_conv.py -q \
      --benchmark-json=fusion_conv.json
Ratios: python -m fer_kernels.benchmarks.bench_fusion_conv fusion_conv.json
"""

from __future__ import annotations

import functools
import sys

import pytest
import torch
from torch import nn

import fer_kernels as fk
from fer_kernels.benchmarks import plugin

N = plugin.batch(64)
# name -> (kind, channels per input, H, W, C_out)
SHAPES = {
    "fusion-2x48x24x24-48": ("fusion", (48, 48), 24, 24, 48),
    "transition1-96x48x48-48": ("transition", (96,), 48, 48, 48),
    "transition2-120x24x24-60": ("transition", (120,), 24, 24, 60),
    "transition3-132x12x12-66": ("transition", (132,), 12, 12, 66),
}
POOL = 2
PROVIDERS = ("eager", "compile", "reference", "cpp", "triton", "cuda")
# --gpu-check: IDEnNet's spatial fusion and DenseNet-BC-40's first transition, training (forward + backward)
GPU_CHECK = {"test_fusion_conv": {
    "shape": ["fusion-2x48x24x24-48", "transition1-96x48x48-48"], "mode": ["full"],
    "provider": ["eager", "compile", "triton", "cuda", "cpp"]}}


class _EagerFusion(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1)
        self.pool = nn.AvgPool2d(POOL)

    def forward(self, *xs):
        return self.pool(self.conv(torch.cat(xs, 1)))


class _EagerTransition(nn.Sequential):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(POOL)


def _setup(shape_name: str, provider: str, dtype: str = "float32"):
    """(module or callable running one forward, its inputs, its parameters). bfloat16: bfloat16 inputs,
    float32 parameters (the caller runs it under autocast)."""
    kind, chans, h, w, c_out = SHAPES[shape_name]
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(N, c, h, w, generator=g).to(plugin.DEVICE) for c in chans]
    if kind == "fusion":
        eager = _EagerFusion(sum(chans), c_out).to(plugin.DEVICE)
        fused = fk.nn.FusionConv(chans, c_out, POOL).to(plugin.DEVICE)
    else:
        eager = _EagerTransition(chans[0], c_out).to(plugin.DEVICE)
        fused = fk.nn.Transition(chans[0], c_out, POOL).to(plugin.DEVICE)
        xs = [x + 0.5 for x in xs]
    xs = [x.to(plugin.activation_dtype(dtype)) for x in xs]
    fused.load_state_dict(eager.state_dict())
    if provider == "eager":
        fn = eager
    elif provider == "compile":
        fn = torch.compile(eager)
    else:
        fn = functools.partial(fused, backend=provider)
    params = list(eager.parameters()) if provider in ("eager", "compile") else list(fused.parameters())
    return fn, xs, params


def _flops_and_bytes(shape_name: str, provider: str, dtype: str = "float32") -> tuple[int, int]:
    kind, chans, h, w, c_out = SHAPES[shape_name]
    c = sum(chans)
    pixels = N * h * w
    fused = provider in ("cpp", "triton", "cuda")
    flops = 2 * c * c_out * (pixels // (POOL * POOL) if fused else pixels)
    elem = plugin.activation_dtype(dtype).itemsize
    moved = elem * (pixels * c + N * c_out * (h // POOL) * (w // POOL))  # read the inputs once, write y
    return flops, moved


@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize(
    "shape", [pytest.param(n, marks=[] if i == 0 else [pytest.mark.full_only]) for i, n in enumerate(SHAPES)]
)
@pytest.mark.parametrize("provider", plugin.provider_params(*PROVIDERS, device=plugin.DEVICE))
@pytest.mark.parametrize("dtype", plugin.dtype_params())
def test_fusion_conv(benchmark, provider, shape, mode, dtype):
    kind = SHAPES[shape][0]
    if provider == "cuda" and kind == "transition":
        pytest.skip("the transition has no CUDA C++ kernel (its GPU path is Triton)")
    fn, xs, params = _setup(shape, provider, dtype)
    flops, moved = _flops_and_bytes(shape, provider, dtype)

    if mode == "fwd":

        def run():
            with torch.no_grad(), plugin.autocast(dtype, plugin.DEVICE):
                fn(*xs)
            plugin.sync(plugin.DEVICE)
    else:
        for x in xs:
            x.requires_grad_(True)
        grad_out = None

        def run():
            nonlocal grad_out
            for t in (*xs, *params):
                t.grad = None
            with plugin.autocast(dtype, plugin.DEVICE):
                y = fn(*xs)
            if grad_out is None:
                grad_out = torch.randn_like(y)
            y.backward(grad_out)
            plugin.sync(plugin.DEVICE)

        flops *= 3  # backward: grad input and grad weight GEMMs

    extra = dict(
        dtype=dtype, shape=shape, batch=N, pool=POOL, flops=flops, bytes=moved, provider=provider
    )
    if mode == "full":
        extra["warmup_s"] = plugin.first_call(run)  # compile outside the memory measurement
        for x in xs:
            x.requires_grad_(True)

        def forward_with_grad():
            with plugin.autocast(dtype, plugin.DEVICE):
                return fn(*xs)

        extra["saved_bytes"] = plugin.saved_bytes(forward_with_grad)
    plugin.bench(benchmark, run, group=plugin.group_name(f"fusion_conv-{mode}-{shape}", dtype),
                 device=plugin.DEVICE, rounds=10, **extra)


def summarize(path: str) -> str:
    """Ratios from a --benchmark-json file: eager / provider time and provider / eager saved bytes."""
    import json

    with open(path) as f:
        data = json.load(f)
    groups: dict[str, dict[str, dict]] = {}
    for b in data["benchmarks"]:
        provider = b["params"]["provider"]
        groups.setdefault(b["group"], {})[provider] = b
    lines = [
        "| group | provider | median ms | eager / provider | compile / provider | saved / eager's |",
        "|---|---|---|---|---|---|",
    ]
    for group in sorted(groups):
        rows = groups[group]
        eager, comp = rows.get("eager"), rows.get("compile")
        for provider in PROVIDERS:
            if provider not in rows:
                continue
            b = rows[provider]
            med = b["stats"]["median"]
            r_e = f"{eager['stats']['median'] / med:.2f}x" if eager else "-"
            r_c = f"{comp['stats']['median'] / med:.2f}x" if comp else "-"
            sb, esb = b["extra_info"].get("saved_bytes"), eager and eager["extra_info"].get("saved_bytes")
            r_s = f"{sb / esb:.2f}" if sb is not None and esb else "-"
            lines.append(f"| {group} | {provider} | {med * 1e3:.2f} | {r_e} | {r_c} | {r_s} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m fer_kernels.benchmarks.bench_fusion_conv RESULTS.json")
    print(summarize(sys.argv[1]))
