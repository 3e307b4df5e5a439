"""fer_kernels.nn.convert / to_reference: a torchvision-style DenseNet-BC with non-default BatchNorm settings
converts to fused modules that match it to 1e-12 in float64 (training steps and eval), and both directions
round-trip exactly (types, dtype, device, modes, requires_grad, BatchNorm settings, bit-identical weights)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fer_kernels as fk
from fer_kernels.nn import plain as P
from tests.harness import backend_params
from tests.torchvision_style import _DenseBlock, _DenseLayer, _Transition

FUSED = (
    fk.nn.DenseLayer,
    fk.nn.DenseBlock,
    fk.nn.Transition,
    fk.nn.FusionConv,
    fk.nn.BilinearPool,
    fk.nn.BilinearClassifier,
)
BACKENDS = ["reference", *[p for p in backend_params("cpp") if p.id == "cpp"]]
ATOL = 1e-12  # max abs difference, float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread on a shared machine


class DenseNetBC(nn.Module):
    """Three blocks of three layers, growth 4, bn_size 2, compression 0.5, on 3x8x8 inputs."""

    def __init__(self, k=4, bn_size=2, layers=3, num_classes=5):
        super().__init__()
        c = 2 * k
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, c, 3, padding=1, bias=False))
        for i in range(3):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(layers, c, bn_size, k))
            c += layers * k
            if i < 2:
                self.features.add_module(f"transition{i + 1}", _Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        out = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _set_bn(parent: nn.Module, name: str, **settings) -> None:
    old = getattr(parent, name)
    setattr(parent, name, nn.BatchNorm2d(old.num_features, **settings))


def _randomise_bns(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)
                if m.track_running_stats:
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 2.0)


def densenet_with_odd_bns() -> DenseNetBC:
    """float64 DenseNet-BC whose BatchNorms are not the defaults:

    - denseblock1: eps=1e-3, momentum=0.3 everywhere (one fused block);
    - denseblock2: momentum=None everywhere (cumulative average; one fused block);
    - denseblock3: layer 1 affine=False, layer 2 track_running_stats=False (the block's BatchNorms differ in
      tracking, so it is converted layer by layer), layer 3 with norm2 eps=1e-4 (its two BatchNorms
      differ: it stays plain);
    - transition1: eps=1e-4, momentum=None; transition2: affine=False, track_running_stats=False.
    """
    model = DenseNetBC()
    f = model.features
    for block, settings in (
        (f.denseblock1, dict(eps=1e-3, momentum=0.3)),
        (f.denseblock2, dict(momentum=None)),
    ):
        for layer in block.values():
            _set_bn(layer, "norm1", **settings)
            _set_bn(layer, "norm2", **settings)
    b3 = f.denseblock3
    _set_bn(b3.denselayer1, "norm1", affine=False)
    _set_bn(b3.denselayer1, "norm2", affine=False)
    _set_bn(b3.denselayer2, "norm1", track_running_stats=False)
    _set_bn(b3.denselayer2, "norm2", track_running_stats=False)
    _set_bn(b3.denselayer3, "norm2", eps=1e-4)
    _set_bn(f.transition1, "norm", eps=1e-4, momentum=None)
    _set_bn(f.transition2, "norm", affine=False, track_running_stats=False)
    model = model.double()
    _randomise_bns(model)
    return model


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _close(a, b, what):
    assert a.shape == b.shape and a.dtype == b.dtype, what
    err = _max_err(a.detach(), b.detach())
    print(f"{what}: max abs err {err:.3g}")
    assert err <= ATOL, f"{what}: max abs err {err:.3g} > {ATOL}"


def _bn_settings(model: nn.Module) -> dict:
    return {
        name: (m.eps, m.momentum, m.affine, m.track_running_stats, m.training)
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    }


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Bit-identical state dicts (same keys, order, dtype, device), and the same requires_grad flags."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and sa[key].device == sb[key].device, key
        assert torch.equal(sa[key], sb[key]), key
    assert [(n, p.requires_grad) for n, p in a.named_parameters()] == [
        (n, p.requires_grad) for n, p in b.named_parameters()
    ]
    assert _bn_settings(a) == _bn_settings(b)


def _modes(model: nn.Module) -> dict:
    return {name: m.training for name, m in model.named_modules()}


# ---- the converted torchvision-style model matches it ----


def test_convert_picks_what_the_fused_modules_compute_exactly():
    model = fk.nn.convert(densenet_with_odd_bns())
    f = model.features
    assert type(f.denseblock1) is fk.nn.DenseBlock and type(f.denseblock2) is fk.nn.DenseBlock
    assert type(f.denseblock3) is _DenseBlock  # BatchNorms differ in track_running_stats: per layer
    assert type(f.denseblock3.denselayer1) is fk.nn.DenseLayer
    assert type(f.denseblock3.denselayer2) is fk.nn.DenseLayer
    assert type(f.denseblock3.denselayer3) is _DenseLayer  # norm1 and norm2 differ in eps
    assert type(f.transition1) is fk.nn.Transition and type(f.transition2) is fk.nn.Transition
    assert f.denseblock1.extra_repr() == "num_layers=3, in_channels=8, growth_rate=4, bn_size=2"


@pytest.mark.parametrize("backend", BACKENDS)
def test_converted_densenet_matches_plain_in_float64(backend):
    plain = densenet_with_odd_bns()
    rng = torch.get_rng_state()
    fused = fk.nn.convert(copy.deepcopy(plain))
    assert torch.equal(rng, torch.get_rng_state())  # nothing is initialised: no random numbers drawn
    assert (
        sum(isinstance(m, FUSED) for m in fused.modules()) == 12
    )  # 2 blocks (of 3 layers), 2 layers, 2 transitions
    _assert_same_state(fused, plain)
    models = (plain, fused)
    with fk.use_backend(backend):
        for step in range(3):  # momentum=None averages 1, 1/2, 1/3: several steps tell them apart
            x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
            xs = [x.clone().requires_grad_() for _ in models]
            outs = [m(xi) for m, xi in zip(models, xs, strict=True)]
            _close(outs[1], outs[0], f"step {step} output")
            gy = torch.randn_like(outs[0])
            for out in outs:
                out.backward(gy)
            _close(xs[1].grad, xs[0].grad, f"step {step} grad x")
            for (name, p), (_, q) in zip(plain.named_parameters(), fused.named_parameters(), strict=True):
                _close(q.grad, p.grad, f"step {step} grad {name}")
            for (name, a), (_, b) in zip(plain.named_buffers(), fused.named_buffers(), strict=True):
                if a.is_floating_point():
                    _close(b, a, f"step {step} {name}")
                else:
                    assert torch.equal(a, b), f"step {step} {name}"
            with torch.no_grad():  # an SGD step on both, so the next step starts from trained weights
                for m in models:
                    for p in m.parameters():
                        p.sub_(0.05 * p.grad)
                        p.grad = None
        assert int(fused.features.denseblock2.denselayer1.norm1.num_batches_tracked) == 3
        for m in models:
            m.eval()
        states = [copy.deepcopy(m.state_dict()) for m in models]
        for step in range(2):
            x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
            xs = [x.clone().requires_grad_() for _ in models]
            outs = [m(xi) for m, xi in zip(models, xs, strict=True)]
            _close(outs[1], outs[0], f"eval {step} output")
            for out in outs:
                out.sum().backward()
            _close(xs[1].grad, xs[0].grad, f"eval {step} grad x")
    for m, state in zip(models, states, strict=True):  # eval changed no running statistic
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


# ---- round trips ----


def test_plain_to_fused_to_plain_round_trip():
    plain = densenet_with_odd_bns()
    plain.features.transition2.eval()
    plain.features.conv0.weight.requires_grad_(False)
    plain.features.denseblock1.denselayer2.conv1.weight.requires_grad_(False)
    fused = fk.nn.convert(copy.deepcopy(plain))
    fused_snapshot = copy.deepcopy(fused)
    back = fk.nn.to_reference(fused)
    # to_reference leaves its input alone: same types, the same objects, the same values
    assert [type(m) for m in fused.modules()] == [type(m) for m in fused_snapshot.modules()]
    _assert_same_state(fused, fused_snapshot)
    assert not any(p is q for p, q in zip(back.parameters(), fused.parameters(), strict=True))
    f = back.features
    assert not any(isinstance(m, FUSED) for m in back.modules())
    assert type(f.denseblock1) is P.DenseBlockPlain and type(f.denseblock1.denselayer1) is P.DenseLayerPlain
    assert type(f.denseblock3) is _DenseBlock and type(f.denseblock3.denselayer1) is P.DenseLayerPlain
    assert type(f.denseblock3.denselayer3) is _DenseLayer
    assert type(f.transition1) is P.TransitionPlain
    for m in (plain, fused, back):
        assert _modes(m)["features.transition2"] is False
    assert _modes(back) == _modes(fused)
    assert _modes(fused).items() <= _modes(plain).items()  # the plain side has its ReLU modules too
    _assert_same_state(back, plain)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    plain.eval(), back.eval()
    _close(back(x), plain(x), "plain -> fused -> plain output")
    # and converting the twins gives the same fused layout again
    again = fk.nn.convert(back)
    assert [(n, type(m)) for n, m in again.named_modules()] == [
        (n, type(m)) for n, m in fused.named_modules()
    ]


class Head(nn.Module):
    """Every fused module in one model: dense block, transition, fusion conv, bilinear pool and classifier."""

    def __init__(
        self,
        block=fk.nn.DenseBlock,
        transition=fk.nn.Transition,
        fusion=fk.nn.FusionConv,
        pool=fk.nn.BilinearPool,
        classifier=fk.nn.BilinearClassifier,
        layer=fk.nn.DenseLayer,
    ):
        super().__init__()
        self.block = block(2, 4, 3, 2)
        self.layer = layer(10, 3, 2)
        self.transition = transition(13, 6, 2)
        self.fusion = fusion((6, 6), 5, 1, True)
        self.pool = pool(1e-4, True, True, True)
        self.classifier = classifier(5, 5, 3, True, 1e-3)

    def forward(self, x):
        y = self.block(x)
        y = torch.cat([y, self.layer(y)], 1)
        t = self.transition(y)
        f = self.fusion(t, t.flip(1))
        return torch.cat([self.classifier(f, f), self.pool(f, f)], 1)


def _odd_fused_head() -> Head:
    m = Head()
    for layer in m.block.children():
        _set_bn(layer, "norm1", eps=1e-3, momentum=None)
        _set_bn(layer, "norm2", eps=1e-3, momentum=None)
    _set_bn(m.block.denselayer2, "norm2", eps=1e-3, momentum=None, affine=False)
    _set_bn(m.layer, "norm1", track_running_stats=False)
    _set_bn(m.layer, "norm2", track_running_stats=False)
    _set_bn(m.transition, "norm", momentum=0.05, affine=False)
    m = m.double()
    _randomise_bns(m)
    m.classifier.bias.requires_grad_(False)
    m.block.denselayer1.conv2.weight.requires_grad_(False)
    m.transition.eval()
    return m


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_to_plain_to_fused_round_trip(backend):
    fused = _odd_fused_head()
    snapshot = copy.deepcopy(fused)
    types = [(n, type(m)) for n, m in fused.named_modules()]
    ref = fk.nn.to_reference(fused)
    assert [(n, type(m)) for n, m in fused.named_modules()] == types  # the input is untouched
    _assert_same_state(fused, snapshot)
    assert _modes(fused) == _modes(snapshot)
    assert [
        type(getattr(ref, n)) for n in ("block", "layer", "transition", "fusion", "pool", "classifier")
    ] == [
        P.DenseBlockPlain,
        P.DenseLayerPlain,
        P.TransitionPlain,
        P.FusionConvPlain,
        P.BilinearPoolPlain,
        P.BilinearClassifierPlain,
    ]
    _assert_same_state(ref, fused)
    assert _modes(ref) == _modes(fused)
    ref_params = list(ref.parameters())
    back = fk.nn.convert(ref)
    assert back is ref  # in place
    assert [(n, type(m)) for n, m in back.named_modules()] == types
    assert all(p is q for p, q in zip(back.parameters(), ref_params, strict=True))  # adopted, not copied
    _assert_same_state(back, fused)
    assert _modes(back) == _modes(fused)
    # the three compute the same, in training (two steps) and eval
    models = (snapshot, fk.nn.to_reference(snapshot), back)
    with fk.use_backend(backend):
        for training in (True, True, False):
            x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
            outs = []
            for m in models:
                m.train(training)
                m.transition.eval()
                outs.append(m(x))
            _close(outs[1], outs[0], "plain twin output")
            _close(outs[2], outs[0], "converted back output")
            for (name, a), (_, b) in zip(models[0].named_buffers(), models[1].named_buffers(), strict=True):
                assert a.dtype == b.dtype and torch.allclose(a, b, rtol=0, atol=ATOL), name


def test_convert_keeps_optimizer_and_rng():
    plain = Head(
        P.DenseBlockPlain,
        P.TransitionPlain,
        P.FusionConvPlain,
        P.BilinearPoolPlain,
        P.BilinearClassifierPlain,
        P.DenseLayerPlain,
    )
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    rng = torch.get_rng_state()
    fused = fk.nn.convert(plain)
    assert torch.equal(rng, torch.get_rng_state())
    assert sum(isinstance(m, FUSED) for m in fused.modules()) == 8  # the block's 2 layers too
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert {id(p) for p in fused.parameters()} == held
    fused(torch.randn(2, 4, 6, 6)).sum().backward()
    before = fused.classifier.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, fused.classifier.weight)


# ---- what is not converted, and what the fused block refuses ----


def _layer_variants(c: int) -> dict:
    """Bottleneck layers (c in, growth 3, bn_size 2) that DenseLayer does not compute."""

    def conv2(**kw):
        layer = _DenseLayer(c, 3, 2)
        layer.conv2 = nn.Conv2d(6, 3, bias=False, **kw)
        return layer

    def extra():
        layer = _DenseLayer(c, 3, 2)
        layer.add_module("extra", nn.Identity())
        return layer

    def no_relu():
        layer = _DenseLayer(c, 3, 2)
        del layer.relu2
        return layer

    def bn_subclass():
        layer = _DenseLayer(c, 3, 2)
        layer.norm2 = nn.SyncBatchNorm(6)
        return layer

    return {
        "dropout": _DenseLayer(c, 3, 2, drop_rate=0.2),
        "padding 0": conv2(kernel_size=3, padding=0),
        "dilation": conv2(kernel_size=3, padding=2, dilation=2),
        "groups": conv2(kernel_size=3, padding=1, groups=3),
        "stride": conv2(kernel_size=3, padding=1, stride=2),
        "conv1 bias": _with_bias(_DenseLayer(c, 3, 2)),
        "extra child": extra(),
        "SyncBatchNorm": bn_subclass(),
        "no relu module": no_relu(),
    }


def _with_bias(layer):
    layer.conv1 = nn.Conv2d(layer.conv1.in_channels, layer.conv1.out_channels, 1, bias=True)
    return layer


@pytest.mark.parametrize("name", list(_layer_variants(4)))
def test_layer_that_differs_is_left_plain(name):
    layer = _layer_variants(4)[name]
    assert fk.nn.convert(layer) is layer
    block = _DenseBlock(2, 4, 2, 3)
    variant = _layer_variants(7)[name]
    block.denselayer2 = variant
    assert fk.nn.convert(block) is block  # the block is not fused; its other layers are
    assert type(block.denselayer1) is fk.nn.DenseLayer and block.denselayer2 is variant


@pytest.mark.parametrize(
    "pool",
    [
        nn.AvgPool2d(2, 1),
        nn.AvgPool2d(2, 2, ceil_mode=True),
        nn.AvgPool2d(2, 2, padding=1),
        nn.AvgPool2d(2, 2, divisor_override=3),
        nn.AvgPool2d((2, 3), (2, 3)),
        nn.MaxPool2d(2, 2),
    ],
    ids=["stride", "ceil_mode", "padding", "divisor", "not square", "max pool"],
)
def test_transition_with_another_pool_is_left_plain(pool):
    t = _Transition(4, 2)
    t.pool = pool
    assert fk.nn.convert(t) is t
    t = _Transition(4, 2)
    t.pool = nn.AvgPool2d((3, 3), (3, 3))
    fused = fk.nn.convert(t)
    assert isinstance(fused, fk.nn.Transition) and fused.pool == 3


def test_transition_in_another_order_is_left_plain():
    t = _Transition(4, 2)
    pool = t.pool
    del t.pool
    t._modules = {"pool": pool, **t._modules}  # a Sequential: pool first is another computation
    assert fk.nn.convert(t) is t


def test_block_with_disagreeing_bns_converts_per_layer():
    block = _DenseBlock(2, 4, 2, 3)
    block.denselayer2.norm1.eps = block.denselayer2.norm2.eps = 1e-3
    out = fk.nn.convert(block)
    assert out is block and all(type(c) is fk.nn.DenseLayer for c in block.values())
    block = P.DenseBlockPlain(2, 4, 3, 2)
    block.denselayer1.norm1.momentum = block.denselayer1.norm2.momentum = None
    assert fk.nn.convert(block) is block and all(type(c) is fk.nn.DenseLayer for c in block.children())


def test_fused_block_refuses_disagreeing_bns_and_changes_nothing():
    block = fk.nn.DenseBlock(2, 4, 3, 2)
    x = torch.randn(2, 4, 5, 5)
    block.denselayer2.norm1.eps = 1e-3
    with pytest.raises(
        ValueError, match=r"denselayer1\.norm1 has eps=1e-05 but denselayer2\.norm1 has eps=0\.001"
    ):
        block(x)
    block.denselayer2.norm1.eps = 1e-5
    block.denselayer1.norm2.momentum = None
    with pytest.raises(
        ValueError, match=r"denselayer1\.norm1 has momentum=0\.1 but denselayer1\.norm2 has momentum=None"
    ):
        block(x)
    for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.momentum = None
    block.denselayer2.norm2.num_batches_tracked.fill_(4)
    before = copy.deepcopy(block.state_dict())
    with pytest.raises(
        ValueError, match=r"num_batches_tracked \(denselayer1\.norm1=0, .*denselayer2\.norm2=4\)"
    ):
        block(x)
    for key, value in block.state_dict().items():
        assert torch.equal(value, before[key]), key
    layer = fk.nn.DenseLayer(4, 3, 2)
    layer.norm2.eval()
    with pytest.raises(RuntimeError, match=r"DenseLayer: norm1 uses batch statistics but norm2 does not"):
        layer(x)


def test_module_only_input_checks():
    """The ops check the total channels against the weights; the modules, how they split between inputs."""
    fusion = fk.nn.FusionConv((4, 6), 5)
    with pytest.raises(ValueError, match=r"xs: FusionConv expects 2 inputs, got 1"):
        fusion(torch.randn(2, 10, 4, 4))
    with pytest.raises(
        ValueError, match=r"xs: FusionConv expects inputs with \(4, 6\) channels, got \(6, 4\)"
    ):
        fusion(torch.randn(2, 6, 4, 4), torch.randn(2, 4, 4, 4))
    with pytest.raises(
        ValueError, match=r"weight: expected shape \(C_out, 9, 1, 1\) for inputs with 5 \+ 4 channels"
    ):
        fusion(torch.randn(2, 5, 4, 4), torch.randn(2, 4, 4, 4))
    head = fk.nn.BilinearClassifier(2, 3, 4)
    with pytest.raises(ValueError, match=r"BilinearClassifier expects a with 2 and b with 3 channels"):
        head(torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"weight: expected shape \(K, 9\)"):
        head(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))


def test_old_import_paths_still_work():
    import fer_models.export as export

    assert export.to_reference is fk.nn.to_reference and export.DenseBlockPlain is P.DenseBlockPlain
    block = fk.nn.DenseBlock(1, 2, 2, 1)
    twin = export.PLAIN_LAYERS[fk.nn.DenseBlock](block)
    assert type(twin) is P.DenseBlockPlain and twin.denselayer1.norm1 is block.denselayer1.norm1
