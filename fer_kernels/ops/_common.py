"""Input validation shared by the ops: messages name the argument and the expected shape."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)
GPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(t, name: str, dim: int | None = None, shape: str = "") -> torch.Tensor:
    """Check that ``t`` is a floating tensor of rank ``dim``; ``shape`` describes the expected shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a Tensor {shape}, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-d tensor {shape}, got shape {tuple(t.shape)}")
    allowed = GPU_DTYPES if t.device.type == "cuda" else FLOAT_DTYPES
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name}: dtype {str(t.dtype).replace('torch.', '')} is not supported on "
                        f"{t.device.type} (expected one of {names})")
    return t


def check_same_device_dtype(ref: torch.Tensor, ref_name: str, **others: torch.Tensor | None) -> None:
    """Check that every tensor in ``others`` has the device and dtype of ``ref``."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")
