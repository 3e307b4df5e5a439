"""SynthFER: deterministic procedural grayscale faces for tests and demos (no download).

Each subject gets a face geometry (head shape, skin and hair tone, eye spacing and size, brow, nose and mouth
placement) and also its own way of showing each expression: the apex of expression ``e`` for subject ``s`` is
``gain[s, e] * PROTOTYPES[e] + style[s, e]``, added to a subject-specific neutral baseline. Part of the style
and of the baseline is a fixed linear function of the subject's geometry (so identity features help read the
expression) and part is the subject's own. Each (subject, expression) is a sequence of ``n_frames`` frames
from neutral (intensity 0) to apex, like CK+ and Oulu-CASIA. Every image then gets pose jitter (rotation,
shift, scale), illumination (gain and a directional gradient) and pixel noise.

``difficulty`` in [0, 1] scales everything that makes the task hard at once: subject baseline and style
spread, how weakly some subjects express, pose, illumination and noise. Rendering is vectorised numpy on a
signed-distance description of the face, in chunks: the 1440 images (64x64) of the default 40-subject set take
a few seconds on two CPU cores.

The generator writes the generic manifest layout (``images/Sxxx/<expression>/NN.png`` + ``manifest.csv``) so
the data flows through :func:`~fer_models.data.manifest.read_manifest` exactly as real data does.
"""

from __future__ import annotations

import json
import os

import numpy as np

from fer_models.data.base import BASIC6, FaceDataset
from fer_models.data.manifest import read_manifest, write_manifest

# Calibration (40 subjects, last 3 frames, test = 8 unseen subjects, a plain 3-conv CNN trained 10 epochs with
# flips): difficulty 0.0 -> 98% test accuracy, 0.4 -> 74%, 0.5 -> 65%, 0.6 -> 56% (training accuracy 93-100%).
# 0.5 leaves room above a baseline for identity-aware models without making the task unlearnable.
DEFAULT_DIFFICULTY = 0.5
VERSION = 1

# Action parameters (one column each): brow raise, inner-brow raise (negative: furrow), eye opening,
# mouth-corner lift, mouth opening, mouth stretch, nose wrinkle.
ACTIONS = (
    "brow_raise",
    "brow_inner",
    "eye_open",
    "mouth_curve",
    "mouth_open",
    "mouth_stretch",
    "nose_wrinkle",
)
PROTOTYPES = np.array(
    [
        # raise inner  eye   curve  open  stretch wrinkle
        [-0.4, -1.0, 0.2, -0.3, 0.0, -0.5, 0.2],  # anger
        [-0.2, -0.5, -0.5, -0.6, 0.15, 0.0, 1.0],  # disgust
        [0.7, 0.6, 0.7, -0.3, 0.45, 0.7, 0.0],  # fear
        [0.0, 0.0, -0.4, 1.0, 0.35, 0.6, 0.1],  # happiness
        [-0.1, 0.9, -0.3, -0.9, 0.0, -0.2, 0.0],  # sadness
        [1.0, 0.3, 0.9, 0.0, 1.0, -0.4, 0.0],  # surprise
    ],
    dtype=np.float64,
)
_N_GEOM = 16


def _subject_params(rng: np.random.Generator, n_subjects: int, difficulty: float):
    """Geometry (dict of (S,) arrays), normalised geometry code (S, G), baseline (S, K), apex (S, E, K)."""
    u = rng.random((n_subjects, _N_GEOM))
    lerp = lambda i, a, b: a + (b - a) * u[:, i]  # noqa: E731
    geom = {
        "face_rx": lerp(0, 0.56, 0.72),
        "face_ry": lerp(1, 0.72, 0.88),
        "face_cy": lerp(2, -0.02, 0.06),
        "skin": lerp(3, 0.45, 0.8),
        "hair_y": lerp(4, -0.7, -0.38),
        "hair": lerp(5, 0.05, 0.35),
        "eye_dx": lerp(6, 0.22, 0.33),
        "eye_y": lerp(7, -0.2, -0.06),
        "eye_w": lerp(8, 0.08, 0.12),
        "eye_h": lerp(9, 0.035, 0.06),
        "brow_gap": lerp(10, 0.1, 0.16),
        "brow_len": lerp(11, 0.12, 0.19),
        "brow_th": lerp(12, 0.018, 0.035),
        "nose_len": lerp(13, 0.16, 0.26),
        "mouth_y": lerp(14, 0.3, 0.44),
        "mouth_w": lerp(15, 0.17, 0.26),
    }
    code = (u - 0.5) * np.sqrt(12.0)  # unit variance
    e, k = PROTOTYPES.shape
    mix_base = rng.standard_normal((_N_GEOM, k)) / np.sqrt(_N_GEOM)
    mix_style = rng.standard_normal((_N_GEOM, e * k)) / np.sqrt(_N_GEOM)
    d = float(difficulty)
    baseline = d * 0.35 * (0.7 * code @ mix_base + 0.7 * rng.standard_normal((n_subjects, k)))
    style = (
        d
        * 0.45
        * (0.7 * (code @ mix_style).reshape(n_subjects, e, k) + 0.7 * rng.standard_normal((n_subjects, e, k)))
    )
    gain = 1.0 - d * 0.55 * rng.random((n_subjects, e, 1))
    apex = gain * PROTOTYPES[None] + style
    return geom, baseline, apex


