"""Dataset readers, SynthFER, the subject-independent protocol and the transforms used by the command line.

``load_dataset(name, path)`` is the one entry point the CLI uses; each reader is also importable on its own.
"""

from __future__ import annotations

from fer_models.data.base import (
    BASIC6,
    CKPLUS7,
    DataError,
    FaceDataset,
    Issue,
    Sample,
    canonical_expression,
    load_images,
    report_issues,
)
from fer_models.data.ckplus import read_ckplus
from fer_models.data.fer2013 import read_fer2013, read_ferplus
from fer_models.data.identity import read_identity_folders
from fer_models.data.manifest import read_manifest, write_manifest
from fer_models.data.mmi import read_mmi
from fer_models.data.oulu import read_oulu
from fer_models.data.protocol import Folds, load_or_make_folds, make_folds, split_fold
from fer_models.data.synthfer import generate as generate_synthfer
from fer_models.data.synthfer import read_synthfer, write_synthfer

DATASETS = ("synthfer", "ckplus", "oulu", "mmi", "fer2013", "ferplus", "identity", "manifest")


def load_dataset(name: str, path: str, strict: bool = False, **options) -> FaceDataset:
    """Read dataset ``name`` (one of :data:`DATASETS`) from ``path`` with the reader's keyword ``options``."""
    readers = {
        "synthfer": read_synthfer,
        "ckplus": read_ckplus,
        "oulu": read_oulu,
        "mmi": read_mmi,
        "fer2013": read_fer2013,
        "ferplus": read_ferplus,
        "identity": read_identity_folders,
        "manifest": read_manifest,
    }
    if name not in readers:
        raise ValueError(f"unknown dataset {name!r}; one of {', '.join(DATASETS)}")
    return readers[name](path, strict=strict, **options)


__all__ = [
    "BASIC6",
    "CKPLUS7",
    "DATASETS",
    "DataError",
    "FaceDataset",
    "Folds",
    "Issue",
    "Sample",
    "canonical_expression",
    "generate_synthfer",
    "load_dataset",
    "load_images",
    "load_or_make_folds",
    "make_folds",
    "read_ckplus",
    "read_fer2013",
    "read_ferplus",
    "read_identity_folders",
    "read_manifest",
    "read_mmi",
    "read_oulu",
    "read_synthfer",
    "report_issues",
    "split_fold",
    "write_manifest",
    "write_synthfer",
]
