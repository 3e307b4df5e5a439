"""fer-predict on photos, folders and videos of real faces nobody here made (scikit-image's astronaut photo
and its LFW subset), its outputs and error lines, and fer-export checked with onnxruntime.

The model is a tiny IDEnNet-IF-16 (growth rate 4) with random weights saved as fer-train saves a checkpoint:
what is checked is detection, batching, records and errors, not the expressions it predicts.
"""

import csv
import json
import os
import pathlib
import re

import numpy as np
import pytest
import tomllib
import torch

cv2 = pytest.importorskip("cv2", reason="fer-predict needs the train extra (OpenCV)")
from skimage import data as skdata  # noqa: E402  (test extra: real faces)

from fer_models import export_cli, predict  # noqa: E402
from fer_models.prep import FacePrep  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
ASTRONAUT_FACE = (177, 66, 95, 95)  # x, y, w, h: where the cascade finds her face in the 512x512 photo
SHIFT = 3  # video frame i is the photo moved 3 i pixels to the right (borders replicated)
FPS = 10.0


def _config(**over):
    cfg = {"model": "idennet_if_16",
           "model_kwargs": {"num_expressions": 6, "num_identities": 4, "growth_rate": 4},
           "classes": CLASSES, "target": "expression", "input_size": [1, 48, 48], "resize": 60, "crop": 48,
           "channels": 1}
    cfg.update(over)
    return cfg


def _state():
    import fer_models

    torch.manual_seed(0)
    return fer_models.create_model("idennet_if_16", **_config()["model_kwargs"]).state_dict()


