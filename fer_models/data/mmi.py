"""MMI reader: front-view sequences listed in a manifest, middle three frames of each.

MMI sequences run neutral -> apex -> neutral, so the apex is in the middle (IDEnNet uses 205 front-view
sequences of the six basic expressions). The MMI distribution does not mark views or labels in a form a reader
can rely on, so the user lists the chosen sequences in ``ROOT/mmi.csv``::

    sequence,subject,expression,path
    S001-001,S001,happiness,Sessions/1/frames      # a folder of frames, in name order
    S002-104,S002,4,Sessions/104/S002-104.avi      # or a video file; numeric codes 1..6 accepted

Expression: a name or MMI's code (1 anger, 2 disgust, 3 fear, 4 happiness, 5 sadness, 6 surprise). Paths are
relative to the CSV. Frames from videos are decoded when read (``Sample.pixels``). Left out and reported in
``issues``: unknown expressions, missing folders or files, unreadable videos, sequences with no frames.
"""

from __future__ import annotations

import csv
import os

from fer_models.data.base import (
    BASIC6,
    DataError,
    FaceDataset,
    IssueLog,
    Sample,
    canonical_expression,
    is_image,
    select_frames,
)

_CODES = {"1": "anger", "2": "disgust", "3": "fear", "4": "happiness", "5": "sadness", "6": "surprise"}
_VIDEO = (".avi", ".mp4", ".mov", ".mpg", ".mpeg", ".wmv")


def _video_frames(path: str, mode: str, k: int):
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        if n <= 0:
            return []
        out = []
        for i in select_frames(list(range(n)), mode, k):
            cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, frame = cap.read()
            if not ok:
                return []
            out.append((i, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame))
        return out
    finally:
        cap.release()


def read_mmi(
    root: str, manifest: str = "mmi.csv", frames: str = "middle", k: int = 3, strict: bool = False
) -> FaceDataset:
    """Read the MMI sequences listed in ``root/manifest`` (``root`` may also be the CSV itself)."""
    path = root if os.path.isfile(root) else os.path.join(root, manifest)
    if not os.path.isfile(path):
        raise DataError(f"{path}: MMI sequence list not found (columns sequence,subject,expression,path)")
    base = os.path.dirname(os.path.abspath(path))
    issues = IssueLog(strict)
    names = list(BASIC6)
    samples = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"sequence", "subject", "expression", "path"}
        if reader.fieldnames is None or not need <= {c.strip().lower() for c in reader.fieldnames}:
            raise DataError(f"{path}: MMI list needs columns {sorted(need)}, has {reader.fieldnames}")
        for lineno, row in enumerate(reader, start=2):
            row = {k_.strip().lower(): (v or "").strip() for k_, v in row.items() if k_ is not None}
            where = f"{path}:{lineno}"
            raw = row["expression"]
            name = _CODES.get(raw) or canonical_expression(raw)
            if name not in names:
                issues(where, f"unknown expression {raw!r}")
                continue
            seq_path = os.path.join(base, row["path"])
            subject, seq = row["subject"] or None, row["sequence"] or row["path"]
            label = names.index(name)
            if os.path.isdir(seq_path):
                imgs = sorted(f_ for f_ in os.listdir(seq_path) if is_image(f_))
                if not imgs:
                    issues(seq_path, "sequence folder has no images")
                    continue
                chosen = select_frames(list(enumerate(imgs)), frames, k)
                samples += [Sample(os.path.join(seq_path, f_), label, subject, seq, i) for i, f_ in chosen]
            elif os.path.isfile(seq_path) and seq_path.lower().endswith(_VIDEO):
                got = _video_frames(seq_path, frames, k)
                if not got:
                    issues(seq_path, "video could not be decoded")
                    continue
                samples += [Sample(f"{seq_path}#{i}", label, subject, seq, i, pixels=px) for i, px in got]
            else:
                issues(seq_path, "sequence folder or video not found")
    return FaceDataset("mmi", names, samples, issues.issues, root)
