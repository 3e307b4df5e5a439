"""fusion_conv: reference against torch.nn, hand-written backward against autograd, input errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fer_kernels as fk
from fer_kernels.reference import fusion_conv_backward_reference, fusion_conv_reference
from tests.harness import assert_close, make_input, run_gradcheck
from tests.torchvision_style import _Transition

SHAPES = [  # (N, channels per input, H, W, C_out, pool)
    (1, (1,), 1, 1, 1, 1),
    (2, (3, 7), 5, 7, 13, 2),
    (2, (13, 1, 3), 7, 6, 3, 3),
    (1, (2, 3, 1, 4), 9, 9, 5, 2),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reference_matches_torch_nn(shape, dtype):
    n, chans, h, w, c_out, pool = shape
    xs = [make_input(n, c, h, w, dtype=dtype) for c in chans]
    conv = nn.Conv2d(sum(chans), c_out, 1).to(dtype)
    expected = nn.AvgPool2d(pool)(conv(torch.cat(xs, 1)))
    assert_close(fusion_conv_reference(xs, conv.weight, conv.bias, pool), expected)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("has_bias", [True, False])
def test_backward_formula_matches_autograd(shape, has_bias):
    n, chans, h, w, c_out, pool = shape
    xs = [make_input(n, c, h, w, dtype=torch.float64, requires_grad=True) for c in chans]
    weight = make_input(c_out, sum(chans), 1, 1, dtype=torch.float64, requires_grad=True)
    bias = make_input(c_out, dtype=torch.float64, requires_grad=True) if has_bias else None
    y = fusion_conv_reference(xs, weight, bias, pool)
    gy = torch.randn_like(y)
    params = [*xs, weight] + ([bias] if has_bias else [])
    auto = torch.autograd.grad(y, params, gy)
    gxs, gw, gb = fusion_conv_backward_reference(gy, [x.detach() for x in xs], weight.detach(), pool, has_bias)
    assert_close(gxs, list(auto[: len(xs)]), "grad_xs")
    assert_close(gw, auto[len(xs)], "grad_weight")
    if has_bias:
        assert_close(gb, auto[-1], "grad_bias")
    else:
        assert gb is None


def test_reference_gradcheck():
    xs = [make_input(2, c, 5, 5, dtype=torch.float64, requires_grad=True) for c in (3, 2)]
    weight = make_input(4, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    bias = make_input(4, dtype=torch.float64, requires_grad=True)
    run_gradcheck(lambda a, b, w, c: fusion_conv_reference([a, b], w, c, 2), [*xs, weight, bias])


def test_module_state_dict_loads_from_plain_conv():
    plain = nn.Conv2d(10, 6, 1)
    m = fk.nn.FusionConv((4, 6), 6, pool=2)
    m.conv.load_state_dict(plain.state_dict())
    xs = [torch.randn(2, 4, 6, 6), torch.randn(2, 6, 6, 6)]
    assert_close(m(*xs), F.avg_pool2d(plain(torch.cat(xs, 1)), 2))
    assert "pool=2" in repr(m)


@pytest.mark.parametrize(
    "xs_shapes, wshape, match",
    [
        ([(2, 3, 4, 4), (1, 3, 4, 4)], (5, 6, 1, 1), r"xs\[1\]: batch and spatial sizes must match"),
        ([(2, 3, 4, 4), (2, 3, 4, 5)], (5, 6, 1, 1), r"xs\[1\]: batch and spatial sizes must match"),
        ([(2, 3, 4, 4), (2, 3, 4, 4)], (5, 7, 1, 1), r"weight: expected shape \(C_out, 6, 1, 1\) for inputs with 3 \+ 3"),
        ([(2, 3, 4)], (5, 3, 1, 1), r"xs\[0\]: expected a 4-d tensor"),
        ([(2, 3, 1, 1)], (5, 3, 1, 1), r"smaller than pool=2"),
    ],
)
def test_bad_input_gets_a_clear_error(xs_shapes, wshape, match):
    xs = [torch.randn(*s) for s in xs_shapes]
    with pytest.raises(ValueError, match=match):
        fk.fusion_conv(xs, torch.randn(*wshape), pool=2)


def test_mixed_dtype_rejected():
    with pytest.raises(TypeError, match=r"weight has dtype torch.float64 but xs\[0\] has dtype torch.float32"):
        fk.fusion_conv([torch.randn(1, 2, 4, 4)], torch.randn(3, 2, 1, 1, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------------------
# Fused backends (cpp, triton under TRITON_INTERPRET=1, cuda on GPU) against the reference, forward and backward.

import os  # noqa: E402

from fer_kernels import _extension  # noqa: E402
from fer_kernels.reference import transition_reference  # noqa: E402
from tests.harness import HAS_CUDA, backend_params, requires_gpu, run_opcheck, tol  # noqa: E402

# Parity targets of issue 5: 2e-5 relative in float32 (the table's), 1e-12 in float64 (tighter than the table).
PARITY = {torch.float32: tol(torch.float32), torch.float64: dict(rtol=1e-12, atol=1e-12)}

CASES = [  # (N, channels per input, H, W, C_out, pool, layout, bias)
    (1, (1,), 1, 1, 1, 1, "contiguous", True),
    (2, (3, 7), 5, 7, 13, 2, "contiguous", True),
    (2, (13, 1, 3), 7, 6, 3, 3, "noncontig", False),
    (1, (2, 3, 1, 4), 9, 9, 5, 2, "channels_last", True),
    (3, (5, 4), 8, 8, 6, 1, "noncontig", True),
    (2, (17, 19), 11, 13, 33, 2, "channels_last", False),
]
TRITON_CASES = CASES[1:4]  # the interpreter is slow: odd shapes, every layout, pool 2-3, 2-4 inputs


def _fusion_case(case, dtype, requires_grad=True):
    n, chans, h, w, c_out, pool, layout, has_bias = case
    xs = [make_input(n, c, h, w, dtype=dtype, layout=layout, requires_grad=requires_grad) for c in chans]
    weight = make_input(c_out, sum(chans), 1, 1, dtype=dtype, requires_grad=requires_grad, scale=0.3)
    bias = make_input(c_out, dtype=dtype, requires_grad=requires_grad) if has_bias else None
    return xs, weight, bias, pool


def _check_fusion_backend(backend, case, dtype, device="cpu"):
    xs, weight, bias, pool = _fusion_case(case, dtype)
    if device != "cpu":
        xs = [x.detach().to(device).requires_grad_() for x in xs]
        weight = weight.detach().to(device).requires_grad_()
        bias = bias.detach().to(device).requires_grad_() if bias is not None else None
    params = [*xs, weight] + ([bias] if bias is not None else [])
    y = fk.fusion_conv(xs, weight, bias, pool, backend=backend)
    expected = fusion_conv_reference(xs, weight, bias, pool)
    p = PARITY[dtype]
    assert_close(y, expected, "output", **p)
    gy = torch.randn_like(expected)
    got = torch.autograd.grad(y, params, gy)
    want = torch.autograd.grad(expected, params, gy)
    names = [f"grad_xs[{i}]" for i in range(len(xs))] + ["grad_weight"] + (["grad_bias"] if bias is not None else [])
    for g, e, name in zip(got, want, names, strict=False):
        assert_close(g, e, name, **p)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params("cpp"))
def test_cpp_matches_reference(backend, case, dtype):
    _check_fusion_backend(backend, case, dtype)


@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params("triton"))
def test_triton_matches_reference(backend, case, dtype):
    _check_fusion_backend(backend, case, dtype, "cuda" if HAS_CUDA else "cpu")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("backend", backend_params("cuda", device="cuda"))
def test_cuda_matches_reference(backend, case):
    _check_fusion_backend(backend, case, torch.float32, "cuda")


@pytest.mark.parametrize("backend", backend_params("cpp"))
def test_cpp_floor_semantics_and_no_pool(backend):
    """Rows/columns that AvgPool2d drops get a zero gradient; pool=1 is a plain 1x1 conv over the concat."""
    xs = [make_input(2, 3, 7, 5, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    weight = make_input(4, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    y = fk.fusion_conv(xs, weight, None, 3, backend=backend)
    assert y.shape == (2, 4, 2, 1)
    y.sum().backward()
    for x in xs:
        assert torch.all(x.grad[:, :, 6:, :] == 0) and torch.all(x.grad[:, :, :, 3:] == 0)
        assert torch.all(x.grad[:, :, :6, :3] != 0)
    y1 = fk.fusion_conv(xs, weight, None, 1, backend=backend)
    assert_close(y1, F.conv2d(torch.cat(xs, 1), weight), "pool=1", **PARITY[torch.float64])


@pytest.mark.parametrize("backend", backend_params("cpp"))
def test_cpp_only_weight_grad_when_inputs_frozen(backend):
    """IDEnNet fine-tuning freezes the feature extractors: the backward then skips grad_xs."""
    xs = [make_input(2, 3, 6, 6), make_input(2, 2, 6, 6)]
    weight = make_input(4, 5, 1, 1, requires_grad=True)
    bias = make_input(4, requires_grad=True)
    fk.fusion_conv(xs, weight, bias, 2, backend=backend).square().sum().backward()
    w2, b2 = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    fusion_conv_reference(xs, w2, b2, 2).square().sum().backward()
    assert_close(weight.grad, w2.grad, "grad_weight")
    assert_close(bias.grad, b2.grad, "grad_bias")


def test_auto_backend_picks_cpp_on_cpu():
    from fer_kernels.backends import resolve
    from fer_kernels.ops.fusion_conv import IMPLS, TRANSITION_IMPLS

    if not _extension.has_op("fusion_conv"):
        pytest.skip("fer_kernels._C not built")
    x = torch.zeros(1, 1, 2, 2)
    assert resolve("fusion_conv", IMPLS, [x], "auto") == "cpp"
    assert resolve("transition", TRANSITION_IMPLS, [x], "auto") == "cpp"


# ---- saved memory: the fused backward keeps the pooled input, not the concatenation and the conv output ----

def _saved_bytes(fn):
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # not t: a saved output would keep its own graph alive (see benchmarks/conftest.py)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("backend", backend_params("cpp"))
def test_cpp_saves_at_most_half_of_eager(backend):
    xs = [make_input(4, 12, 12, 12, requires_grad=True) for _ in range(2)]
    weight = make_input(12, 24, 1, 1, requires_grad=True)
    bias = make_input(12, requires_grad=True)
    eager = _saved_bytes(lambda: fusion_conv_reference(xs, weight, bias, 2))
    fused = _saved_bytes(lambda: fk.fusion_conv(xs, weight, bias, 2, backend=backend))
    pooled = 4 * 24 * 6 * 6 * 4
    assert fused == pooled + weight.numel() * 4, (fused, eager)
    assert fused <= 0.5 * eager, (fused, eager)


# ---- gradcheck (float64) and opcheck ----

# The Triton interpreter takes ~0.1 s per call, so Triton runs gradcheck's fast mode (random projections of the
# Jacobian, a few calls per input) on smaller inputs; cpp runs the full Jacobian.
GRADCHECK = {"cpp": dict(shape=(2, 5, 4)), "triton": dict(shape=(1, 4, 3), fast_mode=True)}


@pytest.mark.parametrize("backend", backend_params("cpp", "triton"))
def test_fused_gradcheck(backend):
    opts = dict(GRADCHECK[backend])
    n, h, w = opts.pop("shape")
    xs = [make_input(n, c, h, w, dtype=torch.float64, requires_grad=True) for c in (3, 2)]
    weight = make_input(4, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    bias = make_input(4, dtype=torch.float64, requires_grad=True)
    run_gradcheck(lambda a, b, w, c: fk.fusion_conv([a, b], w, c, 2, backend=backend), [*xs, weight, bias], **opts)


def _opcheck_samples():
    out = []
    for case in (CASES[2], CASES[3]):  # 3 inputs non-contiguous pool 3; 4 inputs channels_last
        xs, weight, bias, pool = _fusion_case(case, torch.float32)
        out.append(([xs, weight, bias, pool], case))
    return out


@pytest.mark.skipif(not _extension.has_op("fusion_conv"), reason="fer_kernels._C not built")
def test_opcheck_cpp_ops():
    for args, _case in _opcheck_samples():
        run_opcheck(torch.ops.fer_kernels.fusion_conv.default, args)
        xs, weight, bias, pool = args
        y, pooled = torch.ops.fer_kernels.fusion_conv(xs, weight, bias, pool)
        chans = [x.shape[1] for x in xs]
        h, w = xs[0].shape[2:]
        for gp, need in ((None, True), (torch.randn_like(pooled), True), (None, False)):
            run_opcheck(torch.ops.fer_kernels._fusion_conv_backward.default,
                        (torch.randn_like(y), gp, pooled.detach(), weight.detach(), chans, h, w, pool, need))
    x, nw, nb, cw = _transition_params(2, 5, 7, 6, 4, torch.float32, "noncontig")
    rm, rv = torch.randn(5), torch.rand(5) + 0.5
    for mean, var in ((None, None), (rm, rv)):
        run_opcheck(torch.ops.fer_kernels.transition.default, (x, nw, nb, mean, var, cw, None, 1e-5, 2))
        y, m, v = torch.ops.fer_kernels.transition(x, nw, nb, mean, var, cw, None, 1e-5, 2)
        run_opcheck(torch.ops.fer_kernels._transition_backward.default,
                    (torch.randn_like(y), x.detach(), nw.detach(), nb.detach(), m, v, cw.detach(), mean is None,
                     1e-5, 2))


@pytest.mark.parametrize("backend", backend_params("triton"))
def test_opcheck_triton_op(backend):
    xs, weight, bias, pool = _fusion_case(CASES[1], torch.float32)
    if HAS_CUDA:
        xs, weight, bias = [x.cuda() for x in xs], weight.cuda(), bias.cuda()
    from fer_kernels.ops.fusion_conv import triton_ops

    # The interpreter cannot run on fake tensors, so test_faketensor / aot_dispatch need a GPU.
    utils = ("test_schema", "test_autograd_registration") + (
        ("test_faketensor", "test_aot_dispatch_dynamic") if HAS_CUDA else ())
    run_opcheck(triton_ops()[0]._opoverload, ([x.detach().requires_grad_() for x in xs], weight, bias, pool),
                test_utils=utils)


@pytest.mark.skipif(not _extension.has_op("fusion_conv"), reason="fer_kernels._C not built")
def test_compiles_without_graph_breaks():
    xs = [make_input(2, 3, 6, 6, requires_grad=True), make_input(2, 4, 6, 6, requires_grad=True)]
    weight = make_input(5, 7, 1, 1, requires_grad=True)

    def f(a, b, w):
        return fk.fusion_conv([a, b], w, None, 2, backend="cpp").relu()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    y = compiled(*xs, weight)
    assert_close(y, f(*xs, weight), "compiled output")
    y.sum().backward()
    assert xs[0].grad is not None and weight.grad is not None


@pytest.mark.skipif(not _extension.has_op("fusion_conv"), reason="fer_kernels._C not built")
def test_cpp_op_direct_call_errors_name_the_input():
    with pytest.raises(RuntimeError, match=r"xs\[1\]: batch and spatial sizes must match xs\[0\] \(N=2, H=4, W=4\)"):
        torch.ops.fer_kernels.fusion_conv([torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5)],
                                          torch.randn(5, 6, 1, 1), None, 2)
    with pytest.raises(RuntimeError, match=r"weight: expected shape \(C_out, 6, 1, 1\)"):
        torch.ops.fer_kernels.fusion_conv([torch.randn(2, 3, 4, 4)] * 2, torch.randn(5, 7, 1, 1), None, 2)
    with pytest.raises(RuntimeError, match=r"norm_weight: expected shape \(3\) for x with 3 channels"):
        torch.ops.fer_kernels.transition(torch.randn(2, 3, 4, 4), torch.ones(4), torch.zeros(3), None, None,
                                         torch.randn(5, 3, 1, 1), None, 1e-5, 2)


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backend_params("triton", device="cuda"))
def test_triton_half_error_within_twice_reference(backend, dtype):
    """CONVENTIONS 8(d): error against float64 no more than twice the reference's own error in that dtype."""
    xs, weight, bias, pool = _fusion_case((4, (48, 48), 24, 24, 48, 2, "contiguous", True), torch.float64, False)
    xs, weight, bias = [x.cuda() for x in xs], weight.cuda(), bias.cuda()
    exact = fusion_conv_reference(xs, weight, bias, pool)
    low = [x.to(dtype) for x in xs], weight.to(dtype), bias.to(dtype)
    ref_err = (fusion_conv_reference(*low, pool).double() - exact).abs().max().item()
    err = (fk.fusion_conv(*low, pool, backend=backend).double() - exact).abs().max().item()
    print(f"{dtype}: fused error {err:.3g}, reference error {ref_err:.3g}")
    assert err <= 2 * ref_err + 1e-6