class _Payload:
    """Unpickling this runs code (it creates ``marker``): a tampered checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _iou(a, b):
    return predict.iou(list(a), list(b))


def _lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _run(capsys, *argv):
    """fer-predict in this process: (exit status, records from stdout, stderr lines)."""
    rc = predict.main([*map(str, argv)])
    out, err = capsys.readouterr()
    return rc, _lines(out), err.strip().splitlines()


# ----------------------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    ckpt = d / "tiny.pt"
    torch.save({"model": _state(), "config": _config(), "epoch": 1}, ckpt)
    photo = skdata.astronaut()[:, :, ::-1]  # RGB -> BGR for OpenCV
    cv2.imwrite(str(d / "astronaut.png"), photo)
    # 20 real frames: the photo moved SHIFT pixels right per frame, MJPG in AVI at 10 frames/s
    video = d / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (512, 512))
    for i in range(20):
        m = np.float32([[1, 0, SHIFT * i], [0, 1, 0]])
        w.write(cv2.warpAffine(photo, m, (512, 512), borderMode=cv2.BORDER_REPLICATE))
    w.release()
    # LFW subset: 100 faces then 100 non-faces, 25x25 gray in [0, 1]; upscaled x4 for the cascade (min 24 px)
    lfw = (skdata.lfw_subset() * 255).round().astype(np.uint8)
    for i, img in enumerate(lfw):
        sub = d / "lfw" / ("faces" if i < 100 else "nonfaces")
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f"{i:03d}.png"), cv2.resize(img, (100, 100), interpolation=cv2.INTER_CUBIC))
    crops = d / "crops" / "deeper"
    crops.mkdir(parents=True)
    for i in range(5):
        cv2.imwrite(str(crops / f"{i}.png"), lfw[i])
    return d


# ----------------------------------------------------------------------------------------------- photos
def test_astronaut_photo_gives_exactly_one_face(files, capsys):
    rc, recs, err = _run(capsys, "--checkpoint", files / "tiny.pt", files / "astronaut.png")
    assert rc == 0, err
    assert len(recs) == 1, recs
    r = recs[0]
    assert r["source"] == str(files / "astronaut.png") and r["frame"] == 0 and r["time_s"] == 0.0
    assert _iou(r["box"], ASTRONAUT_FACE) > 0.7, r["box"]
    assert list(r["probabilities"]) == CLASSES
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert r["expression"] == max(r["probabilities"], key=r["probabilities"].get)
    assert "track" not in r
    assert err and err[-1].startswith("fer-predict: 1 face(s) found in 1 photo(s)")


def test_lfw_faces_are_found_and_non_faces_mostly_not(files, capsys):
    rc, recs, err = _run(capsys, "--checkpoint", files / "tiny.pt", files / "lfw", "--batch-size", "16")
    assert rc == 0, err[:3]
    by_source: dict[str, int] = {}
    for r in recs:
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    faces = [s for s in by_source if os.sep + "faces" + os.sep in s]
    nonfaces = [s for s in by_source if os.sep + "nonfaces" + os.sep in s]
    face_rate, false_rate = len(faces) / 100, len(nonfaces) / 100
    extra = sum(by_source[s] - 1 for s in faces)
    with capsys.disabled():
        print(f"\nLFW subset, 25x25 upscaled to 100x100: faces found in {face_rate:.0%} of 100 face images "
              f"({extra} with more than one box), detections in {false_rate:.0%} of 100 non-face images")
    # measured with opencv-python-headless 4.14: 83% and 0%
    assert face_rate >= 0.75, face_rate
    assert false_rate <= 0.05, false_rate
    no_face_lines = [line for line in err if line.endswith(": no face found")]
    assert len(no_face_lines) == 200 - len(by_source)
    # batching does not change a face's probabilities: batch 1 against batch 16
    rc, one, _ = _run(capsys, "--checkpoint", files / "tiny.pt", files / "lfw" / "faces", "--batch-size", "1",
                      "--quiet")
    many = [r for r in recs if r["source"] in faces]
    assert rc == 0 and [r["box"] for r in one] == [r["box"] for r in many]
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()),
                                   atol=1e-5)


def test_no_detect_gives_one_record_per_cropped_face(files, capsys):
    rc, recs, err = _run(capsys, "--checkpoint", files / "tiny.pt", "--no-detect", files / "crops", "--quiet")
    assert rc == 0 and err == []
    assert [os.path.basename(r["source"]) for r in recs] == [f"{i}.png" for i in range(5)]
    assert all(r["box"] == [0, 0, 25, 25] for r in recs)


# ----------------------------------------------------------------------------------------------- videos
def test_video_gives_one_record_per_frame_with_time(files, capsys):
    ck, clip = files / "tiny.pt", files / "clip.avi"
    # The cascade's default (5 neighbours, as fer-prep) now and then also takes a patch of the space suit for
    # a face (<= 8 neighbours here; her face has >= 28); --min-neighbors 10 keeps the face only.
    rc, recs, err = _run(capsys, "--checkpoint", ck, clip, "--min-neighbors", "10")
    assert rc == 0, err
    assert [r["frame"] for r in recs] == list(range(20))
    times = [r["time_s"] for r in recs]
    assert times == pytest.approx([i / FPS for i in range(20)]) and times == sorted(times)
    assert all(r["source"] == str(clip) and r["track"] == 0 for r in recs)
    for r in recs:
        face = (ASTRONAUT_FACE[0] + SHIFT * r["frame"], *ASTRONAUT_FACE[1:])
        assert _iou(r["box"], face) > 0.6, (r["frame"], r["box"], face)
    # with the default, her face is in every frame (and is one track); spurious boxes are other tracks
    rc, default, _ = _run(capsys, "--checkpoint", ck, clip, "--quiet")
    on_face = [r for r in default
               if _iou(r["box"], (ASTRONAUT_FACE[0] + SHIFT * r["frame"], *ASTRONAUT_FACE[1:])) > 0.6]
    assert rc == 0 and [r["frame"] for r in on_face] == list(range(20))
    assert len({r["track"] for r in on_face}) == 1
    # --every 5: frames 0, 5, 10, 15
    rc, every, _ = _run(capsys, "--checkpoint", ck, clip, "--every", "5", "--min-neighbors", "10", "--quiet")
    assert rc == 0 and [r["frame"] for r in every] == [0, 5, 10, 15]
    assert [r["time_s"] for r in every] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert [r["box"] for r in every] == [recs[i]["box"] for i in (0, 5, 10, 15)]
    # --smooth 3: the mean of the last 3 sampled frames' probabilities of the track
    rc, smooth, _ = _run(capsys, "--checkpoint", ck, clip, "--smooth", "3", "--min-neighbors", "10",
                         "--quiet")
    raw = np.array([list(r["probabilities"].values()) for r in recs])
    got = np.array([list(r["probabilities"].values()) for r in smooth])
    want = np.array([raw[max(0, i - 2) : i + 1].mean(0) for i in range(20)])
    assert rc == 0
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert [r["expression"] for r in smooth] == [CLASSES[i] for i in want.argmax(1)]


def test_box_tracker_and_smoother():
    t = predict.BoxTracker()
    assert t.assign([[0, 0, 10, 10], [100, 0, 10, 10]]) == [0, 1]
    assert t.assign([[101, 1, 10, 10], [1, 0, 10, 10], [50, 50, 10, 10]]) == [1, 0, 2]
    assert t.assign([]) == [] and t.assign([[0, 0, 10, 10]]) == [3]  # a face missing one frame: a new track
    s = predict.Smoother(2)
    p = np.eye(2, dtype=np.float32)
    np.testing.assert_allclose(s([0, 1], p), p)
    np.testing.assert_allclose(s([0, 1], p[::-1]), np.full((2, 2), 0.5))
    np.testing.assert_allclose(s([1], p[1:]), [[0.5, 0.5]])  # track 1's last two: [1, 0] then [0, 1]
    np.testing.assert_allclose(s([0], p[1:]), [[0.0, 1.0]])  # track 0 was not in the last frame: restarted


# ----------------------------------------------------------------------------------------------- outputs
def test_csv_and_jsonl_files_parse_and_annotate_writes_each_input(files, tmp_path, capsys):
    two = tmp_path / "again"
    two.mkdir()
    (two / "astronaut.png").write_bytes((files / "astronaut.png").read_bytes())
    inputs = [files / "astronaut.png", files / "clip.avi", two / "astronaut.png"]
    ann = tmp_path / "annotated"
    common = ["--checkpoint", files / "tiny.pt", *inputs, "--every", "4", "--min-neighbors", "10", "--quiet"]
    rc, stdout_recs, _ = _run(capsys, *common, "--out", tmp_path / "p.csv", "--annotate", ann)
    assert rc == 0 and stdout_recs == []
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["source", "frame", "time_s", "x", "y", "w", "h", "track", "expression",
                             *(f"p_{c}" for c in CLASSES)]
    assert [(os.path.basename(r["source"]), int(r["frame"])) for r in rows] == [
        ("astronaut.png", 0), *(("clip.avi", i) for i in (0, 4, 8, 12, 16)), ("astronaut.png", 0)]
    assert rows[0]["track"] == "" and rows[1]["track"] == "0"
    for r in rows:
        assert sum(float(r[f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)
        assert r["expression"] == max(CLASSES, key=lambda c: float(r[f"p_{c}"]))
    # the same run as JSON lines
    rc, _, _ = _run(capsys, *common, "--out", tmp_path / "p.jsonl")
    recs = _lines((tmp_path / "p.jsonl").read_text())
    assert rc == 0 and len(recs) == len(rows)
    assert [[r["source"], r["frame"], *r["box"]] for r in recs] == [
        [r["source"], int(r["frame"]), *(int(r[k]) for k in "xywh")] for r in rows]
    # annotated copies: one per input, same base name (the second astronaut.png gets -2)
    assert sorted(os.listdir(ann)) == ["astronaut-2.png", "astronaut.png", "clip.avi"]
    drawn = cv2.imread(str(ann / "astronaut.png"))
    source = cv2.imread(str(files / "astronaut.png"))
    assert drawn.shape == source.shape and (drawn != source).any()
    x, y, w, h = (int(rows[0][k]) for k in "xywh")
    assert (drawn[y, x:x + w] == (0, 220, 0)).all()  # the box's top edge
    cap = cv2.VideoCapture(str(ann / "clip.avi"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 20  # every frame, the boxes of the last sampled one drawn


# ----------------------------------------------------------------------------------------------- errors
def test_bad_inputs_get_one_line_each_and_the_rest_is_processed(files, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 64)).release()
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"no video here")
    missing = tmp_path / "missing.jpg"
    rc, recs, err = _run(capsys, "--checkpoint", files / "tiny.pt", bad, files / "astronaut.png", text, empty,
                         fake, missing, "--quiet")
    assert rc == 1
    assert [os.path.basename(r["source"]) for r in recs] == ["astronaut.png"]
    assert len(err) == 5, err
    for path, why in ((bad, "image"), (text, "not an image"), (empty, "empty video"), (fake, "video"),
                      (missing, "no such file")):
        mine = [line for line in err if str(path) in line]
        assert len(mine) == 1 and why in mine[0] and mine[0].startswith("fer-predict: "), (path, err)
    assert not any("Traceback" in line or "moov" in line for line in err)


def test_a_photo_without_a_face_is_not_an_error(files, tmp_path, capsys):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 300), 128, np.uint8))
    rc, recs, err = _run(capsys, "--checkpoint", files / "tiny.pt", blank, "--quiet")
    assert rc == 0 and recs == [] and err == [f"fer-predict: {blank}: no face found"]
    # with the progress bar on, the line still comes out whole
    records, lines = [], []
    p = predict.Predictor(predict.Classifier(str(files / "tiny.pt")), emit=records.append, say=lines.append,
                          progress=True)
    assert p.run([str(blank)]) == [] and records == [] and lines == [f"fer-predict: {blank}: no face found"]
    capsys.readouterr()


def test_unusable_checkpoints_exit_2_with_one_line(files, tmp_path, capsys):
    photo = files / "astronaut.png"
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": _state()}, foreign)
    identity = tmp_path / "identity.pt"
    torch.save({"model": _state(), "config": _config(target="identity", classes=["s1", "s2", "s3", "s4"])},
               identity)
    mismatch = tmp_path / "mismatch.pt"
    no_growth = {"num_expressions": 6, "num_identities": 4}  # growth rate 12: other shapes than the weights
    torch.save({"model": _state(), "config": _config(model_kwargs=no_growth)}, mismatch)
    unknown = tmp_path / "unknown.pt"
    torch.save({"model": {}, "config": _config(model="no_such_model")}, unknown)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes((files / "tiny.pt").read_bytes()[:100])
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _state(), "config": _config(), "extra": _Payload(str(marker))}, evil)
    cases = ((foreign, "not a fer-train checkpoint"), (identity, "recognise identity"),
             (mismatch, "weights do not fit"), (unknown, "unknown model"), (trunc, "unreadable or truncated"),
             (evil, "refused: not plain data"), (tmp_path / "none.pt", "no such checkpoint file"))
    for ckpt, why in cases:
        rc, recs, err = _run(capsys, "--checkpoint", ckpt, photo)
        assert rc == 2 and recs == [], (ckpt, rc)
        assert len(err) == 1 and err[0].startswith(f"fer-predict: {ckpt}: ") and why in err[0], err
    assert not marker.exists(), "the checkpoint's pickled payload ran"
    torch.load(evil, weights_only=False)  # the payload is live: an unpickling load would have run it
    assert marker.exists()


def test_usage_errors_exit_2(files, capsys):
    for argv in (["--out", "preds.json"], ["--every", "0"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as e:
            predict.main(["--checkpoint", str(files / "tiny.pt"), str(files / "astronaut.png"), *argv])
        assert e.value.code == 2
    assert ".jsonl or .csv" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- fer-export
def test_fer_export_onnx_agrees_with_pytorch(files, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    argv = ["--checkpoint", str(files / "tiny.pt"), "--format", "onnx", "--out", str(out)]
    assert export_cli.main(argv) == 0
    printed = capsys.readouterr().out
    diffs = [float(v) for v in re.findall(r"(?:expression|identity) ([0-9.e+-]+) \(outputs", printed)]
    assert len(diffs) == 2 and max(diffs) < 1e-4, printed
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["fer_classes"]) == CLASSES
    assert json.loads(meta["fer_preprocessing"])["center_crop"] == 48
    # the exported model on a real face crop gives fer-predict's probabilities
    clf = predict.Classifier(str(files / "tiny.pt"))
    prep = FacePrep(60)
    gray = cv2.cvtColor(cv2.imread(str(files / "astronaut.png")), cv2.COLOR_BGR2GRAY)
    crop, _ = prep.process(gray)
    x = ((crop[6:54, 6:54].astype(np.float32) / 255 - 0.5) / 0.5)[None, None]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = sess.run(["expression"], {"image": x})[0]
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(p[0], clf.probabilities(crop[None])[0], atol=1e-5)
    # a checkpoint of another kind: one line, exit 2, nothing written
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": {}}, foreign)
    assert export_cli.main(["--checkpoint", str(foreign), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fer-export: {foreign}: not a fer-train checkpoint"), err
    assert not (tmp_path / "x.onnx").exists()


def test_fer_export_without_onnxruntime_is_one_line_naming_the_extra(files, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert export_cli.main(["--checkpoint", str(files / "tiny.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fer-export: onnxruntime is not installed; install the export extra: "
                   "pip install 'fer-kernels[export]'"], err


def test_console_scripts_declared():
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    for name in ("fer-predict", "fer-export"):
        module, fn = project["scripts"][name].split(":")
        assert callable(getattr(__import__(module, fromlist=[fn]), fn))
    extras = project["optional-dependencies"]
    assert any(r.startswith("scikit-image") for r in extras["test"])
    assert {"onnx", "onnxscript", "onnxruntime"} <= set(extras["export"])
