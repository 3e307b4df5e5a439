"""The custom ops: schema, backend choice, autograd, fake (meta) impls and input checks, one module per family."""

import importlib

from fer_kernels.ops.bilinear import bilinear_classifier, bilinear_pool
from fer_kernels.ops.dense_block import dense_block
from fer_kernels.ops.fusion_conv import fusion_conv, transition

__all__ = ["dense_block", "fusion_conv", "transition", "bilinear_pool", "bilinear_classifier",
           "FAMILIES", "impls", "demo_cases"]

# op family stem -> module; each module has IMPLS (backend -> callable of its main op) and demo_case().
FAMILIES = ("dense_block", "fusion_conv", "bilinear")


def _module(family: str):
    return importlib.import_module(f"fer_kernels.ops.{family}")


def impls(family: str) -> dict:
    """The backends that implement ``family``'s demo op (backend name -> callable)."""
    return _module(family).IMPLS


def demo_cases() -> dict:
    """family -> demo_case factory, for ``python -m fer_kernels``."""
    return {f: _module(f).demo_case for f in FAMILIES}
