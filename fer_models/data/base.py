"""Samples, datasets, issue reports and image decoding shared by every reader.

A reader turns a layout on disk into a :class:`FaceDataset`: one :class:`Sample` per image with its expression
index (into ``dataset.classes``), subject id (``None`` where the dataset has none), sequence id and frame
index. Readers never guess a label: an input they cannot label is recorded in ``dataset.issues`` with its path
and reason and left out (or, with ``strict=True``, rejected with :class:`DataError`). Images are decoded later
by :func:`load_images`, which reports and drops unreadable files the same way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace

import numpy as np

log = logging.getLogger("fer_models.data")

# The expression names every reader maps onto (lower case, one spelling each).
ANGER, CONTEMPT, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE, NEUTRAL = (
    "anger",
    "contempt",
    "disgust",
    "fear",
    "happiness",
    "sadness",
    "surprise",
    "neutral",
)
BASIC6 = (ANGER, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE)
CKPLUS7 = (ANGER, CONTEMPT, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE)

_ALIASES = {
    "angry": ANGER,
    "anger": ANGER,
    "an": ANGER,
    "contempt": CONTEMPT,
    "co": CONTEMPT,
    "disgust": DISGUST,
    "disgusted": DISGUST,
    "di": DISGUST,
    "fear": FEAR,
    "afraid": FEAR,
    "fearful": FEAR,
    "fe": FEAR,
    "happiness": HAPPINESS,
    "happy": HAPPINESS,
    "joy": HAPPINESS,
    "ha": HAPPINESS,
    "sadness": SADNESS,
    "sad": SADNESS,
    "sa": SADNESS,
    "surprise": SURPRISE,
    "surprised": SURPRISE,
    "su": SURPRISE,
    "neutral": NEUTRAL,
    "ne": NEUTRAL,
}


def canonical_expression(name: str) -> str | None:
    """The canonical expression name for a spelling used by some dataset (``"Happy"`` -> ``"happiness"``),
    or None when the name is not an expression this library knows."""
    return _ALIASES.get(str(name).strip().lower())


class DataError(ValueError):
    """An input that cannot be read without guessing; the message names the path."""


@dataclass(frozen=True)
class Issue:
    """One input left out of a dataset: ``path`` (with ``:row`` for CSV rows) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Sample:
    """One labelled face image.

    ``expression`` indexes ``FaceDataset.classes`` (-1 where unknown, e.g. identity folders); ``subject`` is
    the dataset's subject id or None; ``pixels`` holds the image for in-file datasets (FER2013 CSV) and is
    None when the image lives at ``path``; ``split`` is the dataset's own split name where it has one (FER2013
    Usage); ``pose`` is a head-pose class where the dataset labels one (SynthFER v2: the yaw bin; None:
    unknown); ``neutral`` is the path of the neutral frame of the sample's sequence, where the dataset names
    one (IPD-FER's neutral-face target).
    """

    path: str
    expression: int
    subject: str | None = None
    sequence: str | None = None
    frame: int | None = None
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)
    split: str | None = None
    pose: int | None = None
    neutral: str | None = None


@dataclass
class FaceDataset:
    """The samples of one dataset, its class names, and the inputs that were left out (``issues``)."""

    name: str
    classes: list[str]
    samples: list[Sample]
    issues: list[Issue] = field(default_factory=list)
    root: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def subjects(self) -> list[str]:
        """Sorted distinct subject ids (samples without one are not counted)."""
        return sorted({s.subject for s in self.samples if s.subject is not None})

    @property
    def has_subjects(self) -> bool:
        return bool(self.samples) and all(s.subject is not None for s in self.samples)

    def subset(self, keep) -> FaceDataset:
        """A dataset with the samples for which ``keep(sample)`` is true (same classes, same issues)."""
        return FaceDataset(
            self.name, list(self.classes), [s for s in self.samples if keep(s)], list(self.issues), self.root
        )

    def counts(self) -> dict[str, int]:
        """Number of samples per class name."""
        out = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            if s.expression >= 0:
                out[self.classes[s.expression]] += 1
        return out


