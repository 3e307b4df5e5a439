"""The ``make demo`` job: generate SynthFER, train one fold for a short budget, evaluate, report.

    python -m fer_models.demo [--model idennet_if_40] [--budget-minutes 6] [--out runs/demo]

The plan is fitted to the budget: a few training steps are timed first, then the number of epochs (and, when
two epochs of the 14x augmented set would not fit, a smaller seeded draw of images per epoch) is chosen so
that training fits in about ``--budget-minutes``. ``--epochs`` (with ``--epoch-images``) fixes the plan
instead. The fold's test subjects are evaluated at the end of training (``metrics.json``, ``confusion.png``);
with this short budget there is no validation split and the last epoch is the one evaluated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from fer_kernels.extras import cli_entry, require


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
    ap.add_argument("--epoch-images", type=int, default=None, help="images per epoch (with --epochs)")
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


def time_steps(model_name: str, num_classes: int, num_ids: int, batch: int = 4, seconds: float = 3.0):
    """Training images/s of the model on random data (forward, backward, SGD step): one warm-up step, then
    steps until ``seconds`` have passed (at most 5)."""
    from fer_models.registry import create_model
    from fer_models.runtime import WithLoss, input_spec

    model = create_model(model_name, num_expressions=num_classes, num_identities=num_ids)
    c, s = input_spec(model)
    w = WithLoss(model).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(batch, c, s, s)
    y, yid = torch.randint(0, num_classes, (batch,)), torch.randint(0, num_ids, (batch,))

    def step():
        _, loss, _ = w(x, y, yid)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t, n = time.perf_counter(), 0
    while n < 5 and (n == 0 or time.perf_counter() - t < seconds):
        step()
        n += 1
    return batch * n / (time.perf_counter() - t)


@cli_entry("demo", extra="train")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from fer_models.registry import list_models
    from fer_models.runtime import import_plugins
    from fer_models.train import TRAIN_MODULES

    require("demo", "train", *TRAIN_MODULES)
    import_plugins(args.imports)
    if args.model not in list_models():
        print(
            f"demo: model {args.model!r} is not registered "
            f"(registered: {', '.join(list_models()) or 'none'}). "
            "It comes with the models package (fer_models/idennet.py); pass --model NAME to use another.",
            file=sys.stderr,
        )
        return 2
    from fer_models import train
    from fer_models.data.synthfer import default_difficulty, write_synthfer

    t_all = time.perf_counter()
    data = args.data or os.path.join(args.out, "synthfer")
    difficulty = default_difficulty() if args.difficulty is None else args.difficulty  # the current version's
    t = time.perf_counter()
    write_synthfer(data, args.subjects, 6, 64, difficulty, args.seed)
    print(
        f"[demo] SynthFER: {args.subjects} subjects x 6 expressions x 6 frames, difficulty {difficulty} -> "
        f"{data} ({time.perf_counter() - t:.1f} s)",
        flush=True,
    )

    # the plan: 90% of the subjects train (10 folds; no validation split: the last epoch is evaluated),
    # 3 frames each, 14x augmentation; what does not fit the budget is cut by fewer images per epoch
    n_train = int(round(args.subjects * (1 - 1 / args.folds))) * 6 * 3
    n_epoch = n_train * (14 if args.augment else 1)
    epochs, epoch_images = args.epochs, args.epoch_images
    if epochs is None:
        rate = time_steps(args.model, 6, max(2, int(args.subjects * 0.9)), batch=min(16, args.batch_size))
        total = int(rate * args.budget_minutes * 60.0 * 0.8)  # 20% for evaluation and per-epoch overhead
        if total >= 2 * n_epoch:
            epochs = min(args.max_epochs, total // n_epoch)
        else:
            epochs = 4 if total >= 4 * args.batch_size else 1
            epoch_images = max(args.batch_size, total // epochs)
        print(
            f"[demo] {args.model}: ~{rate:.1f} training images/s here; plan {epochs} epoch(s) of "
            f"{epoch_images or n_epoch} images drawn from {n_epoch} "
            f"({'14x augmented' if args.augment else 'not augmented'}; budget {args.budget_minutes:g} min)",
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
    train_args += ["--val-subjects", "0"]
    train_args += [] if args.augment else ["--no-augment"]
    train_args += ["--epoch-images", str(epoch_images)] if epoch_images else []
    train_args += [] if args.progress else ["--no-progress"]
    for m in args.imports:
        train_args += ["--import", m]
    t = time.perf_counter()
    rc = train.main(train_args)
    if rc:
        return rc
    train_s = time.perf_counter() - t
    fold_dir = os.path.join(run, f"fold_{args.fold}")
    with open(os.path.join(fold_dir, "metrics.json")) as f:
        m = json.load(f)
    print(
        f"[demo] {args.model}, fold {args.fold} of {args.folds} (subject-independent), {epochs} epoch(s) in "
        f"{train_s:.0f} s"
    )
    print(
        f"[demo] test accuracy {m['accuracy']:.2%} on {m['num_samples']} images of {len(m['test_subjects'])} "
        f"unseen subjects (mean class accuracy {m['mean_class_accuracy']:.2%}; chance 16.7%)"
    )
    print(
        f"[demo] throughput: training {m['train_images_per_s']:.1f} images/s, "
        f"inference {m['eval_images_per_s']:.1f} images/s"
    )
    print(f"[demo] confusion matrix: {os.path.abspath(os.path.join(fold_dir, 'confusion.png'))}")
    print(
        f"[demo] re-evaluate with: fer-eval --checkpoint {os.path.join(fold_dir, 'checkpoints', 'best.pt')} "
        f"--folds-file {os.path.join(run, 'folds.json')} --fold {args.fold}"
    )
    print(f"[demo] total {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
