"""Model throughput: a full training step (forward, loss, backward, SGD step) and inference images/s.

Providers: ``eager`` (the model's plain-PyTorch twin, ``model.to_reference()``, same weights), ``compile``
(``torch.compile`` of that twin), ``cpp`` / ``triton`` / ``cuda`` (the model on fer_kernels with that
backend).
Groups ``models-<mode>-<shape>``; extra_info records images/s (``items_per_call``), saved-for-backward
bytes of one training forward and, on GPU, the peak memory of one step. The ``eifn_head`` groups time the
bilinear head alone on EIFN's shapes, so the report can give the head's share of a training step before
(eager) and after (fused). dtypes: float32, and bfloat16 on GPU: forward and loss under
``torch.autocast(device, torch.bfloat16)``, backward and SGD step outside it, float32 weights (mixed-precision
training as usual; see fer_kernels/benchmarks/plugin.py). Groups of bfloat16 end in ``-bf16``.
"""

from __future__ import annotations

import time

import pytest
import torch

from fer_kernels.benchmarks import plugin

FUSED = ("cpp",) if plugin.DEVICE == "cpu" else ("triton", "cuda")

TRAIN_CASES = {  # name -> (model, batch, input size, expressions, identities)
    "idennet_if_40-n64": ("idennet_if_40", plugin.batch(64), (1, 48, 48), 6, 80),
    "eifn-n16": ("eifn", plugin.batch(16), (1, 64, 64), 7, 118),
}
# Models whose every fused layer has a CUDA C++ kernel (IDEnNet's dense blocks and transitions: Triton only).
HAS_CUDA_KERNELS = {"eifn"}
NO_CUDA_KERNELS = "its dense blocks and transitions have no CUDA C++ kernel (their GPU path is Triton)"
# --gpu-check: both training steps and EIFN's head alone (no inference: the training step is what the fused
# backward passes are for). torch.compile of a whole model is the slowest thing the check does
# (IDEnNet-IF-40's training graph: tens of seconds per dtype), so the model steps are compiled in bfloat16
# only, the dtype a model trains in on such a GPU; float32 steps compare the fused model with eager.
GPU_CHECK = {"test_train_step": [{"provider": ["eager", "triton", "cuda", "cpp"]}, {"dtype": ["bfloat16"]}],
             "test_eifn_head": {}}


def _build(provider: str, name: str, n_exp: int, n_id: int):
    import fer_models

    torch.manual_seed(0)
    model = fer_models.create_model(name, num_expressions=n_exp, num_identities=n_id).to(plugin.DEVICE)
    if provider in ("eager", "compile"):
        plain = model.to_reference().to(plugin.DEVICE)
        fwd = torch.compile(plain) if provider == "compile" else plain
        return plain, fwd, None
    return model, model, provider


def _batch(n: int, size, n_exp: int, n_id: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *size, generator=g).to(plugin.DEVICE)
    ye = torch.randint(0, n_exp, (n,), generator=g).to(plugin.DEVICE)
    yi = torch.randint(0, n_id, (n,), generator=g).to(plugin.DEVICE)
    return x, ye, yi


# One training state per provider of the case being timed, kept across interleaved repeats: a repeat then
# costs its timed steps only (no rebuild, no second compile, no warm-up), so ``--bench-repeat 150
# --bench-rounds 1`` pairs single steps of the providers a few seconds apart. Every provider takes the same
# number of SGD steps on its own copy of the same initial weights. Cleared when the next case starts.
_TRAIN_STATE: dict[tuple[str, str, str], dict] = {}


def _train_state(provider: str, case: str, dtype: str = "float32") -> tuple[dict, bool]:
    """(state, warmed): the cached state of (provider, case, dtype), or a fresh one (warmed False)."""
    import fer_kernels

    if any((c, d) != (case, dtype) for _, c, d in _TRAIN_STATE):
        _TRAIN_STATE.clear()
    if (provider, case, dtype) in _TRAIN_STATE:
        return _TRAIN_STATE[(provider, case, dtype)], True
    name, n, size, n_exp, n_id = TRAIN_CASES[case]
    model, fwd, backend = _build(provider, name, n_exp, n_id)
    model.train()
    x, ye, yi = _batch(n, size, n_exp, n_id)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def loss_of():
        with plugin.autocast(dtype, plugin.DEVICE):
            return model.loss(fwd(x), ye, yi)["total"]

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of().backward()
        opt.step()
        plugin.sync(plugin.DEVICE)

    state = {"backend": backend or "auto", "step": step}
    with fer_kernels.use_backend(state["backend"]):
        state["saved"] = plugin.saved_bytes(loss_of)
    _TRAIN_STATE[(provider, case, dtype)] = state
    return state, False


