"""SynthFER: deterministic procedural grayscale faces for tests, demos and experiments (no download).

Each subject gets a face geometry (head shape, skin and hair tone, eye spacing and size, brow, nose and mouth
placement) and its own way of showing each expression; each (subject, expression) is a sequence of
``n_frames`` frames from neutral (frame 0, intensity 0) to apex, like CK+ and Oulu-CASIA. Every image gets
pose jitter (rotation, shift, scale), illumination (gain and a directional gradient) and pixel noise.
``difficulty`` in [0, 1] scales everything that makes the task hard at once (subject spread, how weakly some
subjects express, pose jitter, illumination, noise). Rendering is vectorised numpy on a signed-distance
description of the face: the 2,160 images (64x64) of a 60-subject set take a few seconds.

**Version 2** (the default) is built so that identity information can be learned and transferred to unseen
subjects, which is what identity-aware models (IDEnNet, EIFN, IPD-FER, DE-GAN) claim to exploit:

- *Identity decides how expressions look.* A subject's way of showing each expression (an apex style added
  to the expression's prototype) and part of its resting face (the neutral baseline of every facial action:
  a resting frown, a resting smile, raised brows) are a fixed linear function of its geometry code, i.e. of
  what its face looks like; a small part, scaled by ``difficulty``, is its own. An identity network can
  therefore learn, from other people, how a given face shows expressions, and transfer it to unseen subjects.
- *A private resting face* (revision 2): on top, every subject's resting face has its own part (std
  ``RESTING_PRIVATE`` per action) that nothing else about the face predicts. Its neutral frame shows it; one
  expressive frame does not (a resting frown plus a smile looks like a weaker smile), so a model that knows
  the subject's neutral face can read the expression as the change from it. Actions are drawn
  ``ACTION_GAIN`` times as strongly as in revision 1.
- *Head pose*, labelled: per sequence a yaw in five bins (-30, -15, 0, 15, 30 degrees, +-6) and a pitch in
  three (-12, 0, 12, +-5); the inner features are drawn shifted and foreshortened. The manifest's ``pose``
  column is the yaw bin (IPD-FER's pose class); ``yaw`` / ``pitch`` in degrees and both bins are in the rows
  of :func:`generate`.
- *Neutral frames*: the manifest's ``neutral`` column names each sequence's frame 0.
- *An identity population* (``I000``..: other people from the same face distribution, random expressions,
  intensities and poses) under ``identity/``, for identity pre-training that never sees an expression subject.
- ``subjects.json``: each subject's hidden geometry code and resting face (the calibration's oracles,
  ``tools/calibrate_synthfer.py``; its result is in ``benchmarks/RESULTS.md``).

Revision 1 of v2 (sessions 10-11, no private resting face, gain 1) is not kept: it is in the git history
(fer-kernels fac5241); sets written by it carry no ``revision`` and are regenerated.

**Version 1** (``version=1``, ``fer-train --synthfer-version 1``) is kept bit for bit: there the apex is
``gain * PROTOTYPES[e] + style`` with a style partly linear in the geometry and partly the subject's own noise,
which an unseen subject's face cannot predict, so identity features help little there.

The generator writes the generic manifest layout (``images/Sxxx/<expression>/NN.png`` + ``manifest.csv``) so
the data flows through :func:`~fer_models.data.manifest.read_manifest` exactly as real data does.
"""

from __future__ import annotations

import json
import os

import numpy as np

from fer_models.data.base import BASIC6, FaceDataset
from fer_models.data.manifest import read_manifest, write_manifest

# v1's default difficulty (its earlier calibration comment, "65% after 10 epochs at 0.5", did not reproduce and is
# withdrawn: benchmarks/RESULTS.md); v2's default is 0.25, its pose range and identity effects being hard enough.
# For the default of any version use default_difficulty(version) (the demo once gave v2 sets this v1 value).
DEFAULT_DIFFICULTY = 0.5
VERSION = 2
_DEFAULT_DIFFICULTY = {1: 0.5, 2: 0.25}

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


