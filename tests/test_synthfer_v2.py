"""SynthFER v2 (identity-dependent expression, labelled pose, neutral frames, identity population), v1 kept
bit-for-bit, and the manifest's pose / neutral columns."""

import hashlib
import json
import os

import numpy as np
import pytest

from fer_models.data import load_images, read_identity_folders, read_manifest, read_synthfer, write_synthfer
from fer_models.data.base import BASIC6
from fer_models.data.synthfer import (
    IDENTITY_BASELINE,
    PITCH_BINS,
    PROTOTYPES,
    RESTING_PRIVATE,
    V2_REVISION,
    YAW_BINS,
    _image_params_v2,
    _render_all,
    _subject_params_v2,
    generate,
    generate_identity_population,
    subject_codes,
    true_actions,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_v1_is_reproduced_bit_for_bit():
    # sha256 of the images the v1 generator made before v2 existed (fer-kernels 800f596)
    a, rows = generate(n_subjects=3, n_frames=2, size=32, seed=5, version=1)
    assert hashlib.sha256(a.tobytes()).hexdigest() == (
        "60c631f2c180192c48066b95a4ccf49c9dd214b53aa8830087b72939d8ac47cf")
    b, _ = generate(n_subjects=3, n_frames=2, size=32, difficulty=0.9, seed=1, version=1)
    assert hashlib.sha256(b.tobytes()).hexdigest() == (
        "1db7e8c32f785b8ef259a33d1f448ab6343f43eea513c9c31cce1b8d0d84f256")
    assert "pose" not in rows[0]


def test_v2_rows_pose_labels_and_neutral_frames():
    a, rows = generate(n_subjects=6, n_frames=4, size=48, seed=2)
    b, _ = generate(n_subjects=6, n_frames=4, size=48, seed=2)
    assert a.shape == (6 * 6 * 4, 48, 48) and np.array_equal(a, b)
    assert not np.array_equal(a, generate(n_subjects=6, n_frames=4, size=48, seed=3)[0])
    seqs = {}
    for r in rows:
        seqs.setdefault(r["sequence"], []).append(r)
        assert r["pose"] == r["yaw_bin"] and 0 <= r["yaw_bin"] < len(YAW_BINS) and 0 <= r["pitch_bin"] < 3
        assert abs(r["yaw"] - YAW_BINS[r["yaw_bin"]]) <= 7.5 and abs(r["pitch"] - PITCH_BINS[r["pitch_bin"]]) <= 6.5
    for seq in seqs.values():  # one head pose per sequence, from a neutral frame 0 to the apex
        assert len({r["pose"] for r in seq}) == 1 and len({r["pitch_bin"] for r in seq}) == 1
        assert seq[0]["frame"] == 0 and seq[0]["intensity"] == 0.0 and seq[-1]["intensity"] > 0.7
    assert len({r["pose"] for r in rows}) == len(YAW_BINS)  # 36 sequences cover the five yaw bins


def test_v2_how_a_subject_shows_an_expression_follows_its_visible_geometry():
    # difficulty 0: gain 1, and apart from the private resting face, the resting face and the apex style are
    # linear in the code
    sub = _subject_params_v2(np.random.default_rng(0), 200, 0.0)
    g = np.c_[sub["code"], np.ones(200)]
    base = sub["baseline"] - sub["rest_private"]
    style = (sub["apex"] - PROTOTYPES[None]).reshape(200, -1)
    for y in (base, style):
        resid = y - g @ np.linalg.lstsq(g, y, rcond=None)[0]
        assert y.std() > 0.05 and np.abs(resid).max() < 1e-9
    assert np.allclose(base, IDENTITY_BASELINE * sub["code"] @ np.linalg.lstsq(
        sub["code"], base / IDENTITY_BASELINE, rcond=None)[0])
    # the private resting face: nothing about the face predicts it (the code explains little of it), and it is
    # large against the linear part, at every difficulty
    rest = sub["rest_private"]
    resid = rest - g @ np.linalg.lstsq(g, rest, rcond=None)[0]
    assert resid.var() > 0.8 * rest.var() and abs(rest.std() - RESTING_PRIVATE) < 0.05
    assert rest.std() > base.std()
    # with difficulty, a private part appears, but the code still explains most of the style
    sub = _subject_params_v2(np.random.default_rng(0), 200, 1.0)
    style = (sub["apex"] - sub["apex"].mean(0)).reshape(200, -1)
    resid = style - g @ np.linalg.lstsq(g, style, rcond=None)[0]
    assert resid.var() < 0.5 * style.var()
    codes = subject_codes(30, seed=4)
    assert np.array_equal(codes["code"], subject_codes(30, seed=4)["code"]) and codes["code"].shape == (30, 16)
    assert codes["resting"].shape == (30, len(PROTOTYPES[0]))


def test_v2_yaw_moves_the_inner_features():
    rng = np.random.default_rng(0)
    sub = _subject_params_v2(rng, 1, 0.0)
    p, _ = _image_params_v2(rng, sub, np.zeros(3, int), np.full(3, 3), np.zeros(3), np.arange(3), 3, 0.0)
    p["yaw"], p["pitch"] = np.deg2rad([-30.0, 0.0, 30.0]), np.zeros(3)
    for k in ("rot", "tx", "ty", "grad", "bg_tex"):
        p[k] = np.zeros(3)
    p["bg"], p["gain"] = np.full(3, 0.95), np.ones(3)  # a bright plain background: the dark pixels are features
    img = _render_all(p, 64, 0.0, rng, 64).astype(float)
    dark = (img < 60) * np.arange(64)[None, None, :]  # the eyes' irises, nostrils and mouth
    cx = dark.sum((1, 2)) / (img < 60).sum((1, 2))
    assert cx[0] < cx[1] - 1.5 and cx[2] > cx[1] + 1.5, cx


def test_identity_population_is_other_people():
    imgs, rows = generate_identity_population(7, 5, size=32, seed=1)
    assert imgs.shape == (35, 32, 32)
    assert sorted({r["subject"] for r in rows}) == [f"I{i:03d}" for i in range(7)]
    assert {r["expression"] for r in rows} <= set(BASIC6)
    # expression subjects are drawn from another stream: the population's size does not change them
    a, _ = generate(n_subjects=3, n_frames=2, size=32, seed=1)
    b, _ = generate(n_subjects=3, n_frames=2, size=32, seed=1)
    assert np.array_equal(a, b)


def test_write_synthfer_v2_layout(tmp_path):
    root = tmp_path / "sf"
    write_synthfer(str(root), n_subjects=4, n_frames=4, size=48, seed=0, identity_subjects=3, identity_images=4)
    ds = read_synthfer(str(root))
    assert len(ds) == 4 * 6 * 3 and ds.issues == []
    for s in ds.samples:
        assert s.pose is not None and 0 <= s.pose < 5
        assert s.neutral.endswith(os.path.join(s.subject, ds.classes[s.expression], "00.png"))
        assert os.path.isfile(s.neutral)
    ids = read_identity_folders(str(root / "identity"))
    assert ids.subjects == ["I000", "I001", "I002"] and len(ids) == 12
    with open(root / "subjects.json") as f:
        truth = json.load(f)
    codes = subject_codes(4, seed=0)
    for key in ("code", "resting"):
        assert np.allclose([truth[f"S{i:03d}"][key] for i in range(4)], codes[key], atol=1e-6)
    info = json.loads((root / "synthfer.json").read_text())
    assert info["params"]["version"] == 2 and info["identity_images"] == 12
    assert info["params"]["revision"] == V2_REVISION
    # the neutral file is the sequence's frame 0 as generated
    imgs, rows = generate(n_subjects=4, n_frames=4, size=48, seed=0)
    _, loaded = load_images(ds.subset(lambda s: s.subject == "S001"), 48)
    first = next(i for i, r in enumerate(rows) if r["subject"] == "S001" and r["frame"] == 0)
    from fer_models.data.base import read_gray

    neutral_path = next(s.neutral for s in ds.samples if s.subject == "S001")
    assert np.array_equal(read_gray(neutral_path), imgs[first]) and loaded.shape[0] == 18
    # version 1 on request: no pose, no identity population
    write_synthfer(str(tmp_path / "v1"), n_subjects=3, n_frames=3, size=32, version=1)
    v1 = read_synthfer(str(tmp_path / "v1"))
    assert all(s.pose is None and s.neutral is None for s in v1.samples)
    assert not (tmp_path / "v1" / "identity").exists()


def test_manifest_pose_and_neutral_columns(tmp_path):
    (tmp_path / "m.csv").write_text(
        "path,expression,subject,sequence,frame,pose,neutral\n"
        "a.png,happy,S1,q,1,3,n.png\n"
        "b.png,happy,S1,q,2,-1,\n"
        "c.png,happy,S1,q,3,,\n"
        "d.png,happy,S1,q,4,left,\n"
    )
    ds = read_manifest(str(tmp_path / "m.csv"))
    assert [s.pose for s in ds.samples] == [3, None, None]
    assert ds.samples[0].neutral == str(tmp_path / "n.png") and ds.samples[1].neutral is None
    assert len(ds.issues) == 1 and "pose 'left' is not an integer" in ds.issues[0].reason


def test_a_set_of_an_older_v2_revision_is_regenerated(tmp_path):
    root = tmp_path / "sf"
    write_synthfer(str(root), n_subjects=2, n_frames=2, size=32, seed=0, identity_subjects=2, identity_images=2)
    png = root / "images" / "S000" / "anger" / "01.png"
    good = png.read_bytes()
    info = json.loads((root / "synthfer.json").read_text())
    write_synthfer(str(root), n_subjects=2, n_frames=2, size=32, seed=0, identity_subjects=2, identity_images=2)
    assert png.read_bytes() == good  # same parameters: reused as it is
    png.write_bytes(b"stale")
    write_synthfer(str(root), n_subjects=2, n_frames=2, size=32, seed=0, identity_subjects=2, identity_images=2)
    assert png.read_bytes() == b"stale"  # still reused: only the parameters are compared
    del info["params"]["revision"]  # as revision 1 wrote it
    (root / "synthfer.json").write_text(json.dumps(info))
    write_synthfer(str(root), n_subjects=2, n_frames=2, size=32, seed=0, identity_subjects=2, identity_images=2)
    assert png.read_bytes() == good


def test_true_actions_follow_the_generated_images():
    t = true_actions(5, 4, seed=3)
    _, rows = generate(n_subjects=5, n_frames=4, size=16, seed=3)
    assert [r["subject"] for r in rows] == [f"S{s:03d}" for s in t["subject"]]
    assert [r["expression"] for r in rows] == [BASIC6[e] for e in t["expression"]]
    assert [r["frame"] for r in rows] == t["frame"].tolist()
    neutral = t["frame"] == 0  # a neutral frame shows the resting face, an apex frame something else
    assert np.allclose(t["actions"][neutral], t["resting"][neutral])
    assert not np.allclose(t["actions"][~neutral], t["resting"][~neutral])
    codes = subject_codes(5, seed=3)
    assert np.allclose(t["resting"], codes["resting"][t["subject"]])
    assert np.allclose(t["code"], codes["code"][t["subject"]])
