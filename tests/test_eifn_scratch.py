"""EIFN from scratch: the BatchNorm VGG-16 option (torchvision ``vgg16_bn`` layout and weights), the
``*_bn_slim`` variants, their recipe (``--id-rate 0`` -> ``efn_bn_slim``) and the bilinear scale.

torchvision is not a dependency: the ``vgg16_bn`` layout is written out here by hand (conv at index i,
BatchNorm at i + 1, ReLU at i + 2, a max-pool closing each of the 2-2-3-3-3 stages).
"""

import math

import pytest
import torch
from torch import nn

import fer_kernels
from fer_kernels.nn import to_reference
from fer_models import EIFN, create_model, list_models
from fer_models.eifn import (
    SLIM_BILINEAR_SCALE,
    SLIM_WIDTHS,
    VGG16_WIDTHS,
    load_vgg16_features,
    vgg16_features,
)
from fer_models.recipes import recipe_for
from tests.harness import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = (8, 16, 16, 32, 32)
SLIM_NAMES = ("eifn_bn_slim", "eifn_star_bn_slim", "efn_bn_slim")
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def vgg16_bn_layout(widths=VGG16_WIDTHS, in_chans=3):
    """torchvision ``vgg16_bn().features`` written out: ``[(index, kind, channels_in, channels_out)]`` for the
    conv and BatchNorm modules, and the number of modules."""
    out, idx, c = [], 0, in_chans
    for w, convs in zip(widths, (2, 2, 3, 3, 3), strict=True):
        for _ in range(convs):
            out += [(idx, "conv", c, w), (idx + 1, "bn", w, w)]  # idx + 2: ReLU
            c, idx = w, idx + 3
        idx += 1  # MaxPool2d
    return out, idx


def vgg16_bn_state(widths, seed=1, prefix="features.", with_count=True):
    """A fabricated state dict in torchvision's vgg16_bn layout (features.*, a classifier), random values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for idx, kind, c, w in vgg16_bn_layout(widths)[0]:
        p = f"{prefix}{idx}."
        if kind == "conv":
            sd[p + "weight"] = torch.randn(w, c, 3, 3, generator=g)
            sd[p + "bias"] = torch.randn(w, generator=g)
        else:
            sd[p + "weight"] = torch.rand(w, generator=g) + 0.5
            sd[p + "bias"] = torch.randn(w, generator=g)
            sd[p + "running_mean"] = torch.randn(w, generator=g)
            sd[p + "running_var"] = torch.rand(w, generator=g) + 0.5
            if with_count:
                sd[p + "num_batches_tracked"] = torch.tensor(1000 + idx)
    sd["classifier.0.weight"] = torch.randn(4, widths[-1] * 49, generator=g)
    sd["classifier.0.bias"] = torch.randn(4, generator=g)
    return sd


def vgg16_plain_state(widths, seed=1):
    """The same for torchvision's plain vgg16 (conv at 0, 2, 5, 7, ...)."""
    g = torch.Generator().manual_seed(seed)
    sd, c, idx = {}, 3, 0
    for w, convs in zip(widths, (2, 2, 3, 3, 3), strict=True):
        for _ in range(convs):
            sd[f"features.{idx}.weight"] = torch.randn(w, c, 3, 3, generator=g)
            sd[f"features.{idx}.bias"] = torch.randn(w, generator=g)
            c, idx = w, idx + 2
        idx += 1
    return sd


# ---------------------------------------------------------------- layout


def test_bn_layout_matches_torchvision_vgg16_bn():
    layout, n_modules = vgg16_bn_layout()
    convs = [i for i, kind, _, _ in layout if kind == "conv"]
    assert convs == [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    ext = vgg16_features(VGG16_WIDTHS, batch_norm=True)
    assert len(ext) == n_modules == 44
    expected = []
    for idx, kind, _, _ in layout:
        expected += [f"{idx}.{k}" for k in (("weight", "bias") if kind == "conv" else BN_KEYS)]
    assert list(ext.state_dict()) == expected
    for idx, kind, c, w in layout:
        m = ext[idx]
        if kind == "conv":
            assert isinstance(m, nn.Conv2d) and (m.in_channels, m.out_channels) == (c, w)
            assert m.bias is not None  # torchvision's vgg16_bn keeps the conv biases
            assert isinstance(ext[idx + 2], nn.ReLU)
        else:
            assert isinstance(m, nn.BatchNorm2d) and m.num_features == w
    assert [i for i, m in enumerate(ext) if isinstance(m, nn.MaxPool2d)] == [6, 13, 23, 33, 43]
    # torchvision vgg16_bn().features: vgg16's 14,714,688 + 2 x 4224 BatchNorm affine parameters
    assert sum(p.numel() for p in ext.parameters()) == 14_723_136
    assert ext(torch.randn(2, 3, 64, 64)).shape == (2, 512, 2, 2)


def test_default_stays_plain():
    e = EIFN("EIFN", 4, 5, widths=SMALL, id_hidden=16)
    assert not e.batch_norm and e.bilinear_scale == 1.0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in e.modules())
    keys = list(e.state_dict())
    assert not any("running" in k or "scale" in k for k in keys)
    convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features
    assert [k for k in keys if k.startswith("identity_extractor.")] == [
        f"identity_extractor.{i}.{p}" for i in convs for p in ("weight", "bias")
    ]


