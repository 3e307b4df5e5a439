"""fer-predict: the expression of every face in photos, folders and videos, with a fer-train checkpoint.

    fer-predict --checkpoint runs/if40/fold_0/checkpoints/best.pt photo.jpg holiday/ clip.mp4
    fer-predict --checkpoint best.pt clip.mp4 --every 5 --smooth 3 --out clip.csv --annotate annotated/
    fer-predict --checkpoint best.pt --no-detect crops/          # faces already cropped: one record per image

Inputs: image files, video files (read with OpenCV's ``VideoCapture``) and folders, searched recursively for
files with an image (``.png .jpg .jpeg .bmp .tif .tiff .pgm .ppm .webp .gif``) or video (``.mp4 .avi .mov
.mkv .webm .m4v .mpg .mpeg .wmv``) extension. A file named on the command line is read as a video when its
extension is a video one, else as an image. Photos are turned upright from their EXIF orientation.

Every face of each photo and of every ``--every``-th video frame is found, eye-aligned and cropped with
fer-prep's pipeline (:class:`fer_models.prep.FacePrep`: OpenCV Haar cascades, the checkpoint's input size),
and the crops go through the model ``--batch-size`` at a time, across frames and files. The cascade now and
then takes a patch of clothing or background for a face; ``--min-neighbors`` (default 5, as fer-prep) trades
faces found for false ones. Output, one record per face per photo or sampled frame, as JSON lines on stdout or
in ``--out FILE`` (``.jsonl``, or ``.csv`` with one ``p_<class>`` column per class):

    {"source": "clip.mp4", "frame": 40, "time_s": 1.6, "box": [x, y, w, h], "track": 0,
     "expression": "happiness", "probabilities": {"anger": 0.01, ...}}

``frame`` is 0 and ``time_s`` 0.0 for a photo; for a video ``time_s`` is frame / fps (null when the file gives
no frame rate). ``box`` is in the source's pixels. Video records carry ``track``, a face followed from one
sampled frame to the next by the overlap of its boxes (IoU >= 0.3); ``--smooth K`` replaces each face's
probabilities by their mean over the last K sampled frames of its track. ``--annotate DIR`` writes each photo
or video with the boxes and labels drawn, under its own base name (a video as MJPG ``.avi`` unless it is
``.mp4``/``.m4v``/``.mov``; frames between sampled ones show the last sampled frame's boxes).

An input that cannot be read (a missing, unreadable or non-image file, a video with no decodable frame) gets
one line on stderr naming it and the other inputs are still processed; a photo without a face gives no record
and one line saying so. Exit status: 0 when every input was read, 1 when one failed, 2 for an unusable
checkpoint (missing, truncated, carrying code, of another kind) or bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from fer_kernels.extras import cli_entry, require
from fer_models.data.base import IMAGE_EXTENSIONS, DataError
from fer_models.runtime import (
    CheckpointError,
    first_line,
    import_plugins,
    load_checkpoint,
    model_from_checkpoint,
    predict_logits,
    target_logits,
)

PROG = "fer-predict"
IMAGE_EXTS = tuple(sorted(set(IMAGE_EXTENSIONS) | {".ppm", ".webp", ".gif"}))
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
TRACK_IOU = 0.3  # boxes of one face in consecutive sampled frames overlap at least this much
MAX_HELD_FRAMES = 32  # frames (with their pixels, for --annotate) waiting for their faces' batch


# ----------------------------------------------------------------------------------------------- the model
def load_model(path: str, expression: bool = True, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The model of a fer-train checkpoint and its config, checked: ``expression=True`` refuses a checkpoint
    trained on identities. The model is in eval mode on ``device``.

    Raises:
        CheckpointError: one line naming the file (see :func:`fer_models.runtime.load_checkpoint`).
    """
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a fer-train checkpoint (its config is not a dict)")
    missing = [k for k in ("classes", "resize", "crop", "channels") if k not in cfg]
    if missing:
        raise CheckpointError(f"{path}: not a fer-train checkpoint (its config lacks {', '.join(missing)})")
    if expression and cfg.get("target", "expression") != "expression":
        raise CheckpointError(
            f"{path}: a checkpoint of a model trained to recognise {cfg['target']}, not expressions"
        )
    model = model_from_checkpoint(ckpt, path)
    model.to(device).eval()
    with torch.no_grad():  # one dry run: the head must give one logit per class
        x = torch.zeros(1, int(cfg["channels"]), int(cfg["crop"]), int(cfg["crop"]), device=device)
        try:
            n = target_logits(model(x), cfg.get("target", "expression")).shape[-1]
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: model {cfg['model']!r} does not run on its own input size "
                                  f"({first_line(exc)})") from None
    if n != len(cfg["classes"]):
        raise CheckpointError(f"{path}: the model gives {n} logits for {len(cfg['classes'])} classes")
    return model, cfg


