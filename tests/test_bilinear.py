"""bilinear: every backend against the plain composition (einsum, sign*sqrt, F.normalize, F.linear), forward and
backward, on post-ReLU inputs (exact zeros, all-zero channels, so Y = 0 entries) and signed inputs; the written-out
backward formulas against autograd; gradcheck (float64) through the C++ and Triton ops; opcheck on the C++ ops;
saved-for-backward memory; input errors.

Parity (issue 6): against the plain composition evaluated in float64 on the same inputs, every element within
``rtol * |expected| + max(rtol * max|expected|, atol)`` with rtol 5e-5 (float32) or 1e-10 (float64) and atol
from the harness table (1e-5, 1e-12). The floor scaled by the
largest element is needed because s = sign(Y) sqrt(|Y| + eps) of a Y that cancels to near 0 is ill-conditioned:
its float32 error relative to itself is unbounded for any float32 implementation, the plain one included.
Float32 gradients on signed inputs inherit that: dY = ds * 0.5 / sqrt(|Y| + eps) turns the absolute float32
error of a cancelled Y into large relative errors, and the float32 plain composition itself is off by up to
~1e-2 of the largest gradient (measured). So a float32 gradient must meet the 5e-5 bound or, where the float32
plain composition's own error is larger, be at most twice that error (CONVENTIONS rule 8d); both are printed.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fer_kernels as fk
from fer_kernels import _extension
from fer_kernels.reference.bilinear import (
    bilinear_classifier_backward_reference,
    bilinear_classifier_reference,
    bilinear_pool_backward_reference,
    bilinear_pool_reference,
)
from tests.harness import HAS_CUDA, assert_close, backend_params, run_gradcheck, run_opcheck, tol

RTOL = {torch.float32: 5e-5, torch.float64: 1e-10}
HAS_CPP_OPS = _extension.has_op("bilinear_pool")
requires_cpp = pytest.mark.skipif(not HAS_CPP_OPS, reason="fer_kernels._C is not built")


def close(actual, expected, name, dtype=None):
    """``actual`` (in ``dtype``) against ``expected`` (float64 truth or same dtype): rtol and an absolute floor of
    rtol times the largest expected magnitude (see the module docstring)."""
    dtype = dtype or actual.dtype
    expected = expected.detach()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    rtol = RTOL[dtype]
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    atol = max(rtol * scale, tol(dtype)["atol"])
    assert_close(actual.detach().to(expected.dtype), expected, name, rtol=rtol, atol=atol)


def close_grad(actual, truth, plain, name):
    """A gradient against the float64 truth: :func:`close`, or for float32 where the float32 plain composition
    (``plain``) misses the bound, an error at most twice the plain composition's own (module docstring)."""
    if actual.dtype == torch.float64:
        return close(actual, truth, name)
    truth = truth.detach()
    scale = truth.abs().max().item() if truth.numel() else 0.0
    bound = RTOL[torch.float32] * scale + tol(torch.float32)["atol"]
    err = (actual.detach().double() - truth).abs().max().item() if truth.numel() else 0.0
    plain_err = (plain.detach().double() - truth).abs().max().item() if truth.numel() else 0.0
    print(f"{name}: max abs err {err:.3g}, float32 plain composition {plain_err:.3g}, 5e-5 bound {bound:.3g}")
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    if plain_err <= bound:
        close(actual, truth, name)
    else:
        assert err <= 2 * plain_err, f"{name}: error {err:.3g} > 2x the float32 plain composition's {plain_err:.3g}"


# ---- the plain composition the issue names (independent of fer_kernels.reference) ----

def plain_pool(a, b, eps=1e-5, signed_sqrt=True, l2_normalize=True, mean=False):
    y = torch.einsum("nil,njl->nij", a.flatten(2), b.flatten(2))
    if mean:
        y = y / (a.shape[2] * a.shape[3])
    s = torch.sign(y) * torch.sqrt(y.abs() + eps) if signed_sqrt else y
    s = s.reshape(s.shape[0], -1)
    return F.normalize(s, dim=1) if l2_normalize else s


def plain_classifier(a, b, weight, bias=None, eps=1e-5):
    return F.linear(plain_pool(a, b, eps), weight, bias)


