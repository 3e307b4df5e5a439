"""Pure-PyTorch oracles: the executable spec of every fer_kernels op.

Tests compare every backend with these, benchmarks use them as a provider, and the ``reference`` backend
runs them. Each family also writes out its backward formulas (``*_backward_reference``).
"""

from fer_kernels.reference.bilinear import bilinear_classifier_reference, bilinear_pool_reference
from fer_kernels.reference.dense_block import DenseLayerParams, dense_block_reference, dense_layer_reference
from fer_kernels.reference.fusion_conv import (
    fusion_conv_backward_reference,
    fusion_conv_reference,
    pool_concat_reference,
    transition_reference,
)

__all__ = [
    "DenseLayerParams",
    "dense_block_reference",
    "dense_layer_reference",
    "fusion_conv_reference",
    "fusion_conv_backward_reference",
    "pool_concat_reference",
    "transition_reference",
    "bilinear_pool_reference",
    "bilinear_classifier_reference",
]
