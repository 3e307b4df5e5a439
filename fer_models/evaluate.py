"""fer-eval: evaluate a fer-train checkpoint on a dataset (or on one fold's test subjects).

    fer-eval --checkpoint runs/synth/fold_0/checkpoints/best.pt --dataset synthfer --data data/synthfer \\
             --folds-file runs/synth/folds.json --fold 0 --out runs/synth/fold_0/eval

Writes ``metrics.json`` (accuracy, per-class accuracy, confusion matrix, images/s) and ``confusion.png`` to
``--out`` and prints the accuracy. The checkpoint's class names decide the label order; samples of classes the
checkpoint does not know are reported and left out. Preprocessing (resize, centre crop, channels) is the
checkpoint's.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from fer_kernels.extras import cli_entry, require
from fer_models.data import DATASETS, DataError, load_dataset, load_images, report_issues
from fer_models.data.protocol import Folds, split_by_usage
from fer_models.runtime import (
    Dist,
    confusion,
    import_plugins,
    load_checkpoint,
    metrics_from_confusion,
    model_from_checkpoint,
    plot_confusion,
    write_json,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fer-eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", default=None, choices=DATASETS, help="default: the checkpoint's dataset")
    ap.add_argument("--data", default=None, help="default: the checkpoint's data path")
    ap.add_argument(
        "--fold", type=int, default=None, help="evaluate this fold's test subjects (needs --folds-file)"
    )
    ap.add_argument("--folds-file", default=None)
    ap.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default=None,
        help="evaluate one of the dataset's own splits (FER2013 / FERPlus)",
    )
    ap.add_argument("--frames", choices=("last", "middle", "all"), default=None)
    ap.add_argument("--out", default=None, help="output folder (default: beside the checkpoint, eval/)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    return ap


def evaluate(args) -> dict:
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config"]
    dataset_name = args.dataset or cfg["dataset"]
    data = args.data or cfg["data"]
    opts = (
        {"frames": args.frames}
        if args.frames and dataset_name in ("synthfer", "ckplus", "oulu", "mmi", "manifest")
        else {}
    )
    if dataset_name == "ckplus":
        opts["classes"] = 6 if len(cfg["classes"]) == 6 else 7
    dataset = load_dataset(dataset_name, data, **opts)
    if args.fold is not None:
        if not args.folds_file:
            raise DataError("--fold needs --folds-file (the run's folds.json)")
        test = Folds.load(args.folds_file).test_subjects(args.fold)
        dataset = dataset.subset(lambda s: s.subject in test)
    elif args.split:
        dataset = dict(zip(("train", "val", "test"), split_by_usage(dataset), strict=True))[args.split]
    classes = cfg["classes"]
    if cfg.get("target", "expression") == "identity":
        index = {c: i for i, c in enumerate(classes)}
        unknown = dataset.subset(lambda s: s.subject not in index)
        dataset = dataset.subset(lambda s: s.subject in index)
        labels_of = lambda ds: [index[s.subject] for s in ds.samples]  # noqa: E731
    else:
        index = {c: i for i, c in enumerate(classes)}
        names = dataset.classes
        unknown = dataset.subset(lambda s: names[s.expression] not in index)
        dataset = dataset.subset(lambda s: names[s.expression] in index)
        labels_of = lambda ds: [index[names[s.expression]] for s in ds.samples]  # noqa: E731
    if len(unknown):
        print(
            f"fer-eval: {len(unknown)} sample(s) of classes the checkpoint does not know were left out "
            f"(first: {unknown.samples[0].path})",
            file=sys.stderr,
        )
    dataset, images = load_images(dataset, cfg["resize"])
    text = report_issues(dataset)
    if text:
        print(text, file=sys.stderr)
    if not len(dataset):
        raise DataError(f"{data}: nothing to evaluate")
    model = model_from_checkpoint(ckpt, args.checkpoint)
    labels = torch.tensor(labels_of(dataset), dtype=torch.int64)
    cm, rate = confusion(
        model,
        torch.from_numpy(images),
        labels,
        len(classes),
        cfg["crop"],
        cfg["channels"],
        Dist(),
        args.batch_size,
        target=cfg.get("target", "expression"),
    )
    metrics = metrics_from_confusion(cm, classes)
    metrics.update(
        {
            "checkpoint": os.path.abspath(args.checkpoint),
            "model": cfg["model"],
            "dataset": dataset_name,
            "data": os.path.abspath(data),
            "fold": args.fold,
            "eval_images_per_s": rate,
            "left_out": len(unknown) + len(dataset.issues),
        }
    )
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "..", "eval")
    out = os.path.normpath(out)
    write_json(metrics, os.path.join(out, "metrics.json"))
    metrics["confusion_png"] = plot_confusion(
        cm,
        classes,
        os.path.join(out, "confusion.png"),
        f"{cfg['model']} on {dataset_name}: {metrics['accuracy']:.2%}",
    )
    metrics["out"] = out
    return metrics


@cli_entry("fer-eval", extra="train")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    require("fer-eval", "train", "PIL", "cv2", "matplotlib")  # images in, confusion.png out
    import_plugins(args.imports)
    try:
        m = evaluate(args)
    except (DataError, ValueError) as e:
        print(f"fer-eval: {e}", file=sys.stderr)
        return 2
    print(
        f"accuracy {m['accuracy']:.4f} on {m['num_samples']} images ({m['eval_images_per_s']:.0f} images/s); "
        f"{os.path.join(m['out'], 'metrics.json')}, {m['confusion_png']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
