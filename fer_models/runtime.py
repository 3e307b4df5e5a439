"""Pieces shared by fer-train, fer-eval and fer-predict: distributed set-up, batching, evaluation, metrics,
checkpoints and the confusion-matrix figure."""

from __future__ import annotations

import importlib
import json
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fer_models.data.transforms import center_crop, random_crop, to_tensor


# ----------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:  # on the process group's device (nccl reduces CUDA tensors only), result on the CPU
            t = t.to(self.device, copy=True)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t = t.cpu()
        return t


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1): nccl on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        # Before the group exists: DistributedDataParallel's constructor imports torch._dynamo, and with it
        # torch.distributed.nn.functional, whose functions take ``group=group.WORLD`` as a default argument,
        # bound at import. Imported after init_process_group, those defaults kept the group (its gloo worker
        # and transport threads) alive past destroy_process_group, to be torn down with the interpreter, where
        # a rank could abort ("terminate called without an active exception"). Imported here, they bind None.
        for name in ("torch._dynamo", "torch.distributed.nn.functional"):
            importlib.import_module(name)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank, world, local, dev)


def shutdown_distributed(d: Dist, completed: bool = True) -> None:
    """Leave the process group in order, while the interpreter is fully alive: when every rank ``completed``
    the same collectives, a barrier (no rank closes its connections while a peer still uses them), then
    ``destroy_process_group``, which shuts the group down and, with nothing else holding it (see
    :func:`init_distributed`), frees it and joins its threads there and then."""
    if not (d.enabled and dist.is_initialized()):
        return
    try:
        if completed:
            dist.barrier()
    except RuntimeError as exc:  # a peer that died: it is reported by the launcher; leave all the same
        print(f"rank {d.rank}: barrier before leaving the process group failed: {str(exc).splitlines()[0]}",
              file=sys.stderr)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- the model
def import_plugins(modules: list[str]) -> None:
    """Import the models package (so its models register) and any ``--import`` modules."""
    for name in ["fer_models", *modules]:
        importlib.import_module(name)


def target_logits(out, target: str = "expression") -> torch.Tensor:
    """The logits a run is scored on: ``out.expression``, or for ``target='identity'`` ``out.identity`` (an
    identity-task network, e.g. the identity DenseNet) falling back to ``out.expression`` (a one-head network
    trained on identities)."""
    if target == "identity" and getattr(out, "identity", None) is not None:
        return out.identity
    if out.expression is None:
        raise ValueError(
            f"the model gives no expression logits (out.expression is None); target is {target!r}"
        )
    return out.expression


class WithLoss(nn.Module):
    """Runs forward and the model's own loss in one call, so DistributedDataParallel sees every parameter the
    loss uses (e.g. center-loss centres) inside its forward. Returns (scored logits, total loss, [expression,
    identity] loss parts)."""

    def __init__(self, model: nn.Module, target: str = "expression"):
        super().__init__()
        self.model = model
        self.target = target

    def forward(self, x, expression, identity):
        out = self.model(x)
        losses = self.model.loss(out, expression, identity)
        parts = torch.stack([_as_scalar(losses.get(k), x) for k in ("expression", "identity")])
        return target_logits(out, self.target), losses["total"], parts


def _as_scalar(v, like: torch.Tensor) -> torch.Tensor:
    if v is None:
        return like.new_zeros(())
    return v.detach().float().reshape(()) if torch.is_tensor(v) else like.new_tensor(float(v))


def input_spec(model: nn.Module) -> tuple[int, int]:
    """(channels, side) from ``model.input_size``; square inputs only."""
    size = getattr(model, "input_size", None)
    if size is None or len(size) != 3 or size[1] != size[2]:
        raise ValueError(f"model must record input_size = (C, H, H), has {size!r}")
    return int(size[0]), int(size[1])