# --quick skips EIFN's step: one repeat cannot resolve its 2% difference from eager (step-to-step noise here
# is 10-14%; benchmarks/RESULTS.md, session 6), and it cost about 45 s. The head alone (test_eifn_head) stays.
@pytest.mark.parametrize("provider", plugin.provider_params("eager", "compile", *FUSED, device=plugin.DEVICE))
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.full_only) if c.startswith("eifn") else c for c in TRAIN_CASES]
)
@pytest.mark.parametrize("dtype", plugin.dtype_params())
def test_train_step(benchmark, provider, case, dtype):
    import fer_kernels

    name, n, size, _, _ = TRAIN_CASES[case]
    if provider == "cuda" and name not in HAS_CUDA_KERNELS:
        pytest.skip(f"{name}: {NO_CUDA_KERNELS}")
    t0 = time.perf_counter()
    state, warmed = _train_state(provider, case, dtype)
    extra = {"peak_bytes": state["peak"]} if "peak" in state else {}
    if not warmed:
        extra["warmup_s"] = time.perf_counter() - t0  # build, and the first forward (compile) for saved_bytes
    with fer_kernels.use_backend(state["backend"]):
        plugin.bench(benchmark, state["step"], group=plugin.group_name(f"models-full-{case}", dtype),
                     device=plugin.DEVICE, rounds=5, warmed=warmed, provider=provider,
                     shape=f"{name} N={n} {size}", dtype=dtype, items_per_call=n, saved_bytes=state["saved"],
                     **extra)
    if benchmark.extra_info.get("peak_bytes") is not None:
        state["peak"] = benchmark.extra_info["peak_bytes"]


@pytest.mark.parametrize("provider", plugin.provider_params("eager", "compile", *FUSED, device=plugin.DEVICE))
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", ["idennet_if_40", pytest.param("eifn", marks=pytest.mark.full_only)])
@pytest.mark.parametrize("dtype", plugin.dtype_params())
def test_inference(benchmark, provider, batch, name, dtype):
    import fer_kernels

    if provider == "cuda" and name not in HAS_CUDA_KERNELS:
        pytest.skip(f"{name}: {NO_CUDA_KERNELS}")
    _, _, size, n_exp, n_id = next(c for c in TRAIN_CASES.values() if c[0] == name)
    model, fwd, backend = _build(provider, name, n_exp, n_id)
    model.eval()
    x, _, _ = _batch(batch, size, n_exp, n_id)

    def run():
        with torch.no_grad(), plugin.autocast(dtype, plugin.DEVICE):
            fwd(x)
        plugin.sync(plugin.DEVICE)

    with fer_kernels.use_backend(backend or "auto"):
        plugin.bench(benchmark, run, group=plugin.group_name(f"models-infer-{name}-n{batch}", dtype),
                     device=plugin.DEVICE, provider=provider, shape=f"{name} N={batch} {size}", dtype=dtype,
                     items_per_call=batch)


@pytest.mark.parametrize("provider", plugin.provider_params("eager", *FUSED, device=plugin.DEVICE))
@pytest.mark.parametrize("dtype", plugin.dtype_params())
def test_eifn_head(benchmark, provider, dtype):
    """EIFN's bilinear head alone (fwd+bwd), on the feature maps EIFN gives it at 64x64 and N=16."""
    import fer_kernels
    import fer_models

    model = fer_models.create_model("eifn", num_expressions=7, num_identities=118).to(plugin.DEVICE)
    n = plugin.batch(16)
    x, _, _ = _batch(n, (1, 64, 64), 7, 118)
    with torch.no_grad():
        xi = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        # as the bf16 VGG stacks would give them
        a = model.identity_extractor(xi).to(plugin.activation_dtype(dtype))
        b = model.expression_extractor(xi).to(plugin.activation_dtype(dtype))
    a.requires_grad_(True)
    b.requires_grad_(True)
    head = model.to_reference().classifier if provider == "eager" else model.classifier

    def run():
        with plugin.autocast(dtype, plugin.DEVICE):
            out = head(a, b)
        out.sum().backward()
        plugin.sync(plugin.DEVICE)

    with fer_kernels.use_backend(provider if provider != "eager" else "auto"):
        plugin.bench(benchmark, run, group=plugin.group_name("models-full-eifn_head-n16", dtype),
                     device=plugin.DEVICE, provider=provider, shape=f"a {tuple(a.shape)} b {tuple(b.shape)}",
                     dtype=dtype, items_per_call=n)