def _geometry(u: np.ndarray) -> dict:
    """Face geometry (dict of (S,) arrays) from uniform draws u (S, 16)."""
    lerp = lambda i, a, b: a + (b - a) * u[:, i]  # noqa: E731
    return {
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


def _subject_params(rng: np.random.Generator, n_subjects: int, difficulty: float):
    """Geometry (dict of (S,) arrays), normalised geometry code (S, G), baseline (S, K), apex (S, E, K)."""
    u = rng.random((n_subjects, _N_GEOM))
    geom = _geometry(u)
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

    def ellipse(cx, cy, rx, ry, u=x, v=y):
        r = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
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
    # head pose (SynthFER v2): the inner features are drawn in a frame shifted towards the turn and
    # foreshortened (cos yaw, cos pitch), the nose (nearer the camera) shifted further; v1 has no yaw / pitch
    if "yaw" in p:
        yaw, pitch = c(p["yaw"]), c(p["pitch"])
        xi = (x - 0.45 * rx * np.sin(yaw)) / np.cos(yaw)
        yi = (y - cy - 0.35 * ry * np.sin(pitch)) / np.cos(pitch) + cy
        nose_dx = 0.12 * np.sin(yaw) / np.cos(yaw)
    else:
        xi, yi, nose_dx = x, y, 0.0
    a = {k: c(p[k]) for k in ACTIONS}
    # eyes: sclera, iris; opening follows eye_open
    for side in (-1.0, 1.0):
        ex, ey = side * c(p["eye_dx"]), c(p["eye_y"])
        ew = c(p["eye_w"])
        eh = np.maximum(c(p["eye_h"]) * (1.0 + 0.8 * a["eye_open"]), 0.006)
        sclera = ellipse(ex, ey, ew, eh, xi, yi)
        img = paint(img, sclera, np.float32(0.92))
        ir = np.minimum(ew * 0.45, eh * 1.1)
        iris = ellipse(ex, ey, ir, ir, xi, yi) * sclera
        img = paint(img, iris, np.float32(0.12))
        lid = np.clip(
            1.0 - np.abs(_seg_dist(xi, yi, ex - ew, ey - eh * 0.2, ex + ew, ey - eh * 0.2)) / 0.02, 0, 1
        )
        img = paint(img, 0.25 * lid * (1 - sclera), np.float32(0.2))
        # brow: inner end moves with brow_inner, both ends with brow_raise; a furrow pulls inner ends together
        by = ey - c(p["brow_gap"]) - 0.06 * a["brow_raise"]
        bl = c(p["brow_len"])
        inner_x = side * (c(p["eye_dx"]) - bl * 0.5 + 0.03 * np.minimum(a["brow_inner"], 0.0))
        outer_x = side * (c(p["eye_dx"]) + bl * 0.5)
        tilt = 0.045 * a["brow_inner"]
        brow = soft(_seg_dist(xi, yi, inner_x, by - tilt, outer_x, by + 0.5 * tilt) - c(p["brow_th"]))
        img = paint(img, brow, c(p["hair"]) * 0.8)
    # furrow lines between the brows (anger, disgust)
    furrow = np.clip(-a["brow_inner"], 0.0, 1.0)
    fy = c(p["eye_y"]) - c(p["brow_gap"]) * 0.6
    for fx in (-0.035, 0.035):
        d = _seg_dist(xi, yi, fx, fy - 0.05, fx * 0.7, fy + 0.03)
        img = paint(img, 0.6 * furrow * soft(d - 0.008), skin * 0.55)
    # nose: a shaded ridge, nostrils, wrinkles across the bridge (disgust)
    ny0, nl = c(p["eye_y"]) + 0.03, c(p["nose_len"])
    ridge = soft(_seg_dist(xi - nose_dx, yi, 0.02, ny0, 0.035, ny0 + nl) - 0.012)
    img = paint(img, 0.35 * ridge, skin * 0.7)
    for side in (-1.0, 1.0):
        img = paint(img, ellipse(side * 0.045, ny0 + nl, 0.022, 0.013, xi - nose_dx, yi), skin * 0.35)
    wr = np.clip(a["nose_wrinkle"], 0.0, 1.5)
    for k in range(3):
        wy = ny0 + 0.03 + 0.03 * k
        d = _seg_dist(xi, yi, -0.06, wy, 0.06, wy + 0.005)
        img = paint(img, 0.5 * np.clip(wr, 0, 1) * soft(d - 0.006), skin * 0.55)
    # mouth: centre line y = my - curve * (x / w)^2 (corners up when curve > 0), opening h * sqrt(1 - (x/w)^2)
    my = c(p["mouth_y"]) + 0.03 * np.maximum(a["mouth_open"], 0.0)
    mw = np.maximum(c(p["mouth_w"]) * (1.0 + 0.35 * a["mouth_stretch"]), 0.05)
    curve = 0.08 * a["mouth_curve"]
    q = np.clip(xi / mw, -1.0, 1.0)
    inside_x = soft(np.abs(xi) - mw)
    centre = my - curve * q * q
    half = 0.1 * np.maximum(a["mouth_open"], 0.0) * np.sqrt(1.0 - q * q)
    lip = 0.018
    lips = inside_x * soft(np.abs(yi - centre) - half - lip)
    img = paint(img, lips, skin * 0.5)
    hole = inside_x * soft(np.abs(yi - centre) - half + 0.004) * (half > 0.004)
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
    difficulty: float | None = None,
    seed: int = 0,
    chunk: int = 64,
    version: int = VERSION,
):
    """Generate SynthFER's expression subjects in memory.

    Args:
        n_subjects: number of subjects (each shows all six expressions once).
        n_frames: frames per sequence, neutral (frame 0, intensity 0) to apex.
        size: image side (64 for EIFN, 48 or 60 for IDEnNet; any size works).
        difficulty: 0 (easy) .. 1 (hard); None: the version's default (see the module docstring).
        seed: the whole set is a function of (n_subjects, n_frames, size, difficulty, seed, version).
        version: 2 (default) or 1 (the original set, kept reproducible).

    Returns:
        ``(images uint8[N, size, size], rows)`` where ``rows[i]`` is a dict with ``expression`` (name),
        ``subject``, ``sequence``, ``frame`` and ``intensity`` for image ``i``; N = n_subjects * 6 * n_frames.
        Version 2 rows also have ``yaw`` / ``pitch`` (degrees), ``yaw_bin`` (0..4), ``pitch_bin`` (0..2) and
        ``pose`` (= ``yaw_bin``, the pose class IPD-FER learns).
    """
    difficulty = _check(n_subjects, n_frames, size, difficulty, version)
    if version == 1:
        return _generate_v1(n_subjects, n_frames, size, difficulty, seed, chunk)
    rng = np.random.default_rng([seed, 2])
    sub, s_idx, e_idx, f_idx, intensity = _sequences_v2(rng, n_subjects, n_frames, difficulty)
    n_expr = len(BASIC6)
    seq = s_idx * n_expr + e_idx
    p, pose = _image_params_v2(rng, sub, s_idx, e_idx, intensity, seq, n_subjects * n_expr, difficulty)
    images = _render_all(p, size, difficulty, rng, chunk)
    rows = [
        {
            "expression": BASIC6[e],
            "subject": f"S{s:03d}",
            "sequence": f"S{s:03d}_{BASIC6[e]}",
            "frame": int(f),
            "intensity": float(t),
            **{k: v[i] for k, v in pose.items()},
        }
        for i, (s, e, f, t) in enumerate(zip(s_idx, e_idx, f_idx, intensity, strict=True))
    ]
    return images, rows


