"""Drop-in ``nn.Module``s built on the fused ops, and :func:`convert` for plain PyTorch models."""

from fer_kernels.nn.convert import convert, register_converter
from fer_kernels.nn.fusion_conv import FusionConv

__all__ = ["convert", "register_converter", "FusionConv"]
