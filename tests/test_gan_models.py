"""fer_models: the generative models IPD-FER (``ipd_fer``) and DE-GAN (``de_gan``).

Their losses take images (and pose / neutral frames), not ``loss(out, expression, identity)``, so the
registry-driven tests of tests/test_models.py skip them (class attribute ``generative``); this file gives them
the same checks (shapes, finite losses, fused == reference, state-dict round trip, registry and summary) and
their own: the frozen identity encoder, the discriminator step, unknown pose / identity labels, training
steps and the sample grid.
"""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fer_kernels
import fer_kernels.nn as fnn
from fer_kernels.nn import to_reference
from fer_models import DEGAN, IPDFER, create_model, evaluate, list_models, predict, train
from fer_models.data import write_synthfer
from fer_models.idennet import DenseNetBC
from fer_models.ipd_fer import LABEL_WIDTH
from fer_models.recipes import recipe_for
from fer_models.summary import main as summary_main
from fer_models.summary import summarize
from tests.harness import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_E, NUM_P, NUM_I = 6, 5, 7
FUSED = (fnn.DenseBlock, fnn.Transition, fnn.FusionConv)


def ipd(**kw):
    kw = {"num_expressions": NUM_E, "num_poses": NUM_P, "num_identities": NUM_I, **kw}
    return create_model("ipd_fer", in_channels=1, image_size=64, **kw)


def gan(**kw):
    kw = {"num_expressions": NUM_E, "num_identities": NUM_I, "num_poses": NUM_P, **kw}
    return create_model("de_gan", in_channels=1, image_size=64, **kw)


def images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 64, 64, generator=g) * 2 - 1).clamp(-1, 1)


def labels(n=4):
    return torch.arange(n) % NUM_E, torch.arange(n) % NUM_P, torch.arange(n) % NUM_I


def adam(params, lr=2e-4):
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


def ipd_batch(n=4, neutral=True):
    e, p, i = labels(n)
    nx = images(n, 1) if neutral else None
    return {"x": images(n), "expression": e, "pose": p, "identity": i, "neutral": nx}


def warm_up(model, steps=2):
    """Training-mode forwards so BatchNorm running statistics are not their initial values."""
    model.train()
    with torch.no_grad():
        for s in range(steps):
            model(images(4, 10 + s) * 0.8 + 0.1)
    return model


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- contract


def test_ipd_fer_contract_shapes():
    m = ipd()
    assert isinstance(m, IPDFER) and type(m).generative is True
    assert m.input_size == (1, 64, 64)
    out = m(images())
    assert out.expression.shape == (4, NUM_E) and out.pose.shape == (4, NUM_P)
    assert out.neutral.shape == (4, 1, 64, 64) and out.reconstruction.shape == (4, 1, 64, 64)
    assert out.residue_expression.shape == (4, NUM_E) and out.identity is None
    for t in (out.neutral, out.reconstruction):
        assert t.abs().max() <= 1.0  # tanh: the [-1, 1] range of fer-train's make_batch
    # the identity encoder is the feature group of densenet_bc_identity_16, frozen
    ref = create_model("densenet_bc_identity_16").feature_group
    assert m.identity_encoder.state_dict().keys() == ref.state_dict().keys()
    assert all(not p.requires_grad for p in m.identity_encoder.parameters())
    groups = m.optimizer_groups()
    assert list(groups) == ["model"]
    frozen = {id(p) for p in m.identity_encoder.parameters()}
    assert not frozen & {id(p) for p in groups["model"]}
    assert {id(p) for p in groups["model"]} | frozen == {id(p) for p in m.parameters()}
    assert any(isinstance(mod, FUSED) for mod in m.modules())


