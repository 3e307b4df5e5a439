"""CK+ (Extended Cohn-Kanade) reader.

Layout (as distributed)::

    ROOT/.../cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
    ROOT/.../Emotion/S005/001/S005_001_00000011_emotion.txt      # one number: 1..7

Emotion codes: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happiness, 6 sadness, 7 surprise. Only
sequences with a label file are used (327 of 593), and of each the last three frames (the apex), as in both
papers. Left out and reported in ``issues``: sequences without a label file (by design: also in strict mode,
which rejects only the malformed inputs that follow), label files that do not hold a
single code in 1..7, more than one label file for a sequence, a label file whose image folder is missing or
empty. ``classes=6`` drops contempt (the basic six expressions).
"""

from __future__ import annotations

import os
import re

from fer_models.data.base import (
    BASIC6,
    CKPLUS7,
    DataError,
    FaceDataset,
    IssueLog,
    Sample,
    is_image,
    select_frames,
)

_CODES = {1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happiness", 6: "sadness", 7: "surprise"}


def _find_dir(root: str, name: str) -> str:
    if os.path.basename(os.path.normpath(root)) == name:
        return root
    for dirpath, dirnames, _ in os.walk(root):
        if name in dirnames:
            return os.path.join(dirpath, name)
        if dirpath[len(root) :].count(os.sep) >= 2:
            dirnames[:] = []
    raise DataError(
        f"{root}: no '{name}' folder found (expected the CK+ layout cohn-kanade-images/ + Emotion/)"
    )


def _frame_number(name: str) -> int:
    m = re.search(r"(\d+)\D*$", os.path.splitext(name)[0])
    return int(m.group(1)) if m else -1


def read_ckplus(
    root: str, classes: int = 7, frames: str = "last", k: int = 3, strict: bool = False
) -> FaceDataset:
    """Read CK+ under ``root``.

    Args:
        root: a folder holding (at most two levels down) ``cohn-kanade-images`` and ``Emotion``.
        classes: 7 (with contempt) or 6 (basic six; contempt sequences are dropped).
        frames: ``last`` (default, the papers' protocol), ``middle`` or ``all``; ``k`` frames per sequence.
        strict: raise :class:`DataError` on the first malformed input instead of skipping it.
    """
    if classes not in (6, 7):
        raise ValueError(f"CK+ classes must be 6 or 7, got {classes}")
    names = list(CKPLUS7 if classes == 7 else BASIC6)
    img_root, emo_root = _find_dir(root, "cohn-kanade-images"), _find_dir(root, "Emotion")
    issues = IssueLog(strict)
    samples: list[Sample] = []
    for subject in sorted(os.listdir(img_root)):
        sdir = os.path.join(img_root, subject)
        if not os.path.isdir(sdir):
            continue
        for seq in sorted(os.listdir(sdir)):
            qdir = os.path.join(sdir, seq)
            if not os.path.isdir(qdir):
                continue
            ldir = os.path.join(emo_root, subject, seq)
            labels = (
                sorted(f for f in os.listdir(ldir) if f.endswith("_emotion.txt"))
                if os.path.isdir(ldir)
                else []
            )
            if not labels:
                issues.note(qdir, f"no emotion label file in {ldir} (unlabelled sequence)")
                continue
            if len(labels) > 1:
                issues(ldir, f"{len(labels)} emotion label files for one sequence")
                continue
            lpath = os.path.join(ldir, labels[0])
            try:
                with open(lpath) as f:
                    tokens = f.read().split()
                value = float(tokens[0]) if len(tokens) == 1 else None
            except (OSError, ValueError, UnicodeDecodeError):
                value = None
            if value is None or value != int(value) or int(value) not in _CODES:
                issues(lpath, "label file must hold one emotion code in 1..7")
                continue
            name = _CODES[int(value)]
            if name not in names:
                continue  # contempt in 6-class mode: dropped by design, not malformed
            imgs = sorted((f for f in os.listdir(qdir) if is_image(f)), key=lambda f: (_frame_number(f), f))
            if not imgs:
                issues(qdir, "labelled sequence has no images")
                continue
            for f in select_frames(imgs, frames, k):
                samples.append(
                    Sample(
                        os.path.join(qdir, f),
                        names.index(name),
                        subject,
                        f"{subject}/{seq}",
                        _frame_number(f),
                    )
                )
    # label files whose image folder does not exist
    for subject in sorted(os.listdir(emo_root)):
        sdir = os.path.join(emo_root, subject)
        for seq in sorted(os.listdir(sdir)) if os.path.isdir(sdir) else []:
            if not os.path.isdir(os.path.join(img_root, subject, seq)):
                issues(os.path.join(sdir, seq), f"label without an image folder in {img_root}")
    return FaceDataset("ckplus", names, samples, issues.issues, root)
