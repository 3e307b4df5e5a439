"""Backend choice, in one place.

Resolution order (CONVENTIONS rule 6): an explicit ``backend=`` argument, then the innermost
:func:`use_backend` context, then :func:`set_backend`, then the ``FER_KERNELS_BACKEND`` environment
variable, then ``"auto"``. ``auto`` picks C++ on CPU and Triton (else CUDA C++) on GPU, and falls back to
the reference where a fused kernel is missing (logged once at debug level). Any other name is a request:
if it cannot run the given tensors, :class:`BackendUnavailableError` says which backend and why.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import torch

from fer_kernels import _extension

logger = logging.getLogger("fer_kernels")

BACKENDS = ("auto", "reference", "cpp", "triton", "cuda")
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("fer_kernels_backend", default=None)
_global: str | None = None
_fallbacks_logged: set[tuple[str, str]] = set()


class BackendUnavailableError(RuntimeError):
    """A backend was requested that cannot run the given inputs here."""


class BackendStatus(NamedTuple):
    available: bool
    reason: str

    def __repr__(self) -> str:
        return f"{'yes' if self.available else 'no'} ({self.reason})"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name.lower()


def set_backend(name: str) -> None:
    """Set the process-wide default backend (``auto``, ``reference``, ``cpp``, ``triton`` or ``cuda``)."""
    global _global
    _global = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager: run the fer_kernels ops inside the block on backend ``name``."""
    token = _context.set(_check_name(name))
    try:
        yield name
    finally:
        _context.reset(token)


def get_backend() -> str:
    """The backend name in force here, before per-op resolution (may be ``auto``)."""
    name = _context.get() or _global
    if name is None:
        env = os.environ.get("FER_KERNELS_BACKEND")
        if env:
            try:
                name = _check_name(env)
            except ValueError as exc:
                raise ValueError(f"FER_KERNELS_BACKEND: {exc}") from None
    return name or "auto"


def triton_interpret() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Looked up once: importlib's finder cannot be traced by torch.compile, and resolve() runs inside compiled code.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_status() -> BackendStatus:
    if not _TRITON_INSTALLED:
        return BackendStatus(False, "the triton package is not installed")
    if torch.cuda.is_available():
        return BackendStatus(True, "triton on CUDA devices")
    if triton_interpret():
        return BackendStatus(True, "triton interpreter on CPU tensors (TRITON_INTERPRET=1); for tests, slow")
    return BackendStatus(False, "no CUDA device, and TRITON_INTERPRET=1 is not set")


def cpu_isa() -> str | None:
    """The instruction set of the C++ CPU kernels that run: ``"scalar"``, ``"avx2"`` or ``"avx512"``; None when
    the compiled library is not loaded.

    Every kernel is built for each ISA the architecture has (no ``-march=native``: one build runs on every CPU) and
    the best this CPU supports is chosen at the first call. ``FER_KERNELS_ISA=scalar|avx2|avx512`` forces one;
    a forced ISA the CPU lacks raises a RuntimeError that names the missing features.
    """
    if not _extension.cpp_loaded():
        return None
    return torch.ops.fer_kernels._cpu_isa()


def cpu_isas() -> list[str]:
    """The ISAs of the C++ CPU kernels this CPU can run, baseline first (empty without the compiled library)."""
    return list(torch.ops.fer_kernels._cpu_isas()) if _extension.cpp_loaded() else []


@contextlib.contextmanager
def use_cpu_isa(name: str) -> Iterator[str]:
    """Runs the C++ CPU kernels with ISA ``name`` (``scalar``, ``avx2``, ``avx512`` or ``auto``) inside the block,
    then restores the previous one. Process-wide, not per thread: for tests and benchmarks."""
    if not _extension.cpp_loaded():
        raise BackendUnavailableError(f"use_cpu_isa({name!r}): {_extension.cpp_error() or 'fer_kernels._C not built'}")
    previous = torch.ops.fer_kernels._set_cpu_isa(name)
    try:
        yield torch.ops.fer_kernels._cpu_isa()
    finally:
        torch.ops.fer_kernels._set_cpu_isa(previous)


