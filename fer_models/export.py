"""ONNX export: :class:`ExportWrapper` and :func:`export_onnx`.

The fused modules of :mod:`fer_kernels.nn` run custom ops that ONNX, TorchScript and other tools cannot see
into; :func:`fer_kernels.nn.to_reference` gives a copy of a model built from their plain-PyTorch twins
(:mod:`fer_kernels.nn.plain`) with the same weights, and that copy is what gets exported. The twins and
``to_reference`` are re-exported here for older imports.
"""

from __future__ import annotations

import os

import torch
from torch import nn

import fer_kernels.nn as fnn
from fer_kernels.nn.convert import reference_of
from fer_kernels.nn.plain import *  # noqa: F403  (the twins, re-exported for older imports)
from fer_kernels.nn.plain import __all__ as _TWINS

to_reference = fnn.to_reference

__all__ = [*_TWINS, "PLAIN_LAYERS", "to_reference", "ExportWrapper", "export_onnx"]

#: fused module type -> function giving a module's plain twin (now sharing its sub-modules and parameters).
PLAIN_LAYERS = {t: reference_of for t in (fnn.DenseLayer, fnn.DenseBlock, fnn.Transition, fnn.FusionConv,
                                          fnn.BilinearPool, fnn.BilinearClassifier)}


class ExportWrapper(nn.Module):
    """Returns ``(expression,)`` or ``(expression, identity)`` logits as a tuple, for exporters.

    Args:
        model: a fer_models model (its forward returns an object with ``.expression`` / ``.identity``).
        identity (bool): also return the identity logits (the model must produce them).
    """

    def __init__(self, model: nn.Module, identity: bool = True):
        super().__init__()
        self.model, self.identity = model, identity

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        if self.identity:
            if out.identity is None:
                raise ValueError("ExportWrapper(identity=True): this model produces no identity logits")
            return out.expression, out.identity
        return (out.expression,)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    batch_size: int = 2,
    identity: bool | None = None,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
):
    """Export ``model`` (eval mode, plain-PyTorch copy from :func:`to_reference`) to ONNX.

    Args:
        model: a fer_models model with ``input_size`` (C, H, W).
        path: the ``.onnx`` file to write.
        batch_size (int): batch of the example input used for tracing.
        identity (bool | None): export the identity logits too; None = when the model has an identity head.
        dynamic_batch (bool): make the batch dimension dynamic.
        opset_version (int | None): ONNX opset; None = the exporter's default.

    Returns:
        list[str]: the output names, ``["expression"]`` or ``["expression", "identity"]``. The input is
        named ``image`` with shape ``(batch, C, H, W)``.
    """
    ref = to_reference(model).eval()
    example = torch.randn(batch_size, *model.input_size)
    if identity is None:
        with torch.no_grad():
            identity = ref(example).identity is not None
    wrapped = ExportWrapper(ref, identity).eval()
    names = ["expression", "identity"] if identity else ["expression"]
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    torch.onnx.export(wrapped, (example,), str(path), input_names=["image"], output_names=names, **kwargs)
    return names