# ------------------------------------------------------------------------------------------------------------
# Transition: BN-ReLU-conv1x1-AvgPool, batch statistics and running buffers.

def _transition_params(n, c, h, w, c_out, dtype, layout="contiguous"):
    x = make_input(n, c, h, w, dtype=dtype, layout=layout)
    x.mul_(1.5).add_(0.3)  # in place: keeps the layout (a nonzero mean exercises the BN statistics)
    assert x.is_contiguous() == (layout == "contiguous")
    x.requires_grad_()
    nw = (torch.rand(c, dtype=dtype) + 0.5).requires_grad_()
    nb = (torch.randn(c, dtype=dtype) * 0.5).requires_grad_()
    cw = make_input(c_out, c, 1, 1, dtype=dtype, requires_grad=True, scale=0.3)
    return x, nw, nb, cw


TRANSITION_CASES = [  # (N, C, H, W, C_out, pool, layout, training, conv bias, track running stats)
    (2, 5, 7, 6, 4, 2, "contiguous", True, False, True),
    (3, 4, 5, 5, 3, 3, "noncontig", True, True, True),
    (2, 6, 6, 7, 5, 1, "channels_last", False, False, True),
    (2, 3, 9, 8, 2, 2, "contiguous", False, True, True),
    (2, 4, 6, 6, 3, 2, "noncontig", True, False, False),
    (1, 4, 5, 6, 3, 2, "channels_last", True, True, False),
]


