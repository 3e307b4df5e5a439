"""fusion_conv: reference against torch.nn, hand-written backward against autograd, input errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fer_kernels as fk
from fer_kernels.reference import fusion_conv_backward_reference, fusion_conv_reference
from tests.harness import assert_close, make_input, run_gradcheck

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