# ---------------------------------------------------------------- vgg16_bn weights


def _equal_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_vgg16_bn_weights(tmp_path):
    sd = vgg16_bn_state(SMALL)
    path = tmp_path / "vgg16_bn.pth"
    torch.save(sd, path)
    e = EIFN("EIFN", 4, 5, widths=SMALL, id_hidden=16, batch_norm=True)
    fc_before = e.fc1.weight.clone()
    assert e.load_vgg16_weights(path) is e
    for ext in (e.identity_extractor, e.expression_extractor):
        own = ext.state_dict()
        assert len(own) == len([k for k in sd if k.startswith("features.")])
        for k, v in own.items():
            assert torch.equal(v, sd[f"features.{k}"]), k
    assert torch.equal(e.fc1.weight, fc_before)
    # the loaded running statistics are used in eval mode
    ext = e.expression_extractor.eval()
    x = torch.randn(1, 3, 64, 64)
    bn1 = ext[1]
    y = ext[0](x)
    expect = (y - sd["features.1.running_mean"][:, None, None]) / torch.sqrt(
        sd["features.1.running_var"][:, None, None] + bn1.eps
    ) * sd["features.1.weight"][:, None, None] + sd["features.1.bias"][:, None, None]
    assert_close(bn1(y), expect, "loaded BatchNorm", rtol=1e-5, atol=1e-5)
    # builder argument, prefixed + wrapped dict, one extractor only, and a file without num_batches_tracked
    e2 = create_model("eifn_bn_slim", num_expressions=4, num_identities=5, widths=SMALL, vgg16_weights=path)
    assert _equal_state(e2.identity_extractor, e.identity_extractor)
    wrapped = {"state_dict": vgg16_bn_state(SMALL, prefix="module.features.")}
    e3 = EIFN("EFN", 4, 5, widths=SMALL, batch_norm=True)
    e3.load_vgg16_weights(wrapped, extractors=("expression",))
    assert _equal_state(e3.expression_extractor, e.expression_extractor)
    assert not _equal_state(e3.identity_extractor, e.identity_extractor)
    e4 = EIFN("EFN", 4, 5, widths=SMALL, batch_norm=True)
    counts = e4.identity_extractor[1].num_batches_tracked.clone()
    e4.load_vgg16_weights(vgg16_bn_state(SMALL, with_count=False))
    assert torch.equal(e4.identity_extractor[1].running_mean, sd["features.1.running_mean"])
    assert torch.equal(e4.identity_extractor[1].num_batches_tracked, counts)
    # the reader keeps the BatchNorm buffers
    feats = load_vgg16_features(path)
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked", "40.weight"} <= set(feats)


def test_vgg16_layout_mismatch_is_refused(tmp_path):
    plain, bn = vgg16_plain_state(SMALL), vgg16_bn_state(SMALL)
    path = tmp_path / "vgg16.pth"
    torch.save(plain, path)
    with pytest.raises(ValueError, match=r"torchvision vgg16 state dict.*built with batch_norm.*vgg16_bn"):
        EIFN("EIFN", 4, 5, widths=SMALL, batch_norm=True).load_vgg16_weights(path)
    refused = r"torchvision vgg16_bn state dict.*built without batch_norm.*takes a vgg16 state"
    with pytest.raises(ValueError, match=refused):
        EIFN("EIFN", 4, 5, widths=SMALL).load_vgg16_weights(bn)
    # the plain model still takes the plain dict; a BN dict of other widths or with a tensor missing names it
    EIFN("EIFN", 4, 5, widths=SMALL).load_vgg16_weights(path)
    with pytest.raises(ValueError, match=r"features\.0\.weight has shape"):
        EIFN("EIFN", 4, 5, batch_norm=True).load_vgg16_weights(bn)
    del bn["features.41.running_var"]
    with pytest.raises(ValueError, match=r"missing features\.41\.running_var"):
        EIFN("EIFN", 4, 5, widths=SMALL, batch_norm=True).load_vgg16_weights(bn)


# ---------------------------------------------------------------- the slim variants


