"""dense_block benchmarks: DenseNet-BC-40 blocks 1 and 3, eval forward and train forward+backward.

Providers: ``eager`` (plain torchvision-style block), ``eager-checkpointed`` (torch.utils.checkpoint per
layer, torchvision's ``memory_efficient``), ``compile`` (torch.compile of the eager block), ``reference``,
``cpp``, ``triton`` (GPU only). dtypes: float32, and bfloat16 under autocast (GPU; see
fer_kernels/benchmarks/plugin.py).
``extra_info`` records the shape, FLOPs, the bytes saved for backward and, on GPU, the peak memory.

    pytest -p fer_kernels.benchmarks.plugin fer_kernels/benchmarks/bench_dense_block.py \
        --benchmark-json=out.json                                     # pytest-benchmark, per provider
    python -m fer_kernels.benchmarks.bench_dense_block [--rounds 7]    # interleaved medians and ratios
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytest
import torch
import torch.utils.checkpoint as cp
from torch import nn

import fer_kernels as fk
from fer_kernels.benchmarks import plugin

# name -> (N, C0, H, W, layers, growth, bn_size)
SHAPES = {
    "block1": (plugin.batch(64), 24, 48, 48, 6, 12, 4),
    "block3": (plugin.batch(64), 60, 12, 12, 6, 12, 4),
}
PROVIDERS = ("eager", "eager-checkpointed", "compile", "reference", "cpp", "triton")
# --gpu-check: block 1 (DenseNet-BC-40 at 48x48), eval forward and train forward+backward, fused vs eager and
# torch.compile (cpp: the fused provider of a CPU dry run)
GPU_CHECK = {"test_dense_block": {"shape_name": ["block1"],
                                  "provider": ["eager", "compile", "triton", "cpp"]}}


class PlainDenseLayer(nn.Module):
    """torchvision ``_DenseLayer`` (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3), optionally checkpointed."""

    def __init__(self, c, k, bn, checkpointed=False):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c, bn * k, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn * k), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn * k, k, 3, padding=1, bias=False)
        self.checkpointed = checkpointed

    def bottleneck(self, *features):
        return self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))

    def forward(self, features):
        if self.checkpointed and torch.is_grad_enabled():
            h = cp.checkpoint(self.bottleneck, *features, use_reentrant=False)
        else:
            h = self.bottleneck(*features)
        return self.conv2(self.relu2(self.norm2(h)))


class PlainDenseBlock(nn.ModuleDict):
    def __init__(self, layers, c0, k, bn, checkpointed=False):
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", PlainDenseLayer(c0 + i * k, k, bn, checkpointed))

    def forward(self, x):
        feats = [x]
        for layer in self.values():
            feats.append(layer(feats))
        return torch.cat(feats, 1)


def flops(shape, mode):
    """Multiply-adds x 2 of the convolutions (backward: data and weight gradients, 2x the forward)."""
    n, c0, h, w, layers, k, bn = shape
    f = sum(2 * n * h * w * ((c0 + i * k) * bn * k + bn * k * 9 * k) for i in range(layers))
    return f if mode == "fwd" else 3 * f


def make_case(provider, shape_name, mode, device="cpu", dtype="float32"):
    """(callable that runs one timed step, callable that runs one forward with grad for saved_bytes).

    ``dtype`` bfloat16: a bfloat16 block input and float32 parameters, every call under autocast."""
    n, c0, h, w, layers, k, bn = SHAPES[shape_name]
    torch.manual_seed(0)
    plain = PlainDenseBlock(layers, c0, k, bn, checkpointed=provider == "eager-checkpointed").to(device)
    x = torch.randn(n, c0, h, w, device=device).to(plugin.activation_dtype(dtype))
    training = mode == "full"
    plain.train(training)
    if provider in ("eager", "eager-checkpointed"):
        model = plain
    elif provider == "compile":
        model = torch.compile(plain)
    else:
        fused = fk.nn.DenseBlock(layers, c0, k, bn).to(device).train(training)
        fused.load_state_dict(plain.state_dict())  # same keys as torchvision's _DenseBlock
        model = lambda t, fused=fused: fused(t, backend=provider)  # noqa: E731
    xg = x.clone().requires_grad_(training)

    def step():
        if training:
            with plugin.autocast(dtype, device):
                y = model(xg)
            y.backward(torch.ones_like(y))
            xg.grad = None
        else:
            with torch.no_grad(), plugin.autocast(dtype, device):
                model(x)
        plugin.sync(device)

    def forward_with_grad():
        with plugin.autocast(dtype, device):
            return model(xg)

    return step, forward_with_grad


@pytest.mark.parametrize("provider", plugin.provider_params(*PROVIDERS, device=plugin.DEVICE))
@pytest.mark.parametrize("shape_name",
                         [pytest.param("block1"), pytest.param("block3", marks=pytest.mark.full_only)])
@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("dtype", plugin.dtype_params())
def test_dense_block(benchmark, provider, shape_name, mode, dtype):
    device = plugin.DEVICE
    step, fwd = make_case(provider, shape_name, mode, device, dtype)
    extra = {"dtype": dtype, "shape": SHAPES[shape_name], "provider": provider, "mode": mode,
             "flops": flops(SHAPES[shape_name], mode)}
    if mode == "full":
        extra["warmup_s"] = plugin.first_call(step)  # warm-up / compile before measuring memory
        extra["saved_bytes"] = plugin.saved_bytes(fwd)
    plugin.bench(benchmark, step, group=plugin.group_name(f"dense_block-{mode}-{shape_name}", dtype),
                 device=device, rounds=5, **extra)


def main():
    ap = argparse.ArgumentParser(description="interleaved dense_block timings (median of rounds)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--modes", nargs="*", default=["fwd", "full"])
    ap.add_argument("--providers", nargs="*",
                    default=[p for p in PROVIDERS if p != "triton" or plugin.HAS_CUDA])
    args = ap.parse_args()
    device = plugin.DEVICE
    print(f"device {device}, threads {torch.get_num_threads()}, rounds {args.rounds}")
    for shape_name in args.shapes:
        for mode in args.modes:
            cases, saved = {}, {}
            for p in args.providers:
                step, fwd = make_case(p, shape_name, mode, device)
                step()  # warm-up and compile
                cases[p] = step
                if mode == "full":
                    saved[p] = plugin.saved_bytes(fwd)
            times = {p: [] for p in cases}
            for _ in range(args.rounds):  # interleaved: one round of every provider at a time
                for p, step in cases.items():
                    t0 = time.perf_counter()
                    step()
                    times[p].append(time.perf_counter() - t0)
            med = {p: statistics.median(t) for p, t in times.items()}
            f = flops(SHAPES[shape_name], mode)
            print(f"\ndense_block-{mode}-{shape_name} {SHAPES[shape_name]}")
            for p in cases:
                line = f"  {p:20s} {med[p] * 1e3:9.1f} ms  {f / med[p] / 1e9:7.1f} GFLOP/s"
                for base in ("eager", "compile"):
                    if base in med and p != base:
                        line += f"  {med[base] / med[p]:5.2f}x vs {base}"
                if mode == "full":
                    line += f"  saved {saved[p] / 2**20:8.1f} MiB"
                    if "eager" in saved:
                        line += f" ({saved[p] / saved['eager']:.2f}x eager)"
                print(line, flush=True)


if __name__ == "__main__":
    main()
