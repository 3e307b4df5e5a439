"""torch.autocast: every fused op follows one rule (fer_kernels.ops._common), on every backend.

CPU autocast (bfloat16): the op computes in float32 (the C++ kernels' dtype), so it returns exactly what the
same backend returns for the float32-cast inputs outside autocast, and gradients reach the low-precision
activations and the float32 parameters. CUDA autocast (float16 / bfloat16, skipped without a GPU): the GEMM
operands run in the autocast dtype, the BatchNorm parameters stay float32, and the error against float64 is at
most twice the plain PyTorch composition's own under the same autocast.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fer_kernels as fk
from fer_kernels.ops._common import autocast_dtype
from tests.harness import assert_close, backend_params, requires_gpu

CPU_BACKENDS = backend_params("reference", "cpp", "triton")


def _cases():
    """name -> (make inputs (low-precision activations, float32 params), call(inputs, backend))."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    block = fk.nn.DenseBlock(2, 5, growth_rate=3, bn_size=2)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.2, generator=g)
    trans_w = rnd(4, 6, 1, 1, scale=0.3)

    holder = [block]  # the test swaps in a twin for the second run (same state, its own autograd graph)

    def dense(inp, backend):
        (x,) = inp
        return holder[0](x, backend=backend)

    def fusion(inp, backend):
        x1, x2, w, b = inp
        return fk.fusion_conv([x1, x2], w, b, 2, backend=backend)

    def transition(inp, backend):
        x, gamma, beta, w = inp
        return fk.transition(x, gamma, beta, torch.zeros_like(gamma), torch.ones_like(gamma), w, None,
                             True, 0.1, 1e-5, 2, backend=backend)

    def pool(inp, backend):
        a, b = inp
        return fk.bilinear_pool(a, b, backend=backend)

    def classifier(inp, backend):
        a, b, w, bias = inp
        return fk.bilinear_classifier(a, b, w, bias, backend=backend)

    return {
        "dense_block": ([rnd(2, 5, 5, 7)], dense, holder),
        "fusion_conv": ([rnd(2, 3, 6, 5), rnd(2, 4, 6, 5), rnd(5, 7, 1, 1, scale=0.3), rnd(5)], fusion, None),
        "transition": ([rnd(3, 6, 5, 4), rnd(6).abs() + 0.5, rnd(6), trans_w], transition, None),
        "bilinear_pool": ([rnd(2, 5, 3, 3).relu(), rnd(2, 4, 3, 3).relu()], pool, None),
        "bilinear_classifier": ([rnd(2, 5, 3, 3).relu(), rnd(2, 4, 3, 3).relu(), rnd(3, 20, scale=0.2), rnd(3)],
                                classifier, None),
    }


ACTIVATIONS = {"dense_block": 1, "fusion_conv": 2, "transition": 1, "bilinear_pool": 2, "bilinear_classifier": 2}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", sorted(ACTIVATIONS))
def test_cpu_autocast_runs_in_float32(case, backend):
    inputs, call, module = _cases()[case]
    n_act = ACTIVATIONS[case]
    # Under CPU autocast a conv before the op hands it bfloat16 activations; parameters stay float32.
    low = [t.bfloat16() if i < n_act else t for i, t in enumerate(inputs)]
    low = [t.detach().requires_grad_() for t in low]
    plain = [t.detach().float().requires_grad_() for t in low]
    twin = copy.deepcopy(module[0]) if module is not None else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call(low, backend)
    assert out.dtype == torch.float32, f"{case}: autocast output dtype {out.dtype}, expected float32"
    if module is not None:  # the module's state before the first run (which updated its running statistics)
        module[0] = twin
    expected = call(plain, backend)
    assert_close(out, expected, f"{case} {backend} output", rtol=0, atol=0)
    gout = torch.randn_like(out)
    grads = torch.autograd.grad(out, low, gout)
    expected_grads = torch.autograd.grad(expected, plain, gout)
    for i, (gr, ge, t) in enumerate(zip(grads, expected_grads, low, strict=True)):
        assert gr.dtype == t.dtype, f"{case}: grad of input {i} has dtype {gr.dtype}, input {t.dtype}"
        assert_close(gr, ge.to(gr.dtype), f"{case} {backend} grad[{i}]", rtol=0, atol=0)