def _sequences_v2(rng, n_subjects: int, n_frames: int, d: float):
    """v2's subjects and, per image (subject-major, then expression, then frame), subject, expression and frame
    indices and expression intensity: the draws :func:`generate` makes before the scene."""
    sub = _subject_params_v2(rng, n_subjects, d)
    n_expr = len(BASIC6)
    s_idx, e_idx, f_idx = (
        a.ravel()
        for a in np.meshgrid(np.arange(n_subjects), np.arange(n_expr), np.arange(n_frames), indexing="ij")
    )
    peak = 0.8 + 0.2 * rng.random((n_subjects, n_expr))
    ramp = (f_idx / max(n_frames - 1, 1)) ** 1.4
    intensity = np.clip(ramp * peak[s_idx, e_idx] + 0.03 * rng.standard_normal(s_idx.size) * (f_idx > 0), 0.0, 1.0)
    return sub, s_idx, e_idx, f_idx, intensity


def true_actions(n_subjects: int = 40, n_frames: int = 6, difficulty: float | None = None, seed: int = 0) -> dict:
    """The facial actions behind every image :func:`generate` (version 2) draws, without drawing it: ``actions``
    (N, 7, before ``ACTION_GAIN``), ``resting`` (N, 7: the subject's resting face), ``code`` (N, 16: the
    subject's geometry code), ``subject``, ``expression`` and ``frame`` (N,), in :func:`generate`'s image
    order. What a perfect reader of the face would see; the calibration's action-space ceiling reads it."""
    difficulty = _check(n_subjects, n_frames, 16, difficulty, 2)
    sub, s_idx, e_idx, f_idx, intensity = _sequences_v2(np.random.default_rng([seed, 2]), n_subjects, n_frames,
                                                        difficulty)
    return {
        "actions": sub["baseline"][s_idx] + intensity[:, None] * sub["apex"][s_idx, e_idx],
        "resting": sub["baseline"][s_idx],
        "code": sub["code"][s_idx],
        "subject": s_idx,
        "expression": e_idx,
        "frame": f_idx,
    }


