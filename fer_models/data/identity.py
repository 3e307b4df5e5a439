"""Identity folders in the CASIA-WebFace layout, for identity pre-training: ``ROOT/<identity>/<image>``.

Every image gets ``subject`` = its folder name and ``expression`` = -1 (unknown); train with ``--target
identity`` so that the class is the identity. Left out and reported in ``issues``: non-image files and empty
identity folders. ``min_images`` drops identities with fewer images (dropped by design, counted in
``issues``); ``max_identities`` keeps the first N identities in name order (for small pre-training runs).
"""

from __future__ import annotations

import os

from fer_models.data.base import DataError, FaceDataset, IssueLog, Sample, is_image


def read_identity_folders(
    root: str, min_images: int = 1, max_identities: int | None = None, strict: bool = False
) -> FaceDataset:
    """Read ``root/<identity>/*.jpg`` (any image extension)."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder of identity folders")
    issues = IssueLog(strict)
    samples = []
    ids = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    kept = 0
    for ident in ids:
        if max_identities is not None and kept >= max_identities:
            break
        d = os.path.join(root, ident)
        files = sorted(os.listdir(d))
        imgs = [f for f in files if is_image(f)]
        for f in files:
            if not is_image(f) and os.path.isfile(os.path.join(d, f)):
                issues(os.path.join(d, f), "not an image file")
        if len(imgs) < max(1, min_images):
            issues(d, f"{len(imgs)} image(s), fewer than {max(1, min_images)}")
            continue
        kept += 1
        samples += [Sample(os.path.join(d, f), -1, ident, None, i) for i, f in enumerate(imgs)]
    return FaceDataset("identity", [], samples, issues.issues, root)
