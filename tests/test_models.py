"""fer_models: registry-driven model tests (CONVENTIONS rule 9), IDEnNet and EIFN specifics, CAM, export.

Every registered model gets: forward without NaN, every trainable parameter gets a gradient, a training
step with finite losses, fused == reference backend (eval, 1e-4 relative to the largest logit), fused ==
plain-PyTorch copy, and a state-dict round trip. IDEnNet runs at its real size everywhere (48x48, growth 12);
EIFN's registry tests use narrow VGG stages (``widths``), and its real VGG-16 configuration is tested at
forward (and one training step) separately.
"""

import io
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import fer_kernels
import fer_kernels.nn as fnn
from fer_kernels.nn import to_reference
from fer_kernels.nn.plain import BilinearClassifierPlain, DenseBlockPlain, FusionConvPlain, TransitionPlain
from fer_models import EIFN, DenseNetBC, IDEnNet, create_model, list_models
from fer_models.cam import class_activation_map, jet, overlay, save_cam_grid, save_overlay
from fer_models.eifn import VGG16_WIDTHS, vgg16_features
from fer_models.export import export_onnx
from fer_models.idennet import densenet_bc_channels
from fer_models.losses import self_constrained_identity_loss
from fer_models.summary import count_macs, format_table, main, summarize
from tests.harness import assert_close

# Tiny tensors: one intra-op thread is faster than fanning out (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


ALL = [n for n in list_models() if not getattr(type(create_model(n)), "generative", False)]
SMALL_VGG = dict(widths=(8, 16, 16, 32, 32), id_hidden=16)
NUM_E, NUM_I = 6, 5
FUSED = (fnn.DenseBlock, fnn.Transition, fnn.FusionConv, fnn.BilinearClassifier, fnn.BilinearPool)


def build(name, **kw):
    """A registry model at test size: real IDEnNet / DenseNet, narrow EIFN."""
    if name in ("eifn", "eifn_star", "efn"):
        kw = {**SMALL_VGG, **kw}
    return create_model(name, num_expressions=NUM_E, num_identities=NUM_I, **kw)


def batch(model, n=2):
    x = torch.randn(n, *model.input_size)
    return x, torch.arange(n) % NUM_E, torch.arange(n) % NUM_I