def generate_identity_population(
    n_identities: int = 100,
    images_per_identity: int = 20,
    size: int = 64,
    difficulty: float | None = None,
    seed: int = 0,
    chunk: int = 64,
):
    """SynthFER v2's identity population: other people than the expression subjects (``I000``, ``I001``, ...),
    drawn from the same face distribution, each seen ``images_per_identity`` times with a random expression at
    a random intensity (neutral included), pose and illumination: the data for identity pre-training, which
    never meets an expression fold's subjects.

    Returns ``(images uint8[N, size, size], rows)``; rows have ``subject``, ``expression``, ``intensity`` and
    the pose fields of :func:`generate`.
    """
    difficulty = _check(max(n_identities, 1), 1, size, difficulty, 2)
    if n_identities < 1 or images_per_identity < 1:
        raise ValueError("need n_identities >= 1 and images_per_identity >= 1")
    rng = np.random.default_rng([seed, 2, 1])
    sub = _subject_params_v2(rng, n_identities, difficulty)
    s_idx = np.repeat(np.arange(n_identities), images_per_identity)
    n = s_idx.size
    e_idx = rng.integers(0, len(BASIC6), n)
    intensity = np.where(rng.random(n) < 0.25, 0.0, rng.random(n))
    p, pose = _image_params_v2(rng, sub, s_idx, e_idx, intensity, np.arange(n), n, difficulty)
    images = _render_all(p, size, difficulty, rng, chunk)
    rows = [
        {
            "subject": f"I{s:03d}",
            "expression": BASIC6[e],
            "intensity": float(t),
            **{k: v[i] for k, v in pose.items()},
        }
        for i, (s, e, t) in enumerate(zip(s_idx, e_idx, intensity, strict=True))
    ]
    return images, rows


def subject_codes(n_subjects: int = 40, difficulty: float | None = None, seed: int = 0) -> dict:
    """SynthFER v2's hidden per-subject truth, as :func:`generate` draws it: ``code`` (S, 16), the normalised
    geometry code (what the face looks like, which decides the way of showing each expression and part of the
    resting face), and ``resting`` (S, 7), the resting face: the action values of the subject's neutral face
    (before ``ACTION_GAIN``), which its neutral frame shows and an expressive frame does not. The calibration's
    oracle reads them."""
    difficulty = _check(n_subjects, 1, 16, difficulty, 2)
    sub = _subject_params_v2(np.random.default_rng([seed, 2]), n_subjects, difficulty)
    return {"code": sub["code"], "resting": sub["baseline"]}


def default_difficulty(version: int = VERSION) -> float:
    """The difficulty a version's sets get when none is given (v1 0.5, v2 0.25)."""
    return _DEFAULT_DIFFICULTY[version]


def _check(n_subjects, n_frames, size, difficulty, version) -> float:
    if version not in (1, 2):
        raise ValueError(f"version: expected 1 or 2, got {version!r}")
    if difficulty is None:
        difficulty = _DEFAULT_DIFFICULTY[version]
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if n_subjects < 1 or n_frames < 1 or size < 16:
        raise ValueError("need n_subjects >= 1, n_frames >= 1 and size >= 16")
    return float(difficulty)


# v2: how much of each subject's resting face (baseline actions) and of its way of showing each expression
# (apex style) is a fixed linear function of its geometry code, i.e. predictable from what its neutral face
# looks like; the subject's private part is small and scaled by the difficulty.
IDENTITY_BASELINE = 0.3
IDENTITY_STYLE = 0.35
# v2 revision 2 (session 12): every subject also has a private resting face (std RESTING_PRIVATE per action, at
# every difficulty), which only its neutral face shows: one expressive image cannot tell a resting frown from a
# frown, its neutral frame can (benchmarks/RESULTS.md, the calibration). Actions are drawn ACTION_GAIN times as
# strongly as in revision 1, so that a small CNN reads them from 48-pixel faces.
RESTING_PRIVATE = 0.45
ACTION_GAIN = 2.0
V2_REVISION = 2