def _seg_dist(x, y, x0, y0, x1, y1):
    """Distance from points (x, y) to segments (x0, y0)-(x1, y1); parameters broadcast as (n, 1, 1)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return np.hypot(x - x0 - t * dx, y - y0 - t * dy)


def _render(p: dict, size: int) -> np.ndarray:
    """Render faces from per-image parameter arrays (each (n,)) to float32 (n, size, size) in [0, 1]."""
    n = len(p["skin"])
    c = lambda v: np.asarray(v, np.float32).reshape(n, 1, 1)  # noqa: E731
    g = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    gy, gx = np.meshgrid(g, g, indexing="ij")
    gx, gy = gx[None], gy[None]
    # pose: the face frame is the image frame rotated, scaled and shifted
    th, sc = c(p["rot"]), c(p["scale"])
    xs, ys = (gx - c(p["tx"])) / sc, (gy - c(p["ty"])) / sc
    x = np.cos(th) * xs + np.sin(th) * ys
    y = -np.sin(th) * xs + np.cos(th) * ys
    px = 2.0 / size / c(p["scale"])  # one pixel in face units: the anti-aliasing width
    soft = lambda dist: np.clip(0.5 - dist / px, 0.0, 1.0)  # noqa: E731  (dist < 0 inside)

    def ellipse(cx, cy, rx, ry):
        r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return soft((r - 1.0) * np.minimum(rx, ry))

    img = np.broadcast_to(c(p["bg"]), (n, size, size)).astype(np.float32)
    img = img + 0.08 * c(p["bg_tex"]) * np.sin(3.0 * gx + 2.0 * gy + c(p["bg_phase"]))
    paint = lambda im, mask, val: im + mask * (val - im)  # noqa: E731
    rx, ry, cy = c(p["face_rx"]), c(p["face_ry"]), c(p["face_cy"])
    face = ellipse(0.0, cy, rx, ry)
    # skin with a soft jaw shading
    skin = c(p["skin"]) * (1.0 - 0.12 * np.clip((y - cy) / ry, 0.0, 1.0) ** 2 - 0.1 * (x / rx) ** 2)
    img = paint(img, face, skin)
    hair = ellipse(0.0, cy - 0.02, rx * 1.06, ry * 1.04) * soft(y - c(p["hair_y"]))
    img = paint(img, hair, c(p["hair"]))
    a = {k: c(p[k]) for k in ACTIONS}
    # eyes: sclera, iris; opening follows eye_open
    for side in (-1.0, 1.0):
        ex, ey = side * c(p["eye_dx"]), c(p["eye_y"])
        ew = c(p["eye_w"])
        eh = np.maximum(c(p["eye_h"]) * (1.0 + 0.8 * a["eye_open"]), 0.006)
        sclera = ellipse(ex, ey, ew, eh)
        img = paint(img, sclera, np.float32(0.92))
        ir = np.minimum(ew * 0.45, eh * 1.1)
        iris = ellipse(ex, ey, ir, ir) * sclera
        img = paint(img, iris, np.float32(0.12))
        lid = np.clip(
            1.0 - np.abs(_seg_dist(x, y, ex - ew, ey - eh * 0.2, ex + ew, ey - eh * 0.2)) / 0.02, 0, 1
        )
        img = paint(img, 0.25 * lid * (1 - sclera), np.float32(0.2))
        # brow: inner end moves with brow_inner, both ends with brow_raise; a furrow pulls inner ends together
        by = ey - c(p["brow_gap"]) - 0.06 * a["brow_raise"]
        bl = c(p["brow_len"])
        inner_x = side * (c(p["eye_dx"]) - bl * 0.5 + 0.03 * np.minimum(a["brow_inner"], 0.0))
        outer_x = side * (c(p["eye_dx"]) + bl * 0.5)
        tilt = 0.045 * a["brow_inner"]
        brow = soft(_seg_dist(x, y, inner_x, by - tilt, outer_x, by + 0.5 * tilt) - c(p["brow_th"]))
        img = paint(img, brow, c(p["hair"]) * 0.8)
    # furrow lines between the brows (anger, disgust)
    furrow = np.clip(-a["brow_inner"], 0.0, 1.0)
    fy = c(p["eye_y"]) - c(p["brow_gap"]) * 0.6
    for fx in (-0.035, 0.035):
        d = _seg_dist(x, y, fx, fy - 0.05, fx * 0.7, fy + 0.03)
        img = paint(img, 0.6 * furrow * soft(d - 0.008), skin * 0.55)
    # nose: a shaded ridge, nostrils, wrinkles across the bridge (disgust)
    ny0, nl = c(p["eye_y"]) + 0.03, c(p["nose_len"])
    ridge = soft(_seg_dist(x, y, 0.02, ny0, 0.035, ny0 + nl) - 0.012)
    img = paint(img, 0.35 * ridge, skin * 0.7)
    for side in (-1.0, 1.0):
        img = paint(img, ellipse(side * 0.045, ny0 + nl, 0.022, 0.013), skin * 0.35)
    wr = np.clip(a["nose_wrinkle"], 0.0, 1.5)
    for k in range(3):
        wy = ny0 + 0.03 + 0.03 * k
        d = _seg_dist(x, y, -0.06, wy, 0.06, wy + 0.005)
        img = paint(img, 0.5 * np.clip(wr, 0, 1) * soft(d - 0.006), skin * 0.55)
    # mouth: centre line y = my - curve * (x / w)^2 (corners up when curve > 0), opening h * sqrt(1 - (x/w)^2)
    my = c(p["mouth_y"]) + 0.03 * np.maximum(a["mouth_open"], 0.0)
    mw = np.maximum(c(p["mouth_w"]) * (1.0 + 0.35 * a["mouth_stretch"]), 0.05)
    curve = 0.08 * a["mouth_curve"]
    q = np.clip(x / mw, -1.0, 1.0)
    inside_x = soft(np.abs(x) - mw)
    centre = my - curve * q * q
    half = 0.1 * np.maximum(a["mouth_open"], 0.0) * np.sqrt(1.0 - q * q)
    lip = 0.018
    lips = inside_x * soft(np.abs(y - centre) - half - lip)
    img = paint(img, lips, skin * 0.5)
    hole = inside_x * soft(np.abs(y - centre) - half + 0.004) * (half > 0.004)
    img = paint(img, hole, np.float32(0.06))
    # illumination: gain and a directional gradient over the whole image, then pixel noise
    light = c(p["gain"]) * (
        1.0 + c(p["grad"]) * (np.cos(c(p["grad_dir"])) * gx + np.sin(c(p["grad_dir"])) * gy)
    )
    img = img * light
    return img


def generate(
    n_subjects: int = 40,
    n_frames: int = 6,
    size: int = 64,
    difficulty: float = DEFAULT_DIFFICULTY,
    seed: int = 0,
    chunk: int = 64,
):
    """Generate SynthFER in memory.

    Args:
        n_subjects: number of subjects (each shows all six expressions once).
        n_frames: frames per sequence, neutral (intensity 0) to apex.
        size: image side (64 for EIFN, 48 or 60 for IDEnNet; any size works).
        difficulty: 0 (easy) .. 1 (hard); see the module docstring.
        seed: the whole set is a function of (n_subjects, n_frames, size, difficulty, seed).

    Returns:
        ``(images uint8[N, size, size], rows)`` where ``rows[i]`` is a dict with ``expression`` (name),
        ``subject``, ``sequence``, ``frame`` and ``intensity`` for image ``i``; N = n_subjects * 6 * n_frames.
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if n_subjects < 1 or n_frames < 1 or size < 16:
        raise ValueError("need n_subjects >= 1, n_frames >= 1 and size >= 16")
    rng = np.random.default_rng([seed, VERSION])
    geom, baseline, apex = _subject_params(rng, n_subjects, difficulty)
    n_expr = len(BASIC6)
    s_idx, e_idx, f_idx = (
        a.ravel()
        for a in np.meshgrid(np.arange(n_subjects), np.arange(n_expr), np.arange(n_frames), indexing="ij")
    )
    n = s_idx.size
    d = float(difficulty)
    peak = 0.8 + 0.2 * rng.random((n_subjects, n_expr))
    ramp = (f_idx / max(n_frames - 1, 1)) ** 1.4
    intensity = np.clip(ramp * peak[s_idx, e_idx] + 0.03 * rng.standard_normal(n) * (f_idx > 0), 0.0, 1.0)
    actions = baseline[s_idx] + intensity[:, None] * apex[s_idx, e_idx]
    p = {k: v[s_idx] for k, v in geom.items()}
    p.update({k: actions[:, i] for i, k in enumerate(ACTIONS)})
    # pose: a per-sequence pose plus a small per-frame wobble
    seq = s_idx * n_expr + e_idx
    n_seq = n_subjects * n_expr
    sp = rng.random((n_seq, 8))
    wob = rng.standard_normal((n, 3))
    p["rot"] = np.deg2rad((sp[seq, 0] * 2 - 1) * (3 + 10 * d) + wob[:, 0] * (0.2 + 0.8 * d))
    p["tx"] = (sp[seq, 1] * 2 - 1) * (0.02 + 0.06 * d) + wob[:, 1] * (0.002 + 0.006 * d)
    p["ty"] = (sp[seq, 2] * 2 - 1) * (0.02 + 0.06 * d) + wob[:, 2] * (0.002 + 0.006 * d)
    p["scale"] = 1.0 + (sp[seq, 3] * 2 - 1) * (0.03 + 0.08 * d)
    p["gain"] = 1.0 + (sp[seq, 4] * 2 - 1) * (0.05 + 0.3 * d)
    p["grad"] = sp[seq, 5] * (0.05 + 0.45 * d)
    p["grad_dir"] = sp[seq, 6] * 2 * np.pi
    p["bg"] = 0.1 + 0.35 * sp[seq, 7]
    p["bg_tex"] = rng.random(n_subjects)[s_idx]
    p["bg_phase"] = rng.random(n_seq)[seq] * 2 * np.pi
    noise_sigma = 0.01 + 0.06 * d
    images = np.empty((n, size, size), np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        img = _render({k: v[sl] for k, v in p.items()}, size)
        img += noise_sigma * rng.standard_normal(img.shape, dtype=np.float32)
        images[sl] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rows = [
        {
            "expression": BASIC6[e],
            "subject": f"S{s:03d}",
            "sequence": f"S{s:03d}_{BASIC6[e]}",
            "frame": int(f),
            "intensity": float(t),
        }
        for s, e, f, t in zip(s_idx, e_idx, f_idx, intensity, strict=True)
    ]
    return images, rows


def write_synthfer(
    out_dir: str,
    n_subjects: int = 40,
    n_frames: int = 6,
    size: int = 64,
    difficulty: float = DEFAULT_DIFFICULTY,
    seed: int = 0,
) -> str:
    """Generate SynthFER and write it under ``out_dir`` in the manifest layout; returns the manifest path.

    If ``out_dir`` already holds a SynthFER set made with the same parameters it is reused as it is.
    """
    from PIL import Image

    params = {
        "version": VERSION,
        "n_subjects": n_subjects,
        "n_frames": n_frames,
        "size": size,
        "difficulty": float(difficulty),
        "seed": seed,
    }
    manifest = os.path.join(out_dir, "manifest.csv")
    info = os.path.join(out_dir, "synthfer.json")
    if os.path.isfile(manifest) and os.path.isfile(info):
        with open(info) as f:
            if json.load(f).get("params") == params:
                return manifest
    images, rows = generate(n_subjects, n_frames, size, difficulty, seed)
    out_rows = []
    for img, r in zip(images, rows, strict=True):
        relpath = os.path.join("images", r["subject"], r["expression"], f"{r['frame']:02d}.png")
        full = os.path.join(out_dir, relpath)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        Image.fromarray(img).save(full, compress_level=1)
        out_rows.append({**r, "path": relpath})
    write_manifest(manifest, out_rows)
    with open(info, "w") as f:
        json.dump(
            {
                "params": params,
                "classes": list(BASIC6),
                "actions": list(ACTIONS),
                "prototypes": PROTOTYPES.tolist(),
                "images": len(rows),
            },
            f,
            indent=1,
        )
    return manifest


def read_synthfer(root: str, frames: str = "last", k: int = 3, strict: bool = False) -> FaceDataset:
    """Read a written SynthFER set through the manifest reader (last three frames of each sequence)."""
    return read_manifest(root, classes=list(BASIC6), frames=frames, k=k, strict=strict, name="synthfer")


def main(argv=None) -> None:
    import argparse
    import time

    ap = argparse.ArgumentParser(
        prog="python -m fer_models.data.synthfer", description=__doc__.split("\n")[0]
    )
    ap.add_argument("out")
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    path = write_synthfer(a.out, a.subjects, a.frames, a.size, a.difficulty, a.seed)
    print(f"{path} ({time.perf_counter() - t:.2f} s)")


if __name__ == "__main__":
    main()
