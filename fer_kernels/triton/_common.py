"""Host-side helpers shared by the Triton launchers: where kernels launch and which tiles they get.

Both are called through this module (``_common.on_gpu(x)``, ``_common.device_guard(x)``), never imported
by name, so that a tool can replace them here: the ahead-of-time compile check records the launches of CPU
tensors with ``on_gpu`` returning True (GPU tiles), and the tests record the device each launch was guarded
with.
"""

from __future__ import annotations

import contextlib

import torch


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
