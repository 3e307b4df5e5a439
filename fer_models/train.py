"""fer-train: train a registered model on a FER dataset under the subject-independent k-fold protocol.

    fer-train --model idennet_if_40 --dataset synthfer --data data/synthfer --folds 10 --fold 0 --epochs 30 \\
              --out runs/synth
    torchrun --nproc_per_node=2 -m fer_models.train ...       # DistributedDataParallel (gloo on CPU, nccl
    on GPU)

A run directory holds ``folds.json`` (the subject folds, reused when present), ``preprocessing.json``,
``config.json`` and per fold ``fold_K/metrics.json`` (accuracy, per-class accuracy, confusion matrix, training
history), ``fold_K/confusion.png`` and ``fold_K/checkpoints/{last,best}.pt``; ``--fold all`` adds
``summary.json`` (mean +- std over folds). ``--resume`` continues from ``last.pt`` and ends exactly where an
uninterrupted run with the same seed would: every epoch re-seeds its shuffling, crops and dropout from
(seed, fold, epoch), and the checkpoint carries the model, optimiser and schedule.

Every option the command line leaves unset comes from the model's training recipe (its paper's optimiser,
lr, schedule, batch size, weight decay, loss weights and input size: :mod:`fer_models.recipes`), printed in
one block at start. Two-stage training: ``--stage pretrain`` (``--target identity`` for the identity network,
``--exclude-subjects-of FOLDS_FILE:FOLD`` to leave a fine-tuning fold's test and validation subjects out)
and ``--stage finetune`` with ``--init CHECKPOINT`` (loads every weight whose name and shape match; EIFN:
pre-train on one database, fine-tune on the other) or, for IDEnNet, ``--init-emotion CKPT --init-identity
CKPT`` (the model class's ``from_pretrained``). Every checkpoint records the subjects its weights have seen;
an ``--init*`` checkpoint that has seen the fold's test or validation subjects is refused (exit status 2).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import textwrap
import time

import numpy as np
import torch
from torch import nn

from fer_kernels.extras import cli_entry, require
from fer_models.data import DATASETS, DataError, FaceDataset, load_dataset, load_images, report_issues
from fer_models.data.protocol import (
    Folds,
    held_out_subjects,
    load_or_make_folds,
    split_by_usage,
    split_fold,
    split_random,
)
from fer_models.data.transforms import augment14, record
from fer_models.eifn import load_vgg16_features
from fer_models.recipes import DEFAULT_RECIPE, Recipe, Schedule, list_recipes, recipe_for
from fer_models.registry import create_model, list_models
from fer_models.runtime import (
    CheckpointError,
    Dist,
    WithLoss,
    atomic_save,
    confusion,
    first_line,
    import_plugins,
    init_distributed,
    input_spec,
    load_checkpoint,
    make_batch,
    metrics_from_confusion,
    model_from_checkpoint,
    plot_confusion,
    recorded_subjects,
    shard,
    shutdown_distributed,
    subject_metadata,
    write_json,
)


class UsageError(ValueError):
    """A command-line value fer-train cannot use: reported in one line, exit status 2."""


def _recipe_values(fn, short: bool = True) -> str:
    """``fn(recipe)`` for every registered recipe, as 'Family value; Family value' (duplicates merged;
    ``short``: by the family's first word, so IDEnNet's variant recipes show as IDEnNet)."""
    seen: dict[str, list[str]] = {}
    for _, recipe in list_recipes():
        value = fn(recipe)
        if value is not None:
            names = seen.setdefault(value, [])
            name = recipe.family.split()[0] if short else recipe.family
            if name not in names:
                names.append(name)
    return "; ".join(f"{'/'.join(names)} {value}" for value, names in seen.items())


def _lr_text(r: Recipe) -> str:
    return f"{r.lr:g}" + (f" (pretrain {r.pretrain_lr:g})" if r.pretrain_lr is not None else "")


def _schedule_text(r: Recipe) -> str:
    pre = f" (pretrain: {r.pretrain_schedule.describe()})" if r.pretrain_schedule else ""
    return r.schedule.describe() + pre


def _weights_text(r: Recipe) -> str | None:
    if not r.loss_weight_names:
        return None
    fmt = lambda vs: ",".join(f"{v:g}" for v in vs)  # noqa: E731
    by = [f"--dataset {d}: {fmt(v)}" for d, v in r.loss_weights_by_dataset.items() if v != r.loss_weights]
    return f"{','.join(r.loss_weight_names)} = {fmt(r.loss_weights)}" + (f" ({'; '.join(by)})" if by else "")


def _epilog() -> str:
    lines = [
        "recipes: fer-train applies the model's recipe (its paper's settings) to every option not given on",
        "the command line, and prints at start which value came from where. Registered recipes:",
    ]
    for patterns, r in list_recipes():
        text = f"{r.family} ({', '.join(patterns)}): {r.summary()}  [{r.paper}]"
        lines += textwrap.wrap(text, 108, initial_indent="  ", subsequent_indent="      ")
    lines += textwrap.wrap(
        "A model without a recipe gets fer-train's defaults: " + DEFAULT_RECIPE.summary().split(", input")[0]
        + ". Epochs: 30 (neither paper gives a number).",
        110,
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fer-train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(),
    )
    ap.add_argument("--model", default="idennet_if_40", help="registered model name (see --list-models)")
    ap.add_argument("--list-models", action="store_true", help="print the registered models and exit")
    ap.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (e.g. a module that registers your own models); repeatable",
    )
    ap.add_argument("--dataset", default="synthfer", choices=DATASETS)
    ap.add_argument(
        "--data", default="data/synthfer", help="dataset root (SynthFER is generated here if absent)"
    )
    ap.add_argument("--out", default="runs/train", help="run directory")
    ap.add_argument("--folds", type=int, default=10, help="k of the subject-independent k-fold protocol")
    ap.add_argument("--fold", default="0", help="fold index, or 'all'")
    ap.add_argument("--folds-file", default=None, help="fold file to reuse (default: OUT/folds.json)")
    ap.add_argument(
        "--protocol",
        choices=("auto", "kfold", "split", "random"),
        default="auto",
        help="kfold (subjects), split (the dataset's own train/val/test), random (identity pre-training);"
        " auto: kfold when every sample has a subject, else split",
    )
    ap.add_argument(
        "--val-subjects",
        type=float,
        default=0.1,
        help="fraction of the training subjects held out for model selection (0: select the last epoch)",
    )
    ap.add_argument(
        "--exclude-subjects-of",
        default=None,
        metavar="FOLDS_FILE:FOLD",
        help="leave out the test subjects of fold FOLD of FOLDS_FILE and its validation subjects (drawn as "
        "a fine-tuning run with the same --val-subjects and --seed draws them), from every split: identity "
        "pre-training for that fold's fine-tuning",
    )
    ap.add_argument("--epochs", type=int, default=None, help="default 30 (neither paper gives a number)")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size, split across processes (recipe: "
        + _recipe_values(lambda r: str(r.batch_size)) + f"; no recipe: {DEFAULT_RECIPE.batch_size})",
    )
    ap.add_argument(
        "--lr",
        type=float,
        default=None,
        help="initial learning rate (recipe: " + _recipe_values(_lr_text)
        + f"; no recipe: {_lr_text(DEFAULT_RECIPE)})",
    )
    ap.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="SGD momentum (recipe: " + _recipe_values(lambda r: f"{r.momentum:g}") + ")",
    )
    ap.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="SGD weight decay (recipe: " + _recipe_values(lambda r: f"{r.weight_decay:g}")
        + f"; no recipe: {DEFAULT_RECIPE.weight_decay:g})",
    )
    ap.add_argument(
        "--milestones",
        type=float,
        nargs="*",
        default=None,
        metavar="FRACTION",
        help="learning rate x0.1 at these fractions of --epochs (none given: constant lr); recipe: "
        + _recipe_values(_schedule_text),
    )
    ap.add_argument(
        "--lr-steps",
        default=None,
        metavar="E1,E2,...",
        help="learning rate x0.1 after these epochs, e.g. 20,40 (instead of --milestones; EIFN's recipe: "
        "every 20 epochs when fine-tuning)",
    )
    ap.add_argument(
        "--lambdas",
        default=None,
        metavar="A,B[,C]",
        help="the model's loss weights, comma-separated (recipe: "
        + _recipe_values(_weights_text, False) + ")",
    )
    ap.add_argument(
        "--vgg16-weights",
        default=None,
        metavar="PATH",
        help="EIFN: a local torchvision-format VGG-16 state dict (torch.save(vgg16().state_dict()), read as "
        "data, nothing downloaded) loaded into both VGG-16 extractors, as the paper starts from ImageNet",
    )
    ap.add_argument(
        "--no-augment", dest="augment", action="store_false", help="skip the 14x offline augmentation"
    )
    ap.add_argument(
        "--epoch-images",
        type=int,
        default=None,
        help="train on this many images per epoch, a new seeded draw from the training set each epoch "
        "(short budgets; default: all)",
    )
    ap.add_argument(
        "--resize",
        type=int,
        default=None,
        help="stored face size (recipe: " + _recipe_values(lambda r: f"{r.resize}, crops of {r.input_size}")
        + "; no recipe: 60 for 48-pixel models, else the input size)",
    )
    ap.add_argument(
        "--frames",
        choices=("last", "middle", "all"),
        default=None,
        help="frames per sequence (default: the dataset's protocol)",
    )
    ap.add_argument("--ck-classes", type=int, choices=(6, 7), default=7, help="CK+: 7 classes or the basic 6")
    ap.add_argument(
        "--target",
        choices=("expression", "identity"),
        default=None,
        help="what the classifier learns (default: identity for --dataset identity, else expression)",
    )
    ap.add_argument(
        "--id-rate",
        type=float,
        default=1.0,
        help="fraction of training subjects whose identity label is used (IDEnNet's ID-rate ablation, "
        "Fig. 3). 0 trains the family's baseline without identity information, as the paper's rate-0 "
        "point is: IDEnNet I/F/IF -> idennet_original_<depth>, EIFN/EIFN* -> efn (a model without a "
        "recipe: identity labels withheld, nothing else changes). Between 0 and 1 only the identity labels "
        "of I/IF (and EIFN's identity loss) change; F has none",
    )
    ap.add_argument("--stage", choices=("train", "pretrain", "finetune"), default="train")
    ap.add_argument("--init", default=None, help="checkpoint whose matching weights initialise the model")
    ap.add_argument("--init-emotion", default=None, help="IDEnNet fine-tuning: pre-trained emotion network")
    ap.add_argument("--init-identity", default=None, help="IDEnNet fine-tuning: pre-trained identity network")
    ap.add_argument(
        "--allow-unrecorded-init",
        action="store_true",
        help="accept without a warning an --init* checkpoint that does not record the subjects it trained on "
        "(made before fer-train recorded them); one that records them is always checked, and refused when "
        "they include this fold's test or validation subjects",
    )
    ap.add_argument("--resume", action="store_true", help="continue each fold from its last checkpoint")
    ap.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many epochs in total, as an interruption would (checkpoint kept)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers-threads", type=int, default=None, help="torch intra-op threads per process")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument(
        "--strict-data", action="store_true", help="reject the dataset on the first malformed input"
    )
    ap.add_argument(
        "--find-unused-parameters",
        action="store_true",
        help="DDP option for models with branches that some batches skip",
    )
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--synth-subjects", type=int, default=40)
    ap.add_argument("--synth-frames", type=int, default=6)
    ap.add_argument("--synth-size", type=int, default=64)
    ap.add_argument("--synth-difficulty", type=float, default=None, help="default: the version's")
    ap.add_argument(
        "--synthfer-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="SynthFER generator version for a set generated here (2: identity-dependent expression, labelled "
        "pose, neutral frames, identity population under DATA/identity; 1: the original set)",
    )
    ap.add_argument("--synth-identity-subjects", type=int, default=100, help="SynthFER v2 identity population")
    return ap


# ----------------------------------------------------------------------------------------------- data
def open_dataset(args, d: Dist) -> FaceDataset:
    opts = {}
    if args.dataset == "synthfer":
        from fer_models.data.synthfer import write_synthfer

        if d.main and not os.path.isfile(os.path.join(args.data, "manifest.csv")):
            t = time.perf_counter()
            write_synthfer(
                args.data,
                args.synth_subjects,
                args.synth_frames,
                args.synth_size,
                args.synth_difficulty,
                args.seed,
                version=args.synthfer_version,
                identity_subjects=args.synth_identity_subjects,
            )
            print(f"SynthFER written to {args.data} in {time.perf_counter() - t:.1f} s", flush=True)
        d.barrier()
    if args.frames and args.dataset in ("synthfer", "ckplus", "oulu", "mmi", "manifest"):
        opts["frames"] = args.frames
    if args.dataset == "ckplus":
        opts["classes"] = args.ck_classes
    return load_dataset(args.dataset, args.data, strict=args.strict_data, **opts)


def neutral_frames(dataset: FaceDataset, size: int) -> dict:
    """For a generative model: each sample's sequence neutral frame (uint8 (N, size, size); zeros where the
    dataset names none, ``has_neutral`` False) and pose class (-1: unknown)."""
    from fer_models.data.base import read_gray, resize_gray

    cache: dict[str, np.ndarray] = {}
    out = np.zeros((len(dataset), size, size), np.uint8)
    has = np.zeros(len(dataset), bool)
    for i, s in enumerate(dataset.samples):
        if s.neutral:
            if s.neutral not in cache:
                cache[s.neutral] = resize_gray(read_gray(s.neutral), size)
            out[i], has[i] = cache[s.neutral], True
    pose = np.array([-1 if s.pose is None else s.pose for s in dataset.samples], np.int64)
    return {"neutral": out, "has_neutral": has, "pose": pose}


def make_optimizers(args, groups: dict) -> dict:
    """One optimizer per parameter group: the recipe's SGD (momentum) or Adam (``--momentum`` is beta1)."""
    out = {}
    for name, params in groups.items():
        params = [p for p in params if p.requires_grad]
        if args.optimizer == "Adam":
            out[name] = torch.optim.Adam(params, lr=args.lr, betas=(args.momentum, 0.999),
                                         weight_decay=args.weight_decay)
        else:
            out[name] = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                                        weight_decay=args.weight_decay)
    return out


