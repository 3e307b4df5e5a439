"""Pure-PyTorch oracles: the executable spec of every fer_kernels op.

Tests compare every backend with these, benchmarks use them as a provider, and the ``reference`` backend
runs them. Each family also writes out its backward formulas (``*_backward_reference``).
"""

from fer_kernels.reference.fusion_conv import (
    fusion_conv_backward_reference,
    fusion_conv_reference,
    pool_concat_reference,
)

__all__ = [
    "fusion_conv_reference",
    "fusion_conv_backward_reference",
    "pool_concat_reference",
]
