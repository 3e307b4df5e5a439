"""fer-predict: batch inference on face crops with a fer-train checkpoint; JSON out.

    fer-predict --checkpoint runs/synth/fold_0/checkpoints/best.pt faces/*.png [--detect] [--out preds.json]

Each image is read as grayscale, optionally cropped to the largest detected face (``--detect``, the same
detector as fer-prep), resized and centre-cropped as in the checkpoint's preprocessing. Output: a JSON list
with, per image, ``path``, ``expression`` (the top class), ``confidence`` and ``probabilities`` (class -> p);
an image that cannot be read (or has no face with ``--detect``) gets an ``error`` entry instead, and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from fer_kernels.extras import cli_entry, require
from fer_models.data.base import DataError, read_gray, resize_gray
from fer_models.runtime import (
    CheckpointError,
    import_plugins,
    load_checkpoint,
    model_from_checkpoint,
    predict_logits,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fer-predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--detect", action="store_true", help="crop the largest detected face first")
    ap.add_argument("--out", default="-", help="JSON file (default: stdout)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    return ap


def predict(checkpoint: str, paths: list[str], detect: bool = False, batch_size: int = 256) -> list[dict]:
    """Predictions for image files (see the module docstring for the entry format)."""
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    model = model_from_checkpoint(ckpt)
    results: list[dict] = [{} for _ in paths]
    images, where = [], []
    for i, p in enumerate(paths):
        try:
            img = read_gray(p)
            if detect:
                from fer_models.prep import FacePrep

                crop, info = FacePrep(size=cfg["resize"]).process(img)
                if crop is None:
                    raise DataError(f"{p}: {info['reason']}")
                img = crop
        except DataError as e:
            results[i] = {"path": p, "error": str(e)}
            continue
        images.append(resize_gray(img, cfg["resize"]))
        where.append(i)
    if images:
        logits = predict_logits(
            model,
            torch.from_numpy(np.stack(images)),
            cfg["crop"],
            cfg["channels"],
            torch.device("cpu"),
            batch_size,
            target=cfg.get("target", "expression"),
        )
        probs = logits.softmax(1)
        for i, pr in zip(where, probs, strict=True):
            top = int(pr.argmax())
            results[i] = {
                "path": paths[i],
                "expression": cfg["classes"][top],
                "confidence": float(pr[top]),
                "probabilities": {c: float(v) for c, v in zip(cfg["classes"], pr, strict=True)},
            }
    return results


@cli_entry("fer-predict", extra="train")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    require("fer-predict", "train", "PIL", "cv2")  # decoding, resizing (and --detect)
    import_plugins(args.imports)
    try:
        res = predict(args.checkpoint, args.images, args.detect, args.batch_size)
    except CheckpointError as e:
        print(f"fer-predict: {e}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=1)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if any("error" in r for r in res) else 0


if __name__ == "__main__":
    sys.exit(main())
