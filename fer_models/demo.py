"""The ``make demo`` job: generate SynthFER, train one fold for a short budget, evaluate, report.

    python -m fer_models.demo [--model idennet_if_40] [--budget-minutes 6] [--out runs/demo]

The plan is fitted to the budget: a few training steps are timed first, then the number of epochs (and, when
even one epoch of the 14x augmented set would not fit, training without the offline augmentation) is chosen so
that training fits in about ``--budget-minutes``. ``--epochs`` fixes the number of epochs instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fer_models.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="idennet_if_40")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--data", default=None, help="SynthFER folder (default: OUT/synthfer)")
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--difficulty", type=float, default=None)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--budget-minutes", type=float, default=6.0, help="training time budget")
    ap.add_argument("--epochs", type=int, default=None, help="fix the epochs instead of fitting the budget")
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="train without the 14x offline augmentation",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap


def time_steps(model_name: str, num_classes: int, num_ids: int, batch: int, steps: int = 3) -> float:
    """Training images/s of the model on random data (fwd + bwd + SGD step), after one warm-up step."""
    from fer_models.registry import create_model
    from fer_models.runtime import WithLoss, input_spec

    model = create_model(model_name, num_expressions=num_classes, num_identities=num_ids)
    c, s = input_spec(model)
    w = WithLoss(model).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(batch, c, s, s)
    y, yid = torch.randint(0, num_classes, (batch,)), torch.randint(0, num_ids, (batch,))
    for i in range(steps + 1):
        if i == 1:
            t = time.perf_counter()
        _, loss, _ = w(x, y, yid)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from fer_models.registry import list_models
    from fer_models.runtime import import_plugins

    import_plugins(args.imports)
    if args.model not in list_models():
        print(
            f"demo: model {args.model!r} is not registered "
            f"(registered: {', '.join(list_models()) or 'none'}). "
            "It comes with the models package (fer_models/idennet.py); pass --model NAME to use another.",
            file=sys.stderr,
        )
        return 2
    from fer_models import evaluate, train
    from fer_models.data.synthfer import DEFAULT_DIFFICULTY, write_synthfer

    t_all = time.perf_counter()
    data = args.data or os.path.join(args.out, "synthfer")
    difficulty = DEFAULT_DIFFICULTY if args.difficulty is None else args.difficulty
    t = time.perf_counter()
    write_synthfer(data, args.subjects, 6, 64, difficulty, args.seed)
    print(
        f"[demo] SynthFER: {args.subjects} subjects x 6 expressions x 6 frames, difficulty {difficulty} -> "
        f"{data} ({time.perf_counter() - t:.1f} s)",
        flush=True,
    )

    # the plan: about 80% of the subjects train (10 folds, 10% validation), 3 frames each, 14x augmentation
    n_train = int(args.subjects * 0.9 * 0.9) * 6 * 3
    augment, epochs = args.augment, args.epochs
    if epochs is None:
        rate = time_steps(args.model, 6, max(1, int(args.subjects * 0.81)), args.batch_size)
        budget = args.budget_minutes * 60.0 * 0.85
        epoch_s = n_train * (14 if augment else 1) / rate
        if augment and epoch_s > budget / 2:
            augment, epoch_s = False, n_train / rate
        epochs = max(1, min(args.max_epochs, math.floor(budget / epoch_s)))
        print(
            f"[demo] {args.model}: ~{rate:.0f} training images/s here; plan {epochs} epoch(s) of "
            f"{n_train * (14 if augment else 1)} images "
            f"({'14x augmentation' if augment else 'no augmentation'}, "
            f"budget {args.budget_minutes:g} min)",
            flush=True,
        )
    run = os.path.join(args.out, "run")
    train_args = [
        "--model",
        args.model,
        "--dataset",
        "synthfer",
        "--data",
        data,
        "--out",
        run,
        "--folds",
        str(args.folds),
        "--fold",
        str(args.fold),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
    ]
    train_args += [] if augment else ["--no-augment"]
    train_args += [] if args.progress else ["--no-progress"]
    for m in args.imports:
        train_args += ["--import", m]
    t = time.perf_counter()
    rc = train.main(train_args)
    if rc:
        return rc
    train_s = time.perf_counter() - t
    fold_dir = os.path.join(run, f"fold_{args.fold}")
    ckpt = os.path.join(fold_dir, "checkpoints", "best.pt")
    eval_args = [
        "--checkpoint",
        ckpt,
        "--dataset",
        "synthfer",
        "--data",
        data,
        "--folds-file",
        os.path.join(run, "folds.json"),
        "--fold",
        str(args.fold),
        "--out",
        os.path.join(fold_dir, "eval"),
    ]
    for m in args.imports:
        eval_args += ["--import", m]
    m = evaluate.evaluate(evaluate.build_parser().parse_args(eval_args))
    with open(os.path.join(fold_dir, "metrics.json")) as f:
        tm = json.load(f)
    print(
        f"[demo] {args.model}, fold {args.fold} of {args.folds} (subject-independent), {epochs} epoch(s) in "
        f"{train_s:.0f} s"
    )
    print(
        f"[demo] test accuracy {m['accuracy']:.2%} on {m['num_samples']} images of unseen subjects "
        f"(mean class accuracy {m['mean_class_accuracy']:.2%})"
    )
    print(
        f"[demo] throughput: training {tm['train_images_per_s']:.0f} images/s, "
        f"inference {m['eval_images_per_s']:.0f} images/s"
    )
    print(f"[demo] confusion matrix: {os.path.abspath(m['confusion_png'])}")
    print(f"[demo] total {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