def test_conv_decoder_upsamples_and_takes_the_finer_grid():
    from fer_models.ipd_fer import ConvDecoder

    torch.manual_seed(0)
    plain = ConvDecoder(8, (8, 6, 4), out_chans=1)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in plain.modules())
    z = torch.randn(2, 8, 4, 4)
    assert plain(z).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="skip"):
        plain(z, torch.randn(2, 5, 8, 8))
    dec = ConvDecoder(8, (8, 6, 4), out_chans=1, skip_channels=5)
    skip = torch.randn(2, 5, 8, 8)
    y = dec(z, skip)
    assert y.shape == (2, 1, 32, 32) and y.abs().max() <= 1.0
    with pytest.raises(ValueError, match="skip"):
        dec(z)
    # the finer grid reaches the image: changing it changes the output, and its gradient is non-zero
    dec.eval()
    skip.requires_grad_(True)
    out = dec(z, skip)
    assert not torch.equal(out, dec(z, skip + 1))
    out.sum().backward()
    assert skip.grad.abs().sum() > 0
    two = ConvDecoder(8, (8, 4), out_chans=3, skip_channels=5)  # the finer grid joins the output step
    assert two(z, skip.detach()).shape == (2, 3, 16, 16)


def test_ipd_fer_fine_grid_is_optional():
    torch.manual_seed(0)
    with_skip, without = ipd(), ipd(skip_channels=0)
    assert with_skip.decoder.skip_channels == 32 and without.decoder.skip_channels == 0
    assert not hasattr(without, "fuse_neutral_fine")
    x = images()
    for m in (with_skip, without):
        out = m(x)
        assert out.neutral.shape == out.reconstruction.shape == (4, 1, 64, 64)
    # the fine identity grid is the frozen identity features area-resampled to 16x16
    coarse, fine = with_skip._identity_features(x)
    assert coarse.shape[-1] == 8 and fine.shape[-1] == 16
    assert_close(coarse, with_skip.identity_code(x))


def test_de_gan_contract_shapes():
    g = gan()
    assert isinstance(g, DEGAN) and type(g).generative is True
    assert g.input_size == (1, 64, 64)
    assert isinstance(g.generator, torch.nn.Module) and isinstance(g.discriminator, torch.nn.Module)
    out = g(images())
    assert out.expression.shape == (4, NUM_E) and out.synthesized.shape == (4, 1, 64, 64)
    assert out.synthesized.abs().max() <= 1.0
    assert out.conditioned_on.tolist() == [-1] * 4
    assert g(images(), torch.tensor([0, -1, 3, 6])).conditioned_on.tolist() == [0, -1, 3, 6]
    groups = g.optimizer_groups()
    assert set(groups) == {"generator", "discriminator"}
    gen, dis = ({id(p) for p in groups[k]} for k in ("generator", "discriminator"))
    assert gen == {id(p) for p in g.generator.parameters()}
    assert dis == {id(p) for p in g.discriminator.parameters()}
    assert not gen & dis and gen | dis == {id(p) for p in g.parameters()}


def test_builders_take_the_fer_train_keywords():
    m = create_model("ipd_fer", num_expressions=7, num_identities=30, num_poses=None)
    assert m.num_poses == 5 and m(images(2)).expression.shape == (2, 7)
    g = create_model("de_gan", num_expressions=7, num_identities=30, num_poses=3)
    assert g.discriminator.identity.out_features == 30
    with pytest.raises(ValueError, match="x"):
        m(torch.zeros(2, 1, 48, 48))
    with pytest.raises(ValueError, match="identity"):
        g(images(2), torch.tensor([0, 30]))


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("kind", ["random", "zeros"])
def test_losses_finite(kind):
    x = images() if kind == "random" else torch.zeros(4, 1, 64, 64)
    e, p, i = labels()
    m = ipd().train()
    for neutral in (x.flip(-1), None):
        losses = m.loss(m(x), x, e, p, neutral)
        assert set(losses) == {"total", "expression", "pose", "neutral", "reconstruction", "disentangle"}
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    assert losses["neutral"].item() == 0.0
    losses["total"].backward()
    assert all(torch.isfinite(q.grad).all() for q in m.parameters() if q.grad is not None)
    g = gan().train()
    out = g(x, i)
    for fn in (g.generator_loss, g.discriminator_loss):
        losses = fn(out, x, e, i)
        assert "total" in losses
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses


def test_ipd_fer_loss_formula_and_unknown_pose():
    m = ipd(lambda_pose=0.5, lambda_neutral=2.0, lambda_rec=3.0, lambda_dis=0.25).train()
    x, neutral = images(5), images(5, 1)
    e, p = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([1, -1, 4, -1, 0])
    out = m(x)
    losses = m.loss(out, x, e, p, neutral)
    known = p >= 0
    pose = F.cross_entropy(out.pose[known], p[known])  # the samples with pose -1 removed
    assert_close(losses["pose"], pose)
    assert_close(losses["neutral"], (out.neutral - neutral).abs().mean())
    assert_close(losses["reconstruction"], (out.reconstruction - x).abs().mean())
    assert_close(losses["disentangle"], F.cross_entropy(out.residue_expression, e))
    others = (
        F.cross_entropy(out.expression, e)
        + 2.0 * losses["neutral"]
        + 3.0 * losses["reconstruction"]
        + 0.25 * losses["disentangle"]
    )
    assert_close(losses["total"], others + 0.5 * pose)
    # every pose unknown (or no pose labels): no pose term at all, and no gradient from it
    none = m.loss(out, x, e, torch.full((5,), -1), neutral)
    assert none["pose"].item() == 0.0
    assert torch.equal(none["total"], m.loss(out, x, e, None, neutral)["total"])
    assert_close(none["total"], others)
    m.zero_grad()
    m.loss(out, x, e, torch.full((5,), -1), neutral)["pose"].backward(retain_graph=True)
    assert all(q.grad is None or q.grad.abs().sum() == 0 for q in m.pose_head.parameters())


def test_de_gan_unknown_identity_is_ignored():
    g = gan().train()
    x, e = images(4), torch.tensor([0, 1, 2, 3])
    i = torch.tensor([2, -1, 5, -1])
    out = g(x, i)
    with torch.no_grad():
        g.eval()  # the discriminator gives the same outputs in the loss and here
        d = g.discriminator_loss(out, x, e, i)
        real = g.discriminator(x)
        s = g.generator_loss(out, x, e, i)
        fake = g.discriminator(out.synthesized)
    known = i >= 0  # the samples with identity -1 removed
    assert_close(d["identity"], F.cross_entropy(real.identity[known], i[known]))
    assert_close(s["synthesis_identity"], F.cross_entropy(fake.identity[known], i[known]))
    # a synthesis without identity code is not scored on identity; unknown labels everywhere: no identity term
    plain = g(x)
    assert g.generator_loss(plain, x, e, i)["synthesis_identity"].item() == 0.0
    assert g.discriminator_loss(out, x, e, torch.full((4,), -1))["identity"].item() == 0.0


# ---------------------------------------------------------------- frozen identity encoder


def test_identity_encoder_is_frozen():
    m = ipd()
    before = _state(m.identity_encoder)
    m.train()
    assert not m.identity_encoder.training and all(not s.training for s in m.identity_encoder.modules())
    losses = m.loss(m(images()), images(), *labels()[:2], images(4, 1))
    losses["total"].backward()
    assert all(p.grad is None for p in m.identity_encoder.parameters())
    opts = {"model": adam(m.optimizer_groups()["model"], 1e-2)}
    for _ in range(2):
        m.training_step(ipd_batch(), opts)
    assert all(p.grad is None for p in m.identity_encoder.parameters())
    assert _same(before, _state(m.identity_encoder))  # weights and running statistics


def test_load_identity_encoder(tmp_path):
    net = DenseNetBC(16, 11, task="identity")
    with torch.no_grad():
        net.train()(images(4))  # running statistics that differ from a fresh net
    want = net.feature_group.state_dict()

    def check(m):
        assert _same(m.identity_encoder.state_dict(), want)
        assert all(not p.requires_grad for p in m.identity_encoder.parameters())
        m.train()
        assert not m.identity_encoder.training

    m = ipd()
    assert m.load_identity_encoder(net) is m
    check(m)
    check(ipd().load_identity_encoder(net.state_dict()))
    check(ipd().load_identity_encoder(want))
    path = tmp_path / "identity.pt"
    torch.save({"model": net.state_dict(), "config": {"model": "densenet_bc_identity_16"}}, path)
    check(ipd().load_identity_encoder(path))
    check(ipd().load_identity_encoder(str(path)))
    check(ipd().load_identity_encoder(m))  # another IPD-FER's identity encoder
    # the identity features are the pre-trained group's, on the face resized to 48x48
    x = images(2)
    with torch.no_grad():
        feats = net.eval().feature_group(F.interpolate(x, (48, 48), mode="bilinear", antialias=True))
        assert_close(m.identity_code(x), F.avg_pool2d(feats, 3))
    with pytest.raises(ValueError, match="missing|shape"):
        ipd().load_identity_encoder(DenseNetBC(22, 11, task="identity"))


