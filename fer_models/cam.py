"""Response maps (the heatmaps of IDEnNet's Figs. 4, 5 and 7) and PNG overlays.

The maps are class activation maps (Zhou et al., CVPR 2016) taken after the Fusion Dense Block: with
``f = ReLU(BN(fusion block output))`` (N, C, h, w), the features that global average pooling feeds to
FC_emo, the map of class ``c`` is ``M_c(x, y) = sum_k W_emo[c, k] f_k(x, y)``. Since pooling and FC_emo
are linear, ``mean_xy M_c = logit_c - b_c`` exactly. Maps are upsampled bilinearly to the input size and,
for display, scaled to [0, 1] per image; drawn with the jet colormap (blue low, red high, as in the paper).

Works with any model that has ``forward_features(x)`` (the pre-pooling features) and ``cam_head`` (the
linear classifier on their global average): :class:`~fer_models.idennet.IDEnNet` and the pre-training
:class:`~fer_models.idennet.DenseNetBC` (after its dense block 3).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

__all__ = ["CAMResult", "class_activation_map", "jet", "overlay", "save_overlay", "save_cam_grid"]


class CAMResult(NamedTuple):
    """heatmap (Tensor[N, H, W]) in [0, 1] at input size; raw (Tensor[N, h, w]) the unscaled map at feature
    resolution; target (Tensor[N]) the class of each map; logits (Tensor[N, E]) the expression logits."""

    heatmap: torch.Tensor
    raw: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor


def class_activation_map(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    size: tuple[int, int] | None = None,
) -> CAMResult:
    """Class activation maps after the Fusion Dense Block, for an input and class.

    The model runs in eval mode (restored afterwards), without gradients.

    Args:
        model: IDEnNet or DenseNetBC (anything with ``forward_features`` and ``cam_head``).
        x (Tensor[N, C, H, W]): input faces.
        target: class per image (int for all, a sequence or Tensor[N]); None = the predicted class.
        size ((int, int) | None): output size of ``heatmap``; None = the input's (H, W).

    Returns:
        CAMResult
    """
    if not (hasattr(model, "forward_features") and hasattr(model, "cam_head")):
        raise TypeError(
            f"{type(model).__name__} has no forward_features / cam_head; CAM needs a GAP + linear head"
        )
    if x.dim() != 4:
        raise ValueError(f"x: expected (N, C, H, W), got shape {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = model.forward_features(x)
            head = model.cam_head
            logits = head(feats.mean((2, 3)))
            n = x.shape[0]
            if target is None:
                t = logits.argmax(1)
            else:
                t = torch.as_tensor(target, device=x.device, dtype=torch.long).reshape(-1).expand(n).clone()
            if int(t.min()) < 0 or int(t.max()) >= head.out_features:
                raise ValueError(f"target: classes must be in [0, {head.out_features}), got {t.tolist()}")
            raw = torch.einsum("nchw,nc->nhw", feats, head.weight[t])
            up = F.interpolate(
                raw[:, None], size=size or tuple(x.shape[-2:]), mode="bilinear", align_corners=False
            )[:, 0]
            lo = up.flatten(1).min(1).values[:, None, None]
            hi = up.flatten(1).max(1).values[:, None, None]
            heat = torch.where(hi > lo, (up - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(up))
    finally:
        model.train(was_training)
    return CAMResult(heat, raw, t, logits)


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colormap: values in [0, 1] (any shape) -> uint8 RGB (shape + (3,)); 0 blue, 1 red."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _to_gray_uint8(image) -> np.ndarray:
    a = (
        image.detach().cpu().double().numpy()
        if isinstance(image, torch.Tensor)
        else np.asarray(image, dtype=np.float64)
    )
    if a.ndim == 3:
        a = a.mean(0) if a.shape[0] in (1, 3) else a.mean(-1)
    if a.ndim != 2:
        raise ValueError(f"image: expected (H, W), (1|3, H, W) or (H, W, 3), got shape {a.shape}")
    lo, hi = a.min(), a.max()
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return (a * 255.0 + 0.5).astype(np.uint8)


def overlay(image, heatmap, alpha: float = 0.5, scale: int = 1) -> Image.Image:
    """Blend a jet-coloured heatmap over a face.

    Args:
        image: the face, Tensor or array (H, W), (1 or 3, H, W) or (H, W, 3), any range (scaled to 0..255).
        heatmap: Tensor or array (h, w) in [0, 1] (resized to (H, W) if it differs).
        alpha (float): heatmap opacity.
        scale (int): enlarge the result by this factor (48 px faces are small).

    Returns:
        PIL.Image.Image: RGB.
    """
    gray = _to_gray_uint8(image)
    h = heatmap.detach().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    if h.ndim != 2:
        raise ValueError(f"heatmap: expected (h, w), got shape {h.shape}")
    heat = Image.fromarray(jet(h))
    if heat.size != (gray.shape[1], gray.shape[0]):
        heat = heat.resize((gray.shape[1], gray.shape[0]), Image.BILINEAR)
    face = Image.fromarray(gray).convert("RGB")
    out = Image.blend(face, heat, float(alpha))
    if scale != 1:
        out = out.resize((out.width * scale, out.height * scale), Image.BILINEAR)
    return out


def save_overlay(image, heatmap, path: str | os.PathLike, alpha: float = 0.5, scale: int = 4) -> str:
    """:func:`overlay` written as a PNG to ``path``; returns the path."""
    path = os.fspath(path)
    overlay(image, heatmap, alpha, scale).save(path, format="PNG")
    return path


def save_cam_grid(
    model: torch.nn.Module,
    x: torch.Tensor,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    scale: int = 3,
) -> str:
    """The paper's Fig. 4 layout as one PNG: a row per input face, its image then one overlay per class.

    Args:
        model: IDEnNet or DenseNetBC. x (Tensor[N, C, H, W]): faces.
        class_names: column labels (default ``0 .. E-1``).
    """
    num_classes = model.cam_head.out_features
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names, got {len(names)}")
    maps = [class_activation_map(model, x, c).heatmap for c in range(num_classes)]
    h, w = x.shape[-2] * scale, x.shape[-1] * scale
    label_h = 14
    grid = Image.new("RGB", ((num_classes + 1) * w, label_h + x.shape[0] * h), "white")
    draw = ImageDraw.Draw(grid)
    for col, name in enumerate(["input", *names]):
        draw.text((col * w + 2, 1), name[: max(1, w // 6)], fill="black")
    for row in range(x.shape[0]):
        face = Image.fromarray(_to_gray_uint8(x[row])).convert("RGB").resize((w, h), Image.BILINEAR)
        grid.paste(face, (0, label_h + row * h))
        for c in range(num_classes):
            grid.paste(overlay(x[row], maps[c][row], alpha, scale), ((c + 1) * w, label_h + row * h))
    path = os.fspath(path)
    grid.save(path, format="PNG")
    return path
