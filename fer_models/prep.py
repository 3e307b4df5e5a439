"""fer-prep: detect, align and crop faces, and write them with a manifest that fer-train reads.

    fer-prep --dataset ckplus --data /data/CK+ --out data/ckplus-faces --size 60
    fer-train --dataset manifest --data data/ckplus-faces --frames all ...

Faces are found with OpenCV's bundled frontal-face Haar cascade (``haarcascade_frontalface_default.xml`` from
opencv-python-headless; the largest face is kept, where fer-predict keeps every face). Within the upper half
of the face the eye cascade looks for the two eyes; where both are found the image is rotated about their
midpoint so they lie level, then the face box (grown by ``--margin``) is cropped and resized to ``--size``.
Where no eye pair is found the face is cropped unrotated (recorded as ``aligned: false``). Images with no face
are reported with their path and left out (``--on-miss keep`` keeps the whole image instead). ``--no-detect``
skips detection for already cropped faces (grayscale + resize only). Labels, subjects, sequences and frames
are carried into ``OUT/manifest.csv``; ``OUT/prep.json`` records the settings and what happened to each input.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

from fer_kernels.extras import cli_entry, require
from fer_models.data import DATASETS, DataError, load_dataset
from fer_models.data.base import read_gray, resize_gray
from fer_models.data.manifest import write_manifest
from fer_models.runtime import write_json


def cascade_path(name: str) -> str:
    import cv2

    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(base, name) if base else None
    if not path or not os.path.isfile(path):
        raise RuntimeError(
            f"OpenCV's bundled cascade {name} was not found (cv2 {cv2.__version__}); install "
            "opencv-python-headless<5, which ships the Haar cascades in cv2.data"
        )
    return path


def eye_alignment(left: tuple[float, float], right: tuple[float, float]) -> np.ndarray:
    """The 2x3 affine matrix that rotates about the eyes' midpoint so that ``left`` and ``right`` (x, y image
    coordinates; left = smaller x) end up on one horizontal line."""
    import cv2

    angle = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
    centre = ((left[0] + right[0]) / 2.0, (left[1] + right[1]) / 2.0)
    return cv2.getRotationMatrix2D(centre, angle, 1.0)


class FacePrep:
    """Detect, align (eye pair) and crop faces in grayscale images: the largest face (:meth:`process`, what
    fer-prep writes) or every face (:meth:`process_all`, what fer-predict classifies)."""

    def __init__(self, size: int = 60, margin: float = 0.1, detect: bool = True, min_face: int = 24,
                 min_neighbors: int = 5):
        self.size, self.margin, self.detect, self.min_face = size, margin, detect, min_face
        self.min_neighbors = min_neighbors  # overlapping cascade hits a face needs (more: fewer false faces)
        if detect:
            import cv2

            self.face = cv2.CascadeClassifier(cascade_path("haarcascade_frontalface_default.xml"))
            self.eye = cv2.CascadeClassifier(cascade_path("haarcascade_eye.xml"))

    def _eyes(self, gray: np.ndarray, box) -> tuple | None:
        x, y, w, h = box
        roi = gray[y : y + h // 2, x : x + w]
        eyes = self.eye.detectMultiScale(
            roi, scaleFactor=1.1, minNeighbors=5, minSize=(max(4, w // 10), max(4, w // 10))
        )
        if len(eyes) < 2:
            return None
        centres = sorted(
            ((ex + ew / 2 + x, ey + eh / 2 + y, ew * eh) for ex, ey, ew, eh in eyes), key=lambda c: -c[2]
        )[:2]
        left, right = sorted(centres, key=lambda c: c[0])
        if right[0] - left[0] < w * 0.2:  # two detections of one eye
            return None
        return (left[0], left[1]), (right[0], right[1])

    def detect_faces(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Every face box ``(x, y, w, h)`` the frontal-face cascade finds in ``gray (uint8[H, W])``, largest
        first (ties in detection order)."""
        faces = self.face.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(self.min_face, self.min_face)
        )
        boxes = [tuple(int(v) for v in b) for b in faces]
        return sorted(boxes, key=lambda b: -b[2] * b[3])

    def crop_face(self, gray: np.ndarray, box) -> tuple[np.ndarray, dict]:
        """``(crop uint8[size, size], info)`` for the face ``box`` of ``gray``: eye-aligned where an eye pair
        is found, the box grown by ``margin``, squared and resized."""
        import cv2

        box = tuple(int(v) for v in box)
        eyes = self._eyes(gray, box)
        img = gray
        if eyes is not None:
            m = eye_alignment(*eyes)
            img = cv2.warpAffine(
                gray,
                m,
                (gray.shape[1], gray.shape[0]),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
        x, y, w, h = box
        grow = int(round(self.margin * max(w, h)))
        side = max(w, h) + 2 * grow
        cx, cy = x + w / 2.0, y + h / 2.0
        x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
        pad = max(0, -x0, -y0, x0 + side - img.shape[1], y0 + side - img.shape[0])
        if pad:
            img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        crop = img[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
        info = {"detected": True, "box": list(box), "aligned": eyes is not None}
        if eyes is not None:
            info["eyes"] = [list(map(float, e)) for e in eyes]
        return resize_gray(crop, self.size), info

    def process(self, gray: np.ndarray) -> tuple[np.ndarray | None, dict]:
        """The largest face: ``(crop uint8[size, size] or None, info)``; info has ``reason`` when no face was
        found."""
        if not self.detect:
            return resize_gray(gray, self.size), {"detected": False, "aligned": False}
        faces = self.detect_faces(gray)
        if not faces:
            return None, {"reason": "no face found"}
        return self.crop_face(gray, faces[0])

    def process_all(self, gray: np.ndarray) -> list[tuple[np.ndarray, dict]]:
        """Every face, largest first: a list of ``(crop uint8[size, size], info)`` with ``info["box"]``
        ``[x, y, w, h]`` in ``gray``'s pixels; empty when no face is found. Without detection, the whole image
        is the one face."""
        if not self.detect:
            h, w = gray.shape[:2]
            info = {"detected": False, "aligned": False, "box": [0, 0, w, h]}
            return [(resize_gray(gray, self.size), info)]
        return [self.crop_face(gray, box) for box in self.detect_faces(gray)]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fer-prep", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dataset", required=True, choices=[d for d in DATASETS if d != "synthfer"] + ["synthfer"]
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=60, help="output face size (60 for IDEnNet, 64 for EIFN)")
    ap.add_argument(
        "--margin", type=float, default=0.1, help="grow the face box by this fraction on each side"
    )
    ap.add_argument("--no-detect", dest="detect", action="store_false", help="faces are already cropped")
    ap.add_argument(
        "--on-miss",
        choices=("skip", "keep"),
        default="skip",
        help="an image without a detected face: leave it out (reported) or keep it whole",
    )
    ap.add_argument("--frames", choices=("last", "middle", "all"), default=None)
    return ap


@cli_entry("fer-prep", extra="train")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    require("fer-prep", "train", "PIL", "cv2")  # decoding and writing, detection and alignment
    opts = (
        {"frames": args.frames}
        if args.frames and args.dataset in ("synthfer", "ckplus", "oulu", "mmi", "manifest")
        else {}
    )
    try:
        dataset = load_dataset(args.dataset, args.data, **opts)
    except DataError as e:
        print(f"fer-prep: {e}", file=sys.stderr)
        return 2
    prep = FacePrep(args.size, args.margin, args.detect)
    from PIL import Image

    rows, log, left_out = [], [], [i.__dict__ for i in dataset.issues]
    stats = {"written": 0, "no_face": 0, "unreadable": 0, "aligned": 0}
    for n, s in enumerate(dataset.samples):
        try:
            gray = s.pixels if s.pixels is not None else read_gray(s.path)
        except DataError as e:
            stats["unreadable"] += 1
            left_out.append({"path": s.path, "reason": str(e)})
            print(f"fer-prep: skipped {e}", file=sys.stderr)
            continue
        crop, info = prep.process(gray)
        if crop is None:
            stats["no_face"] += 1
            if args.on_miss == "skip":
                left_out.append({"path": s.path, "reason": info["reason"]})
                print(f"fer-prep: skipped {s.path}: {info['reason']}", file=sys.stderr)
                continue
            crop, info = (
                resize_gray(gray, args.size),
                {"detected": False, "aligned": False, "kept_whole": True},
            )
        stats["aligned"] += bool(info.get("aligned"))
        sub = s.subject or "_"
        relpath = os.path.join("images", sub, f"{n:06d}.png")
        os.makedirs(os.path.join(args.out, "images", sub), exist_ok=True)
        Image.fromarray(crop).save(os.path.join(args.out, relpath))
        expr = dataset.classes[s.expression] if s.expression >= 0 and dataset.classes else ""
        rows.append(
            {
                "path": relpath,
                "expression": expr,
                "subject": s.subject,
                "sequence": s.sequence,
                "frame": s.frame,
                "split": s.split,
            }
        )
        log.append({"source": s.path, "path": relpath, **info})
        stats["written"] += 1
    write_manifest(os.path.join(args.out, "manifest.csv"), rows)
    write_json(
        {
            "dataset": args.dataset,
            "data": os.path.abspath(args.data),
            "size": args.size,
            "margin": args.margin,
            "detect": args.detect,
            "on_miss": args.on_miss,
            "cascades": ["haarcascade_frontalface_default.xml", "haarcascade_eye.xml"] if args.detect else [],
            "stats": stats,
            "left_out": left_out,
            "images": log,
        },
        os.path.join(args.out, "prep.json"),
    )
    print(
        f"fer-prep: {stats['written']} faces written to {args.out} ({stats['aligned']} eye-aligned, "
        f"{stats['no_face']} without a face, {stats['unreadable']} unreadable, "
        f"{len(dataset.issues)} left out "
        f"by the reader); {os.path.join(args.out, 'manifest.csv')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
