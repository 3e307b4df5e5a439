"""Helpers shared by the Triton kernels and their launchers.

Host side: where kernels launch and which tiles they get. ``on_gpu`` and ``device_guard`` are called through
this module (``_common.on_gpu(x)``, ``_common.device_guard(x)``), never imported by name, so that a tool can
replace them here: the ahead-of-time compile check records the launches of CPU tensors with ``on_gpu``
returning True (GPU tiles), and the tests record the device each launch was guarded with.

Device side (``@triton.jit``, inlined into the kernels that call them): tile indexing of 1-d grids and
masked 2-d tile loads and stores.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


def on_gpu(t: torch.Tensor) -> bool:
    """True when kernels launched on ``t`` are compiled for a GPU (``t`` is a CUDA tensor).

    CPU tensors run under the Triton interpreter (``TRITON_INTERPRET=1``), where every program is a loop of
    numpy calls: launchers give them small tiles. Tile sizes follow the tensors, not
    ``torch.cuda.is_available()`` (CPU tensors on a CUDA host are still interpreted).
    """
    return t.is_cuda


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context for launching kernels on ``t``: the current CUDA device set to ``t.device``.

    Triton launches on the current device, whatever the pointers' device; tensors on ``cuda:1`` while the
    current device is 0 must launch under this guard. A null context for CPU (interpreted) tensors.
    """
    if t.is_cuda:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@triton.jit
def unravel3(pid, n0, n1):
    """(i0, i1, i2) of program ``pid`` of a 1-d grid over (i2, i1 < n1, i0 < n0), i0 fastest."""
    return pid % n0, (pid // n0) % n1, (pid // n0) // n1


@triton.jit
def span(start, BLOCK: tl.constexpr, limit):
    """(offs, mask): the BLOCK indices from ``start`` on, and which of them are below ``limit``."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < limit


@triton.jit
def load_2d(ptr, rows, row_mask, cols, col_mask):
    """Tile ``ptr[rows[:, None] + cols[None, :]]`` (element offsets), 0 where a row or column is masked."""
    return tl.load(ptr + rows[:, None] + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0)


@triton.jit
def store_2d(ptr, rows, row_mask, cols, col_mask, val):
    """Store ``val`` (converted to the pointee dtype) at ``ptr[rows[:, None] + cols[None, :]]``, masked."""
    tl.store(ptr + rows[:, None] + cols[None, :], val.to(ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])
