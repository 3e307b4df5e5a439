"""Readers on tiny trees written in each dataset's real layout, SynthFER, folds, augmentation and fer-prep."""

import csv
import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fer_models.data import (
    BASIC6,
    CKPLUS7,
    DataError,
    load_dataset,
    load_images,
    make_folds,
    read_ckplus,
    read_fer2013,
    read_ferplus,
    read_identity_folders,
    read_manifest,
    read_mmi,
    read_oulu,
    read_synthfer,
    write_manifest,
    write_synthfer,
)
from fer_models.data.protocol import Folds, load_or_make_folds, split_fold, validation_subjects
from fer_models.data.synthfer import PROTOTYPES, _subject_params, generate
from fer_models.data.transforms import ANGLES, augment14, center_crop, random_crop, rotate


def _img(path, value, size=(20, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.full(size[::-1], value, np.uint8)
    arr[0, 0] = 255 - value
    Image.fromarray(arr).save(path)


def _issue_paths(ds):
    return [i.path for i in ds.issues]


# ------------------------------------------------------------ CK+
@pytest.fixture
def ckplus_tree(tmp_path):
    root = tmp_path / "CK+"
    img, emo = (
        root / "extended-cohn-kanade-images" / "cohn-kanade-images",
        root / "Emotion_labels" / "Emotion",
    )

    def seq(subject, s, n, code=None, text=None):
        for f in range(1, n + 1):
            _img(str(img / subject / s / f"{subject}_{s}_{f:08d}.png"), 10 * f)
        if code is not None or text is not None:
            d = emo / subject / s
            d.mkdir(parents=True)
            (d / f"{subject}_{s}_{n:08d}_emotion.txt").write_text(
                text if text is not None else f"   {code:.7e}\n"
            )

    seq("S005", "001", 5, code=3)  # disgust
    seq("S010", "002", 4, code=2)  # contempt
    seq("S010", "003", 3)  # no label file: unlabelled, skipped and reported
    seq("S011", "001", 6, code=5)  # happiness, with one unreadable frame
    seq("S011", "002", 4, text="9.0\n")  # code outside 1..7: reported, not guessed
    (img / "S011" / "001" / "S011_001_00000005.png").write_bytes(b"not a png")
    (emo / "S099" / "001").mkdir(parents=True)  # label folder without images
    return root


def test_ckplus_labels_subjects_last_frames_and_issues(ckplus_tree):
    ds = read_ckplus(str(ckplus_tree))
    assert ds.classes == list(CKPLUS7)
    got = [(s.subject, s.sequence, s.frame, ds.classes[s.expression]) for s in ds.samples]
    assert got == [("S005", "S005/001", f, "disgust") for f in (3, 4, 5)] + [
        ("S010", "S010/002", f, "contempt") for f in (2, 3, 4)
    ] + [("S011", "S011/001", f, "happiness") for f in (4, 5, 6)]
    paths = _issue_paths(ds)
    assert any(p.endswith(os.path.join("S010", "003")) for p in paths)
    assert any(p.endswith("S011_002_00000004_emotion.txt") for p in paths)
    assert any(p.endswith(os.path.join("S099", "001")) for p in paths)
    assert len(ds.issues) == 3
    # decoding: the corrupt frame is reported with its path and dropped, nothing else changes
    loaded, imgs = load_images(ds, 24)
    assert imgs.shape == (8, 24, 24) and imgs.dtype == np.uint8
    assert [s.frame for s in loaded.samples if s.subject == "S011"] == [4, 6]
    assert loaded.issues[-1].path.endswith("S011_001_00000005.png")
    with pytest.raises(DataError, match="S011_001_00000005.png"):
        load_images(ds, 24, strict=True)
    six = read_ckplus(str(ckplus_tree), classes=6)
    assert six.classes == list(BASIC6)
    assert {six.classes[s.expression] for s in six.samples} == {"disgust", "happiness"}
    with pytest.raises(DataError, match="emotion code"):
        read_ckplus(str(ckplus_tree), strict=True)


# ------------------------------------------------------------ Oulu
def test_oulu_vl_strong_layout(tmp_path):
    base = tmp_path / "Oulu" / "OriginalImg" / "VL" / "Strong"
    for subject, expr, n in [
        ("P001", "Anger", 5),
        ("P001", "Happiness", 4),
        ("P002", "Surprise", 3),
        ("P002", "Smile", 4),
    ]:
        for f in range(n):
            _img(str(base / subject / expr / f"{f:03d}.jpeg"), 20 * f + 5)
    (base / "P002" / "Fear").mkdir()
    _img(str(tmp_path / "Oulu" / "OriginalImg" / "VL" / "Weak" / "P001" / "Anger" / "000.jpeg"), 1)
    ds = read_oulu(str(tmp_path / "Oulu"))
    got = [(s.subject, ds.classes[s.expression], s.frame) for s in ds.samples]
    assert got == [("P001", "anger", f) for f in (2, 3, 4)] + [
        ("P001", "happiness", f) for f in (1, 2, 3)
    ] + [("P002", "surprise", f) for f in (0, 1, 2)]
    paths = _issue_paths(ds)
    assert any(p.endswith(os.path.join("P002", "Smile")) for p in paths)
    assert any(p.endswith(os.path.join("P002", "Fear")) for p in paths)
    assert "unknown expression" in [i for i in ds.issues if i.path.endswith("Smile")][0].reason
    assert read_oulu(str(base)).samples == ds.samples  # the Strong folder itself works too


# ------------------------------------------------------------ MMI
def test_mmi_manifest_middle_frames_folder_and_video(tmp_path):
    import cv2

    for f in range(7):
        _img(str(tmp_path / "Sessions" / "1" / f"frame{f:02d}.png"), 30 * f)
    vid = tmp_path / "Sessions" / "2" / "S002-104.avi"
    vid.parent.mkdir(parents=True)
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for f in range(9):
        w.write(np.full((32, 32, 3), 25 * f, np.uint8))
    w.release()
    with open(tmp_path / "mmi.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["sequence", "subject", "expression", "path"])
        wr.writerow(["S001-001", "S001", "Happiness", "Sessions/1"])
        wr.writerow(["S002-104", "S002", "6", "Sessions/2/S002-104.avi"])
        wr.writerow(["S003-010", "S003", "boredom", "Sessions/3"])
        wr.writerow(["S004-011", "S004", "2", "Sessions/missing"])
    ds = read_mmi(str(tmp_path))
    got = [(s.subject, ds.classes[s.expression], s.frame) for s in ds.samples]
    assert got == [("S001", "happiness", f) for f in (2, 3, 4)] + [("S002", "surprise", f) for f in (3, 4, 5)]
    vals = [int(s.pixels.mean()) for s in ds.samples[3:]]
    assert all(abs(v - 25 * f) <= 6 for v, f in zip(vals, (3, 4, 5), strict=True))  # MJPG is lossy
    assert [i.path.split(os.sep)[-1] for i in ds.issues] == ["mmi.csv:4", "missing"]
    assert "boredom" in ds.issues[0].reason


# ------------------------------------------------------------ FER2013 / FERPlus
def _fer_rows():
    good = lambda v: " ".join([str(v)] * 2304)  # noqa: E731
    return [
        ("0", good(10), "Training"),
        ("3", good(20), "PublicTest"),
        ("6", good(30), "PrivateTest"),
        ("2", " ".join(["1"] * 2303), "Training"),
        ("9", good(40), "Training"),
        ("4", good(50), "Training"),
    ]


def test_fer2013_csv_pixels_labels_splits_and_bad_rows(tmp_path):
    with open(tmp_path / "fer2013.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["emotion", "pixels", "Usage"])
        wr.writerows(_fer_rows())
    ds = read_fer2013(str(tmp_path))
    assert [(ds.classes[s.expression], s.split, int(s.pixels[0, 0])) for s in ds.samples] == [
        ("anger", "train", 10),
        ("happiness", "val", 20),
        ("neutral", "test", 30),
        ("sadness", "train", 50),
    ]
    assert all(s.pixels.shape == (48, 48) and s.subject is None for s in ds.samples)
    assert [i.path.rsplit(":", 1)[1] for i in ds.issues] == ["5", "6"]
    assert "2303 pixel values" in ds.issues[0].reason
    with pytest.raises(DataError, match=r"fer2013.csv:5: 2303 pixel values"):
        read_fer2013(str(tmp_path), strict=True)


def test_ferplus_majority_vote(tmp_path):
    with open(tmp_path / "fer2013.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["emotion", "pixels", "Usage"])
        wr.writerows(_fer_rows())
    header = [
        "Usage",
        "Image name",
        "neutral",
        "happiness",
        "surprise",
        "sadness",
        "anger",
        "disgust",
        "fear",
        "contempt",
        "unknown",
        "NF",
    ]
    votes = [
        ("Training", "fer0000000.png", [0, 0, 0, 0, 0, 0, 0, 9, 1, 0]),  # contempt
        ("PublicTest", "fer0000001.png", [4, 4, 0, 0, 0, 0, 0, 0, 2, 0]),  # no majority: dropped
        ("PrivateTest", "fer0000002.png", [6, 0, 0, 0, 0, 0, 0, 0, 0, 4]),  # neutral
        ("Training", "fer0000003.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # not a face: dropped
        ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # removed by FERPlus
        ("Training", "fer0000005.png", [0, 0, 0, 7, 3, 0, 0, 0, 0, 0]),  # sadness
    ]
    with open(tmp_path / "fer2013new.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(header)
        for u, n, v in votes:
            wr.writerow([u, n, *v])
    ds = read_ferplus(str(tmp_path))
    assert ds.classes[0] == "neutral" and len(ds.classes) == 8
    assert [(ds.classes[s.expression], s.split, int(s.pixels[0, 0])) for s in ds.samples] == [
        ("contempt", "train", 10),
        ("neutral", "test", 30),
        ("sadness", "train", 50),
    ]
    assert ds.issues == []
    with open(tmp_path / "fer2013new.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["Training", "x.png", 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(DataError, match="row for row"):
        read_ferplus(str(tmp_path))


# ------------------------------------------------------------ identity, manifest
def test_identity_folders(tmp_path):
    for ident, n in [("0000045", 3), ("0000099", 2)]:
        for i in range(n):
            _img(str(tmp_path / ident / f"{i:03d}.jpg"), 40 * i)
    (tmp_path / "0000099" / "notes.txt").write_text("x")
    (tmp_path / "0000100").mkdir()
    ds = read_identity_folders(str(tmp_path))
    assert [(s.subject, s.expression) for s in ds.samples] == [("0000045", -1)] * 3 + [("0000099", -1)] * 2
    assert sorted(os.path.basename(p) for p in _issue_paths(ds)) == ["0000100", "notes.txt"]
    assert len(read_identity_folders(str(tmp_path), max_identities=1)) == 3


def test_manifest_reader(tmp_path):
    for i in range(5):
        _img(str(tmp_path / "img" / f"{i}.png"), i)
    rows = [
        {"path": f"img/{i}.png", "expression": e, "subject": "A", "sequence": "a1", "frame": i}
        for i, e in enumerate(["happy", "happy", "happy", "happy"])
    ]
    rows.append({"path": "img/4.png", "expression": "Sad", "subject": "B", "sequence": None, "frame": None})
    write_manifest(str(tmp_path / "manifest.csv"), rows)
    with open(tmp_path / "manifest.csv", "a") as fh:
        fh.write("img/0.png,grumpy,C,c1,0\nimg/1.png,anger,C,c1,x\n")
    ds = read_manifest(str(tmp_path), frames="last")
    assert ds.classes == ["happiness", "sadness"]
    assert [(s.subject, s.frame, ds.classes[s.expression]) for s in ds.samples] == [
        ("A", 1, "happiness"),
        ("A", 2, "happiness"),
        ("A", 3, "happiness"),
        ("B", None, "sadness"),
    ]
    assert [i.path.rsplit(":", 1)[1] for i in ds.issues] == ["7", "8"]
    assert "grumpy" in ds.issues[0].reason and "frame" in ds.issues[1].reason
    (tmp_path / "bad.csv").write_text("file,label\nx.png,happy\n")
    with pytest.raises(DataError, match="lacks column"):
        read_manifest(str(tmp_path / "bad.csv"))


# ------------------------------------------------------------ SynthFER
def test_synthfer_deterministic_sizes_and_manifest_roundtrip(tmp_path):
    t = time.perf_counter()
    a, rows = generate(n_subjects=5, n_frames=4, size=64, seed=3)
    assert time.perf_counter() - t < 20
    b, _ = generate(n_subjects=5, n_frames=4, size=64, seed=3)
    c, _ = generate(n_subjects=5, n_frames=4, size=64, seed=4)
    assert a.shape == (5 * 6 * 4, 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert generate(n_subjects=2, n_frames=2, size=48)[0].shape == (24, 48, 48)
    assert [r["frame"] for r in rows[:4]] == [0, 1, 2, 3]
    assert rows[0]["intensity"] == 0.0 and rows[3]["intensity"] > 0.7
    # within each sequence the face moves from neutral to apex: the change grows with the intensity
    q, _ = generate(n_subjects=3, n_frames=4, size=64, difficulty=0.0, seed=3)
    q = q.astype(float).reshape(18, 4, 64, 64)
    pct = lambda d: np.percentile(np.abs(d).reshape(18, -1), 99, axis=1)  # noqa: E731 (the pixels that moved)
    early, late = pct(q[:, 1] - q[:, 0]), pct(q[:, 3] - q[:, 0])
    assert late.mean() > 1.4 * early.mean() and (late > 0.9 * early).all(), (early, late)
    manifest = write_synthfer(str(tmp_path / "sf"), n_subjects=5, n_frames=4, size=64, seed=3)
    ds = read_synthfer(os.path.dirname(manifest))
    assert ds.classes == list(BASIC6) and len(ds) == 5 * 6 * 3 and ds.issues == []
    assert ds.subjects == [f"S{i:03d}" for i in range(5)]
    assert sorted({s.frame for s in ds.samples}) == [1, 2, 3]
    loaded, imgs = load_images(ds, 64)
    index = {(r["subject"], r["expression"], r["frame"]): i for i, r in enumerate(rows)}
    for s, img in zip(loaded.samples, imgs, strict=True):
        assert np.array_equal(img, a[index[(s.subject, ds.classes[s.expression], s.frame)]])
    mtime = os.path.getmtime(manifest)
    write_synthfer(str(tmp_path / "sf"), n_subjects=5, n_frames=4, size=64, seed=3)  # same parameters: reused
    assert os.path.getmtime(manifest) == mtime


def test_synthfer_identity_sets_how_expressions_are_shown():
    rng = np.random.default_rng(0)
    _, base0, apex0 = _subject_params(rng, 30, 0.0)
    assert np.allclose(apex0, PROTOTYPES[None]) and np.allclose(base0, 0)  # difficulty 0: everyone alike
    geom, base, apex = _subject_params(np.random.default_rng(0), 30, 0.8)
    style = apex - apex.mean(0, keepdims=True)
    assert style.std() > 0.1 and base.std() > 0.05
    # part of each subject's style is a function of its geometry: a linear fit from geometry explains it
    g = np.stack([geom[k] for k in sorted(geom)], 1)
    g = np.c_[(g - g.mean(0)) / g.std(0), np.ones(len(g))]
    y = style.reshape(30, -1)
    resid = y - g @ np.linalg.lstsq(g, y, rcond=None)[0]
    assert resid.var() < 0.85 * y.var()


# ------------------------------------------------------------ protocol
def _toy_dataset(n_subjects=23, per=(3, 6)):
    from fer_models.data.base import FaceDataset, Sample

    rng = np.random.default_rng(1)
    samples = [
        Sample(f"{s}_{i}.png", int(rng.integers(6)), f"S{s:02d}", f"S{s:02d}_q", i)
        for s in range(n_subjects)
        for i in range(int(rng.integers(*per)))
    ]
    return FaceDataset("toy", list(BASIC6), samples)


def test_folds_are_subject_disjoint_cover_everyone_and_are_reused(tmp_path):
    ds = _toy_dataset()
    folds = make_folds(ds, k=10, seed=0)
    flat = [s for f in folds.folds for s in f]
    assert sorted(flat) == ds.subjects and len(flat) == len(set(flat))  # no subject in two folds
    sizes = [sum(s.subject in set(f) for s in ds.samples) for f in folds.folds]
    assert max(sizes) - min(sizes) <= 5
    assert make_folds(ds, 10, seed=0).folds == folds.folds and make_folds(ds, 10, seed=1).folds != folds.folds
    for k in range(10):
        train, val, test = split_fold(ds, folds, k, val_fraction=0.2, seed=0)
        tr, va, te = set(train.subjects), set(val.subjects), set(test.subjects)
        assert te == set(folds.folds[k]) and not (tr & te) and not (va & te) and not (tr & va) and va
        assert len(train) + len(val) + len(test) == len(ds)
    path = str(tmp_path / "folds.json")
    f1, reused = load_or_make_folds(path, ds, 10, 0)
    assert not reused and os.path.isfile(path)
    f2, reused = load_or_make_folds(path, ds, 10, seed=123)  # the file wins over a new seed
    assert reused and f2.folds == f1.folds
    with pytest.raises(DataError, match="does not match"):
        load_or_make_folds(path, _toy_dataset(22), 10, 0)
    with open(path) as fh:
        d = json.load(fh)
    d["folds"][1].append(d["folds"][0][0])
    with open(path, "w") as fh:
        json.dump(d, fh)
    with pytest.raises(DataError, match="in folds 0 and 1"):
        Folds.load(path)
    assert validation_subjects(["a", "b", "c"], 0.0, 0) == []


# ------------------------------------------------------------ augmentation, crops
def test_augment14_versions():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 60, 60), dtype=np.uint8)
    out, src = augment14(imgs)
    assert out.shape == (28, 60, 60) and src.tolist() == [0] * 14 + [1] * 14
    v = out[14:]
    assert np.array_equal(v[0], imgs[1]) and np.array_equal(v[1], imgs[1][:, ::-1])
    for j, a in enumerate(ANGLES):
        assert np.array_equal(v[2 + 2 * j], rotate(imgs[1], a))
        assert np.array_equal(v[3 + 2 * j], rotate(imgs[1], a)[:, ::-1])
    assert len({a.tobytes() for a in v}) == 14
    # rotation direction: a point right of centre moves up for a positive (counter-clockwise) angle
    dot = np.zeros((61, 61), np.uint8)
    dot[30, 50] = 255
    y, x = np.unravel_index(rotate(dot, 15).argmax(), dot.shape)
    assert y < 30 and x < 50


def test_crops():
    x = torch.arange(3 * 60 * 60, dtype=torch.float32).reshape(3, 1, 60, 60)
    c = center_crop(x, 48)
    assert torch.equal(c, x[..., 6:54, 6:54])
    r1 = random_crop(x, 48, torch.Generator().manual_seed(5))
    r2 = random_crop(x, 48, torch.Generator().manual_seed(5))
    assert r1.shape == (3, 1, 48, 48) and torch.equal(r1, r2)
    for i in range(3):  # every crop is a 48x48 window of its own image
        top, left = divmod(int(r1[i, 0, 0, 0]) - i * 3600, 60)
        assert torch.equal(r1[i], x[i, :, top : top + 48, left : left + 48])


# ------------------------------------------------------------ fer-prep
def test_eye_alignment_levels_the_eyes():
    from fer_models.prep import eye_alignment

    left, right = (20.0, 40.0), (50.0, 30.0)
    m = eye_alignment(left, right)
    pl, pr = m @ np.array([*left, 1.0]), m @ np.array([*right, 1.0])
    assert abs(pl[1] - pr[1]) < 1e-9 and pr[0] > pl[0]
    assert np.isclose(np.hypot(*(pr - pl)), np.hypot(30, 10))


def test_fer_prep_detects_crops_and_reports_misses(tmp_path, capsys):
    import cv2

    from fer_models import prep

    faces, rows = generate(n_subjects=2, n_frames=2, size=128, difficulty=0.0, seed=0, version=1)  # frontal
    entries = []
    for i in (1, 3, 13):  # apex frames
        big = cv2.copyMakeBorder(faces[i], 64, 64, 64, 64, cv2.BORDER_REPLICATE)
        Image.fromarray(big).save(tmp_path / f"f{i}.png")
        entries.append(
            {
                "path": f"f{i}.png",
                "expression": rows[i]["expression"],
                "subject": rows[i]["subject"],
                "sequence": rows[i]["sequence"],
                "frame": rows[i]["frame"],
            }
        )
    Image.fromarray(np.full((200, 200), 128, np.uint8)).save(tmp_path / "blank.png")
    entries.append(
        {"path": "blank.png", "expression": "fear", "subject": "S009", "sequence": "x", "frame": 0}
    )
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    entries.append(
        {"path": "broken.png", "expression": "fear", "subject": "S009", "sequence": "x", "frame": 1}
    )
    write_manifest(str(tmp_path / "manifest.csv"), entries)
    out = tmp_path / "prep"
    assert (
        prep.main(["--dataset", "manifest", "--data", str(tmp_path), "--out", str(out), "--size", "60"]) == 0
    )
    err = capsys.readouterr().err
    assert "blank.png: no face found" in err and "broken.png" in err
    ds = read_manifest(str(out))
    assert [(s.subject, ds.classes[s.expression]) for s in ds.samples] == [
        (e["subject"], e["expression"]) for e in entries[:3]
    ]
    _, imgs = load_images(ds, 60)
    assert imgs.shape == (3, 60, 60)
    info = json.load(open(out / "prep.json"))
    assert info["stats"] == {"written": 3, "no_face": 1, "unreadable": 1, "aligned": info["stats"]["aligned"]}
    assert all(r["detected"] for r in info["images"])
    for r in info["images"]:  # the detected box is centred on the face (drawn at the image centre)
        x, y, w, h = r["box"]
        assert abs(x + w / 2 - 128) < 20 and abs(y + h / 2 - 128) < 25
    out2 = tmp_path / "prep2"
    assert (
        prep.main(
            [
                "--dataset",
                "manifest",
                "--data",
                str(tmp_path),
                "--out",
                str(out2),
                "--no-detect",
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert len(read_manifest(str(out2))) == 4  # everything readable is kept when detection is skipped


def test_load_dataset_dispatch(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("affectnet", str(tmp_path))
    with pytest.raises(DataError, match="cohn-kanade-images"):
        load_dataset("ckplus", str(tmp_path))
