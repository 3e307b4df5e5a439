"""fer_kernels: fused PyTorch ops for identity-aware facial-expression recognition.

``import fer_kernels`` always works; :func:`available_backends` says which backends this install has.
"""

from fer_kernels import _extension  # noqa: F401  (loads fer_kernels._C when it was built)
from fer_kernels import nn, reference  # noqa: F401
from fer_kernels.backends import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    cpu_isa,
    get_backend,
    set_backend,
    use_backend,
)
from fer_kernels.ops import bilinear_classifier, bilinear_pool, dense_block, fusion_conv, transition

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "cpu_isa",
    "get_backend",
    "set_backend",
    "use_backend",
    "dense_block",
    "fusion_conv",
    "transition",
    "bilinear_pool",
    "bilinear_classifier",
    "nn",
    "reference",
]