@pytest.mark.parametrize("backend", backend_params("reference", "cpp"))
def test_cpu_autocast_modules_keep_running_statistics_in_float32(backend):
    """A model under CPU autocast: the fused dense block and transition update their float32 running buffers
    exactly as the float32 run does, and count the batch once."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), fk.nn.DenseBlock(2, 4, growth_rate=3, bn_size=2),
                              fk.nn.Transition(10, 5))
    twin = copy.deepcopy(net)
    x = torch.randn(2, 1, 8, 8)
    with fk.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = twin[0](x)  # the plain conv's bfloat16 output, as the fused layers received it above
    assert h.dtype == torch.bfloat16
    with fk.use_backend(backend):
        expected = twin[2](twin[1](h.float()))
    assert_close(out, expected, "output", rtol=0, atol=0)
    for (name, a), (_, e) in zip(net.named_buffers(), twin.named_buffers(), strict=True):
        assert a.dtype == e.dtype and torch.equal(a, e), f"{name}: {a} != {e}"
    assert int(net[2].norm.num_batches_tracked) == 1


def test_rejected_input_changes_no_buffer():
    block = fk.nn.DenseBlock(2, 4, growth_rate=3, bn_size=2)
    trans = fk.nn.Transition(4, 2)
    before = copy.deepcopy(block.state_dict()), copy.deepcopy(trans.state_dict())
    with pytest.raises(ValueError, match="x:"):
        block(torch.randn(2, 5, 4, 4))  # wrong channel count
    with pytest.raises(TypeError, match="x:"):
        block(torch.randn(2, 4, 4, 4, dtype=torch.float16))  # no float16 kernels on CPU
    with pytest.raises(ValueError, match="x:"):
        trans(torch.randn(2, 3, 4, 4))
    for sd, saved in zip((block.state_dict(), trans.state_dict()), before, strict=True):
        for k, v in sd.items():
            assert torch.equal(v, saved[k]), k


def test_autocast_rule_is_off_outside_autocast_and_for_float64():
    x = torch.randn(2, 3)
    assert autocast_dtype(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype(x) == torch.float32
        assert autocast_dtype(x.bfloat16()) == torch.float32
        assert autocast_dtype(x.double()) is None
        assert autocast_dtype(None) is None


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backend_params("reference", "triton", device="cuda"))
@pytest.mark.parametrize("case", sorted(ACTIVATIONS))
def test_cuda_autocast_runs_in_autocast_dtype(case, backend, dtype):
    inputs, call, module = _cases()[case]
    if module is not None:
        module[0].cuda()
        start = copy.deepcopy(module[0])
    fp32 = [t.cuda().requires_grad_() for t in inputs]
    with torch.autocast("cuda", dtype=dtype):
        out = call(fp32, backend)
    assert out.dtype == dtype, f"{case}: autocast output dtype {out.dtype}, expected {dtype}"
    if module is not None:
        module[0] = copy.deepcopy(start).double()
    exact = call([t.double() for t in fp32], "reference").detach()
    if module is not None:
        module[0] = copy.deepcopy(start)
    with torch.autocast("cuda", dtype=dtype):
        ref = call(fp32, "reference")
    err = (out.double() - exact).abs().max().item()
    ref_err = (ref.double() - exact).abs().max().item()
    print(f"{case} {backend} {dtype}: error {err:.3g}, plain autocast error {ref_err:.3g}")
    assert err <= 2 * ref_err + 1e-6
    out.float().sum().backward()  # gradients flow back to the float32 parameters through the casts