def available_backends() -> dict[str, BackendStatus]:
    """Each backend with whether it can run in this install and, if not, why (for the C++ backend, with the
    instruction set its CPU kernels run)."""
    statuses = _statuses()
    if statuses["cpp"].available:
        try:
            isa = cpu_isa()
        except RuntimeError as exc:  # FER_KERNELS_ISA names an ISA this CPU lacks, or no ISA at all
            statuses["cpp"] = BackendStatus(False, str(exc).splitlines()[0])
        else:
            statuses["cpp"] = BackendStatus(True, f"{statuses['cpp'].reason}, ISA {isa} (this CPU runs: "
                                                  f"{', '.join(cpu_isas())})")
    return statuses


def _statuses() -> dict[str, BackendStatus]:
    # What resolve() asks on every op call: no op calls here (a str-returning op breaks torch.compile graphs).
    cpp = (
        BackendStatus(True, "compiled C++ kernels for CPU tensors")
        if _extension.cpp_loaded()
        else BackendStatus(False, _extension.cpp_error() or "not built")
    )
    if not _extension.cpp_loaded():
        cuda = BackendStatus(False, _extension.cpp_error() or "not built")
    elif not _extension.cuda_built():
        cuda = BackendStatus(False, "fer_kernels._C was built without CUDA (torch without CUDA, or nvcc not found)")
    elif not torch.cuda.is_available():
        cuda = BackendStatus(False, "built with CUDA but no CUDA device is visible")
    else:
        cuda = BackendStatus(True, "compiled CUDA kernels")
    return {
        "reference": BackendStatus(True, "pure PyTorch, always available"),
        "cpp": cpp,
        "triton": _triton_status(),
        "cuda": cuda,
    }


def _device_type(tensors: Iterable[torch.Tensor | None]) -> str:
    types = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if len(types) > 1:
        raise ValueError(f"all tensors must be on one device type, got {sorted(types)}")
    return types.pop() if types else "cpu"


def why_not(name: str, device: str) -> str | None:
    """Why backend ``name`` cannot run tensors on ``device`` here, or None if it can.

    On a CUDA host Triton compiles its kernels for the GPU, so CPU tensors run through Triton only where
    ``TRITON_INTERPRET=1`` was set before triton was imported (one process cannot do both).
    """
    status = _statuses()[name]
    if name == "reference":
        return None
    if name == "cpp":
        if not status.available:
            return status.reason
        return None if device == "cpu" else f"it runs CPU tensors only, got {device} tensors"
    if name == "cuda":
        if device != "cuda":
            return f"it runs CUDA tensors only, got {device} tensors"
        return None if status.available else status.reason
    if name == "triton":
        if not status.available:
            return status.reason
        if device == "cuda":
            return None
        if device == "cpu" and triton_interpret():
            return None
        if device == "cpu" and torch.cuda.is_available():
            return ("it compiles its kernels for the CUDA device here, and runs CPU tensors only under "
                    "TRITON_INTERPRET=1 (set before triton is imported); got cpu tensors")
        return f"it runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device} tensors"
    raise AssertionError(name)


def resolve(op: str, impls: Mapping[str, object], tensors: Iterable[torch.Tensor | None],
            backend: str | None = None) -> str:
    """Pick the backend that runs ``op`` on ``tensors``.

    Args:
        op: the op's name, for messages.
        impls: the backends this op implements (keys among ``reference``, ``cpp``, ``triton``, ``cuda``).
        tensors: the op's tensor inputs (their device decides what ``auto`` picks).
        backend: an explicit request; None uses the context / global / environment choice.

    Raises:
        BackendUnavailableError: a requested backend cannot run these tensors, or does not implement ``op``.
    """
    name = _check_name(backend) if backend is not None else get_backend()
    device = _device_type(tensors)
    if name == "auto":
        order = ("triton", "cuda") if device == "cuda" else ("cpp",)
        for cand in order:
            if cand in impls and why_not(cand, device) is None:
                return cand
        key = (op, device)
        if key not in _fallbacks_logged:
            _fallbacks_logged.add(key)
            logger.debug("fer_kernels: no fused %s kernel for %s tensors here; using the reference", op, device)
        return "reference"
    why = why_not(name, device)
    if why is not None:
        raise BackendUnavailableError(f"fer_kernels backend '{name}' cannot run {op}: {why}")
    if name not in impls:
        have = ", ".join(sorted(impls))
        raise BackendUnavailableError(
            f"fer_kernels backend '{name}' cannot run {op}: it has no '{name}' implementation (it has: {have})"
        )
    return name
