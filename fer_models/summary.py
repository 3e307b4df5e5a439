"""``python -m fer_models.summary``: parameters and multiply-adds per image of every registered model.

Multiply-adds are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the plain-PyTorch copy
(:func:`fer_models.export.to_reference`) in eval mode, batch 1, at the model's ``input_size``: convolutions,
matrix products (including the bilinear outer product) and linear layers, MACs = FLOPs / 2. BatchNorm,
ReLU, pooling and the signed square root are not counted (the usual convention).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from fer_models import create_model, list_models
from fer_models.eifn import EIFN
from fer_models.idennet import DenseNetBC, IDEnNet

__all__ = ["ModelSummary", "count_macs", "summarize", "format_table", "main"]


@dataclass
class ModelSummary:
    name: str
    variant: str
    depth: int
    num_expressions: int | None
    num_identities: int | None
    parameters: int
    finetuned_parameters: int
    macs: int


def count_macs(model: torch.nn.Module, input_size: tuple[int, ...] | None = None) -> int:
    """Multiply-adds of one forward pass of one image (see the module docstring)."""
    ref = model.to_reference().eval() if hasattr(model, "to_reference") else model.eval()
    x = torch.zeros(1, *(input_size or model.input_size))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        ref(x)
    return counter.get_total_flops() // 2


def _describe(model: torch.nn.Module) -> tuple[str, int, int | None, int | None, int]:
    """(variant, depth, expressions, identities, parameters trained in the paper's fine-tuning stage)."""
    total = sum(p.numel() for p in model.parameters())
    if isinstance(model, IDEnNet):
        frozen = sum(p.numel() for g in model.feature_groups for p in g.parameters())
        return model.variant, model.depth, model.num_expressions, model.num_identities, total - frozen
    if isinstance(model, DenseNetBC):
        e = model.num_classes if model.task == "expression" else None
        i = model.num_classes if model.task == "identity" else None
        return f"pre-train ({model.task})", model.depth, e, i, total
    if isinstance(model, EIFN):
        return model.variant, 16, model.num_expressions, model.num_identities, total
    if getattr(model, "generative", False):  # IPD-FER, DE-GAN: what their optimizers train
        trained = sum(p.numel() for ps in model.optimizer_groups().values() for p in ps if p.requires_grad)
        return "generative", 0, getattr(model, "num_expressions", None), getattr(model, "num_identities", None), trained
    return "-", 0, None, None, total


def _order(name: str):
    # IDEnNet by depth then variant (the paper's tables), then the pre-training nets, then EFN, EIFN*, EIFN.
    variants = {"original": 0, "i": 1, "f": 2, "if": 3}
    parts = name.split("_")
    if parts[0] == "idennet":
        return (0, int(parts[-1]), variants[parts[1]], name)
    if parts[0] == "densenet":
        return (1, int(parts[-1]), len(parts), name)
    return (2, {"efn": 0, "eifn_star": 1, "eifn": 2}.get(name, 3), 0, name)


def summarize(pattern: str = "*", **kwargs) -> list[ModelSummary]:
    """A :class:`ModelSummary` per registered model matching ``pattern``, built with ``kwargs``."""
    rows = []
    for name in sorted(list_models(pattern), key=_order):
        model = create_model(name, **kwargs)
        variant, depth, e, i, tuned = _describe(model)
        params = sum(p.numel() for p in model.parameters())
        rows.append(ModelSummary(name, variant, depth, e, i, params, tuned, count_macs(model)))
    return rows


def format_table(rows: list[ModelSummary]) -> str:
    """A Markdown table of ``rows``."""
    head = ["model", "variant", "depth", "E", "I", "parameters", "fine-tuned params", "MACs / image"]
    body = [
        [
            r.name,
            r.variant,
            str(r.depth),
            str(r.num_expressions or "-"),
            str(r.num_identities or "-"),
            f"{r.parameters:,}",
            f"{r.finetuned_parameters:,}",
            f"{r.macs / 1e6:,.1f} M",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    right = {2, 3, 4, 5, 6, 7}

    def line(cells):
        return (
            "| "
            + " | ".join(
                c.rjust(w) if j in right else c.ljust(w)
                for j, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if j in right else ("-" * (w + 2)) for j, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fer_models.summary", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="*", help="glob over registered names (default: all)")
    p.add_argument(
        "--num-expressions",
        type=int,
        default=None,
        help="expression classes (default: each builder's: IDEnNet 6, EIFN 7, emotion DenseNet 8)",
    )
    p.add_argument(
        "--num-identities",
        type=int,
        default=None,
        help="identities (default: each builder's: IDEnNet 80, EIFN 118, identity DenseNet 10575)",
    )
    args = p.parse_args(argv)
    kwargs = {
        k: v
        for k, v in (("num_expressions", args.num_expressions), ("num_identities", args.num_identities))
        if v is not None
    }
    with torch.no_grad():
        rows = summarize(args.models, **kwargs)
    if not rows:
        print(f"no registered model matches {args.models!r}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print(
        "\nE / I: expression / identity classes. 'fine-tuned params': what IDEnNet trains in its second "
        "stage "
        "(feature extraction groups frozen). MACs: convolutions, matrix products and linear layers, batch 1, "
        "eval mode, at each model's input size (IDEnNet 1x48x48, EIFN 1x64x64)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
