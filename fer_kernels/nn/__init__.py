"""Drop-in ``nn.Module``s built on the fused ops, their plain-PyTorch twins (:mod:`fer_kernels.nn.plain`),
and :func:`convert` / :func:`to_reference` to swap one for the other in a model."""

from fer_kernels.nn.bilinear import BilinearClassifier, BilinearPool
from fer_kernels.nn.convert import convert, register_converter, register_reference, to_reference
from fer_kernels.nn.dense_block import DenseBlock, DenseLayer
from fer_kernels.nn.fusion_conv import FusionConv, Transition
from fer_kernels.nn.plain import (
    BilinearClassifierPlain,
    BilinearPoolPlain,
    DenseBlockPlain,
    DenseLayerPlain,
    FusionConvPlain,
    TransitionPlain,
)

__all__ = ["convert", "to_reference", "register_converter", "register_reference",
           "DenseLayer", "DenseBlock", "FusionConv", "Transition", "BilinearPool", "BilinearClassifier",
           "DenseLayerPlain", "DenseBlockPlain", "TransitionPlain", "FusionConvPlain", "BilinearPoolPlain",
           "BilinearClassifierPlain"]