class Classifier:
    """A checkpoint's model with its preprocessing: uint8 face crops in, class probabilities out."""

    def __init__(self, checkpoint: str, device="cpu", batch_size: int = 64):
        self.device = torch.device(device)
        self.model, self.config = load_model(checkpoint, True, self.device)
        self.classes = [str(c) for c in self.config["classes"]]
        self.resize, self.crop = int(self.config["resize"]), int(self.config["crop"])
        self.channels, self.batch_size = int(self.config["channels"]), batch_size

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """``crops (uint8[N, R, R])`` (R = the checkpoint's resize) -> float32[N, classes]."""
        logits = predict_logits(self.model, torch.from_numpy(np.ascontiguousarray(crops)), self.crop,
                                self.channels, self.device, self.batch_size)
        return logits.softmax(1).numpy()


# ----------------------------------------------------------------------------------------------- inputs
@dataclass
class Source:
    path: str
    kind: str  # "image" | "video"


def find_inputs(inputs: list[str], fail) -> list[Source]:
    """Expand files and folders (recursively, sorted) into sources; ``fail(path, reason)`` for the rest."""
    out = []
    for p in inputs:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    ext = os.path.splitext(name)[1].lower()
                    if ext in IMAGE_EXTS or ext in VIDEO_EXTS:
                        kind = "video" if ext in VIDEO_EXTS else "image"
                        found.append(Source(os.path.join(root, name), kind))
            if not found:
                fail(p, "a folder with no image or video file")
            out += found
        elif os.path.isfile(p):
            out.append(Source(p, "video" if os.path.splitext(p)[1].lower() in VIDEO_EXTS else "image"))
        else:
            fail(p, "no such file or folder")
    return out


def read_image(path: str, color: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``(gray uint8[H, W], BGR uint8[H, W, 3] or None)``, upright from EXIF; :class:`DataError` naming the
    file otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            gray = np.asarray(im.convert("L"), dtype=np.uint8).copy()
            bgr = None
            if color:
                bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8)[:, :, ::-1])
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (no decoder recognises it)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {first_line(exc)})") from None
    return gray, bgr