def make_ab(n, ca, cb, h, w, kind, dtype, same=False):
    """kind "relu": post-ReLU features with whole zero channels (so rows/columns of Y are exactly 0);
    "signed": plain normal features."""
    a = torch.randn(n, ca, h, w, dtype=dtype)
    b = a if same else torch.randn(n, cb, h, w, dtype=dtype)
    if kind == "relu":
        a = a.relu()
        a[:, :: 3] = 0  # zero channels: Y rows are 0
        if not same:
            b = b.relu()
            b[:, 1:: 4] = 0
        else:
            b = a
    return a, b


# (N, Ca, Cb, H, W): 1x1 .. 14x14, 1 .. 512 channels; the big ones few.
SHAPES = [
    (1, 1, 1, 1, 1),
    (2, 3, 5, 2, 3),
    (3, 17, 9, 4, 4),
    (2, 40, 23, 7, 7),
    (2, 19, 33, 14, 14),
    (1, 512, 512, 4, 4),
    (2, 64, 128, 1, 1),
]
SMALL = SHAPES[:4]  # for the Triton interpreter
FLAGS = [  # (signed_sqrt, l2_normalize, mean)
    (True, True, False),
    (True, True, True),
    (False, True, False),
    (True, False, False),
    (False, False, True),
]
CPU_BACKENDS = backend_params("reference", "cpp", "triton")


def _shapes_for(backend):
    # The reference is the plain composition up to bmm vs einsum: small shapes suffice; Triton runs interpreted.
    return SHAPES if backend == "cpp" else SMALL


def _cases(backend):
    """(shape, kind, dtype) cases: every combination on small shapes; the 512x512 shape once (post-ReLU float32,
    the EIFN case); the Triton interpreter (slow) and the reference (the plain composition up to bmm vs einsum) on
post-ReLU float32 and signed float64."""
    combos = [(k, d) for k in ("relu", "signed") for d in (torch.float32, torch.float64)]
    if backend in ("triton", "reference"):
        combos = [("relu", torch.float32), ("signed", torch.float64)]
    out = []
    for s in _shapes_for(backend):
        big = s[1] * s[2] >= 100_000
        out += [(s, k, d) for k, d in ([("relu", torch.float32)] if big else combos)]
    return out


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_pool_forward_and_backward_match_plain_composition(backend):
    for (n, ca, cb, h, w), kind, dtype in _cases(backend):
        a, b = make_ab(n, ca, cb, h, w, kind, dtype)
        for flags in FLAGS if ca * cb < 100_000 else FLAGS[:2]:
            tag = f"{backend} {(n, ca, cb, h, w)} {kind} {dtype} flags={flags}"
            a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
            z = fk.bilinear_pool(a_, b_, 1e-5, *flags, backend=backend)
            a0, b0 = a.double().requires_grad_(), b.double().requires_grad_()
            expected = plain_pool(a0, b0, 1e-5, *flags)
            close(z, expected.detach(), f"z [{tag}]")
            gz = torch.randn_like(z)
            got = torch.autograd.grad(z, (a_, b_), gz)
            want = torch.autograd.grad(expected, (a0, b0), gz.double())
            a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
            plain = torch.autograd.grad(plain_pool(a1, b1, 1e-5, *flags), (a1, b1), gz)
            close_grad(got[0], want[0], plain[0], f"grad_a [{tag}]")
            close_grad(got[1], want[1], plain[1], f"grad_b [{tag}]")