# ----------------------------------------------------------------------------------------------- batches
def make_batch(
    images: torch.Tensor,
    idx: torch.Tensor,
    crop: int,
    channels: int,
    device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """uint8 images[idx] -> normalised float batch, random-cropped with ``generator`` or centre-cropped."""
    x = to_tensor(images[idx].numpy(), 1)
    x = random_crop(x, crop, generator) if generator is not None else center_crop(x, crop)
    if channels != 1:
        x = x.expand(-1, channels, -1, -1).contiguous()
    return x.to(device, non_blocking=True)


def shard(indices: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's share of ``indices`` (padded by wrapping so every rank gets the same count)."""
    if not d.enabled:
        return indices
    per = math.ceil(len(indices) / d.world)
    total = per * d.world
    if total > len(indices):
        indices = torch.cat([indices, indices[: total - len(indices)]])
    return indices[d.rank : total : d.world]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    crop: int,
    channels: int,
    device,
    batch_size: int = 256,
    target: str = "expression",
) -> torch.Tensor:
    """Logits (:func:`target_logits`) for uint8 ``images (Tensor[N, R, R])`` (centre crop); float32 (N, E) on
    the CPU."""
    was = model.training
    model.eval()
    outs = []
    for i in range(0, len(images), batch_size):
        idx = torch.arange(i, min(len(images), i + batch_size))
        out = model(make_batch(images, idx, crop, channels, device, None))
        outs.append(target_logits(out, target).float().cpu())
    model.train(was)
    return torch.cat(outs) if outs else torch.zeros(0, 0)


@torch.no_grad()
def confusion(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    crop: int,
    channels: int,
    d: Dist,
    batch_size: int = 256,
    target: str = "expression",
) -> tuple[torch.Tensor, float]:
    """Confusion matrix (rows: true class, columns: predicted), summed over ranks; and images/s."""
    if d.enabled:
        model = getattr(model, "module", model)
        for b in model.buffers():  # every rank evaluates with rank 0's BatchNorm statistics
            dist.broadcast(b, 0)
    mine = torch.arange(d.rank, len(images), d.world)
    t = time.perf_counter()
    logits = predict_logits(model, images[mine], crop, channels, d.device, batch_size, target)
    rate = len(mine) / max(time.perf_counter() - t, 1e-9)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    if len(mine):
        pred = logits.argmax(1)
        cm.index_put_((labels[mine], pred), torch.ones_like(pred), accumulate=True)
    return d.all_sum(cm), rate


def metrics_from_confusion(cm: torch.Tensor, classes: list[str]) -> dict:
    """accuracy, per-class accuracy (None for classes absent from the data), mean class accuracy, matrix."""
    cm = cm.to(torch.int64)
    total = int(cm.sum())
    correct = int(cm.diag().sum())
    per_class = {}
    for i, name in enumerate(classes):
        n = int(cm[i].sum())
        per_class[name] = (int(cm[i, i]) / n) if n else None
    present = [v for v in per_class.values() if v is not None]
    return {
        "accuracy": correct / total if total else None,
        "mean_class_accuracy": float(np.mean(present)) if present else None,
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
        "num_samples": total,
    }


def plot_confusion(cm, classes: list[str], path: str, title: str = "") -> str:
    """Write a row-normalised confusion matrix with counts to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.7 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}\n{norm[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- files
def atomic_save(obj, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # unique: parallel runs may write the same file
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # unique: parallel runs may write the same file
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, truncated, of another kind, or carries code."""


def load_checkpoint(path: str) -> dict:
    """A fer-train checkpoint, loaded as data (``torch.load(weights_only=True)``): a file whose pickle would
    build anything but tensors and plain containers is refused without running it.

    Raises:
        CheckpointError: one line naming the file and what is wrong with it.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: not plain data (weights_only load: {first_line(exc)})") from None
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({type(exc).__name__}: "
                              f"{first_line(exc)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a fer-train checkpoint (needs 'model' and 'config')")
    return ckpt


def subject_metadata(
    train: list[str], val: list[str], test: list[str], inits: dict[str, tuple[str, dict]] | None = None
) -> dict:
    """The subject record a checkpoint's ``config`` carries: whose faces its weights have seen.

    ``train_subjects`` are the subjects this run trained on *and* those every ``--init*`` checkpoint records
    (its weights carry them); ``val_subjects`` likewise for model selection; ``test_subjects`` this run's
    test subjects. ``unrecorded_init`` lists the initialisations (here or further back) that had no record,
    so the record is incomplete when it is not empty.

    Args:
        train, val, test (list[str]): this run's subjects of each split.
        inits (dict): ``{flag: (path, checkpoint)}`` of the checkpoints the model was initialised from.
    """
    seen_train, seen_val, unrecorded = set(train), set(val), []
    for _flag, (path, ckpt) in (inits or {}).items():
        rec = recorded_subjects(ckpt)
        if rec is None:
            unrecorded.append(os.path.abspath(path))
            continue
        seen_train |= rec["train"]
        seen_val |= rec["val"]
        unrecorded += rec["unrecorded_init"]
    return {
        "train_subjects": sorted(seen_train),
        "val_subjects": sorted(seen_val),
        "test_subjects": sorted(test),
        "init_checkpoints": {flag: os.path.abspath(path) for flag, (path, _) in (inits or {}).items()},
        "unrecorded_init": sorted(set(unrecorded)),
    }


def recorded_subjects(ckpt: dict) -> dict | None:
    """What :func:`subject_metadata` recorded in a checkpoint: ``{"train": set, "val": set, "unrecorded_init":
    list}``, or None for a checkpoint made before fer-train recorded subjects."""
    cfg = ckpt.get("config") or {}
    if not isinstance(cfg, dict) or "train_subjects" not in cfg:
        return None
    return {
        "train": set(map(str, cfg["train_subjects"])),
        "val": set(map(str, cfg.get("val_subjects") or [])),
        "unrecorded_init": list(cfg.get("unrecorded_init") or []),
    }


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_from_checkpoint(ckpt: dict, path: str = "checkpoint") -> nn.Module:
    """Rebuild the registered model a checkpoint was made from and load its weights.

    Raises:
        CheckpointError: one line naming ``path`` when the config names no model, a model the registry does not
            know, or weights that do not fit it.
    """
    from fer_models.registry import create_model

    cfg = ckpt["config"]
    if not isinstance(cfg, dict) or "model" not in cfg or "model_kwargs" not in cfg:
        raise CheckpointError(f"{path}: not a fer-train checkpoint (its config names no model)")
    try:
        model = create_model(cfg["model"], **cfg["model_kwargs"])
    except ValueError as exc:  # a model name the registry does not know
        raise CheckpointError(f"{path}: {first_line(exc)} (--import the module that registers it)") from None
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, KeyError) as exc:  # weights that do not fit the model
        raise CheckpointError(f"{path}: its weights do not fit model {cfg['model']!r} ({first_line(exc)})"
                              ) from None
    return model
