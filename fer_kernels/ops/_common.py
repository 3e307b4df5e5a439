"""Input validation and the autocast rule shared by the ops: messages name the argument and the expected shape."""

from __future__ import annotations

import contextlib

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)
GPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOW_PRECISION = (torch.float16, torch.bfloat16)


# ---- autocast ----
# The rule every fused op follows under torch.autocast (one rule, all backends, so backends agree):
# - CUDA: the GEMM operands (activations, convolution / classifier weights and biases) run in the autocast dtype
#   (float16 / bfloat16; the Triton kernels accumulate in float32), as autocast runs conv2d and linear. BatchNorm
#   parameters and running statistics keep their dtype (float32), as cuDNN's batch norm does under autocast.
# - CPU: the C++ kernels compute in float32 (they have no bfloat16 path), so low-precision activations are cast
#   up to float32 and the output is float32, as autocast does for its float32-list ops.
# - float64 inputs are left alone (autocast never touches float64), and so is every op outside autocast.
# The op itself then runs with autocast off, so the reference backend computes what the fused ones compute.


def autocast_dtype(*tensors: torch.Tensor | None) -> torch.dtype | None:
    """The dtype a fused op computes in under ``torch.autocast`` for these inputs, or None when autocast does
    not apply (off for their device, a float64 input, or no tensor)."""
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not ts:
        return None
    device = ts[0].device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    if any(t.dtype == torch.float64 for t in ts):
        return None
    return torch.get_autocast_dtype(device) if device == "cuda" else torch.float32


def cast(t, dtype: torch.dtype | None):
    """``t`` in ``dtype`` when it is a float16/bfloat16/float32 tensor and ``dtype`` is given, as autocast casts
    (float64 stays, so a mismatch is reported by the checks; autograd flows through the cast)."""
    if (dtype is None or not isinstance(t, torch.Tensor) or t.dtype not in (*LOW_PRECISION, torch.float32)
            or t.dtype == dtype):
        return t
    return t.to(dtype)


def autocast_off(dtype: torch.dtype | None, *tensors: torch.Tensor | None):
    """A context with autocast disabled for the inputs' device when :func:`autocast_dtype` applied, else nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    device = next(t for t in tensors if isinstance(t, torch.Tensor)).device.type
    return torch.autocast(device, enabled=False)


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


def check_same_device_dtype(ref: torch.Tensor, ref_name: str, *, norm: bool = False,
                            **others: torch.Tensor | None) -> None:
    """Check that every tensor in ``others`` has the device and dtype of ``ref``. ``norm``: they are BatchNorm
    parameters or running statistics, which may also be float32 when ``ref`` is float16/bfloat16 (mixed
    precision, as under autocast)."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
        if t.dtype != ref.dtype and not (norm and ref.dtype in LOW_PRECISION and t.dtype == torch.float32):
            allowed = f"{ref.dtype} or torch.float32" if norm and ref.dtype in LOW_PRECISION else f"{ref.dtype}"
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype} (expected {allowed})")


# ---- registration: one autograd formula per op, shared by its C++ (CPU and CUDA) and Triton kernels ----
# Each family writes ``make_autograd(backward_op) -> (setup_context, backward)`` once; the helpers below attach
# it to the C++ op ``fer_kernels::<name>`` (backward ``_<name>_backward``) and to the Triton op
# ``fer_kernels::<name>_triton`` (backward ``_<name>_triton_backward``), whose launchers come from
# ``fer_kernels.triton.<family>``.


def register_cpp(name: str, make_autograd, fake, backward_fake):
    """Fake kernels and autograd for the C++ op ``fer_kernels::<name>``; returns the op."""
    torch.library.register_fake(f"fer_kernels::{name}")(fake)
    torch.library.register_fake(f"fer_kernels::_{name}_backward")(backward_fake)
    setup, backward = make_autograd(getattr(torch.ops.fer_kernels, f"_{name}_backward"))
    torch.library.register_autograd(f"fer_kernels::{name}", backward, setup_context=setup)
    return getattr(torch.ops.fer_kernels, name)


def register_triton(kernels, **families) -> tuple:
    """For each ``name=make_autograd``: the launchers ``kernels.<name>`` / ``kernels.<name>_backward`` (module
    ``fer_kernels.triton.<family>``) as ops ``fer_kernels::<name>_triton`` and ``_<name>_triton_backward``
    (``torch.library.triton_op``, so ``torch.compile`` traces the kernels; their fake kernels come from running the
    launchers on fake tensors), with the op's autograd. Returns the forward ops in order. Call once."""
    ops = []
    for name, make_autograd in families.items():
        fwd = torch.library.triton_op(f"fer_kernels::{name}_triton", mutates_args=())(getattr(kernels, name))
        bwd = torch.library.triton_op(f"fer_kernels::_{name}_triton_backward", mutates_args=())(
            getattr(kernels, f"{name}_backward"))
        setup, grad = make_autograd(bwd)
        fwd.register_autograd(grad, setup_context=setup)
        ops.append(fwd)
    return tuple(ops)


def update_running(running_mean, running_var, mean, var, count: int, momentum: float) -> None:
    """``F.batch_norm``'s running-buffer update from a fused op's batch statistics:
    ``r = (1 - momentum) * r + momentum * stat``, with the unbiased variance. None buffers are skipped."""
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * (count / max(count - 1, 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
