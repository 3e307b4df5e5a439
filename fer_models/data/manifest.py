"""The generic manifest CSV: one row per image, ``path,expression,subject,sequence,frame``
(+ optional ``split``, ``pose`` (a head-pose class, an integer >= 0; empty or -1: unknown) and ``neutral`` (the
path of the sequence's neutral frame, relative like ``path``)).

``path`` is relative to the manifest's folder (or absolute); ``expression`` is an expression name (any
spelling :func:`~fer_models.data.base.canonical_expression` knows); ``subject``, ``sequence`` and ``frame``
may be empty. This is the layout SynthFER and ``fer-prep`` write, and the way to bring any other data set in.

A missing required column rejects the file (:class:`DataError`). Left out and reported in ``issues``: rows
with an unknown expression name, a non-integer frame, a wrong number of fields, or an empty path.
"""

from __future__ import annotations

import csv
import os

from fer_models.data.base import (
    ANGER,
    CONTEMPT,
    DISGUST,
    FEAR,
    HAPPINESS,
    NEUTRAL,
    SADNESS,
    SURPRISE,
    DataError,
    FaceDataset,
    IssueLog,
    Sample,
    canonical_expression,
    group_sequences,
)

COLUMNS = ("path", "expression", "subject", "sequence", "frame")
OPTIONAL_COLUMNS = ("split", "pose", "neutral")
CANONICAL_ORDER = (ANGER, CONTEMPT, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE, NEUTRAL)


def write_manifest(path: str, rows: list[dict]) -> None:
    """Write ``rows`` (dicts with the :data:`COLUMNS` keys; the :data:`OPTIONAL_COLUMNS` are written when some row
    has them) as a manifest CSV."""
    cols = list(COLUMNS) + [c for c in OPTIONAL_COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})


def read_manifest(
    path: str,
    classes: list[str] | None = None,
    frames: str = "all",
    k: int = 3,
    strict: bool = False,
    name: str = "manifest",
) -> FaceDataset:
    """Read a manifest CSV.

    Args:
        path: the CSV file, or a folder holding ``manifest.csv``.
        classes: the class order to use (names); default: the expressions present, in the canonical order
            anger, contempt, disgust, fear, happiness, sadness, surprise, neutral. A row whose expression is
            not in an explicit ``classes`` is reported and left out.
        frames: ``all`` (default), ``last`` or ``middle``: keep ``k`` frames per (subject, sequence).
    """
    if os.path.isdir(path):
        path = os.path.join(path, "manifest.csv")
    if not os.path.isfile(path):
        raise DataError(f"{path}: manifest not found")
    root = os.path.dirname(os.path.abspath(path))
    issues = IssueLog(strict)
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty manifest")
        header = [h.strip().lower() for h in header]
        missing = [c for c in ("path", "expression") if c not in header]
        if missing:
            raise DataError(f"{path}: manifest lacks column(s) {', '.join(missing)}; header is {header}")
        col = {c: header.index(c) for c in header}
        for lineno, row in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                issues(where, f"{len(row)} fields, header has {len(header)}")
                continue

            def get(c, row=row):
                return row[col[c]].strip() if c in col else ""

            expr = canonical_expression(get("expression"))
            if expr is None or (classes is not None and expr not in classes):
                issues(where, f"unknown expression {get('expression')!r}")
                continue
            frame = get("frame")
            try:
                frame = int(frame) if frame else None
            except ValueError:
                issues(where, f"frame {frame!r} is not an integer")
                continue
            p = get("path")
            if not p:
                issues(where, "empty path")
                continue
            pose = get("pose")
            try:
                pose = int(pose) if pose else None
            except ValueError:
                issues(where, f"pose {pose!r} is not an integer")
                continue
            pose = None if pose is not None and pose < 0 else pose
            neutral = get("neutral")
            rows.append(
                (
                    os.path.join(root, p),
                    expr,
                    get("subject") or None,
                    get("sequence") or None,
                    frame,
                    get("split") or None,
                    pose,
                    os.path.join(root, neutral) if neutral else None,
                )
            )
    if classes is None:
        present = {r[1] for r in rows}
        classes = [c for c in CANONICAL_ORDER if c in present]
    classes = list(classes)
    samples = [
        Sample(p, classes.index(e), s, q, fr, split=sp, pose=po, neutral=ne) for p, e, s, q, fr, sp, po, ne in rows
    ]
    samples = group_sequences(samples, frames, k)
    return FaceDataset(name, classes, samples, issues.issues, root)