def target_classes(dataset: FaceDataset, target: str) -> list[str]:
    return dataset.subjects if target == "identity" else list(dataset.classes)


def labels_of(dataset: FaceDataset, target: str, classes: list[str]) -> torch.Tensor:
    if target == "identity":
        index = {s: i for i, s in enumerate(classes)}
        return torch.tensor([index[s.subject] for s in dataset.samples], dtype=torch.int64)
    return torch.tensor([s.expression for s in dataset.samples], dtype=torch.int64)


def identity_labels(dataset: FaceDataset, subjects: list[str], id_rate: float, seed: int) -> torch.Tensor:
    """Identity index (into ``subjects``) of each sample; -1 for unknown subjects and for the subjects left
    without identity labels by ``id_rate``."""
    keep = set(subjects)
    if id_rate < 1.0:
        n = int(round(id_rate * len(subjects)))
        keep = {subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))[:n]}
    index = {s: i for i, s in enumerate(subjects)}
    return torch.tensor(
        [index[s.subject] if s.subject in keep else -1 for s in dataset.samples], dtype=torch.int64
    )


# ----------------------------------------------------------------------------------------------- model
def load_matching(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    """Load the entries of ``state`` whose name and shape match ``model``; returns (loaded, skipped)."""
    own = model.state_dict()
    loaded, skipped = [], []
    for k, v in state.items():
        if k in own and own[k].shape == v.shape:
            own[k] = v
            loaded.append(k)
        else:
            skipped.append(k)
    model.load_state_dict(own)
    return loaded, skipped


def build_model(
    args, num_classes: int, num_identities: int, d: Dist, inits: dict, vgg16: dict | None
) -> tuple[nn.Module, dict]:
    """The model to train: built with the recipe's loss weights, initialised from ``--vgg16-weights``
    (``vgg16``: the loaded tensors), ``--init-emotion`` / ``--init-identity`` and ``--init`` (``inits``:
    ``{flag: (path, checkpoint)}``, already loaded and checked)."""
    kwargs = {"num_expressions": num_classes, "num_identities": max(1, num_identities), **args.loss_weights}
    if args.generative:
        kwargs["num_poses"] = args.num_poses
    if args.model not in list_models():
        raise SystemExit(
            f"fer-train: unknown model {args.model!r}; registered: {', '.join(list_models()) or 'none'}"
        )
    if args.init_identity and not args.init_emotion and args.identity_encoder_init:
        model = create_model(args.model, **kwargs)
        ident = model_from_checkpoint(inits["--init-identity"][1], args.init_identity)
        try:
            model.load_identity_encoder(ident)
        except (ValueError, RuntimeError) as e:
            raise SystemExit(f"fer-train: --init-identity {args.init_identity}: {first_line(e)}") from e
        if d.main:
            print(f"--init-identity {args.init_identity}: loaded into {args.model}'s identity encoder (frozen)")
    elif args.init_emotion or args.init_identity:
        if not args.init_emotion:
            raise SystemExit("fer-train: --init-identity needs --init-emotion (the emotion network)")
        proto = create_model(args.model, **kwargs)
        from_pretrained = getattr(type(proto), "from_pretrained", None)
        if from_pretrained is None:
            raise SystemExit(f"fer-train: {args.model} has no from_pretrained; use --init for this model")
        emo = model_from_checkpoint(inits["--init-emotion"][1], args.init_emotion)
        ident = model_from_checkpoint(inits["--init-identity"][1], args.init_identity) if args.init_identity else None
        try:
            model = from_pretrained(emo, ident, variant=getattr(proto, "variant", None), **kwargs)
        except ValueError as e:
            raise SystemExit(f"fer-train: {args.model}.from_pretrained: {e}") from e
        model.input_size = getattr(model, "input_size", proto.input_size)
        if d.main:
            fuses = getattr(model, "has_fusion", True)  # IDEnNet original / I take no identity network
            print(
                f"initialised {args.model} from {args.init_emotion} (emotion)"
                + (f" and {args.init_identity} (identity)" if args.init_identity and fuses else "")
                + (f"; --init-identity unused: {args.model} fuses no identity features"
                   if args.init_identity and not fuses else "")
            )
    else:
        model = create_model(args.model, **kwargs)
    if vgg16 is not None:
        model.load_vgg16_weights(vgg16)  # checked against the model in _run
        if d.main:
            print(f"--vgg16-weights {args.vgg16_weights}: loaded into both VGG-16 extractors")
    if args.init:
        loaded, skipped = load_matching(model, inits["--init"][1]["model"])
        if d.main:
            print(
                f"--init {args.init}: loaded {len(loaded)} tensors, skipped {len(skipped)}"
                + (f" ({', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''})" if skipped else "")
            )
        if not loaded:
            raise SystemExit(f"fer-train: --init {args.init} has no weight that fits {args.model}")
    return model, kwargs


# ----------------------------------------------------------------------------------------------- recipes
def _numbers(text: str, flag: str, kind=float) -> list:
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        example = "20,40" if kind is int else "0.0001,2,1"
        msg = f"{flag} {text}: expected comma-separated {kind.__name__}s, e.g. {example}"
        raise UsageError(msg) from None
    bad = [v for v in values if not math.isfinite(v) or v < (1 if kind is int else 0)]
    if bad:
        want = "an epoch >= 1" if kind is int else "finite and >= 0"
        raise UsageError(f"{flag} {text}: {bad[0]:g} is not {want}")
    return values


def resolve_settings(args, target: str) -> tuple[Recipe, list[tuple[str, str, str]]]:
    """Fill every training option the command line left unset from the model's recipe (or fer-train's
    defaults), in ``args``; returns the recipe and the rows ``(setting, value, where from)`` fer-train prints.

    Also applies ``--id-rate 0`` (the family's baseline model) and checks ``--lambdas`` / ``--lr-steps`` /
    ``--milestones``. Raises :class:`UsageError` (one line) on a value it cannot use.
    """
    if not 0.0 <= args.id_rate <= 1.0:
        raise UsageError(f"--id-rate {args.id_rate:g}: expected a fraction in [0, 1]")
    rows = []
    args.requested_model = args.model
    recipe = recipe_for(args.model)
    if args.id_rate == 0 and target == "expression" and recipe and recipe.id_rate_zero:
        base = recipe.id_rate_zero(args.model)
        if base != args.model and base in list_models():
            args.model = base
            recipe = recipe_for(base)
            rows.append(("model", base, f"--id-rate 0: {args.requested_model}'s baseline without identity"))
    r = recipe or DEFAULT_RECIPE
    src = lambda key: f"recipe, {r.sources[key]}" if key in r.sources else (  # noqa: E731
        "recipe" if recipe else "fer-train default")
    cli = "command line"

    def pick(name, value, key, show=None):
        given = getattr(args, name) is not None
        if not given:
            setattr(args, name, value)
        rows.append((key.replace("_", " "), show(getattr(args, name)) if show else str(getattr(args, name)),
                     cli if given else src(key)))

    rows.append(("optimizer", r.optimizer, src("optimizer")))
    args.optimizer = r.optimizer
    pick("lr", r.stage_lr(args.stage), "lr", lambda v: f"{v:g}")
    pick("momentum", r.momentum, "momentum", lambda v: f"{v:g}")
    given_epochs = args.epochs is not None
    args.epochs = args.epochs if given_epochs else 30
    rows.append(
        ("epochs", str(args.epochs), cli if given_epochs else "fer-train default (neither paper gives one)")
    )
    if args.lr_steps is not None and args.milestones is not None:
        raise UsageError("--lr-steps and --milestones both set the lr schedule: give one")
    if args.lr_steps is not None:
        schedule, where = Schedule("steps", tuple(_numbers(args.lr_steps, "--lr-steps", int))), cli
    elif args.milestones is not None:
        bad = [f for f in args.milestones if not 0 < f < 1]
        if bad:
            raise UsageError(f"--milestones {bad[0]:g}: fractions of --epochs lie strictly between 0 and 1")
        schedule, where = Schedule("fractions", tuple(args.milestones)), cli
    else:
        schedule, where = r.stage_schedule(args.stage), src("schedule")
    args.lr_milestones = schedule.milestones(args.epochs)
    args.lr_schedule = schedule.describe()
    late = [m for m in args.lr_milestones if m >= args.epochs]
    rows.append(("lr schedule", f"{args.lr_schedule}: after epochs {args.lr_milestones or 'none'}"
                 + (f" ({late}: at or after the last epoch, no effect)" if late else ""), where))
    pick("batch_size", r.batch_size, "batch_size")
    pick("weight_decay", r.weight_decay, "weight_decay", lambda v: f"{v:g}")
    names = r.loss_weight_names if recipe else ()
    if args.lambdas is not None:
        values = _numbers(args.lambdas, "--lambdas")
        if not names:
            raise UsageError(f"--lambdas {args.lambdas}: {args.model} has no loss weights to set "
                             f"({'its recipe names none' if recipe else 'no recipe registered'})")
        if len(values) != len(names):
            raise UsageError(f"--lambdas {args.lambdas}: {args.model} takes {len(names)} loss weights "
                             f"({','.join(names)}), got {len(values)}")
        where = cli
    else:
        values, where = list(r.weights_for(args.dataset)) if names else [], src("loss_weights")
    args.loss_weights = dict(zip(names, values, strict=True))
    if names:
        rows.append(("loss weights", ", ".join(f"{k} {v:g}" for k, v in args.loss_weights.items()), where))
    return recipe, rows


def print_settings(args, recipe: Recipe | None, rows, resize: int, side: int, resize_given: bool) -> None:
    head = (f"recipe {recipe.family} [{recipe.paper}]" if recipe else
            f"no recipe registered for {args.model}: fer-train's defaults")
    print(f"{head}; --stage {args.stage}, --dataset {args.dataset}:")
    rows = rows + [("input", f"faces {resize}x{resize}, " + (f"crops {side}x{side}" if resize != side else
                                                              "no crop"),
                    "command line" if resize_given else
                    (f"recipe, {recipe.sources['input']}" if recipe and "input" in recipe.sources else
                     "recipe" if recipe else "fer-train default"))]
    width = max(len(r[0]) for r in rows)
    vwidth = min(44, max(len(r[1]) for r in rows))
    for key, value, where in rows:
        print(f"  {key:<{width}}  {value:<{vwidth}}  {where}")


# ----------------------------------------------------------------------------------------------- leaks
def parse_exclusion(spec: str, val_fraction: float, seed: int) -> tuple[set[str], set[str], str]:
    """``FOLDS_FILE:FOLD`` -> (the fold's test subjects, its validation subjects, a label)."""
    path, _, fold = spec.rpartition(":")
    if not path or not fold.lstrip("-").isdigit():
        raise UsageError(f"--exclude-subjects-of {spec}: expected FOLDS_FILE:FOLD, e.g. runs/x/folds.json:0")
    if not os.path.isfile(path):
        raise UsageError(f"--exclude-subjects-of {spec}: {path}: no such fold file")
    try:
        folds = Folds.load(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--exclude-subjects-of {spec}: {path}: not a fold file ({e})") from None
    k = int(fold)
    if not 0 <= k < folds.k:
        raise UsageError(f"--exclude-subjects-of {spec}: fold {k} outside 0..{folds.k - 1}")
    test, val = held_out_subjects(folds, k, val_fraction, seed)  # the subjects split_fold holds out
    return test, val, f"{path} fold {k}"


def _names(subjects) -> str:
    s = sorted(subjects)
    return ", ".join(s[:8]) + (f" and {len(s) - 8} more" if len(s) > 8 else "")


def check_init(flag: str, path: str, ckpt: dict, test: set[str], val: set[str], where: str) -> str | None:
    """Refuse (:class:`CheckpointError`, one line) an initialisation whose weights have seen ``test`` or
    ``val`` subjects (trained on them), or whose model selection used ``test`` subjects; returns a warning
    line when the checkpoint cannot be fully checked (no record), else None."""
    rec = recorded_subjects(ckpt)
    if rec is None:
        return (f"fer-train: warning: {flag} {path} does not record the subjects it trained on (a checkpoint "
                "from before fer-train recorded them): not checked against the test and validation subjects "
                "(--allow-unrecorded-init: no warning)")
    leaks = []
    if rec["train"] & test:
        leaks.append(f"trained on {where}'s test subjects {_names(rec['train'] & test)}")
    if rec["train"] & val:
        leaks.append(f"trained on {where}'s validation subjects {_names(rec['train'] & val)}")
    if (rec["val"] - rec["train"]) & test:
        leaks.append(f"selected on {where}'s test subjects {_names((rec['val'] - rec['train']) & test)}")
    if leaks:
        raise CheckpointError(
            f"{flag} {path}: {'; '.join(leaks)}: refusing a leaking initialisation (pre-train without them, "
            "e.g. --exclude-subjects-of FOLDS_FILE:FOLD)"
        )
    if rec["unrecorded_init"]:
        return (f"fer-train: warning: {flag} {path} was itself initialised from checkpoint(s) without a "
                f"subject record ({', '.join(rec['unrecorded_init'][:3])}): checked on its own subjects only")
    return None


# ----------------------------------------------------------------------------------------------- training
def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    return (seed * 1_000_003 + fold * 10_007 + epoch * 101 + 7) % (2**31)


def train_fold(
    args,
    d: Dist,
    dataset: FaceDataset,
    images: np.ndarray,
    parts,
    fold: int,
    fold_dir: str,
    classes: list[str],
    target: str,
    resize: int,
    crop: int,
    channels: int,
    inits: dict,
    vgg16: dict | None,
    extras: dict | None = None,
) -> dict:
    train, val, test = parts
    pos = {id(s): i for i, s in enumerate(dataset.samples)}
    take = lambda ds, a=images: torch.from_numpy(a[[pos[id(s)] for s in ds.samples]])  # noqa: E731
    train_x, val_x, test_x = take(train), take(val), take(test)
    gen_data = None
    if args.generative:  # the neutral frame and pose of each training image, carried through augmentation
        gen_data = {k: take(train, extras[k]) for k in ("neutral", "has_neutral", "pose")}
    train_y, val_y, test_y = (labels_of(p, target, classes) for p in (train, val, test))
    id_subjects = train.subjects if (target == "expression" and train.has_subjects) else []
    if target == "identity":  # identity pre-training: the class is the identity, for either head of the model
        train_id = train_y.clone()
    elif id_subjects:
        train_id = identity_labels(train, id_subjects, args.id_rate, args.seed + fold)
    else:
        train_id = torch.full((len(train),), -1, dtype=torch.int64)
    if args.augment:
        aug, src = augment14(train_x.numpy())
        train_x, train_y, train_id = torch.from_numpy(aug), train_y[src], train_id[src]
        if gen_data is not None:  # the same 14 transforms of each neutral frame, in the same order
            gen_data["neutral"] = torch.from_numpy(augment14(gen_data["neutral"].numpy())[0])
            gen_data["has_neutral"], gen_data["pose"] = gen_data["has_neutral"][src], gen_data["pose"][src]
    if d.main:
        print(
            f"fold {fold}: train {len(train)} images x{14 if args.augment else 1} = {len(train_x)}, "
            f"val {len(val_x)}, test {len(test_x)}; {len(classes)} classes"
            + (f", {len(id_subjects)} training identities" if id_subjects else ""),
            flush=True,
        )

    torch.manual_seed(epoch_seed(args.seed, fold, -1))
    n_ids = len(classes) if target == "identity" else len(id_subjects)
    model, model_kwargs = build_model(args, len(classes), n_ids, d, inits, vgg16)
    model.to(d.device)
    wrapped = WithLoss(model, target)
    if args.generative:
        opts = make_optimizers(args, model.optimizer_groups())
    else:
        opts = make_optimizers(args, {"model": model.parameters()})
    if d.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            wrapped,
            device_ids=[d.device.index] if d.device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_parameters,
        )
    scheds = {k: torch.optim.lr_scheduler.MultiStepLR(o, milestones=args.lr_milestones, gamma=0.1)
              for k, o in opts.items()}
    opt, sched = opts.get("model"), scheds.get("model")
    # checkpoint form: one optimizer as it always was; several (a GAN) as {name: state}
    opt_state = (lambda: opt.state_dict()) if list(opts) == ["model"] else (  # noqa: E731
        lambda: {k: o.state_dict() for k, o in opts.items()})
    sched_state = (lambda: sched.state_dict()) if list(opts) == ["model"] else (  # noqa: E731
        lambda: {k: o.state_dict() for k, o in scheds.items()})

    ckpt_dir = os.path.join(fold_dir, "checkpoints")
    last_path, best_path = os.path.join(ckpt_dir, "last.pt"), os.path.join(ckpt_dir, "best.pt")
    config = {
        "model": args.model,
        "model_kwargs": model_kwargs,
        "classes": classes,
        "target": target,
        "input_size": list(model.input_size),
        "resize": resize,
        "crop": crop,
        "channels": channels,
        "dataset": args.dataset,
        "data": os.path.abspath(args.data),
        "fold": fold,
        "seed": args.seed,
        "stage": args.stage,
        "requested_model": args.requested_model,
        "loss_weights": dict(args.loss_weights),
        # whose faces these weights have seen (with the --init* checkpoints'): checked by later --init* runs
        **subject_metadata(train.subjects, val.subjects, test.subjects, inits),
        "args": {k: v for k, v in vars(args).items() if k != "list_models"},
    }
    start, history, best = 0, [], {"epoch": None, "val_accuracy": -1.0}
    if args.resume and os.path.isfile(last_path):
        ck = load_checkpoint(last_path)
        model.load_state_dict(ck["model"])
        if list(opts) == ["model"]:
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
        else:
            for k in opts:
                opts[k].load_state_dict(ck["optimizer"][k])
                scheds[k].load_state_dict(ck["scheduler"][k])
        start, history, best = ck["epoch"], ck["history"], ck["best"]
        if d.main:
            print(f"fold {fold}: resumed from {last_path} after epoch {start}", flush=True)

    per_rank_batch = max(1, math.ceil(args.batch_size / d.world))
    n_train = len(train_x)
    for epoch in range(start, args.epochs):
        if args.stop_after is not None and epoch >= args.stop_after:
            if d.main:
                print(f"fold {fold}: stopped after epoch {epoch} (--stop-after)", flush=True)
            return {"stopped": True, "epoch": epoch}
        seed = epoch_seed(args.seed, fold, epoch)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global generator
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n_train, generator=gen)
        if args.epoch_images:  # a fresh seeded subset of the (augmented) training set each epoch
            order = order[: args.epoch_images]
        order = shard(order, d)
        crop_gen = torch.Generator().manual_seed(seed + 1 + d.rank)
        steps = math.ceil(len(order) / per_rank_batch)
        model.train()
        sums = torch.zeros(4, dtype=torch.float64)  # loss*n, correct, n, identity-loss*n
        t0 = time.perf_counter()
        bar = None
        if d.main and args.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=steps,
                desc=f"fold {fold} epoch {epoch + 1}/{args.epochs}",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        for step in range(steps):
            idx = order[step * per_rank_batch : (step + 1) * per_rank_batch]
            twin = torch.Generator().set_state(crop_gen.get_state()) if gen_data is not None else None
            x = make_batch(train_x, idx, crop, channels, d.device, crop_gen)
            y, yid = train_y[idx].to(d.device), train_id[idx].to(d.device)
            if gen_data is not None:  # the model steps its own optimizers (e.g. discriminator, then generator)
                has = gen_data["has_neutral"][idx]
                batch = {
                    "x": x,
                    "expression": y,
                    "identity": yid,
                    "pose": gen_data["pose"][idx].to(d.device),
                    # the same crops as x (a generator in the same state); None when no sample names one
                    "neutral": make_batch(gen_data["neutral"], idx, crop, channels, d.device, twin)
                    if bool(has.all()) else None,
                }
                logits, logged = model.training_step(batch, opts)
                loss_value, id_value = logged["total"], logged.get("identity", 0.0)
            else:
                logits, loss, parts_ = wrapped(x, y, yid)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_value, id_value = float(loss.detach()), float(parts_[1])
            n = len(idx)
            sums += torch.tensor(
                [loss_value * n, float((logits.argmax(1) == y).sum()), n, float(id_value) * n],
                dtype=torch.float64,
            )
            if bar is not None:
                rate = sums[2].item() * d.world / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{sums[0].item() / sums[2].item():.3f}",
                    acc=f"{sums[1].item() / sums[2].item():.3f}",
                    img_s=f"{rate:.0f}",
                )
                bar.update()
        if bar is not None:
            bar.close()
        lr_used = next(iter(opts.values())).param_groups[0]["lr"]
        for sc in scheds.values():
            sc.step()
        train_time = time.perf_counter() - t0
        sums = d.all_sum(sums)
        row = {
            "epoch": epoch + 1,
            "lr": lr_used,
            "train_loss": sums[0].item() / sums[2].item(),
            "train_accuracy": sums[1].item() / sums[2].item(),
            "train_identity_loss": sums[3].item() / sums[2].item(),
            "images": int(sums[2].item()),
            "images_per_s": sums[2].item() / max(train_time, 1e-9),
            "epoch_seconds": train_time,
        }
        if len(val_x):
            cm, _ = confusion(model, val_x, val_y, len(classes), crop, channels, d, target=target)
            row["val_accuracy"] = metrics_from_confusion(cm, classes)["accuracy"]
        history.append(row)
        improved = len(val_x) and row["val_accuracy"] > best["val_accuracy"]
        if improved:
            best = {"epoch": epoch + 1, "val_accuracy": row["val_accuracy"]}
        if d.main:
            state = {"model": model.state_dict(), "config": config, "epoch": epoch + 1}
            if improved or not len(val_x):
                atomic_save(state, best_path)
            atomic_save(
                {
                    **state,
                    "optimizer": opt_state(),
                    "scheduler": sched_state(),
                    "history": history,
                    "best": best,
                },
                last_path,
            )
            msg = (
                f"fold {fold} epoch {epoch + 1}/{args.epochs}: loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.4f} {row['images_per_s']:.0f} img/s"
            )
            if "val_accuracy" in row:
                msg += f" | val acc {row['val_accuracy']:.4f}"
            if gen_data is not None and hasattr(model, "save_sample_grid"):
                grid = os.path.join(fold_dir, "samples", f"epoch_{epoch + 1:03d}.png")
                show = torch.arange(min(8, len(test_x)))  # the first test faces (pictures only, no selection)
                neutral = None
                if len(show) and bool(take(test, extras["has_neutral"])[show].all()):
                    neutral = make_batch(take(test, extras["neutral"]), show, crop, channels, d.device, None)
                with torch.no_grad():
                    model.save_sample_grid(make_batch(test_x, show, crop, channels, d.device, None), neutral, grid)
                msg += f" | {grid}"
            print(msg, flush=True)
        d.barrier()

    # the selected model (best validation accuracy, or the last epoch without validation) on the test fold
    selected = load_checkpoint(best_path)
    model.load_state_dict(selected["model"])
    cm, eval_rate = confusion(model, test_x, test_y, len(classes), crop, channels, d, target=target)
    metrics = metrics_from_confusion(cm, classes)
    metrics.update(
        {
            "fold": fold,
            "model": args.model,
            "dataset": args.dataset,
            "selected_epoch": selected["epoch"],
            "selection": "best validation accuracy" if len(val_x) else "last epoch",
            "val_accuracy": best["val_accuracy"] if len(val_x) else None,
            "train_images_per_s": float(np.mean([h["images_per_s"] for h in history])) if history else None,
            "eval_images_per_s": eval_rate * d.world,
            "world_size": d.world,
            "test_subjects": test.subjects,
            "val_subjects": val.subjects,
            "train_subjects": train.subjects,
            "history": history,
        }
    )
    if d.main:
        write_json(metrics, os.path.join(fold_dir, "metrics.json"))
        plot_confusion(
            cm,
            classes,
            os.path.join(fold_dir, "confusion.png"),
            f"{args.model} on {args.dataset}, fold {fold}: {metrics['accuracy']:.2%}",
        )
        print(
            f"fold {fold}: test accuracy {metrics['accuracy']:.4f} (epoch {selected['epoch']}); "
            f"{os.path.join(fold_dir, 'metrics.json')}",
            flush=True,
        )
    return metrics