# ----------------------------------------------------------------------------------------------- tracking
def iou(a, b) -> float:
    """Intersection over union of two ``[x, y, w, h]`` boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


class BoxTracker:
    """Track ids for the faces of consecutive sampled frames: each box takes the id of the previous frame's
    box it overlaps most (greedy, IoU >= ``min_iou``), else a new id. A face missing from one sampled frame
    starts a new track when it comes back."""

    def __init__(self, min_iou: float = TRACK_IOU):
        self.min_iou, self.prev, self.next_id = min_iou, [], 0

    def assign(self, boxes: list) -> list[int]:
        pairs = sorted(
            ((iou(b, pb), i, j) for i, b in enumerate(boxes) for j, (_, pb) in enumerate(self.prev)),
            reverse=True,
        )
        ids: list[int | None] = [None] * len(boxes)
        taken = set()
        for v, i, j in pairs:
            if v < self.min_iou:
                break
            if ids[i] is None and j not in taken:
                ids[i] = self.prev[j][0]
                taken.add(j)
        for i in range(len(ids)):
            if ids[i] is None:
                ids[i], self.next_id = self.next_id, self.next_id + 1
        self.prev = list(zip(ids, boxes, strict=True))
        return ids


class Smoother:
    """Moving average of each track's probabilities over its last ``window`` sampled frames."""

    def __init__(self, window: int):
        self.window = window
        self.hist: dict[int, deque] = {}

    def __call__(self, tracks: list[int], probs: np.ndarray) -> np.ndarray:
        if self.window <= 1:
            return probs
        hist = {t: self.hist.get(t, deque(maxlen=self.window)) for t in tracks}  # tracks gone are dropped
        out = np.empty_like(probs)
        for k, t in enumerate(tracks):
            hist[t].append(probs[k])
            out[k] = np.mean(hist[t], axis=0)
        self.hist = hist
        return out


# ----------------------------------------------------------------------------------------------- outputs
class JsonLines:
    def __init__(self, f):
        self.f = f

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")


class CsvRows:
    """One row per record: source, frame, time_s, x, y, w, h, track, expression, p_<class>..."""

    def __init__(self, f, classes: list[str]):
        self.classes = classes
        self.w = csv.writer(f)
        self.w.writerow(["source", "frame", "time_s", "x", "y", "w", "h", "track", "expression",
                         *(f"p_{c}" for c in classes)])

    def write(self, rec: dict) -> None:
        t = rec.get("time_s")
        self.w.writerow([rec["source"], rec["frame"], "" if t is None else t, *rec["box"],
                         rec.get("track", ""), rec["expression"],
                         *(rec["probabilities"][c] for c in self.classes)])


def draw(img: np.ndarray, faces: list[tuple[list[int], str, float]]) -> np.ndarray:
    """Boxes and ``label p`` texts drawn on a BGR image (in place; returned)."""
    import cv2

    for (x, y, w, h), label, p in faces:
        thick = max(1, int(round(max(img.shape[:2]) / 400)))
        scale = max(0.4, min(1.5, w / 160))
        cv2.rectangle(img, (x, y), (x + w, y + h), (0, 220, 0), thick)
        text = f"{label} {p:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + h + th + 4
        cv2.rectangle(img, (x, ty - th - base), (x + tw, ty + base), (0, 220, 0), cv2.FILLED)
        cv2.putText(img, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return img


class Annotations:
    """Where ``--annotate`` writes: one file per source under its base name (``-2``, ``-3``... when two
    sources of one run share a name)."""

    IMAGE_OUT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
    VIDEO_OUT = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v"}

    def __init__(self, folder: str):
        self.folder, self.used = folder, set()
        os.makedirs(folder, exist_ok=True)

    def path_for(self, src: Source) -> str:
        stem, ext = os.path.splitext(os.path.basename(src.path))
        ext = ext.lower()
        if src.kind == "image" and ext not in self.IMAGE_OUT:
            ext = ".png"
        if src.kind == "video" and ext not in self.VIDEO_OUT:
            ext = ".avi"
        name, n = stem + ext, 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}{ext}"
        self.used.add(name)
        return os.path.join(self.folder, name)