@requires_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [3, 5])
def test_cpp_pool_forward_schedules(dtype, n):
    """With 2 threads the C++ pool forward runs whole samples per task (n = 5 >= 2 per thread, each scaled by
    1/||s|| as soon as it is written) or row blocks with a separate scaling pass (n = 3), on an 8x7 map (56
    locations: the register tiles; past 64 the forward is a batched GEMM, covered by SHAPES' 14x14)."""
    torch.manual_seed(11)
    a, b = make_ab(n, 13, 11, 8, 7, "signed", dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for flags in FLAGS:
            z = fk.bilinear_pool(a, b, 1e-5, *flags, backend="cpp")
            close(z, plain_pool(a.double(), b.double(), 1e-5, *flags), f"z [n={n} flags={flags}]")
    finally:
        torch.set_num_threads(threads)


def _check_classifier_threads(a, b, weight, bias, backend, nthreads=2):
    """fer_kernels.bilinear_classifier on nthreads threads against the float64 composition, forward and backward."""
    ins = [a, b, weight, bias]
    mine = [t.clone().requires_grad_() for t in ins]
    ref = [t.double().requires_grad_() for t in ins]
    threads = torch.get_num_threads()
    torch.set_num_threads(nthreads)
    try:
        out = fk.bilinear_classifier(*mine, backend=backend)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, mine, g)
    finally:
        torch.set_num_threads(threads)
    expected = plain_classifier(*ref)
    close(out, expected.detach(), "logits")
    want = torch.autograd.grad(expected, ref, g.double())
    same = [t.clone().requires_grad_() for t in ins]
    plain = torch.autograd.grad(plain_classifier(*same), same, g)
    for name, x, y, p in zip(("grad_a", "grad_b", "grad_weight", "grad_bias"), got, want, plain):
        close_grad(x, y, p, name)


@requires_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("classes", [5, 8, 11])
@pytest.mark.parametrize("hw", [(3, 3), (12, 11)], ids=["3x3", "12x11"])
def test_cpp_classifier_many_samples_and_classes(dtype, classes, hw):
    """The C++ classifier's paths: up to 8 classes and 8x8 locations, register tiles (the class products in
    registers, dW summed over chunks of 8 samples, 4 classes at a time: 5 classes make groups of 4 and 1; dz of
    two samples per pass over the weights up to 7 classes, the odd last sample alone; 8 classes one sample per
    pass); past 8 classes (11) or 64 locations (a 12x11 map), the C++ pool (a batched GEMM and a fused pass) and
    a linear layer. 35 samples make chunks of 8 (x4) and 3; 2 threads (per-thread dB sums)."""
    torch.manual_seed(7)
    a, b = make_ab(35, 13, 10, *hw, "relu", dtype)
    weight = torch.randn(classes, 130, dtype=dtype) / 130 ** 0.5
    _check_classifier_threads(a, b, weight, torch.randn(classes, dtype=dtype), "cpp")