def summarize(fold_metrics: list[dict], classes: list[str]) -> dict:
    acc = np.array([m["accuracy"] for m in fold_metrics], dtype=np.float64)
    cm = np.sum([np.array(m["confusion_matrix"]) for m in fold_metrics], axis=0)
    return {
        "folds": [m["fold"] for m in fold_metrics],
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=0)),
        "fold_accuracy": acc.tolist(),
        "mean_class_accuracy_mean": float(np.mean([m["mean_class_accuracy"] for m in fold_metrics])),
        "pooled": metrics_from_confusion(torch.from_numpy(cm), classes),
    }


# What every run needs (image decoding, resizing and augmentation, the confusion-matrix figure): checked
# before training, not found missing when a fold ends.
TRAIN_MODULES = ("PIL", "cv2", "matplotlib")


@cli_entry("fer-train", extra="train")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import_plugins(args.imports)
    if args.list_models:
        print("\n".join(list_models()))
        return 0
    require("fer-train", "train", *TRAIN_MODULES)
    if args.workers_threads:
        torch.set_num_threads(args.workers_threads)
    d = init_distributed(args.device)
    random.seed(args.seed)
    np.random.seed(args.seed % (2**32))
    rc = 2
    try:
        rc = _run(args, d)
        return rc
    except (DataError, CheckpointError, UsageError) as e:
        print(f"fer-train: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed(d, completed=rc == 0)  # a rank that failed may not reach the others' barrier


def _run(args, d: Dist) -> int:
    if args.model not in list_models():
        print(
            f"fer-train: unknown model {args.model!r}; registered: {', '.join(list_models()) or 'none'}",
            file=sys.stderr,
        )
        return 2
    target = args.target or ("identity" if args.dataset == "identity" else "expression")
    recipe, rows = resolve_settings(args, target)
    # the model as configured (loss weights), built once before any data is read: a bad --lambdas, a
    # --vgg16-weights file that does not fit, or a checkpoint that leaks are reported in seconds
    try:
        probe = create_model(args.model, num_expressions=7, num_identities=2, **args.loss_weights)
    except (ValueError, TypeError) as e:
        flag = f"--lambdas {args.lambdas}: " if args.lambdas is not None else ""
        raise UsageError(f"{flag}{args.model}: {e}") from None
    channels, side = input_spec(probe)
    args.generative = bool(getattr(probe, "generative", False))  # trains itself: training_step(batch, optimizers)
    args.identity_encoder_init = hasattr(probe, "load_identity_encoder")
    if args.generative and d.enabled:
        raise UsageError(f"{args.model} trains with its own training_step: run it in one process (no torchrun)")
    resize_given = args.resize is not None
    if not resize_given:
        args.resize = recipe.resize if recipe and recipe.input_size == side else (60 if side == 48 else side)
    resize = args.resize
    if resize < side:
        raise UsageError(f"--resize {resize} is smaller than the model's input {side}")
    vgg16 = None
    if args.vgg16_weights is not None:
        if not hasattr(probe, "load_vgg16_weights"):
            raise UsageError(f"--vgg16-weights: {args.model} has no VGG-16 extractors to load it into")
        try:
            # read once, kept as a torchvision-format dict (features.N.*) for every fold's model
            vgg16 = {f"features.{k}": v for k, v in load_vgg16_features(args.vgg16_weights).items()}
            probe.load_vgg16_weights(vgg16)
        except ValueError as e:
            msg = str(e) if str(e).startswith(args.vgg16_weights) else f"{args.vgg16_weights}: {e}"
            raise UsageError(f"--vgg16-weights {msg}") from None
    del probe
    if args.init_identity and not args.init_emotion and not args.identity_encoder_init:
        raise SystemExit("fer-train: --init-identity needs --init-emotion (the emotion network)")
    inits = {}
    for flag, path in (("--init-emotion", args.init_emotion), ("--init-identity", args.init_identity),
                       ("--init", args.init)):
        if path:
            inits[flag] = (path, load_checkpoint(path))
    if d.main:
        print_settings(args, recipe, rows, resize, side, resize_given)
    excluded_test, excluded_val, excluded_from = set(), set(), None
    if args.exclude_subjects_of:
        excluded_test, excluded_val, excluded_from = parse_exclusion(
            args.exclude_subjects_of, args.val_subjects, args.seed
        )

    dataset = open_dataset(args, d)
    if target == "expression" and not dataset.classes:
        print(f"fer-train: {args.dataset} has no expression labels; use --target identity", file=sys.stderr)
        return 2
    excluded = excluded_test | excluded_val
    classes = target_classes(dataset.subset(lambda s: s.subject not in excluded), target)
    dataset, images = load_images(dataset, resize, strict=args.strict_data)
    extras = neutral_frames(dataset, resize) if args.generative else {}
    args.num_poses = max([s.pose for s in dataset.samples if s.pose is not None], default=4) + 1
    if d.main:
        text = report_issues(dataset)
        if text:
            print(text, file=sys.stderr)
        print(
            f"{args.dataset}: {len(dataset)} images, {len(dataset.subjects)} subjects, classes "
            f"{dict(dataset.counts()) if target == 'expression' else len(classes)}",
            flush=True,
        )
    os.makedirs(args.out, exist_ok=True)
    protocol = args.protocol
    if protocol == "auto":
        protocol = "random" if target == "identity" else ("kfold" if dataset.has_subjects else "split")
    if protocol == "kfold":
        folds_path = args.folds_file or os.path.join(args.out, "folds.json")
        if d.main:
            folds, reused = load_or_make_folds(folds_path, dataset, args.folds, args.seed)
            print(f"folds: {'reused' if reused else 'wrote'} {folds_path}", flush=True)
            if os.path.abspath(folds_path) != os.path.abspath(os.path.join(args.out, "folds.json")):
                folds.save(os.path.join(args.out, "folds.json"))
        d.barrier()
        folds = Folds.load(folds_path)
        todo = list(range(folds.k)) if args.fold == "all" else [int(args.fold)]
        if any(not 0 <= f < folds.k for f in todo):
            print(f"fer-train: --fold {args.fold} outside 0..{folds.k - 1}", file=sys.stderr)
            return 2
        parts_of = lambda f: split_fold(dataset, folds, f, args.val_subjects, args.seed)  # noqa: E731
    else:
        if args.fold not in ("0", "all"):
            print(
                f"fer-train: --fold applies to the kfold protocol only (protocol is {protocol})",
                file=sys.stderr,
            )
            return 2
        todo = [0]
        if protocol == "split":
            parts_of = lambda f: split_by_usage(dataset)  # noqa: E731
        else:
            parts_of = lambda f: split_random(dataset, args.val_subjects, 0.1, args.seed)  # noqa: E731
    parts = {f: parts_of(f) for f in todo}
    if excluded:
        keep = lambda s: s.subject not in excluded  # noqa: E731
        parts = {f: tuple(p.subset(keep) for p in ps) for f, ps in parts.items()}
        if d.main:
            gone = [s for s in dataset.samples if s.subject in excluded]
            print(f"--exclude-subjects-of {excluded_from}: left out {len(excluded_test)} test and "
                  f"{len(excluded_val)} validation subjects ({len(gone)} images)", flush=True)
    elif d.main and args.stage == "pretrain" and protocol == "random" and dataset.has_subjects:
        print(f"fer-train: warning: pre-training on all {len(dataset.subjects)} subjects of {args.data}: "
              "fer-train will refuse its checkpoint for fine-tuning any fold whose test subjects are among "
              "them (--exclude-subjects-of FOLDS_FILE:FOLD leaves a fold's out)", file=sys.stderr, flush=True)
    # no --init* checkpoint may have seen the test or validation subjects of a fold it initialises
    warnings = {}
    for f, (_, val, test) in parts.items():
        protected_test, protected_val = set(excluded_test), set(excluded_val)
        where = excluded_from or f"fold {f}"
        if protocol != "random":
            protected_test |= set(test.subjects)
            protected_val |= set(val.subjects)
            where = f"fold {f}" + (f" and {excluded_from}" if excluded_from else "")
        if not (protected_test or protected_val):
            continue
        for flag, (path, ckpt) in inits.items():
            warnings[flag] = check_init(flag, path, ckpt, protected_test, protected_val, where)
    for warning in warnings.values():
        if warning and d.main and not args.allow_unrecorded_init:
            print(warning, file=sys.stderr, flush=True)
    if d.main:
        write_json(
            record(resize, side, channels, args.augment)
            | {"dataset": args.dataset, "protocol": protocol, "frames": args.frames or "dataset default"},
            os.path.join(args.out, "preprocessing.json"),
        )
        write_json({k: v for k, v in vars(args).items()}, os.path.join(args.out, "config.json"))
    results = []
    for f in todo:
        m = train_fold(
            args,
            d,
            dataset,
            images,
            parts[f],
            f,
            os.path.join(args.out, f"fold_{f}"),
            classes,
            target,
            resize,
            side,
            channels,
            inits,
            vgg16,
            extras,
        )
        if m.get("stopped"):
            return 0
        results.append(m)
    if args.fold == "all" and d.main:
        summary = summarize(results, classes)
        write_json(summary, os.path.join(args.out, "summary.json"))
        print(
            f"{len(results)} folds: accuracy {summary['accuracy_mean']:.4f} "
            f"+- {summary['accuracy_std']:.4f}; "
            f"{os.path.join(args.out, 'summary.json')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