# ---------------------------------------------------------------- the discriminator step


def test_discriminator_step_changes_no_generator_weight():
    g = gan().train()
    x, e, _, i = images(), *labels()
    out = g(x, i)
    g_before = _state(g.generator)
    d_before = _state(g.discriminator)
    opt_d = adam(g.optimizer_groups()["discriminator"], 1e-2)
    opt_d.zero_grad()
    losses = g.discriminator_loss(out, x, e, i)
    losses["total"].backward()
    assert all(p.grad is None for p in g.generator.parameters())
    assert all(p.grad is not None for p in g.discriminator.parameters())
    opt_d.step()
    assert _same(g_before, _state(g.generator))
    assert not _same(d_before, _state(g.discriminator))


def test_de_gan_training_step_updates_both_networks():
    g = gan()
    opts = {k: adam(v, 1e-3) for k, v in g.optimizer_groups().items()}
    g_before, d_before = _state(g.generator), _state(g.discriminator)
    e, _, i = labels()
    logits, logs = g.training_step({"x": images(), "expression": e, "identity": i, "pose": None}, opts)
    assert logits.shape == (4, NUM_E) and not logits.requires_grad
    assert {"total", "d_total", "reconstruction", "adversarial", "d_adversarial"} <= set(logs)
    assert all(isinstance(v, float) and np.isfinite(v) for v in logs.values())
    g_after, d_after = _state(g.generator), _state(g.discriminator)
    params = dict(g.named_parameters())
    for k in g_after:
        if f"generator.{k}" in params:
            assert not torch.equal(g_before[k], g_after[k]), f"generator {k} unchanged"
    assert all(not torch.equal(d_before[k], d_after[k]) for k in d_before if f"discriminator.{k}" in params)
    assert all(p.requires_grad for p in g.discriminator.parameters())  # re-enabled after the generator step


# ---------------------------------------------------------------- fused == reference


def _outputs(model, x):
    out = model(x)
    if isinstance(model, IPDFER):
        return [out.expression, out.pose, out.neutral, out.reconstruction, out.residue_expression]
    d = model.discriminator(x)
    return [out.expression, out.synthesized, d.adversarial, d.expression, d.identity]


@pytest.mark.parametrize("build", [ipd, gan], ids=["ipd_fer", "de_gan"])
def test_fused_equals_reference(build):
    model = warm_up(build()).eval()
    x = images(3, 5)
    with torch.no_grad():
        fused = _outputs(model, x)
        with fer_kernels.use_backend("reference"):
            ref = _outputs(model, x)
        twin = to_reference(model)
        plain = _outputs(twin, x)
    assert not any(isinstance(mod, FUSED) for mod in twin.modules())
    for j, (a, b, c) in enumerate(zip(fused, ref, plain, strict=True)):
        atol = 1e-4 * float(b.abs().max())
        assert_close(a, b, f"output {j} fused vs reference backend", rtol=1e-4, atol=atol)
        assert_close(a, c, f"output {j} fused vs plain copy", rtol=1e-4, atol=atol)


