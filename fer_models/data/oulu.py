"""Oulu-CASIA reader (VIS camera, strong illumination).

Layout::

    ROOT/.../VL/Strong/P001/Anger/000.jpeg ... 017.jpeg     # (the VIS set is called VL on disk; VIS accepted)

``root`` may be the ``Strong`` folder itself or any folder above it. Expression folders: Anger, Disgust, Fear,
Happiness, Sadness, Surprise (other spellings of those six accepted). Each sequence runs neutral -> apex; the
last three frames are used. Left out and reported in ``issues``: a folder whose name is not one of the six
expressions, an expression folder with no images.
"""

from __future__ import annotations

import os
import re

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

_SUBJECT = re.compile(r"^P\d+$", re.IGNORECASE)


def _find_strong(root: str, illumination: str) -> str:
    def has_subjects(d):
        return any(_SUBJECT.match(n) and os.path.isdir(os.path.join(d, n)) for n in os.listdir(d))

    if has_subjects(root):
        return root
    for dirpath, dirnames, _ in os.walk(root):
        for cam in ("VL", "VIS"):
            cand = os.path.join(dirpath, cam, illumination)
            if os.path.isdir(cand) and has_subjects(cand):
                return cand
        if dirpath[len(root) :].count(os.sep) >= 3:
            dirnames[:] = []
    raise DataError(f"{root}: no VL/{illumination}/P### folders found (expected the Oulu-CASIA layout)")


def _frame_number(name: str) -> int:
    m = re.search(r"(\d+)\D*$", os.path.splitext(name)[0])
    return int(m.group(1)) if m else -1


def read_oulu(
    root: str, illumination: str = "Strong", frames: str = "last", k: int = 3, strict: bool = False
) -> FaceDataset:
    """Read Oulu-CASIA VIS sequences under ``root`` (six classes, subject = ``P###`` folder)."""
    base = _find_strong(root, illumination)
    issues = IssueLog(strict)
    samples = []
    names = list(BASIC6)
    for subject in sorted(n for n in os.listdir(base) if _SUBJECT.match(n)):
        sdir = os.path.join(base, subject)
        if not os.path.isdir(sdir):
            continue
        for expr in sorted(os.listdir(sdir)):
            edir = os.path.join(sdir, expr)
            if not os.path.isdir(edir):
                continue
            name = canonical_expression(expr)
            if name not in names:
                issues(edir, f"unknown expression folder {expr!r} (expected one of {', '.join(names)})")
                continue
            imgs = sorted((f for f in os.listdir(edir) if is_image(f)), key=lambda f: (_frame_number(f), f))
            if not imgs:
                issues(edir, "expression folder has no images")
                continue
            for f in select_frames(imgs, frames, k):
                samples.append(
                    Sample(
                        os.path.join(edir, f),
                        names.index(name),
                        subject,
                        f"{subject}/{expr}",
                        _frame_number(f),
                    )
                )
    return FaceDataset("oulu", names, samples, issues.issues, root)