def warm_up(model, steps=2):
    """Training-mode forwards so BatchNorm running statistics (and centers) are not their initial values."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            x, e, i = batch(model)
            model.loss(model(x * 2 + 0.5), e, i)
    return model


def logits_of(out):
    return [t for t in (out.expression, out.identity) if t is not None]


def assert_logits_close(actual, expected, name):
    """Each logit tensor within 1e-4 relative to the largest logit of the expected tensor."""
    for which in ("expression", "identity"):
        a, e = getattr(actual, which), getattr(expected, which)
        if e is None:
            assert a is None, f"{name}.{which}: expected None"
            continue
        assert_close(a, e, f"{name}.{which}", rtol=1e-4, atol=1e-4 * float(e.abs().max()))


def test_registry_lists_every_variant():
    expected = {f"idennet_{v}_{d}" for v in ("original", "i", "f", "if") for d in (16, 22, 40)}
    expected |= {f"densenet_bc_{d}" for d in (16, 22, 40)} | {
        f"densenet_bc_identity_{d}" for d in (16, 22, 40)
    }
    expected |= {"eifn", "eifn_star", "efn", "eifn_bn_slim", "eifn_star_bn_slim", "efn_bn_slim"}
    assert set(ALL) == expected
    assert set(list_models()) - set(ALL) == {"ipd_fer", "de_gan"}  # generative: tests/test_gan_models.py
    assert list_models("idennet_if_*") == ["idennet_if_16", "idennet_if_22", "idennet_if_40"]


# ---------------------------------------------------------------- registry-driven (every model)


@pytest.mark.parametrize("name", ALL)
def test_forward_no_nan(name):
    model = build(name).train()
    x, _, _ = batch(model)
    assert x.shape[1:] == model.input_size
    out = model(x)
    task_identity = name.startswith("densenet_bc_identity")
    if task_identity:
        assert out.expression is None and out.identity.shape == (2, NUM_I)
    else:
        assert out.expression.shape == (2, NUM_E)
    has_id = task_identity or name.startswith(("idennet_i_", "idennet_if_", "eifn"))
    assert (out.identity is not None) == has_id
    for t in logits_of(out):
        assert torch.isfinite(t).all(), f"{name}: non-finite output"
    model.eval()
    with torch.no_grad():
        for t in logits_of(model(x)):
            assert torch.isfinite(t).all()


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_a_gradient(name):
    model = build(name).train()
    x, e, i = batch(model)
    losses = model.loss(model(x), e, i)
    assert set(losses) >= {"total", "expression", "identity"}
    losses["total"].backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"{name}: frozen {pname} got a gradient"
            continue
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize("name", ALL)
def test_train_step(name):
    model = build(name).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, e, i = batch(model)
    losses = model.loss(model(x), e, i)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), f"{name}: loss {k} = {v}"
    opt.zero_grad()
    losses["total"].backward()
    opt.step()
    after = model.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    params = [k for k, _ in model.named_parameters()]
    assert set(params) <= set(changed), (
        f"{name}: unchanged parameters {sorted(set(params) - set(changed))[:3]}"
    )
    again = model.loss(model(x), e, i)
    assert torch.isfinite(again["total"])


@pytest.mark.parametrize("name", ALL)
def test_fused_equals_reference(name):
    model = warm_up(build(name)).eval()
    x, _, _ = batch(model)
    with torch.no_grad():
        fused = model(x)
        with fer_kernels.use_backend("reference"):
            ref = model(x)
        plain = to_reference(model)(x)
    assert_logits_close(fused, ref, f"{name} fused vs reference backend")
    assert_logits_close(fused, plain, f"{name} fused vs plain PyTorch copy")


@pytest.mark.parametrize("name", ALL)
def test_fused_equals_reference_training(name):
    """Training mode (batch statistics, dropout with the same seed): losses, gradients and running stats.

    Run in float64: in float32 a ReLU pre-activation within rounding of zero can land on the other side
    in the fused kernel than in the reference (seen on densenet_bc_16: one pixel of one bottleneck channel,
    which the 1x1 conv's backward spreads over every input channel), so a float32 comparison of a deep
    training-mode network tests the luck of rounding, not the kernels. In float64 that cannot happen at
    this size, and the fused path must agree to near machine precision. Eval-mode float32 parity is
    checked by test_fused_equals_reference.
    """
    import copy

    model = build(name).train().double()
    twin = copy.deepcopy(model)
    x, e, i = batch(model, 3)
    x = x.double()
    runs = []
    for m, backend in ((model, "auto"), (twin, "reference")):
        torch.manual_seed(1)
        with fer_kernels.use_backend(backend):
            losses = m.loss(m(x), e, i)
            losses["total"].backward()
        runs.append(losses)
    for k in runs[1]:
        assert_close(runs[0][k], runs[1][k], f"{name} loss {k}", rtol=1e-10, atol=1e-12)
    # Absolute floor from the largest gradient in the model: some gradients are zero up to rounding
    # (a conv bias followed by a training-mode BatchNorm), so their own scale is rounding noise.
    model_scale = max(float(q.grad.abs().max()) for q in twin.parameters() if q.grad is not None)
    for (pname, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), pname
        if q.grad is not None:
            assert_close(p.grad, q.grad, f"{name} grad {pname}", rtol=1e-8, atol=1e-12 * model_scale)
    for (bname, b), (_, c) in zip(model.named_buffers(), twin.named_buffers(), strict=True):
        if b.is_floating_point():
            assert_close(b, c, f"{name} buffer {bname}", rtol=1e-10, atol=1e-12)
        else:
            assert torch.equal(b, c), bname


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name):
    model = warm_up(build(name))
    x, e, i = batch(model)
    model.loss(model(x), e, i)["total"].backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.1 * p.grad)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = build(name)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for (k, a), (k2, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    model.eval()
    fresh.eval()
    with torch.no_grad():
        for a, b in zip(logits_of(model(x)), logits_of(fresh(x)), strict=True):
            assert torch.equal(a, b)
    # the plain copy has the same keys: checkpoints move between fused and plain models
    plain = to_reference(model)
    assert list(plain.state_dict()) == list(model.state_dict())
    fresh.load_state_dict(plain.state_dict())


# ---------------------------------------------------------------- IDEnNet


@pytest.mark.parametrize("depth,n", [(16, 2), (22, 3), (40, 6)])
def test_idennet_backbone_follows_densenet_bc(depth, n):
    assert densenet_bc_channels(40) == dict(stem=24, block1=96, trans1=48, block2=120, trans2=60, block3=132)
    m = IDEnNet("IF", depth, num_identities=10)
    for block in (
        m.emotion_group.denseblock1,
        m.emotion_group.denseblock2,
        m.identity_group.denseblock2,
        m.fusion_block,
    ):
        assert isinstance(block, fnn.DenseBlock) and block.num_layers == n and block.growth_rate == 12
    c = densenet_bc_channels(depth)
    assert m.fusion.in_channels == (c["block2"], c["block2"]) and m.fusion.conv.out_channels == c["trans2"]
    assert m.fusion_block.in_channels == c["trans2"] and m.fc_emo.in_features == c["block3"]
    assert m.emotion_group.conv0.kernel_size == (3, 3) and m.emotion_group.conv0.out_channels == 24
    assert m.forward_features(torch.randn(1, 1, 48, 48)).shape == (1, c["block3"], 12, 12)
    assert m.dropout.p == 0.5
    with pytest.raises(ValueError, match="depth"):
        IDEnNet("IF", 41)


def test_idennet_variants_compose_as_the_paper():
    parts = {}
    for v in ("original", "I", "F", "IF"):
        m = IDEnNet(v, 16, num_identities=7)
        names = {n for n, _ in m.named_children()}
        parts[v] = names
        assert m.variant == v and IDEnNet.canonical_variant(v.lower()) == v
        out = m(torch.randn(2, 1, 48, 48))
        assert (out.identity is not None) == ("I" in v)
    assert parts["original"] == {"emotion_group", "transition2", "fusion_block", "norm", "dropout", "fc_emo"}
    assert parts["I"] == parts["original"] | {"fc_id"}
    assert parts["F"] == {
        "emotion_group",
        "identity_group",
        "fusion",
        "fusion_block",
        "norm",
        "dropout",
        "fc_emo",
    }
    assert parts["IF"] == parts["F"] | {"fc_id"}
    with pytest.raises(ValueError, match="variant"):
        IDEnNet("FI")


def test_idennet_fc_id_reads_the_gap_features():
    m = IDEnNet("IF", 16, num_identities=9).eval()
    x = torch.randn(3, 1, 48, 48)
    out = m(x)
    gap = m.forward_features(x).mean((2, 3))
    assert_close(out.features, gap)
    assert_close(out.identity, m.fc_id(gap))
    assert_close(out.expression, m.fc_emo(gap))


@pytest.mark.parametrize("variant", ["I", "IF"])
def test_idennet_identity_loss_zero_for_unknown_identities(variant):
    m = IDEnNet(variant, 16, num_identities=8).train()
    x, e = torch.randn(3, 1, 48, 48), torch.tensor([0, 5, 2])
    out = m(x)
    for unknown in (torch.full((3,), -1), None):
        losses = m.loss(out, e, unknown)
        assert losses["identity"].item() == 0.0
        assert torch.equal(losses["total"], losses["expression"])
        assert_close(losses["expression"], F.cross_entropy(out.expression, e))
    known = torch.tensor([1, -1, 7])
    losses = m.loss(out, e, known)
    assert_close(losses["identity"], self_constrained_identity_loss(out.identity, known, 0.1, 15.0))
    assert losses["identity"] > 0
    assert_close(losses["total"], losses["expression"] + losses["identity"])
    m.zero_grad()
    m.loss(m(x), e, torch.full((3,), -1))["identity"].backward()
    assert m.fc_id.weight.grad is None or torch.equal(m.fc_id.weight.grad, torch.zeros_like(m.fc_id.weight))


def _pretrained_pair(depth=16):
    emo = DenseNetBC(depth, num_classes=8, task="expression")
    idn = DenseNetBC(depth, num_classes=20, task="identity")
    for net, labels in ((emo, torch.tensor([0, 3, 7, 1])), (idn, torch.tensor([4, 19, -1, 0]))):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):
            x = torch.randn(4, 1, 48, 48)
            out = net(x)
            loss = net.loss(out, labels, None) if net.task == "expression" else net.loss(out, None, labels)
            opt.zero_grad()
            loss["total"].backward()
            opt.step()
    return emo, idn


def _equal_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("variant", ["original", "I", "F", "IF"])
def test_idennet_from_pretrained(variant):
    emo, idn = _pretrained_pair()
    m = IDEnNet.from_pretrained(emo, idn, variant=variant, num_expressions=6, num_identities=11)
    assert m.variant == variant and m.fc_emo.out_features == 6
    assert _equal_state(m.emotion_group, emo.feature_group)
    assert _equal_state(m.fusion_block, emo.denseblock3)
    assert _equal_state(m.norm, emo.norm)
    if "F" in variant:
        assert _equal_state(m.identity_group, idn.feature_group)
        assert not _equal_state(m.identity_group, m.emotion_group)
    else:
        assert _equal_state(m.transition2, emo.transition2)
    if "I" in variant:
        assert m.fc_id.out_features == 11
    # the feature extraction groups are frozen: no grad, BatchNorms in eval even after .train()
    m.train()
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    groups = ("emotion_group.", "identity_group.")
    assert frozen == {n for n, _ in m.named_parameters() if n.startswith(groups)}
    assert all(not mod.training for g in m.feature_groups for mod in g.modules())
    assert m.fusion_block.training and m.norm.training
    frozen_state = {k: v.clone() for k, v in m.state_dict().items() if k.startswith(groups)}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    x, e, i = torch.randn(4, 1, 48, 48), torch.tensor([0, 1, 2, 5]), torch.tensor([0, 10, -1, 3])
    losses = m.loss(m(x), e, i)
    opt.zero_grad()
    losses["total"].backward()
    for n, p in m.named_parameters():
        assert (p.grad is None) == (n in frozen), n
    opt.step()
    for k, v in m.state_dict().items():
        if k in frozen_state:
            assert torch.equal(v, frozen_state[k]), f"frozen {k} changed"
    assert not torch.equal(
        m.state_dict()["fusion_block.denselayer1.conv1.weight"],
        emo.state_dict()["denseblock3.denselayer1.conv1.weight"],
    )
    # the frozen state travels with the state dict (a resumed fine-tuning stays frozen)
    resumed = IDEnNet(variant, 16, 6, 11)
    assert not resumed.frozen
    resumed.load_state_dict(m.state_dict())
    assert resumed.frozen and not resumed.emotion_group.training
    assert {n for n, p in resumed.named_parameters() if not p.requires_grad} == frozen
    # unfreezing restores normal training
    m.freeze_feature_groups(False)
    assert all(p.requires_grad for p in m.parameters()) and m.emotion_group.training


def test_idennet_from_pretrained_checks():
    emo, idn = _pretrained_pair()
    with pytest.raises(ValueError, match="identity_net"):
        IDEnNet.from_pretrained(emo, None, variant="F")
    with pytest.raises(ValueError, match="num_identities"):
        IDEnNet.from_pretrained(emo, idn, variant="IF")
    with pytest.raises(ValueError, match="depth"):
        IDEnNet.from_pretrained(emo, DenseNetBC(22, 5, "identity"), variant="F")
    m = IDEnNet.from_pretrained(emo, variant="original", freeze=False)
    assert m.fc_emo.out_features == 8 and all(p.requires_grad for p in m.parameters())


def test_layers_are_swappable():
    """Rule 12: the *_layer arguments take the plain twins; same state dict, same outputs."""
    fused = warm_up(IDEnNet("IF", 16, num_identities=5)).eval()
    plain = IDEnNet(
        "IF",
        16,
        num_identities=5,
        block_layer=DenseBlockPlain,
        transition_layer=TransitionPlain,
        fusion_layer=FusionConvPlain,
    ).eval()
    plain.load_state_dict(fused.state_dict())
    assert not any(isinstance(m, FUSED) for m in plain.modules())
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        assert_logits_close(fused(x), plain(x), "IDEnNet plain layers")
    e_fused = warm_up(EIFN("EIFN", 4, 5, **SMALL_VGG)).eval()
    e_plain = EIFN("EIFN", 4, 5, **SMALL_VGG, bilinear_layer=BilinearClassifierPlain).eval()
    e_plain.load_state_dict(e_fused.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert_logits_close(e_fused(x), e_plain(x), "EIFN plain bilinear")


def test_to_reference_is_plain_and_back_convertible():
    m = warm_up(IDEnNet("IF", 16, num_identities=5))
    ref = m.to_reference()
    assert not any(isinstance(mod, FUSED) for mod in ref.modules())
    assert any(isinstance(mod, fnn.DenseBlock) for mod in m.modules())  # the original is untouched
    assert ref.training == m.training
    assert _equal_state(ref, m)
    frozen = IDEnNet.from_pretrained(*_pretrained_pair(), variant="F")
    ref = frozen.to_reference()
    assert [p.requires_grad for p in ref.parameters()] == [p.requires_grad for p in frozen.parameters()]
    # fer_kernels.nn.convert recognises the plain dense blocks again
    back = fnn.convert(m.to_reference())
    assert isinstance(back.fusion_block, fnn.DenseBlock) and _equal_state(back, m)


# ---------------------------------------------------------------- EIFN


def test_eifn_structure():
    e = EIFN("EIFN", 7, 118)
    assert e.input_size == (1, 64, 64)
    for ext in (e.identity_extractor, e.expression_extractor):
        convs = [m for m in ext if isinstance(m, nn.Conv2d)]
        assert len(convs) == 13 and [c.out_channels for c in convs][-1] == 512
        assert isinstance(ext[29], nn.ReLU) and isinstance(ext[30], nn.MaxPool2d) and len(ext) == 31
    assert e.identity_extractor is not e.expression_extractor
    assert isinstance(e.classifier, fnn.BilinearClassifier)
    assert (e.classifier.ca, e.classifier.cb, e.classifier.num_classes) == (512, 512, 7)
    assert (e.fc1.in_features, e.fc1.out_features, e.fc2.out_features) == (512 * 2 * 2, 512, 118)
    assert e.center_loss.centers.shape == (118, 512)
    assert (e.lambda1, e.lambda2, e.lambda3) == (1e-4, 1.0, 6.0)
    efn = EIFN("EFN", 7, 118)
    assert efn.lambda2 == 0 and not hasattr(efn, "fc1") and not hasattr(efn, "center_loss")
    with pytest.raises(ValueError, match="lambda2"):
        EIFN("EFN", lambda2=1.0)
    assert EIFN.canonical_variant("eifn_star") == "EIFN*"


@pytest.mark.parametrize("variant", ["EFN", "EIFN*", "EIFN"])
def test_eifn_real_configuration_forward(variant):
    e = EIFN(variant, 7, 118).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = e(x)
        assert out.expression.shape == (2, 7) and torch.isfinite(out.expression).all()
        if variant == "EFN":
            assert out.identity is None and out.identity_features is None
        else:
            assert out.identity.shape == (2, 118) and out.identity_features.shape == (2, 512)
            assert torch.isfinite(out.identity).all()
        if variant == "EIFN":
            with fer_kernels.use_backend("reference"):
                assert_logits_close(out, e(x), "EIFN real size, fused vs reference")


def test_eifn_real_configuration_trains_a_step():
    e = EIFN("EIFN", 7, 118).train()
    opt = torch.optim.SGD(e.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, ex, idn = torch.randn(2, 1, 64, 64), torch.tensor([0, 6]), torch.tensor([3, 117])
    losses = e.loss(e(x), ex, idn)
    assert all(torch.isfinite(v) for v in losses.values())
    opt.zero_grad()
    losses["total"].backward()
    assert all(p.grad is not None for p in e.parameters())
    opt.step()


def test_eifn_gray_input_is_repeated_to_rgb():
    e = EIFN("EIFN", 4, 5, **SMALL_VGG).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a, b = e(x), e(x.repeat(1, 3, 1, 1))
    assert torch.equal(a.expression, b.expression) and torch.equal(a.identity, b.identity)
    with pytest.raises(ValueError, match="x"):
        e(torch.randn(2, 2, 64, 64))


def _grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("variant,reaches", [("EIFN*", False), ("EIFN", True), ("EFN", True)])
def test_eifn_expression_loss_and_identity_extractor(variant, reaches):
    e = EIFN(variant, 4, 5, **SMALL_VGG).train()
    x, ex, idn = torch.randn(3, 1, 64, 64), torch.tensor([0, 1, 3]), torch.tensor([4, 0, 2])
    losses = e.loss(e(x), ex, idn)
    losses["expression"].backward(retain_graph=True)
    grads = _grads(e.identity_extractor)
    total = sum(float(g.abs().sum()) for g in grads if g is not None)
    if reaches:
        assert all(g is not None for g in grads) and total > 0
    else:
        assert total == 0.0
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(e.expression_extractor))
    if variant != "EFN":
        # the identity loss trains the identity extractor in both EIFN and EIFN*
        e.zero_grad()
        losses["identity"].backward()
        assert all(g is not None and g.abs().sum() > 0 for g in _grads(e.identity_extractor))
        assert all(g is None for g in _grads(e.expression_extractor))


def test_eifn_loss_formula_and_centers():
    e = EIFN("EIFN", 4, 5, **SMALL_VGG, lambda1=0.5, lambda2=2.0, lambda3=3.0).train()
    x, ex, idn = torch.randn(4, 1, 64, 64), torch.tensor([0, 1, 3, 2]), torch.tensor([4, -1, 2, 4])
    out = e(x)
    centers = e.center_loss.centers.clone()
    losses = e.loss(out, ex, idn)
    known = idn >= 0
    l_sid = F.cross_entropy(out.identity[known], idn[known])
    diff = out.identity_features[known] - centers[idn[known]]
    l_cid = 0.5 * diff.pow(2).sum() / known.sum()
    l_exp = F.cross_entropy(out.expression, ex)
    assert_close(losses["identity_softmax"], l_sid)
    assert_close(losses["identity_center"], l_cid)
    assert_close(losses["identity"], l_sid + 0.5 * l_cid)
    assert_close(losses["total"], 2.0 * (l_sid + 0.5 * l_cid) + 3.0 * l_exp)
    # training mode moved the centers of identities 2 and 4 only; eval leaves them
    moved = (e.center_loss.centers != centers).any(1)
    assert moved.tolist() == [False, False, True, False, True]
    assert "center_loss.centers" in e.state_dict()
    assert all(p is not e.center_loss.centers for p in e.parameters())
    e.eval()
    before = e.center_loss.centers.clone()
    e.loss(e(x), ex, idn)
    assert torch.equal(e.center_loss.centers, before)
    # unknown identities: no identity loss at all
    e.train()
    zero = e.loss(e(x), ex, torch.full((4,), -1))
    assert zero["identity"].item() == 0.0 and torch.equal(zero["total"], 3.0 * zero["expression"])
    efn = EIFN("EFN", 4, 5, **SMALL_VGG)
    out = efn(x)
    losses = efn.loss(out, ex, idn)
    assert losses["identity"].item() == 0.0
    assert_close(losses["total"], 6.0 * F.cross_entropy(out.expression, ex))


def _torchvision_vgg16_state(widths, seed=1):
    """A state dict in torchvision's VGG-16 layout (features.N.*, classifier.*), with given stage widths."""
    g = torch.Generator().manual_seed(seed)
    sd, c, idx = {}, 3, 0
    for w, convs in zip(widths, (2, 2, 3, 3, 3), strict=True):
        for _ in range(convs):
            sd[f"features.{idx}.weight"] = torch.randn(w, c, 3, 3, generator=g)
            sd[f"features.{idx}.bias"] = torch.randn(w, generator=g)
            c, idx = w, idx + 2
        idx += 1
    sd["classifier.0.weight"] = torch.randn(4, widths[-1] * 49, generator=g)
    sd["classifier.0.bias"] = torch.randn(4, generator=g)
    return sd


def test_load_vgg16_weights_from_local_file(tmp_path):
    sd = _torchvision_vgg16_state(SMALL_VGG["widths"])
    conv_idx = sorted(
        {int(re.match(r"features\.(\d+)\.", k).group(1)) for k in sd if k.startswith("features")}
    )
    assert conv_idx == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision's vgg16().features
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    e = EIFN("EIFN", 4, 5, **SMALL_VGG)
    fc_before = e.fc1.weight.clone()
    assert e.load_vgg16_weights(path) is e
    for ext in (e.identity_extractor, e.expression_extractor):
        for k, v in ext.state_dict().items():
            assert torch.equal(v, sd[f"features.{k}"]), k
    assert torch.equal(e.fc1.weight, fc_before)
    # the builder argument, a prefixed / wrapped checkpoint, and loading one extractor only
    e2 = create_model("eifn_star", num_expressions=4, num_identities=5, vgg16_weights=path, **SMALL_VGG)
    assert _equal_state(e2.identity_extractor, e.identity_extractor)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, wrapped)
    e3 = EIFN("EFN", 4, 5, **SMALL_VGG).load_vgg16_weights(wrapped, extractors=("expression",))
    assert _equal_state(e3.expression_extractor, e.expression_extractor)
    assert not _equal_state(e3.identity_extractor, e.identity_extractor)
    # wrong widths or missing layers are errors that name the key
    with pytest.raises(ValueError, match=r"features\.0\.weight has shape"):
        EIFN("EIFN", 4, 5).load_vgg16_weights(path)
    del sd["features.28.weight"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing features\.28\.weight"):
        EIFN("EIFN", 4, 5, **SMALL_VGG).load_vgg16_weights(path)
    torch.save({"fc.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="no 'features"):
        EIFN("EIFN", 4, 5, **SMALL_VGG).load_vgg16_weights(path)


def test_vgg16_features_layout_matches_torchvision_names():
    ext = vgg16_features(VGG16_WIDTHS)
    keys = [k for k in ext.state_dict() if k.endswith("weight")]
    assert keys == [f"{i}.weight" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
    assert sum(p.numel() for p in ext.parameters()) == 14_714_688  # torchvision vgg16().features


# ---------------------------------------------------------------- response maps


def test_class_activation_map_after_fusion_dense_block():
    m = warm_up(IDEnNet("IF", 16, num_identities=5))
    m.train()
    x = torch.randn(3, 1, 48, 48)
    cam = class_activation_map(m, x, target=[0, 5, 2])
    assert m.training  # mode restored
    assert cam.heatmap.shape == (3, 48, 48) and cam.raw.shape == (3, 12, 12)
    assert cam.target.tolist() == [0, 5, 2]
    assert float(cam.heatmap.min()) == 0.0 and float(cam.heatmap.max()) == 1.0
    # GAP and FC_emo are linear: the mean of the raw map is the class logit minus its bias
    m.eval()
    with torch.no_grad():
        logits = m(x).expression
        feats = m.forward_features(x)
    assert_close(cam.logits, logits)
    picked = logits[torch.arange(3), cam.target] - m.fc_emo.bias[cam.target]
    assert_close(cam.raw.mean((1, 2)), picked, rtol=1e-5, atol=1e-5)
    manual = torch.einsum("chw,c->hw", feats[1], m.fc_emo.weight[5])
    assert_close(cam.raw[1], manual)
    predicted = class_activation_map(m, x)
    assert predicted.target.tolist() == logits.argmax(1).tolist()
    assert class_activation_map(m, x, 3, size=(24, 24)).heatmap.shape == (3, 24, 24)
    with pytest.raises(ValueError, match="target"):
        class_activation_map(m, x, 6)
    with pytest.raises(TypeError, match="forward_features"):
        class_activation_map(EIFN("EIFN", 4, 5, **SMALL_VGG), torch.randn(1, 1, 64, 64))
    # the pre-training DenseNet has the same head
    d = DenseNetBC(16, 4)
    assert class_activation_map(d, x, 1).raw.shape == (3, 12, 12)


def test_jet_colormap_and_png_overlay(tmp_path):
    assert jet([0.0]).tolist() == [[0, 0, 128]] and jet([1.0]).tolist() == [[128, 0, 0]]
    assert jet([0.5]).tolist() == [[128, 255, 128]]
    face = torch.linspace(0, 1, 48 * 48).reshape(1, 48, 48)
    heat = torch.zeros(12, 12)
    heat[:6] = 1.0  # hot upper half
    path = save_overlay(face, heat, tmp_path / "cam.png", alpha=0.5, scale=2)
    img = Image.open(path)
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (96, 96)
    px = torch.from_numpy(np.asarray(img, dtype=np.float32))
    assert px[:40, :, 0].mean() > px[:40, :, 2].mean() + 40  # red on top
    assert px[-40:, :, 2].mean() > px[-40:, :, 0].mean() + 40  # blue below
    assert overlay(face[0].numpy(), heat.numpy(), alpha=0.0).getpixel((0, 0)) == (0, 0, 0)
    m = IDEnNet("F", 16, num_expressions=3)
    grid = Image.open(
        save_cam_grid(m, torch.randn(2, 1, 48, 48), tmp_path / "grid.png", ["An", "Ha", "Su"], scale=1)
    )
    assert grid.size == (4 * 48, 14 + 2 * 48)


# ---------------------------------------------------------------- ONNX export


def _onnx_check(model, path, n_check=3):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installable on this platform")
    model = warm_up(model).eval()
    names = export_onnx(model, path, batch_size=2)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == names
    x = torch.randn(n_check, *model.input_size)  # another batch size: the batch is dynamic
    got = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = logits_of(model(x))
    assert len(got) == len(want)
    for g, w, name in zip(got, want, names, strict=True):
        assert_close(torch.from_numpy(g), w, f"onnx {name}", rtol=1e-4, atol=1e-4 * float(w.abs().max()))


def test_onnx_export_idennet_if(tmp_path):
    # depth 16 (idennet_if_16): the graph of depth 40 with fewer dense layers, at a third of the export time
    _onnx_check(IDEnNet("IF", 16, num_expressions=6, num_identities=80), tmp_path / "idennet_if_16.onnx")


def test_onnx_export_eifn(tmp_path):
    _onnx_check(EIFN("EIFN", 7, 11, **SMALL_VGG), tmp_path / "eifn.onnx")


# ---------------------------------------------------------------- summary


def test_count_macs():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Linear(4, 3)
            self.input_size = (1, 8, 8)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    assert count_macs(Tiny()) == 4 * 9 * 64 + 4 * 3
    e = EIFN("EFN", 7, 118)
    convs = 0
    side, c = 64, 3
    for w, n in zip(VGG16_WIDTHS, (2, 2, 3, 3, 3), strict=True):
        for _ in range(n):
            convs += side * side * 9 * c * w
            c = w
        side //= 2
    assert count_macs(e) == 2 * convs + 512 * 512 * 4 + 7 * 512 * 512


def test_summary_table(capsys):
    rows = summarize("idennet_*_16")
    assert [r.name for r in rows] == ["idennet_original_16", "idennet_i_16", "idennet_f_16", "idennet_if_16"]
    for r in rows:
        m = create_model(r.name)
        assert r.parameters == sum(p.numel() for p in m.parameters())
        assert r.depth == 16 and r.macs > 0
    assert rows[0].macs < rows[2].macs  # the fusion variants run two feature extraction groups
    table = format_table(rows)
    assert table.count("\n") == 5 and "| idennet_if_16" in table
    assert main(["--models", "eifn*"]) == 0
    assert torch.is_grad_enabled()
    out = capsys.readouterr().out
    assert "| eifn_star" in out and "| eifn " in out and "MACs / image" in out
