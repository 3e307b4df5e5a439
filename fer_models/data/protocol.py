"""Subject-independent k-fold cross validation, validation splits, and the fold files a run writes and reuses.

Folds partition the *subjects*: every sample of a subject is in the same fold, so no subject is in two folds
and a test fold's subjects are never seen in training. Subjects are shuffled with the seed and dealt to folds
so that the folds hold nearly equal numbers of samples (largest subject first to the currently smallest fold).
The validation subjects for model selection are drawn from the training subjects of each fold (never the test
fold).

A fold file (``folds.json``) records the dataset name, seed, k, and the subject list of each fold. A run
writes it next to its outputs; a later run (or ``--resume``) with the same file reuses it, and a fold file
that does not cover the dataset's subjects is rejected rather than silently re-made.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from fer_models.data.base import DataError, FaceDataset


@dataclass
class Folds:
    """``folds[i]`` is the sorted list of subject ids in fold ``i``."""

    dataset: str
    seed: int
    folds: list[list[str]]

    @property
    def k(self) -> int:
        return len(self.folds)

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "seed": self.seed, "k": self.k, "folds": self.folds}

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"  # unique: parallel runs may write the same file
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Folds:
        with open(path) as f:
            d = json.load(f)
        folds = cls(d["dataset"], int(d["seed"]), [list(map(str, s)) for s in d["folds"]])
        folds.check_disjoint()
        return folds

    def check_disjoint(self) -> None:
        seen: dict[str, int] = {}
        for i, fold in enumerate(self.folds):
            for s in fold:
                if s in seen:
                    raise DataError(f"subject {s!r} is in folds {seen[s]} and {i}")
                seen[s] = i

    def test_subjects(self, fold: int) -> set[str]:
        if not 0 <= fold < self.k:
            raise ValueError(f"fold {fold} out of range 0..{self.k - 1}")
        return set(self.folds[fold])

    def train_subjects(self, fold: int) -> list[str]:
        test = self.test_subjects(fold)
        return sorted(s for f in self.folds for s in f if s not in test)


def make_folds(dataset: FaceDataset, k: int = 10, seed: int = 0) -> Folds:
    """Deal the dataset's subjects into ``k`` subject-disjoint folds of nearly equal sample counts."""
    if not dataset.has_subjects:
        raise DataError(f"{dataset.name}: subject-independent folds need a subject id for every sample")
    counts: dict[str, int] = {}
    for s in dataset.samples:
        counts[s.subject] = counts.get(s.subject, 0) + 1
    subjects = sorted(counts)
    if len(subjects) < k:
        raise DataError(f"{dataset.name}: {len(subjects)} subjects cannot fill {k} folds")
    order = np.random.default_rng(seed).permutation(len(subjects))
    shuffled = [subjects[i] for i in order]
    # stable sort by size (descending) keeps the seeded order among equal sizes
    shuffled.sort(key=lambda s: -counts[s])
    folds: list[list[str]] = [[] for _ in range(k)]
    sizes = [0] * k
    for s in shuffled:
        i = min(range(k), key=lambda j: (sizes[j], len(folds[j]), j))
        folds[i].append(s)
        sizes[i] += counts[s]
    return Folds(dataset.name, seed, [sorted(f) for f in folds])


def load_or_make_folds(path: str, dataset: FaceDataset, k: int, seed: int) -> tuple[Folds, bool]:
    """Reuse the fold file at ``path`` if it exists (checked against the dataset), else make and write one.

    Returns ``(folds, reused)``. A reused file must have ``k`` folds and cover exactly the dataset's subjects.
    """
    if os.path.isfile(path):
        folds = Folds.load(path)
        have = {s for f in folds.folds for s in f}
        want = set(dataset.subjects)
        if folds.k != k:
            raise DataError(f"{path}: has {folds.k} folds, --folds asks for {k}")
        if have != want:
            extra, missing = sorted(have - want)[:5], sorted(want - have)[:5]
            raise DataError(
                f"{path}: fold file does not match the dataset's subjects "
                f"(not in data: {extra}, not in folds: {missing})"
            )
        return folds, True
    folds = make_folds(dataset, k, seed)
    folds.save(path)
    return folds, False


def validation_subjects(train_subjects: list[str], fraction: float, seed: int) -> list[str]:
    """Draw ``max(1, round(fraction * n))`` validation subjects from the training subjects (0 -> none)."""
    if fraction <= 0 or len(train_subjects) < 2:
        return []
    n = min(len(train_subjects) - 1, max(1, round(fraction * len(train_subjects))))
    idx = np.random.default_rng(seed).permutation(len(train_subjects))[:n]
    return sorted(train_subjects[i] for i in idx)


def held_out_subjects(folds: Folds, fold: int, val_fraction: float = 0.1, seed: int = 0):
    """``(test, val)`` subject sets of ``fold``: its test subjects, and the validation subjects drawn from the rest
    (the same draw for a given fold, fraction and seed)."""
    val = validation_subjects(folds.train_subjects(fold), val_fraction, seed * 1000 + fold)
    return set(folds.test_subjects(fold)), set(val)


def split_fold(dataset: FaceDataset, folds: Folds, fold: int, val_fraction: float = 0.1, seed: int = 0):
    """``(train, val, test)`` datasets for ``fold``: test = the fold's subjects, val = drawn from the rest."""
    test, val = held_out_subjects(folds, fold, val_fraction, seed)
    return (
        dataset.subset(lambda s: s.subject not in test and s.subject not in val),
        dataset.subset(lambda s: s.subject in val),
        dataset.subset(lambda s: s.subject in test),
    )


def split_by_usage(dataset: FaceDataset):
    """``(train, val, test)`` from the dataset's own split names (FER2013 / FERPlus Usage)."""
    parts = [dataset.subset(lambda s, n=n: s.split == n) for n in ("train", "val", "test")]
    if not len(parts[0]) or not len(parts[2]):
        raise DataError(f"{dataset.name}: needs samples in both the 'train' and 'test' splits")
    return tuple(parts)


def split_random(dataset: FaceDataset, val_fraction: float, test_fraction: float, seed: int):
    """A seeded random sample-level split, for identity pre-training (where the class is the subject)."""
    n = len(dataset)
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(test_fraction * n)), int(round(val_fraction * n))
    test_idx, val_idx = set(perm[:n_test].tolist()), set(perm[n_test : n_test + n_val].tolist())
    samples = dataset.samples
    pick = lambda idx: FaceDataset(
        dataset.name,
        list(dataset.classes),
        [samples[i] for i in sorted(idx)],  # noqa
        list(dataset.issues),
        dataset.root,
    )
    train_idx = set(range(n)) - test_idx - val_idx
    return pick(train_idx), pick(val_idx), pick(test_idx)