def _check_transition_backend(backend, case, dtype, device="cpu"):
    n, c, h, w, c_out, pool, layout, training, has_bias, track = case
    x, nw, nb, cw = _transition_params(n, c, h, w, c_out, dtype, layout)
    cb = make_input(c_out, dtype=dtype, requires_grad=True) if has_bias else None
    rm = torch.randn(c, dtype=dtype) * 0.2 if track else None
    rv = torch.rand(c, dtype=dtype) + 0.5 if track else None
    tensors = [x, nw, nb, cw, cb, rm, rv]
    if device != "cpu":
        tensors = [t.detach().to(device).requires_grad_(t.requires_grad) if t is not None else None
                   for t in tensors]
    x, nw, nb, cw, cb, rm, rv = tensors
    rm2 = rm.clone() if track else None
    rv2 = rv.clone() if track else None
    params = [x, nw, nb, cw] + ([cb] if has_bias else [])
    y = fk.transition(x, nw, nb, rm, rv, cw, cb, training, 0.3, 1e-5, pool, backend=backend)
    expected = transition_reference(x, nw, nb, rm2, rv2, cw, cb, training, 0.3, 1e-5, pool)
    p = PARITY[dtype]
    assert_close(y, expected, "output", **p)
    if track:
        assert_close(rm, rm2, "running_mean", **p)
        assert_close(rv, rv2, "running_var", **p)
    gy = torch.randn_like(expected)
    got = torch.autograd.grad(y, params, gy)
    want = torch.autograd.grad(expected, params, gy)
    names = ["grad_x", "grad_norm_weight", "grad_norm_bias", "grad_conv_weight", "grad_conv_bias"]
    for g, e, name in zip(got, want, names, strict=False):
        assert_close(g, e, name, **p)