class VideoSink:
    """An annotated copy of one video, opened at its first frame."""

    def __init__(self, path: str, fps: float | None):
        self.path, self.fps, self.writer, self.last = path, fps or 25.0, None, []

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            fourcc = Annotations.VIDEO_OUT[os.path.splitext(self.path)[1].lower()]
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*fourcc), self.fps,
                                          (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                raise DataError(f"{self.path}: OpenCV cannot write this video ({fourcc})")
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class Frame:
    """One photo or video frame waiting for its faces' batch."""

    source: Source
    index: int
    time_s: float | None
    boxes: list = field(default_factory=list)
    crops: list = field(default_factory=list)
    tracks: list | None = None
    image: np.ndarray | None = None  # BGR pixels, kept for --annotate
    sampled: bool = True
    sink: object = None  # str (photo: where to write) | VideoSink
    smoother: Smoother | None = None


class Predictor:
    """Runs sources through detection and the classifier; see the module docstring.

    Args:
        classifier: the model (:class:`Classifier`).
        detect (bool): find faces (False: each image or frame is one face, box = all of it).
        every (int): classify every ``every``-th video frame (0, every, 2 every, ...).
        smooth (int): moving-average window over a track's sampled frames (1 = none).
        annotate (str | None): folder for the annotated copies.
        min_face (int), min_neighbors (int): the face detector's smallest face (pixels) and the overlapping
            cascade hits a face needs (fer-prep's 24 and 5; more neighbours: fewer false faces, fewer faces).
        emit: called with each record, in input order.
        say: called with each one-line message (errors, photos without faces).
        progress (bool): a progress bar on stderr.
    """

    def __init__(self, classifier: Classifier, detect: bool = True, every: int = 1, smooth: int = 1,
                 annotate: str | None = None, emit=None, say=None, progress: bool = False,
                 min_face: int = 24, min_neighbors: int = 5):
        from fer_models.prep import FacePrep

        self.clf, self.every, self.smooth = classifier, every, smooth
        self.prep = FacePrep(size=classifier.resize, detect=detect, min_face=min_face,
                             min_neighbors=min_neighbors)
        self.annotate = Annotations(annotate) if annotate else None
        self.emit = emit or (lambda rec: None)
        self.say = say or (lambda line: None)
        self.progress = progress
        self.queue: list[Frame] = []
        self.queued_faces = 0
        self.failed: list[str] = []
        self.counts = {"images": 0, "videos": 0, "frames": 0, "faces": 0}

    def fail(self, path: str, reason: str) -> None:
        self.failed.append(path)
        self.say(f"{PROG}: {path}: {reason}")

    def run(self, inputs: list[str]) -> list[str]:
        """Process ``inputs`` (files and folders); returns the inputs that failed."""
        from tqdm import tqdm

        sources = find_inputs(inputs, self.fail)
        n_images = sum(s.kind == "image" for s in sources)
        with tqdm(total=n_images, unit="frame", file=sys.stderr, disable=not self.progress,
                  dynamic_ncols=True, desc=PROG, leave=False) as self.bar:
            plain_say = self.say
            if self.progress:  # the bar cleared while a line is printed, then redrawn below it

                def say(line):
                    with tqdm.external_write_mode(file=sys.stderr):
                        plain_say(line)

                self.say = say
            try:
                self._sources(sources)
            finally:
                self.say = plain_say
        return self.failed

    def _sources(self, sources: list[Source]) -> None:
        for src in sources:
            if src.kind == "image":
                self._image(src)
                self.bar.update(1)
            else:
                self._video(src)
        self._flush()

    # ---- per source
    def _faces(self, gray: np.ndarray) -> tuple[list, list]:
        found = self.prep.process_all(gray)
        return [info["box"] for _, info in found], [crop for crop, _ in found]

    def _image(self, src: Source) -> None:
        try:
            gray, bgr = read_image(src.path, color=self.annotate is not None)
        except DataError as exc:
            self.failed.append(src.path)
            self.say(f"{PROG}: {exc}")
            return
        self.counts["images"] += 1
        boxes, crops = self._faces(gray)
        if not boxes:
            self.say(f"{PROG}: {src.path}: no face found")
        sink = self.annotate.path_for(src) if self.annotate else None
        self._queue(Frame(src, 0, 0.0, boxes, crops, None, bgr, True, sink))

    def _video(self, src: Source) -> None:
        import cv2

        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own lines; ours name the file
        cap = cv2.VideoCapture(src.path)
        try:
            if not cap.isOpened():
                self.fail(src.path, "cannot be opened as a video (OpenCV VideoCapture)")
                return
            fps = cap.get(cv2.CAP_PROP_FPS)
            fps = fps if fps and math.isfinite(fps) and fps > 0 else None
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.bar.total = (self.bar.total or 0) + max(total, 0)
            self.bar.refresh()
            sink = VideoSink(self.annotate.path_for(src), fps) if self.annotate else None
            tracker, smoother = BoxTracker(), Smoother(self.smooth)
            n = sampled = faces = 0
            while True:
                sample = n % self.every == 0
                if not cap.grab():
                    break
                if sample or sink is not None:
                    ok, bgr = cap.retrieve()
                    if not ok:
                        break
                if sample:
                    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
                    boxes, crops = self._faces(gray)
                    t = round(n / fps, 6) if fps else None
                    self._queue(Frame(src, n, t, boxes, crops, tracker.assign(boxes),
                                      bgr if sink is not None else None, True, sink, smoother))
                    sampled, faces = sampled + 1, faces + len(boxes)
                elif sink is not None:  # drawn with the last sampled frame's boxes
                    self._queue(Frame(src, n, None, image=bgr, sampled=False, sink=sink))
                n += 1
                self.bar.update(1)
            if n == 0:
                self.fail(src.path, "empty video (no frame could be decoded)")
            else:
                self.counts["videos"] += 1
                if faces == 0:
                    self.say(f"{PROG}: {src.path}: no face found in its {sampled} sampled frame(s)")
            if total > n:  # the container announced more frames than it gave
                self.bar.total -= total - n
        finally:
            cap.release()
        if sink is not None:
            self._flush()
            sink.close()

    # ---- batching
    def _queue(self, frame: Frame) -> None:
        self.queue.append(frame)
        self.queued_faces += len(frame.crops)
        held = sum(f.image is not None for f in self.queue)
        if self.queued_faces >= self.clf.batch_size or held >= MAX_HELD_FRAMES:
            self._flush()

    def _flush(self) -> None:
        crops = [c for f in self.queue for c in f.crops]
        probs = self.clf.probabilities(np.stack(crops)) if crops else None
        k = 0
        for f in self.queue:
            p = probs[k : k + len(f.crops)] if probs is not None else np.zeros((0, len(self.clf.classes)))
            k += len(f.crops)
            self._finish(f, p)
        self.queue, self.queued_faces = [], 0

    def _finish(self, f: Frame, probs: np.ndarray) -> None:
        if f.sampled:
            self.counts["frames"] += 1
            self.counts["faces"] += len(f.boxes)
        if f.smoother is not None and len(f.boxes):
            probs = f.smoother(f.tracks, probs)
        drawn = []
        for i, box in enumerate(f.boxes):
            top = int(np.argmax(probs[i]))
            rec = {"source": f.source.path, "frame": f.index, "time_s": f.time_s,
                   "box": [int(v) for v in box]}
            if f.tracks is not None:
                rec["track"] = f.tracks[i]
            rec["expression"] = self.clf.classes[top]
            rec["probabilities"] = {c: round(float(v), 6)
                                    for c, v in zip(self.clf.classes, probs[i], strict=True)}
            self.emit(rec)
            drawn.append((rec["box"], rec["expression"], float(probs[i][top])))
        if f.sink is None:
            return
        import cv2

        if isinstance(f.sink, VideoSink):
            if f.sampled:
                f.sink.last = drawn
            try:
                f.sink.write(draw(f.image, f.sink.last))
            except DataError as exc:
                if f.source.path not in self.failed:
                    self.failed.append(f.source.path)
                    self.say(f"{PROG}: {exc}")
        elif not cv2.imwrite(f.sink, draw(f.image, drawn)):
            self.fail(f.source.path, f"the annotated copy could not be written to {f.sink}")


def predict(checkpoint: str, inputs: list[str], detect: bool = True, batch_size: int = 64, every: int = 1,
            smooth: int = 1, annotate: str | None = None, device="cpu",
            **detector) -> tuple[list[dict], list[str]]:
    """Records for ``inputs`` (see the module docstring) and the inputs that failed, without printing;
    ``detector``: ``min_face``, ``min_neighbors`` (see :class:`Predictor`).

    Raises:
        CheckpointError: the checkpoint cannot be used.
    """
    records: list[dict] = []
    pred = Predictor(Classifier(checkpoint, device, batch_size), detect, every, smooth, annotate,
                     emit=records.append, **detector)
    failed = pred.run(list(inputs))
    return records, failed


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="a fer-train checkpoint (best.pt)")
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders")
    ap.add_argument("--out", default="-", help="FILE.jsonl or FILE.csv (default: JSON lines on stdout)")
    ap.add_argument("--batch-size", type=int, default=64, help="faces per model call (default 64)")
    ap.add_argument("--every", type=int, default=1, metavar="N", help="classify every N-th video frame")
    ap.add_argument("--smooth", type=int, default=1, metavar="K",
                    help="average each video face's probabilities over its last K sampled frames")
    ap.add_argument("--annotate", metavar="DIR", help="write the inputs with boxes and labels drawn to DIR")
    ap.add_argument("--no-detect", dest="detect", action="store_false",
                    help="inputs are already cropped faces: one record per image (or frame), box = all of it")
    ap.add_argument("--detect", dest="detect", action="store_true", default=True, help=argparse.SUPPRESS)
    ap.add_argument("--min-face", type=int, default=24, metavar="PX", help="smallest face found (default 24)")
    ap.add_argument("--min-neighbors", type=int, default=5, metavar="N",
                    help="overlapping cascade hits a face needs (default 5, as fer-prep; more: fewer false "
                    "faces, and fewer faces)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, or auto")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import a module that registers a model (repeatable)")
    return ap


