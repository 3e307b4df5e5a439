"""Loads the compiled library ``fer_kernels._C`` in one place.

``import fer_kernels`` never fails because of it: if the library is missing or broken, the reason is kept
and reported by :func:`fer_kernels.available_backends`, and the reference backend still works.
Set ``FER_KERNELS_DISABLE_C=1`` to run as if the library were not built.
"""

from __future__ import annotations

import os

import torch

_C = None
_C_ERROR: str | None = None

if os.environ.get("FER_KERNELS_DISABLE_C", "0") == "1":
    _C_ERROR = "disabled by FER_KERNELS_DISABLE_C=1"
else:
    try:
        from fer_kernels import _C  # noqa: F401  (loading it registers the ops)
    except Exception as exc:  # ImportError, OSError (undefined symbol), ...: all mean "no C++ backend"
        _C = None
        _C_ERROR = (
            f"fer_kernels._C could not be loaded ({type(exc).__name__}: {exc}); build it with "
            "`pip install --no-build-isolation -e .` or `make build`"
        )


def cpp_loaded() -> bool:
    """True when the compiled library is loaded and its ops are registered."""
    return _C is not None


def cpp_error() -> str | None:
    """Why the compiled library is not loaded, or None when it is."""
    return _C_ERROR


# Read once at import: a str-returning op cannot be traced by torch.compile, and resolve() runs inside
# compiled code.
_BUILD_INFO: str | None = torch.ops.fer_kernels._build_info() if _C is not None else None


def cuda_built() -> bool:
    """True when the compiled library contains the CUDA kernels."""
    return _BUILD_INFO == "cpu+cuda"


def has_op(name: str) -> bool:
    """True when ``torch.ops.fer_kernels.<name>`` is registered by the compiled library."""
    return cpp_loaded() and hasattr(torch.ops.fer_kernels, name)