@pytest.mark.parametrize("build", [ipd, gan], ids=["ipd_fer", "de_gan"])
def test_fused_equals_reference_training(build):
    """Training mode in float64 (see tests/test_models.py): losses, gradients and running statistics."""
    model = build().train().double()
    twin = copy.deepcopy(model)
    x, e, p, i = images(3).double(), *labels(3)
    runs = []
    for m, backend in ((model, "auto"), (twin, "reference")):
        with fer_kernels.use_backend(backend):
            if isinstance(m, IPDFER):
                losses = m.loss(m(x), x, e, p, x.flip(-1))
            else:
                out = m(x, i)
                losses = m.generator_loss(out, x, e, i)
                d = m.discriminator_loss(out, x, e, i)
                losses = {**losses, **{f"d_{k}": v for k, v in d.items()}}
                losses["total"] = losses["total"] + d["total"]
            losses["total"].backward()
        runs.append(losses)
    for k in runs[1]:
        assert_close(runs[0][k], runs[1][k], f"loss {k}", rtol=1e-10, atol=1e-12)
    scale = max(float(q.grad.abs().max()) for q in twin.parameters() if q.grad is not None)
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if b.grad is not None:
            assert_close(a.grad, b.grad, f"grad {name}", rtol=1e-8, atol=1e-12 * scale)
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers(), strict=True):
        if a.is_floating_point():
            assert_close(a, b, f"buffer {name}", rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("build", [ipd, gan], ids=["ipd_fer", "de_gan"])
def test_state_dict_round_trip(build):
    model = warm_up(build()).eval()
    torch.manual_seed(123)
    other = build()
    other.load_state_dict(model.state_dict())
    other.eval()
    x = images(2, 7)
    with torch.no_grad():
        for a, b in zip(_outputs(model, x), _outputs(other, x), strict=True):
            assert torch.equal(a, b)
    if isinstance(other, IPDFER):
        assert all(not p.requires_grad for p in other.identity_encoder.parameters())


# ---------------------------------------------------------------- registry, recipes, summary


def test_registry_recipes_and_summary(capsys):
    assert {"ipd_fer", "de_gan"} <= set(list_models())
    for name, names in (
        ("ipd_fer", ("lambda_pose", "lambda_neutral", "lambda_rec", "lambda_dis")),
        ("de_gan", ("lambda_rec", "lambda_adv", "lambda_cls")),
    ):
        r = recipe_for(name)
        assert r is not None and r.optimizer == "Adam" and r.weight_decay == 0
        assert r.input_size == 64 and r.resize == 64 and 32 <= r.batch_size <= 64
        assert r.loss_weight_names == names
        model = create_model(name)
        assert tuple(getattr(model, k) for k in names) == r.loss_weights  # the builders' defaults
    for name in ("ipd_fer", "de_gan"):
        (r,) = summarize(name)
        assert r.parameters == sum(p.numel() for p in create_model(name).parameters()) and r.macs > 0
        assert summary_main(["--models", name]) == 0
        assert f"| {name} " in capsys.readouterr().out


# ---------------------------------------------------------------- training


def test_ipd_fer_training_step_reduces_the_loss():
    torch.manual_seed(1)
    m = ipd()
    opts = {"model": adam(m.optimizer_groups()["model"], 2e-3)}
    batch = ipd_batch(8)
    totals = []
    for _ in range(20):
        logits, logs = m.training_step(batch, opts)
        totals.append(logs["total"])
    assert logits.shape == (8, NUM_E) and not logits.requires_grad
    assert set(logs) == {"total", "expression", "pose", "neutral", "reconstruction", "disentangle"}
    assert np.mean(totals[-3:]) < 0.7 * np.mean(totals[:3]), totals  # seeds 0-3: ratio 0.35-0.37
    # no neutral frame, no pose labels: the step still runs, without those terms
    _, logs = m.training_step({**batch, "neutral": None, "pose": None}, opts)
    assert logs["neutral"] == 0.0 and logs["pose"] == 0.0


def test_de_gan_training_step_reduces_the_loss():
    torch.manual_seed(1)
    g = gan()
    opts = {k: adam(v, 2e-3) for k, v in g.optimizer_groups().items()}
    e, _, i = labels(8)
    batch = {"x": images(8), "expression": e, "identity": i, "pose": None, "neutral": None}
    logs = [g.training_step(batch, opts)[1] for _ in range(20)]
    first, last = logs[:3], logs[-3:]
    # the generator objective, and in it the reconstruction and the recognition CE (seeds 0-3: ratios
    # 0.62-0.65, 0.73-0.77 and 0.74-0.76 after 20 steps)
    for key, ratio in (("total", 0.8), ("reconstruction", 0.9), ("expression", 0.9)):
        a, b = np.mean([x[key] for x in first]), np.mean([x[key] for x in last])
        assert b < ratio * a, (key, a, b)


# ---------------------------------------------------------------- sample grid


def test_save_sample_grid(tmp_path):
    m, g = ipd(), gan()
    x, neutral = images(5), images(5, 1)
    side, gap = 128, 2  # 64x64 faces upscaled x2, 2-pixel gaps
    cases = [
        (m.save_sample_grid(x, neutral, tmp_path / "a" / "ipd.png", n=3), 3, 4),
        (m.save_sample_grid(x, None, tmp_path / "ipd_no_neutral.png"), 5, 3),
        (g.save_sample_grid(x, None, tmp_path / "gan.png", n=4), 4, 2),
        (g.save_sample_grid(x, neutral, tmp_path / "gan_id.png", n=4, identity=torch.arange(5)), 4, 4),
    ]
    for path, n, rows in cases:
        img = Image.open(path)
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == (LABEL_WIDTH + n * (side + gap), rows * (side + gap) - gap), path
    assert m.training and g.training  # modes restored
    # the first row shows the input itself
    px = np.asarray(Image.open(cases[0][0]).convert("L"), dtype=np.float32)
    want = ((x[0, 0].clamp(-1, 1) + 1) * 127.5).round().numpy()
    assert np.abs(px[:side:2, LABEL_WIDTH : LABEL_WIDTH + side : 2] - want).max() <= 1


# ---------------------------------------------------------------- through fer-train (SynthFER v2: poses, neutral frames)
@pytest.fixture(scope="module")
def synth2(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth2")
    write_synthfer(str(d), n_subjects=8, n_frames=4, size=64, seed=0, identity_subjects=4, identity_images=4)
    return str(d)


@pytest.mark.parametrize("model", ["ipd_fer", "de_gan"])
def test_generative_models_train_resume_exactly_and_draw_grids(tmp_path, synth2, model, capsys):
    base = ["--model", model, "--dataset", "synthfer", "--data", synth2, "--folds", "4", "--fold", "0",
            "--epochs", "2", "--epoch-images", "32", "--batch-size", "16", "--val-subjects", "0", "--no-progress"]
    assert train.main(base + ["--out", str(tmp_path / "full")]) == 0
    assert train.main(base + ["--out", str(tmp_path / "cut"), "--stop-after", "1"]) == 0
    assert train.main(base + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    full = torch.load(tmp_path / "full" / "fold_0" / "checkpoints" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "fold_0" / "checkpoints" / "last.pt", weights_only=True)
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    if model == "de_gan":  # two optimizers, both in the checkpoint
        assert set(full["optimizer"]) == set(full["scheduler"]) == {"generator", "discriminator"}
    else:
        assert "state" in full["optimizer"] and "param_groups" in full["optimizer"]
    for epoch in (1, 2):
        png = tmp_path / "full" / "fold_0" / "samples" / f"epoch_{epoch:03d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((tmp_path / "full" / "fold_0" / "metrics.json").read_text())
    assert m["model"] == model and 0 <= m["accuracy"] <= 1 and len(m["history"]) == 2
    # fer-eval on the fold's test subjects gives the run's own test accuracy; fer-predict reads the checkpoint
    ckpt = tmp_path / "full" / "fold_0" / "checkpoints" / "last.pt"
    assert evaluate.main(["--checkpoint", str(ckpt), "--fold", "0", "--folds-file",
                          str(tmp_path / "full" / "folds.json"), "--out", str(tmp_path / "eval")]) == 0
    e = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert e["num_samples"] == m["num_samples"] and e["accuracy"] == pytest.approx(m["accuracy"], abs=1e-9)
    face = tmp_path / "face.png"  # a pre-cropped grey face: --no-detect
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(face)
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(ckpt), "--no-detect", str(face)]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert rec["expression"] in rec["probabilities"] and len(rec["probabilities"]) == NUM_E