@cli_entry(PROG, extra="train")
def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    for name in ("batch_size", "every", "smooth", "min_face", "min_neighbors"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    require(PROG, "train", "PIL", "cv2")  # decoding, detection, alignment, video
    out_ext = os.path.splitext(args.out)[1].lower()
    if args.out != "-" and out_ext not in (".jsonl", ".csv"):
        ap.error(f"--out {args.out}: the file name must end in .jsonl or .csv")
    import_plugins(args.imports)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        clf = Classifier(args.checkpoint, device, args.batch_size)
    except CheckpointError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        f = sys.stdout if args.out == "-" else open(args.out, "w", newline="" if out_ext == ".csv" else None)
    except OSError as exc:
        print(f"{PROG}: {args.out}: cannot write ({exc.strerror})", file=sys.stderr)
        return 2
    writer = CsvRows(f, clf.classes) if out_ext == ".csv" else JsonLines(f)
    say = lambda line: print(line, file=sys.stderr, flush=True)
    progress = not args.quiet and sys.stderr.isatty()
    try:
        pred = Predictor(clf, args.detect, args.every, args.smooth, args.annotate, writer.write, say,
                         progress, args.min_face, args.min_neighbors)
        failed = pred.run(args.inputs)
    finally:
        if f is not sys.stdout:
            f.close()
        else:
            f.flush()
    c = pred.counts
    if not args.quiet:
        say(f"{PROG}: {c['faces']} face(s) found in {c['images']} photo(s) and {c['videos']} video(s) "
            f"({c['frames']} image(s) and sampled frame(s) searched); {len(failed)} input(s) failed"
            + (f"; annotated copies in {args.annotate}" if args.annotate else ""))
    return 1 if failed else 0



if __name__ == "__main__":
    sys.exit(main())
