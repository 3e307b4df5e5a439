"""Drop-in ``nn.Module``s built on the fused ops, and :func:`convert` for plain PyTorch models."""

from fer_kernels.nn.bilinear import BilinearClassifier, BilinearPool
from fer_kernels.nn.convert import convert, register_converter
from fer_kernels.nn.dense_block import DenseBlock, DenseLayer
from fer_kernels.nn.fusion_conv import FusionConv, Transition

__all__ = ["convert", "register_converter", "DenseLayer", "DenseBlock", "FusionConv", "Transition",
           "BilinearPool", "BilinearClassifier"]