class IssueLog:
    """Collects issues for a reader; in strict mode the first issue raises :class:`DataError`."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.issues: list[Issue] = []

    def __call__(self, path, reason: str) -> None:
        issue = Issue(str(path), reason)
        if self.strict:
            raise DataError(str(issue))
        log.debug("skipped %s", issue)
        self.issues.append(issue)

    def note(self, path, reason: str) -> None:
        """Record an input left out by design (e.g. an unlabelled CK+ sequence); never raises."""
        self.issues.append(Issue(str(path), reason))


def report_issues(dataset: FaceDataset, limit: int = 5) -> str:
    """A short human-readable summary of ``dataset.issues`` (empty string when there are none); also logged
    as a warning so that nothing is left out silently."""
    if not dataset.issues:
        return ""
    lines = [f"{dataset.name}: {len(dataset.issues)} input(s) left out"]
    lines += [f"  {i}" for i in dataset.issues[:limit]]
    if len(dataset.issues) > limit:
        lines.append(f"  ... and {len(dataset.issues) - limit} more")
    text = "\n".join(lines)
    log.warning(text)
    return text


def select_frames(frames: list, mode: str, k: int = 3) -> list:
    """Pick ``k`` frames of an ordered sequence: ``last`` (CK+, Oulu-CASIA), ``middle`` (MMI) or ``all``."""
    if mode == "all" or len(frames) <= k:
        return list(frames)
    if mode == "last":
        return list(frames[-k:])
    if mode == "middle":
        start = (len(frames) - k) // 2
        return list(frames[start : start + k])
    raise ValueError(f"frame selection must be 'last', 'middle' or 'all', got {mode!r}")


def group_sequences(samples: list[Sample], mode: str, k: int = 3) -> list[Sample]:
    """Apply :func:`select_frames` within each (subject, sequence); samples without a sequence are kept."""
    if mode == "all":
        return list(samples)
    groups: dict[tuple, list[Sample]] = {}
    loose = []
    for s in samples:
        if s.sequence is None:
            loose.append(s)
        else:
            groups.setdefault((s.subject, s.sequence), []).append(s)
    out = []
    for key in sorted(groups, key=lambda t: (str(t[0]), str(t[1]))):
        seq = sorted(groups[key], key=lambda s: (s.frame if s.frame is not None else -1, s.path))
        out.extend(select_frames(seq, mode, k))
    return out + loose


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_gray(path: str) -> np.ndarray:
    """Decode an image file to a 2-D uint8 grayscale array; raises :class:`DataError` naming the path."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from e


def resize_gray(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to ``size`` x ``size`` (area filter when shrinking, bilinear when growing)."""
    import cv2

    if img.shape == (size, size):
        return img
    interp = cv2.INTER_AREA if min(img.shape) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def load_images(dataset: FaceDataset, size: int, strict: bool = False) -> tuple[FaceDataset, np.ndarray]:
    """Decode every sample to a ``size`` x ``size`` grayscale uint8 array.

    Returns the dataset without the samples whose image could not be read (each recorded in ``issues`` with
    its path; ``strict=True`` raises instead) and the images as ``uint8[N, size, size]``.
    """
    issues = IssueLog(strict)
    issues.issues = list(dataset.issues)
    kept, images = [], []
    for s in dataset.samples:
        try:
            img = s.pixels if s.pixels is not None else read_gray(s.path)
        except DataError as e:
            issues(s.path, str(e).split(": ", 1)[1])
            continue
        images.append(resize_gray(np.asarray(img, dtype=np.uint8), size))
        kept.append(s)
    arr = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    return FaceDataset(dataset.name, list(dataset.classes), kept, issues.issues, dataset.root), arr


def rel(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path


__all__ = [
    "ANGER",
    "BASIC6",
    "CKPLUS7",
    "CONTEMPT",
    "DISGUST",
    "FEAR",
    "HAPPINESS",
    "NEUTRAL",
    "SADNESS",
    "SURPRISE",
    "DataError",
    "FaceDataset",
    "Issue",
    "IssueLog",
    "Sample",
    "canonical_expression",
    "group_sequences",
    "is_image",
    "load_images",
    "read_gray",
    "replace",
    "report_issues",
    "resize_gray",
    "select_frames",
]
