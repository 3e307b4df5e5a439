"""FER2013 and FERPlus readers (48x48 grayscale faces stored as pixel strings in CSV files).

FER2013 (``fer2013.csv``): columns ``emotion,pixels,Usage``; emotion 0 angry, 1 disgust, 2 fear, 3 happy,
4 sad, 5 surprise, 6 neutral; ``pixels`` is 2304 space-separated values in 0..255; Usage ``Training``,
``PublicTest``, ``PrivateTest`` become the splits ``train``, ``val``, ``test``.

FERPlus (``fer2013new.csv`` beside ``fer2013.csv``): the same images in the same row order, relabelled by ten
annotators: ``Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF``.
Majority vote as in the FERPlus release: a row keeps the emotion with more than half of its votes; rows whose
majority is ``unknown`` or ``NF`` (not a face), rows with no majority, and rows with an empty image name
(removed by FERPlus) are left out. The 8 classes are the FERPlus ones (with neutral and contempt).

Left out and reported in ``issues`` (path ``file:line``): a pixel string with the wrong count or a value
outside 0..255, a label outside the documented range, a vote row that does not parse. A missing column, or a
FERPlus file whose row count differs from fer2013.csv, rejects the input (:class:`DataError`).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from fer_models.data.base import DataError, FaceDataset, IssueLog, Sample

FER2013_CLASSES = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
FERPLUS_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
_SPLITS = {"training": "train", "publictest": "val", "privatetest": "test"}
_SIDE = 48


def _csv_path(root: str, name: str) -> str:
    path = root if os.path.isfile(root) else os.path.join(root, name)
    if not os.path.isfile(path):
        raise DataError(f"{path}: not found")
    return path


def _pixels(text: str) -> np.ndarray | str:
    try:
        vals = np.array(text.split(), dtype=np.int64)
    except ValueError:
        return "pixels are not integers"
    if vals.size != _SIDE * _SIDE:
        return f"{vals.size} pixel values, expected {_SIDE * _SIDE}"
    if vals.min() < 0 or vals.max() > 255:
        return "pixel values outside 0..255"
    return vals.astype(np.uint8).reshape(_SIDE, _SIDE)


def _read_rows(path: str, need: tuple[str, ...]):
    f = open(path, newline="")
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    lower = [h.lower() for h in header]
    missing = [c for c in need if c.lower() not in lower]
    if missing:
        f.close()
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
    return f, reader, {c: lower.index(c.lower()) for c in need}


def read_fer2013(root: str, strict: bool = False) -> FaceDataset:
    """Read ``fer2013.csv`` (``root``: the file or its folder); 7 classes, no subject ids, splits kept."""
    path = _csv_path(root, "fer2013.csv")
    issues = IssueLog(strict)
    samples = []
    f, reader, col = _read_rows(path, ("emotion", "pixels", "Usage"))
    with f:
        for lineno, row in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            if len(row) < len(col):
                issues(where, f"{len(row)} fields")
                continue
            try:
                label = int(row[col["emotion"]])
            except ValueError:
                label = -1
            if not 0 <= label < len(FER2013_CLASSES):
                issues(where, f"emotion {row[col['emotion']]!r} not in 0..6")
                continue
            px = _pixels(row[col["pixels"]])
            if isinstance(px, str):
                issues(where, px)
                continue
            split = _SPLITS.get(row[col["Usage"]].strip().lower())
            samples.append(Sample(where, label, None, None, None, pixels=px, split=split))
    return FaceDataset("fer2013", list(FER2013_CLASSES), samples, issues.issues, root)


def read_ferplus(root: str, strict: bool = False) -> FaceDataset:
    """Read FERPlus: ``root`` holds ``fer2013new.csv`` (labels) and ``fer2013.csv`` (pixels)."""
    base = root if os.path.isdir(root) else os.path.dirname(root)
    label_path = _csv_path(base, "fer2013new.csv")
    pixel_path = _csv_path(base, "fer2013.csv")
    issues = IssueLog(strict)
    vote_cols = FERPLUS_CLASSES + ["unknown", "NF"]
    f, reader, col = _read_rows(label_path, ("Usage", "Image name", *vote_cols))
    with f:
        label_rows = list(enumerate(reader, start=2))
    f, reader, pcol = _read_rows(pixel_path, ("pixels",))
    with f:
        pixel_rows = [r[pcol["pixels"]] if len(r) > pcol["pixels"] else "" for r in reader]
    if len(pixel_rows) != len(label_rows):
        raise DataError(
            f"{label_path}: {len(label_rows)} rows but {pixel_path} has {len(pixel_rows)}; "
            "FERPlus labels must match fer2013.csv row for row"
        )
    samples = []
    for (lineno, row), pixtext in zip(label_rows, pixel_rows, strict=True):
        where = f"{label_path}:{lineno}"
        if len(row) < len(col):
            issues(where, f"{len(row)} fields")
            continue
        if not row[col["Image name"]].strip():
            continue  # removed by FERPlus (not a usable face): dropped by design
        try:
            votes = np.array([float(row[col[c]]) for c in vote_cols])
        except ValueError:
            issues(where, "vote counts are not numbers")
            continue
        if votes.min() < 0 or votes.sum() <= 0:
            issues(where, "vote counts must be non-negative with a positive total")
            continue
        winner = int(np.argmax(votes))
        if votes[winner] <= 0.5 * votes.sum() or winner >= len(FERPLUS_CLASSES):
            continue  # no majority, or majority unknown / not a face: dropped by design
        px = _pixels(pixtext)
        if isinstance(px, str):
            issues(f"{pixel_path}:{lineno}", px)
            continue
        split = _SPLITS.get(row[col["Usage"]].strip().lower())
        samples.append(Sample(where, winner, None, None, None, pixels=px, split=split))
    return FaceDataset("ferplus", list(FERPLUS_CLASSES), samples, issues.issues, root)