@pytest.mark.parametrize("name", SLIM_NAMES)
def test_slim_variant_forward_backward(name):
    assert name in list_models()
    m = create_model(name, num_expressions=6, num_identities=5).train()
    assert m.input_size == (1, 64, 64) and m.widths == SLIM_WIDTHS and m.batch_norm
    assert m.bilinear_scale == SLIM_BILINEAR_SCALE
    assert m.variant == {"eifn_bn_slim": "EIFN", "eifn_star_bn_slim": "EIFN*", "efn_bn_slim": "EFN"}[name]
    for ext in (m.identity_extractor, m.expression_extractor):
        convs = [x for x in ext if isinstance(x, nn.Conv2d)]
        assert len(convs) == 13 and sum(isinstance(x, nn.BatchNorm2d) for x in ext) == 13
        widths = [w for w, n in zip(SLIM_WIDTHS, (2, 2, 3, 3, 3), strict=True) for _ in range(n)]
        assert [c.out_channels for c in convs] == widths
    assert (m.classifier.ca, m.classifier.cb) == (SLIM_WIDTHS[-1], SLIM_WIDTHS[-1])
    x = torch.randn(3, 1, 64, 64)
    ex, idn = torch.tensor([0, 5, 2]), torch.tensor([4, 0, -1])
    out = m(x)
    assert out.expression.shape == (3, 6)
    if name == "efn_bn_slim":
        assert out.identity is None and out.identity_features is None
    else:
        assert out.identity.shape == (3, 5) and out.identity_features.shape == (3, 128)
        assert m.fc1.in_features == SLIM_WIDTHS[-1] * 2 * 2
    losses = m.loss(out, ex, idn)
    losses["expression"].backward(retain_graph=True)
    reaches = sum(float(p.grad.abs().sum()) for p in m.identity_extractor.parameters() if p.grad is not None)
    assert (reaches > 0) == (name != "eifn_star_bn_slim")  # EIFN*: F_id enters the fusion detached
    m.zero_grad()
    losses["total"].backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # keyword arguments override the slim defaults (e.g. the registry tests' narrow widths)
    small = create_model(name, num_expressions=6, num_identities=5, widths=SMALL, bilinear_scale=2.0)
    assert small.widths == SMALL and small.batch_norm and small.bilinear_scale == 2.0


def test_slim_variants_fused_equals_reference():
    m = create_model("eifn_bn_slim", num_expressions=6, num_identities=5).train()
    with torch.no_grad():
        m(torch.randn(4, 1, 64, 64))  # running statistics off their initial values
    m.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        fused = m(x)
        ref = to_reference(m)(x)
        with fer_kernels.use_backend("reference"):
            ref_backend = m(x)
    for other in (ref, ref_backend):
        scale = float(fused.expression.abs().max())
        assert_close(other.expression, fused.expression, "expression", rtol=1e-4, atol=1e-4 * scale)
        assert_close(other.identity, fused.identity, "identity", rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- recipe


def test_slim_recipe_and_id_rate_zero():
    from fer_models.train import build_parser, resolve_settings

    for name in ("eifn_bn_slim", "eifn_star_bn_slim"):
        r = recipe_for(name)
        assert r.family == "EIFN-BN-slim" and r.id_rate_zero(name) == "efn_bn_slim"
        assert (r.batch_size, r.momentum, r.weight_decay, r.input_size) == (100, 0.9, 5e-4, 64)
        assert r.loss_weights == (1e-4, 1.0, 6.0) and r.lr == 0.05
        for key in ("lr", "schedule", "model", "epochs"):
            assert "deviation" in r.sources[key], key
    efn = recipe_for("efn_bn_slim")
    assert efn.id_rate_zero is None and efn.loss_weights == (1e-4, 0.0, 6.0) and efn.lr == 0.05
    # the paper's models keep the paper's recipe
    assert recipe_for("eifn").lr == 0.01 and recipe_for("eifn").id_rate_zero("eifn") == "efn"
    # fer-train --id-rate 0 trains the slim baseline, with its recipe
    for name in ("eifn_bn_slim", "eifn_star_bn_slim"):
        args = build_parser().parse_args(["--model", name, "--id-rate", "0", "--epochs", "8"])
        resolve_settings(args, "expression")
        assert args.model == "efn_bn_slim" and args.requested_model == name
        assert args.lr == 0.05 and args.loss_weights == {"lambda1": 1e-4, "lambda2": 0.0, "lambda3": 6.0}
        assert args.lr_milestones == [6]
    args = build_parser().parse_args(["--model", "eifn_bn_slim", "--epochs", "8"])
    resolve_settings(args, "expression")
    assert args.model == "eifn_bn_slim" and args.loss_weights["lambda2"] == 1.0


# ---------------------------------------------------------------- bilinear scale


def test_bilinear_scale_multiplies_the_expression_logits():
    base = EIFN("EIFN", 4, 5, widths=SMALL, id_hidden=16, batch_norm=True).eval()
    scaled = EIFN("EIFN", 4, 5, widths=SMALL, id_hidden=16, batch_norm=True, bilinear_scale=4.0).eval()
    assert base.state_dict().keys() == scaled.state_dict().keys()  # a constant, not a tensor
    scaled.load_state_dict(base.state_dict())
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        a, b = base(x), scaled(x)
    assert_close(b.expression, 4.0 * a.expression, "scaled logits", rtol=1e-6, atol=1e-6)
    assert torch.equal(a.identity, b.identity)
    # the scale survives the plain-PyTorch copy
    with torch.no_grad():
        assert_close(to_reference(scaled)(x).expression, b.expression, "reference", rtol=1e-4, atol=1e-5)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="bilinear_scale"):
            EIFN("EIFN", 4, 5, widths=SMALL, bilinear_scale=bad)