def _subject_params_v2(rng: np.random.Generator, n_subjects: int, d: float) -> dict:
    """v2 subjects: geometry, code (S, 16), resting face (neutral baseline, S x K: a part linear in the code, a
    small part scaled by the difficulty, and the private part ``rest_private``) and apex (S, E, K)."""
    u = rng.random((n_subjects, _N_GEOM))
    code = (u - 0.5) * np.sqrt(12.0)
    e, k = PROTOTYPES.shape
    mix_base = rng.standard_normal((_N_GEOM, k)) / np.sqrt(_N_GEOM)
    mix_style = rng.standard_normal((_N_GEOM, e * k)) / np.sqrt(_N_GEOM)
    baseline = IDENTITY_BASELINE * (code @ mix_base) + d * 0.08 * rng.standard_normal((n_subjects, k))
    style = IDENTITY_STYLE * (code @ mix_style).reshape(n_subjects, e, k)
    gain = 1.0 - d * 0.4 * rng.random((n_subjects, e, 1))
    private = d * 0.12 * rng.standard_normal((n_subjects, e, k))
    apex = gain * PROTOTYPES[None] + style + private
    rest = RESTING_PRIVATE * rng.standard_normal((n_subjects, k))
    return {"geom": _geometry(u), "code": code, "baseline": baseline + rest, "rest_private": rest, "apex": apex}


def _scene(p: dict, rng, sp, wob, seq, s_idx, n_subjects: int, n_seq: int, d: float) -> None:
    """Per-sequence placement (roll, shift, scale), illumination and background, with a per-frame wobble, into
    ``p``: columns 0-7 of ``sp`` (per sequence), 0-2 of ``wob`` (per image); then two draws from ``rng`` (v1 and
    v2 draw in this order)."""
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


YAW_BINS = (-30.0, -15.0, 0.0, 15.0, 30.0)
PITCH_BINS = (-12.0, 0.0, 12.0)


def _image_params_v2(rng, sub, s_idx, e_idx, intensity, seq, n_seq, d):
    """Per-image render parameters of v2 (pose per sequence ``seq``) and the pose labels."""
    n = s_idx.size
    actions = ACTION_GAIN * (sub["baseline"][s_idx] + intensity[:, None] * sub["apex"][s_idx, e_idx])
    p = {key: v[s_idx] for key, v in sub["geom"].items()}
    p.update({key: actions[:, i] for i, key in enumerate(ACTIONS)})
    yaw_bin = rng.integers(0, len(YAW_BINS), n_seq)
    pitch_bin = rng.integers(0, len(PITCH_BINS), n_seq)
    sp = rng.random((n_seq, 10))
    wob = rng.standard_normal((n, 5))
    yaw = np.asarray(YAW_BINS)[yaw_bin[seq]] + (sp[seq, 8] * 2 - 1) * 6.0 + wob[:, 3] * 0.5
    pitch = np.asarray(PITCH_BINS)[pitch_bin[seq]] + (sp[seq, 9] * 2 - 1) * 5.0 + wob[:, 4] * 0.5
    p["yaw"], p["pitch"] = np.deg2rad(yaw), np.deg2rad(pitch)
    _scene(p, rng, sp, wob, seq, s_idx, len(sub["code"]), n_seq, d)
    pose = {
        "yaw": np.round(yaw, 2).tolist(),
        "pitch": np.round(pitch, 2).tolist(),
        "yaw_bin": yaw_bin[seq].tolist(),
        "pitch_bin": pitch_bin[seq].tolist(),
        "pose": yaw_bin[seq].tolist(),
    }
    return p, pose


