"""The custom ops: schema, backend choice, autograd, fake (meta) impls and input checks, one module per family."""

import importlib

from fer_kernels.ops.fusion_conv import fusion_conv

__all__ = ["fusion_conv", "FAMILIES", "impls", "demo_cases"]

# op family stem -> module; each module has IMPLS (backend -> callable) and demo_case().
FAMILIES = ("fusion_conv",)


def _module(family: str):
    return importlib.import_module(f"fer_kernels.ops.{family}")


def impls(family: str) -> dict:
    """The backends that implement ``family`` (backend name -> callable)."""
    return _module(family).IMPLS


def demo_cases() -> dict:
    """family -> demo_case factory, for ``python -m fer_kernels``."""
    return {f: _module(f).demo_case for f in FAMILIES}