@pytest.mark.parametrize("case", TRANSITION_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params("cpp"))
def test_transition_cpp_matches_reference(backend, case, dtype):
    _check_transition_backend(backend, case, dtype)


@pytest.mark.parametrize("case", TRANSITION_CASES[:3], ids=str)
@pytest.mark.parametrize("backend", backend_params("triton"))
def test_transition_triton_matches_reference(backend, case):
    _check_transition_backend(backend, case, torch.float32, "cuda" if HAS_CUDA else "cpu")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", backend_params("cpp", "triton"))
def test_transition_gradcheck(backend, training):
    opts = dict(GRADCHECK[backend])
    n, h, w = opts.pop("shape")
    x, nw, nb, cw = _transition_params(n, 3, h, w, 2, torch.float64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    def f(x, nw, nb, cw):
        return fk.transition(x, nw, nb, rm, rv, cw, None, training, 0.0, 1e-5, 2, backend=backend)

    run_gradcheck(f, [x, nw, nb, cw], **opts)


@pytest.mark.parametrize("backend", ["reference"] + backend_params("cpp"))
def test_transition_module_converts_torchvision_layout(backend):
    plain = _Transition(6, 3)
    with torch.no_grad():
        plain.norm.weight.uniform_(0.5, 1.5)
        plain.norm.bias.normal_()
    model = nn.Sequential(nn.Identity(), _Transition(6, 3))
    model[1].load_state_dict(plain.state_dict())
    fused = fk.nn.convert(model)[1]
    assert isinstance(fused, fk.nn.Transition) and set(fused.state_dict()) == set(plain.state_dict())
    for _ in range(2):  # training: output, gradients and running statistics match, twice in a row
        x = make_input(4, 6, 7, 8) + 1.0
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = fused(x1, backend=backend), plain(x2)
        assert_close(y1, y2, "train output")
        y1.square().sum().backward()
        y2.square().sum().backward()
        assert_close(x1.grad, x2.grad, "grad_x")
        assert_close(fused.norm.weight.grad, plain.norm.weight.grad, "grad_norm_weight")
        assert_close(fused.conv.weight.grad, plain.conv.weight.grad, "grad_conv_weight")
    assert_close(fused.norm.running_mean, plain.norm.running_mean, "running_mean")
    assert_close(fused.norm.running_var, plain.norm.running_var, "running_var")
    assert int(fused.norm.num_batches_tracked) == int(plain.norm.num_batches_tracked) == 2
    fused.eval(), plain.eval()
    x = make_input(2, 6, 6, 6)
    assert_close(fused(x, backend=backend), plain(x), "eval output")
    assert "in_channels=6, out_channels=3" in repr(fused)


def test_transition_rejected_input_changes_nothing():
    m = fk.nn.Transition(4, 2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"x: expected 4 channels \(conv_weight has shape \(2, 4, 1, 1\)\), got shape \(2, 5, 4, 4\)"):
        m(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"x: expected more than 1 value per channel"):
        fk.transition(torch.randn(1, 4, 1, 1), m.norm.weight, m.norm.bias, m.norm.running_mean,
                      m.norm.running_var, m.conv.weight, None, True, 0.1, 1e-5, 1)
    with pytest.raises(ValueError, match=r"xs: spatial size 1x1 is smaller than pool=2"):
        m(torch.randn(2, 4, 1, 1))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    "name, shape, match",
    [
        ("norm_weight", (5,), r"norm_weight: expected shape \(4,\) for x with 4 channels, got \(5,\)"),
        ("running_var", (3,), r"running_var: expected shape \(4,\) for x with 4 channels, got \(3,\)"),
        ("conv_weight", (2, 5, 1, 1), r"x: expected 5 channels \(conv_weight has shape \(2, 5, 1, 1\)\), got shape"),
        ("running_mean", None, r"running_mean: expected a tensor \(4,\) when training=False"),
    ],
)
def test_transition_bad_input_gets_a_clear_error(name, shape, match):
    args = dict(x=torch.randn(2, 4, 4, 4), norm_weight=torch.ones(4), norm_bias=torch.zeros(4),
                running_mean=torch.zeros(4), running_var=torch.ones(4), conv_weight=torch.randn(2, 4, 1, 1),
                training=False)
    args[name] = torch.randn(*shape) if shape is not None else None
    with pytest.raises(ValueError, match=match):
        fk.transition(**args)


def test_triton_interpreter_is_on_for_cpu_tests():
    if not HAS_CUDA:
        assert os.environ.get("TRITON_INTERPRET") == "1"