@pytest.mark.parametrize("backend", backend_params("cpp"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpp_classifier_several_column_tiles(backend, dtype):
    """The C++ classifier's tiles, which the backward sizes from the L2 cache: 2,000 columns of Y make at least two
    column tiles of the register path (the last partial) with an L2 of up to 4 MiB, 30 rows at least two row
    blocks (the last partial); 2 threads; every instruction set."""
    torch.manual_seed(11)
    a, b = make_ab(3, 30, 2000, 4, 4, "relu", dtype)
    weight = torch.randn(7, 30 * 2000, dtype=dtype) / 245.0
    _check_classifier_threads(a, b, weight, torch.randn(7, dtype=dtype), backend)


@pytest.mark.parametrize("backend", backend_params("cpp"))
@pytest.mark.parametrize("nthreads", [3, 4])
@pytest.mark.parametrize("ca", [13, 100])
def test_cpp_classifier_row_blocks_across_threads(backend, nthreads, ca):
    """The C++ classifier's row blocks split the micro-tile rows evenly, their count a multiple of the thread count
    where there are enough (100 rows: 9 to 17 micro-tile rows). With 13 rows there are fewer blocks than threads
    (2 or 3), so some threads take no block and their dB accumulators must not enter the sum. Every instruction
    set, float64."""
    torch.manual_seed(5)
    a, b = make_ab(6, ca, 9, 4, 4, "relu", torch.float64)
    weight = torch.randn(7, ca * 9, dtype=torch.float64) / (ca * 9) ** 0.5
    _check_classifier_threads(a, b, weight, torch.randn(7, dtype=torch.float64), backend, nthreads)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
def test_classifier_forward_and_backward_match_plain_composition(backend, has_bias):
    for (n, ca, cb, h, w), kind, dtype in _cases(backend):
        a, b = make_ab(n, ca, cb, h, w, kind, dtype)
        for k in (1, 7) if backend != "triton" else (7,):
            tag = f"{backend} {(n, ca, cb, h, w)} {kind} {dtype} K={k}"
            weight = torch.randn(k, ca * cb, dtype=dtype) / (ca * cb) ** 0.5
            bias = torch.randn(k, dtype=dtype) if has_bias else None
            ins = [a, b, weight] + ([bias] if has_bias else [])
            mine = [t.clone().requires_grad_() for t in ins]
            ref = [t.double().requires_grad_() for t in ins]
            out = fk.bilinear_classifier(mine[0], mine[1], mine[2], mine[3] if has_bias else None, backend=backend)
            expected = plain_classifier(ref[0], ref[1], ref[2], ref[3] if has_bias else None)
            close(out, expected.detach(), f"logits [{tag}]")
            g = torch.randn_like(out)
            got = torch.autograd.grad(out, mine, g)
            want = torch.autograd.grad(expected, ref, g.double())
            same = [t.clone().requires_grad_() for t in ins]
            plain = torch.autograd.grad(plain_classifier(same[0], same[1], same[2], same[3] if has_bias else None),
                                        same, g)
            for name, x, y, p in zip(("grad_a", "grad_b", "grad_weight", "grad_bias"), got, want, plain):
                close_grad(x, y, p, f"{name} [{tag}]")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_is_b(backend):
    for dtype in (torch.float32, torch.float64):
        a, _ = make_ab(2, 6, 6, 3, 3, "relu", dtype, same=True)
        w = torch.randn(5, 36, dtype=dtype)
        x1 = a.clone().requires_grad_()
        x2 = a.double().requires_grad_()
        out = fk.bilinear_classifier(x1, x1, w, backend=backend) + fk.bilinear_pool(x1, x1, mean=True,
                                                                                   backend=backend)[:, :5]
        expected = plain_classifier(x2, x2, w.double()) + plain_pool(x2, x2, mean=True)[:, :5]
        close(out, expected, f"out [{backend} {dtype}]")
        g = torch.randn_like(out)
        close(torch.autograd.grad(out, x1, g)[0], torch.autograd.grad(expected, x2, g.double())[0],
              f"grad [{backend} {dtype}]")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_input_gives_zero_finite_gradients(backend):
    # All of Y is 0: s = 0, ||s|| = 0 (the norm clamp is active); every gradient is exactly 0 as in autograd.
    a = torch.zeros(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    out = fk.bilinear_classifier(a, b, w, backend=backend)
    assert torch.equal(out, torch.zeros_like(out))
    ga, gb, gw = torch.autograd.grad(out, (a, b, w), torch.ones_like(out))
    for g in (ga, gb, gw):
        assert torch.equal(g, torch.zeros_like(g))
    z = fk.bilinear_pool(a, b, backend=backend)
    ga, gb = torch.autograd.grad(z, (a, b), torch.randn_like(z))
    assert torch.equal(ga, torch.zeros_like(ga)) and torch.equal(gb, torch.zeros_like(gb))


def test_reference_backward_formulas_match_autograd():
    for (n, ca, cb, h, w), kind, _ in _cases("reference"):
        if ca * cb > 5000:
            continue
        a, b = make_ab(n, ca, cb, h, w, kind, torch.float64)
        a.requires_grad_()
        b.requires_grad_()
        for flags in FLAGS:
            z = bilinear_pool_reference(a, b, 1e-5, *flags)
            gz = torch.randn_like(z)
            want = torch.autograd.grad(z, (a, b), gz)
            got = bilinear_pool_backward_reference(gz, a.detach(), b.detach(), 1e-5, *flags)
            close(got[0], want[0], f"pool grad_a {flags}")
            close(got[1], want[1], f"pool grad_b {flags}")
        weight = torch.randn(4, ca * cb, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
        out = bilinear_classifier_reference(a, b, weight, bias)
        g = torch.randn_like(out)
        want = torch.autograd.grad(out, (a, b, weight, bias), g)
        got = bilinear_classifier_backward_reference(g, a.detach(), b.detach(), weight.detach(), bias.detach())
        for name, x, y in zip(("grad_a", "grad_b", "grad_weight", "grad_bias"), got, want):
            close(x, y, f"classifier {name}")


@pytest.mark.parametrize("backend", backend_params("cpp", "triton"))
def test_gradcheck_float64(backend):
    # Signed inputs: no Y is 0 here (the signed sqrt jumps by 2 sqrt(eps) across Y = 0, so finite differences
    # are meaningless there; Y = 0 is covered by the autograd parity tests above).
    a = torch.randn(2, 3, 2, 2, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 4, 2, 2, dtype=torch.float64).requires_grad_()
    w = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    # The Triton interpreter runs one program at a time: fast-mode gradcheck (random projections of the
    # Jacobian) keeps it to seconds; the C++ ops get the full Jacobian.
    fast = backend == "triton"
    run_gradcheck(lambda a, b, w, c: fk.bilinear_classifier(a, b, w, c, backend=backend), [a, b, w, bias],
                  fast_mode=fast)
    for flags in FLAGS:
        run_gradcheck(lambda a, b: fk.bilinear_pool(a, b, 1e-3, *flags, backend=backend), [a, b], fast_mode=fast)


@pytest.mark.parametrize("backend", backend_params("cpp"))
@pytest.mark.parametrize("hw, classes", [((9, 9), 3), ((2, 3), 9)], ids=["81-locations", "9-classes"])
def test_gradcheck_float64_classifier_gemm_path(backend, hw, classes):
    """Past 64 locations or 8 classes, full-Jacobian gradcheck of both C++ routes: the functional form (the C++ pool
    and a linear layer) and the op itself (its batched-GEMM path)."""
    a = torch.randn(2, 3, *hw, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 2, *hw, dtype=torch.float64).requires_grad_()
    w = torch.randn(classes, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(classes, dtype=torch.float64, requires_grad=True)
    run_gradcheck(lambda a, b, w, c: fk.bilinear_classifier(a, b, w, c, backend=backend), [a, b, w, bias])
    run_gradcheck(lambda a, b, w, c: torch.ops.fer_kernels.bilinear_classifier(a, b, w, c, 1e-5)[0], [a, b, w, bias])


def _op_samples(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 5, 3, 2, generator=g, dtype=dtype).relu()
    b = torch.randn(2, 7, 3, 2, generator=g, dtype=dtype)
    w = torch.randn(4, 35, generator=g, dtype=dtype)
    bias = torch.randn(4, generator=g, dtype=dtype)
    return a, b, w, bias


@requires_cpp
@pytest.mark.parametrize("flags", FLAGS, ids=str)
def test_opcheck_pool_ops(flags):
    ops = torch.ops.fer_kernels
    a, b, _, _ = _op_samples()
    run_opcheck(ops.bilinear_pool, (a.requires_grad_(), b.requires_grad_(), 1e-5, *flags))
    z, norms = ops.bilinear_pool(a.detach(), b.detach(), 1e-5, *flags)
    run_opcheck(ops._bilinear_pool_backward, (torch.randn_like(z), a.detach(), b.detach(), z, norms, 1e-5, *flags))


@requires_cpp
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
def test_opcheck_classifier_ops(has_bias):
    ops = torch.ops.fer_kernels
    a, b, w, bias = _op_samples()
    bias = bias if has_bias else None
    args = [a.requires_grad_(), b.requires_grad_(), w.requires_grad_(),
            bias.requires_grad_() if has_bias else None, 1e-5]
    run_opcheck(ops.bilinear_classifier, tuple(args))
    logits, norms = ops.bilinear_classifier(a.detach(), b.detach(), w.detach(), bias, 1e-5)
    run_opcheck(ops._bilinear_classifier_backward,
                (torch.randn_like(logits), a.detach(), b.detach(), w.detach(),
                 bias.detach() if has_bias else None, norms, logits, 1e-5))


@pytest.mark.parametrize("backend", backend_params("cpp", "triton"))
def test_classifier_saves_no_pooled_vector(backend):
    """Saved for backward: a, b, weight, bias, norms, logits; nothing of size N*Ca*Cb."""
    a, b = make_ab(2, 16, 12, 3, 3, "relu", torch.float32)
    a.requires_grad_()
    w = torch.randn(3, 16 * 12, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.detach())  # not t: a saved output would keep its own graph alive (benchmarks/conftest.py)
        return saved[-1]

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fk.bilinear_classifier(a, b, w, bias, backend=backend)
    assert saved
    big = [tuple(t.shape) for t in saved if t.numel() >= 2 * 16 * 12 and t.data_ptr() != w.data_ptr()]
    assert not big, f"saved tensors of pooled-vector size: {big}"
    sizes = sorted(t.numel() for t in saved)
    assert sum(sizes) <= a.numel() + b.numel() + w.numel() + bias.numel() + 2 + 2 * 3, sizes


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backends_match_reference(backend):
    if not fk.available_backends()[backend].available:
        pytest.skip(fk.available_backends()[backend].reason)
    for (n, ca, cb, h, w), kind, dtype in _cases("cpp"):
        a, b = make_ab(n, ca, cb, h, w, kind, dtype)
        a, b = a.cuda().requires_grad_(), b.cuda().requires_grad_()
        weight = (torch.randn(7, ca * cb, dtype=dtype) / (ca * cb) ** 0.5).cuda().requires_grad_()
        bias = torch.randn(7, dtype=dtype).cuda().requires_grad_()
        out = fk.bilinear_classifier(a, b, weight, bias, backend=backend)
        expected = plain_classifier(a, b, weight, bias)
        close(out, expected.detach(), f"{backend} logits")
        g = torch.randn_like(out)
        for x, y in zip(torch.autograd.grad(out, (a, b, weight, bias), g),
                        torch.autograd.grad(expected, (a, b, weight, bias), g)):
            close(x, y, f"{backend} grads")
        for flags in FLAGS:
            z = fk.bilinear_pool(a, b, 1e-5, *flags, backend=backend)
            expected = plain_pool(a, b, 1e-5, *flags)
            close(z, expected.detach(), f"{backend} z {flags}")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_triton_low_precision_error_within_twice_reference_error(dtype):
    a, b = make_ab(4, 64, 48, 7, 7, "relu", torch.float64)
    w = torch.randn(7, 64 * 48, dtype=torch.float64) / 50
    exact = plain_classifier(a, b, w)
    lo = [t.to(dtype).cuda() for t in (a, b, w)]
    ref_err = (plain_classifier(*lo).double().cpu() - exact).abs().max().item()
    err = (fk.bilinear_classifier(*lo, backend="triton").double().cpu() - exact).abs().max().item()
    print(f"{dtype}: triton error {err:.3g}, reference error {ref_err:.3g}")
    assert err <= 2 * ref_err + 1e-6


@pytest.mark.skipif(HAS_CUDA or not fk.available_backends()["triton"].available,
                    reason="CPU-only check of the Triton float16 path under TRITON_INTERPRET=1")
def test_triton_float16_interpreted_error_within_twice_reference_error():
    # The public ops accept float16 on GPU only, so this calls the Triton ops directly on CPU float16 tensors.
    # (bfloat16 is checked on GPU only: the Triton 3.9 interpreter's tl.dot returns garbage for bfloat16.)
    from fer_kernels.ops.bilinear import triton_ops

    bilinear_pool_triton, bilinear_classifier_triton = triton_ops()

    a, b = make_ab(2, 20, 12, 3, 3, "relu", torch.float64)
    w = torch.randn(5, 240, dtype=torch.float64) / 15
    lo = [t.half() for t in (a, b, w)]
    exact = plain_classifier(a, b, w)
    ref_err = (plain_classifier(*lo).double() - exact).abs().max().item()
    err = (bilinear_classifier_triton(*lo, None, 1e-5)[0].double() - exact).abs().max().item()
    print(f"float16 logits: triton error {err:.3g}, plain float16 error {ref_err:.3g}")
    assert err <= 2 * ref_err
    exact = plain_pool(a, b)
    ref_err = (plain_pool(lo[0], lo[1]).double() - exact).abs().max().item()
    err = (bilinear_pool_triton(lo[0], lo[1], 1e-5, True, True, False)[0].double() - exact).abs().max().item()
    print(f"float16 z: triton error {err:.3g}, plain float16 error {ref_err:.3g}")
    assert err <= 2 * ref_err


def test_auto_backend_on_cpu_is_cpp_when_built():
    from fer_kernels.backends import resolve
    from fer_kernels.ops.bilinear import CLASSIFIER_IMPLS, POOL_IMPLS

    want = "cpp" if fk.available_backends()["cpp"].available else "reference"
    x = torch.zeros(1, 2, 2, 2)
    with fk.use_backend("auto"):
        assert resolve("bilinear_pool", POOL_IMPLS, [x, x]) == want
        assert resolve("bilinear_classifier", CLASSIFIER_IMPLS, [x, x]) == want


def test_modules_load_linear_state_dict_and_match():
    torch.manual_seed(0)
    linear = nn.Linear(6 * 5, 7)
    m = fk.nn.BilinearClassifier(6, 5, 7)
    assert set(m.state_dict()) == {"weight", "bias"}
    m.load_state_dict(linear.state_dict())
    a, b = make_ab(3, 6, 5, 4, 4, "relu", torch.float32)
    close(m(a, b), linear(plain_pool(a, b)).detach(), "BilinearClassifier")
    pool = fk.nn.BilinearPool(mean=True)
    close(pool(a), plain_pool(a, a, mean=True), "BilinearPool(a)")
    assert "num_classes=7" in repr(m) and "mean=True" in repr(pool)
    assert set(fk.nn.BilinearClassifier(6, 5, 7, bias=False).state_dict()) == {"weight"}


@pytest.mark.parametrize(
    "ashape, bshape, wshape, match",
    [
        ((2, 3, 4, 4), (1, 5, 4, 4), (7, 15), r"b: batch and spatial sizes must match a \(N=2, H=4, W=4\)"),
        ((2, 3, 4, 4), (2, 5, 4, 3), (7, 15), r"b: batch and spatial sizes must match a"),
        ((2, 3, 16), (2, 5, 16), (7, 15), r"a: expected a 4-d tensor \(N, Ca, H, W\)"),
        ((2, 3, 4, 4), (2, 5, 4, 4, 1), (7, 15), r"b: expected a 4-d tensor"),
        ((2, 3, 4, 4), (2, 5, 4, 4), (7, 16), r"weight: expected shape \(K, 15\) = \(K, Ca\*Cb\) for Ca=3, Cb=5"),
        ((2, 3, 4, 4), (2, 5, 4, 4), (15,), r"weight: expected a 2-d tensor"),
    ],
)
def test_bad_input_gets_a_clear_error(ashape, bshape, wshape, match):
    a, b, w = torch.randn(*ashape), torch.randn(*bshape), torch.randn(*wshape)
    with pytest.raises(ValueError, match=match):
        fk.bilinear_classifier(a, b, w)
    if "weight" not in match:
        with pytest.raises(ValueError, match=match):
            fk.bilinear_pool(a, b)


def test_bad_bias_dtype_and_eps_errors():
    a, b, w = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2), torch.randn(5, 12)
    with pytest.raises(ValueError, match=r"bias: expected shape \(5,\)"):
        fk.bilinear_classifier(a, b, w, torch.randn(4))
    with pytest.raises(TypeError, match="b has dtype torch.float64 but a has dtype torch.float32"):
        fk.bilinear_pool(a, b.double())
    with pytest.raises(ValueError, match="eps: expected >= 0"):
        fk.bilinear_pool(a, b, eps=-1.0)


@requires_cpp
def test_cpp_ops_check_their_inputs():
    ops = torch.ops.fer_kernels
    with pytest.raises(RuntimeError, match="b: batch and spatial sizes must match a"):
        ops.bilinear_pool(torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 3), 1e-5, True, True, False)
    with pytest.raises(RuntimeError, match=r"weight: expected shape \(K, 9\)"):
        ops.bilinear_classifier(torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2), torch.randn(2, 8), None, 1e-5)
    with pytest.raises(RuntimeError, match="a: expected float32 or float64"):
        ops.bilinear_pool(torch.zeros(1, 2, 2, 2, dtype=torch.int32), torch.zeros(1, 2, 2, 2, dtype=torch.int32),
                          1e-5, True, True, False)


def test_auto_runs_the_cpp_classifier_on_large_maps(monkeypatch):
    """No fallback to the reference past a map size: the C++ classifier has a GEMM path for large maps."""
    from fer_kernels.ops import bilinear as ob

    def refuse(*args):
        raise AssertionError("auto ran the reference classifier")

    monkeypatch.setitem(ob.CLASSIFIER_IMPLS, "reference", refuse)
    a = torch.randn(2, 3, 28, 28, requires_grad=True).relu()
    w = torch.randn(5, 9, requires_grad=True)
    out = fk.bilinear_classifier(a, a, w)
    out.sum().backward()
    assert out.shape == (2, 5)