def _render_all(p: dict, size: int, d: float, rng, chunk: int) -> np.ndarray:
    n = len(p["skin"])
    noise_sigma = 0.01 + 0.06 * d
    images = np.empty((n, size, size), np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        img = _render({k: v[sl] for k, v in p.items()}, size)
        img += noise_sigma * rng.standard_normal(img.shape, dtype=np.float32)
        images[sl] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return images


def _generate_v1(n_subjects, n_frames, size, difficulty, seed, chunk):
    """SynthFER v1 (unchanged since it was written: its sets stay reproducible).
    """
    rng = np.random.default_rng([seed, 1])
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
    _scene(p, rng, sp, wob, seq, s_idx, n_subjects, n_seq, d)
    images = _render_all(p, size, d, rng, chunk)
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
    difficulty: float | None = None,
    seed: int = 0,
    version: int = VERSION,
    identity_subjects: int = 100,
    identity_images: int = 20,
) -> str:
    """Generate SynthFER and write it under ``out_dir`` in the manifest layout; returns the manifest path.

    Version 2 also writes the identity population (``identity_subjects`` people x ``identity_images`` images,
    ``out_dir/identity/Ixxx/NN.png``: ``--dataset identity``), the manifest's ``pose`` column (yaw bin) and
    ``neutral`` column (the sequence's neutral frame), and ``subjects.json`` (each subject's hidden geometry
    code and resting face: the calibration's oracles). If ``out_dir`` already holds a SynthFER set made with
    the same parameters it is reused as it is.
    """
    from PIL import Image

    difficulty = _check(n_subjects, n_frames, size, difficulty, version)
    params = {
        "version": version,
        "n_subjects": n_subjects,
        "n_frames": n_frames,
        "size": size,
        "difficulty": float(difficulty),
        "seed": seed,
    }
    if version >= 2:
        params |= {"identity_subjects": identity_subjects, "identity_images": identity_images,
                   "revision": V2_REVISION}
    manifest = os.path.join(out_dir, "manifest.csv")
    info = os.path.join(out_dir, "synthfer.json")
    if os.path.isfile(manifest) and os.path.isfile(info):
        with open(info) as f:
            if json.load(f).get("params") == params:
                return manifest
    images, rows = generate(n_subjects, n_frames, size, difficulty, seed, version=version)
    save = lambda img, rel: _save_png(Image, img, os.path.join(out_dir, rel))  # noqa: E731
    out_rows = []
    for img, r in zip(images, rows, strict=True):
        relpath = os.path.join("images", r["subject"], r["expression"], f"{r['frame']:02d}.png")
        save(img, relpath)
        row = {**r, "path": relpath}
        if version >= 2:
            row["neutral"] = os.path.join("images", r["subject"], r["expression"], "00.png")
        out_rows.append(row)
    extra = {}
    if version >= 2:
        id_images, id_rows = generate_identity_population(identity_subjects, identity_images, size, difficulty, seed)
        count: dict[str, int] = {}
        for img, r in zip(id_images, id_rows, strict=True):
            i = count[r["subject"]] = count.get(r["subject"], -1) + 1
            save(img, os.path.join("identity", r["subject"], f"{i:02d}.png"))
        codes = subject_codes(n_subjects, difficulty, seed)
        with open(os.path.join(out_dir, "subjects.json"), "w") as f:
            json.dump(
                {f"S{s:03d}": {key: codes[key][s].round(6).tolist() for key in ("code", "resting")}
                 for s in range(n_subjects)},
                f,
            )
        extra = {"identity_images": len(id_rows), "yaw_bins": list(YAW_BINS), "pitch_bins": list(PITCH_BINS),
                 "pose": "yaw bin (0..4)"}
    write_manifest(manifest, out_rows)
    with open(info, "w") as f:
        json.dump(
            {
                "params": params,
                "classes": list(BASIC6),
                "actions": list(ACTIONS),
                "prototypes": PROTOTYPES.tolist(),
                "images": len(rows),
                **extra,
            },
            f,
            indent=1,
        )
    return manifest


def _save_png(image_module, img: np.ndarray, full: str) -> None:
    os.makedirs(os.path.dirname(full), exist_ok=True)
    image_module.fromarray(img).save(full, compress_level=1)


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
    ap.add_argument("--difficulty", type=float, default=None, help="default: the version's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--version", type=int, choices=(1, 2), default=VERSION)
    ap.add_argument("--identity-subjects", type=int, default=100, help="v2: the identity population's size")
    ap.add_argument("--identity-images", type=int, default=20, help="v2: images per identity")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    path = write_synthfer(a.out, a.subjects, a.frames, a.size, a.difficulty, a.seed, a.version,
                          a.identity_subjects, a.identity_images)
    print(f"{path} ({time.perf_counter() - t:.2f} s)")


if __name__ == "__main__":
    main()
