"""Offline augmentation (the papers' 14x), crops and normalisation.

``augment14`` turns each training image into 14: the original, its horizontal flip, the original rotated by
-15, -10, -5, 5, 10, 15 degrees, and the flips of those rotations (IDEnNet section 4.2, EIFN section 3.1).
Rotation is about the image centre with replicated borders, so no black corners enter the training set.
``random_crop`` / ``center_crop`` are the 60 -> 48 crops of IDEnNet (random at training time, centre at
test time).
"""

from __future__ import annotations

import numpy as np
import torch

ANGLES = (-15.0, -10.0, -5.0, 5.0, 10.0, 15.0)
MEAN, STD = 0.5, 0.5  # pixels / 255 are mapped to (x - MEAN) / STD, i.e. [-1, 1]


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate a 2-D uint8 image about its centre (counter-clockwise for positive angles), same size."""
    import cv2

    h, w = img.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def augment14(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 14x offline augmentation.

    Args:
        images (uint8[N, H, W]).

    Returns:
        ``(out uint8[14 N, H, W], source int64[14 N])``; ``out[14 i : 14 i + 14]`` are the 14 versions of
        ``images[i]`` in the order original, flip, then (rotation, its flip) for each angle in ``ANGLES``, and
        ``source`` gives the index of the image each one comes from (to carry labels along).
    """
    n = len(images)
    out = np.empty((n, 14) + images.shape[1:], np.uint8)
    for i, img in enumerate(images):
        out[i, 0] = img
        out[i, 1] = img[:, ::-1]
        for j, a in enumerate(ANGLES):
            r = rotate(img, a)
            out[i, 2 + 2 * j] = r
            out[i, 3 + 2 * j] = r[:, ::-1]
    return out.reshape((n * 14,) + images.shape[1:]), np.repeat(np.arange(n), 14)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``size`` x ``size`` crop of ``x (Tensor[N, C, H, W])``."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """An independent random ``size`` x ``size`` crop per image of ``x (Tensor[N, C, H, W])``, drawn from
    ``generator`` (so a resumed run draws the same crops)."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(0, w - size + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(size))[:, :, None]  # (N, size, 1)
    cols = (left[:, None] + torch.arange(size))[:, None, :]  # (N, 1, size)
    out = x[torch.arange(n)[:, None, None], :, rows, cols]  # (N, size, size, C)
    return out.permute(0, 3, 1, 2).contiguous()


def to_tensor(images: np.ndarray, channels: int = 1) -> torch.Tensor:
    """uint8[N, H, W] -> float32 Tensor[N, channels, H, W], normalised to [-1, 1] (grayscale repeated)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).sub_(MEAN).div_(STD)
    x = x[:, None]
    return x.expand(-1, channels, -1, -1).contiguous() if channels != 1 else x


def record(resize: int, crop: int, channels: int, augment: bool) -> dict:
    """The preprocessing description written to ``preprocessing.json`` in a run directory."""
    return {
        "grayscale": True,
        "resize": [resize, resize],
        "channels": channels,
        "train_crop": f"random {crop}x{crop}" if crop != resize else "none",
        "test_crop": f"center {crop}x{crop}" if crop != resize else "none",
        "normalise": f"(pixel / 255 - {MEAN}) / {STD}",
        "offline_augmentation": (
            "14x: original, horizontal flip, rotations "
            + ", ".join(f"{a:+g}" for a in ANGLES)
            + " deg and their flips"
        )
        if augment
        else "none",
    }
