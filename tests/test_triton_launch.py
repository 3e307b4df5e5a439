"""Triton launches: every kernel runs under a device guard for its inputs' device; tiles follow the tensors.

The CPU tests run the public ops with ``backend="triton"`` under the interpreter, with
``fer_kernels.triton._common.device_guard`` replaced by a recorder and every kernel's ``run`` wrapped, so they
see each launch and the guard (if any) it happened in, for the forward and the backward op of every family.
The two-GPU test runs each op on ``cuda:1`` while device 0 is current and compares with the reference.
"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch

import fer_kernels as fk
from tests.harness import assert_close, backend_available

_TRITON = fk.available_backends()["triton"]
_CPU_OK, _CPU_WHY = backend_available("triton", "cpu")
requires_interpreter = pytest.mark.skipif(
    not (_TRITON.available and _CPU_OK), reason=f"backend triton on CPU tensors: {_CPU_WHY or _TRITON.reason}"
)
KERNEL_MODULES = ("fer_kernels.triton.dense_block", "fer_kernels.triton.fusion_conv",
                  "fer_kernels.triton.bilinear")


# ---- the cases: (inputs that get gradients, forward) on a device, tiny shapes ----


def _dense_block(device, dtype=torch.float32):
    block = fk.nn.DenseBlock(2, 3, growth_rate=4, bn_size=2).to(device, dtype)
    x = torch.randn(2, 3, 4, 5, device=device, dtype=dtype, requires_grad=True)
    return [x, *block.parameters()], lambda backend: block(x, backend=backend)


def _fusion_conv(device, dtype=torch.float32):
    xs = [torch.randn(2, c, 5, 4, device=device, dtype=dtype, requires_grad=True) for c in (3, 2)]
    w = torch.randn(4, 5, 1, 1, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(4, device=device, dtype=dtype, requires_grad=True)
    return [*xs, w, b], lambda backend: fk.fusion_conv(xs, w, b, 2, backend=backend)


def _transition(device, dtype=torch.float32):
    x = torch.randn(2, 3, 4, 6, device=device, dtype=dtype, requires_grad=True)
    g = torch.rand(3, device=device, dtype=dtype).add_(0.5).requires_grad_()
    beta = torch.randn(3, device=device, dtype=dtype, requires_grad=True)
    cw = torch.randn(4, 3, 1, 1, device=device, dtype=dtype, requires_grad=True)

    def run(backend):
        rm, rv = torch.zeros(3, device=device, dtype=dtype), torch.ones(3, device=device, dtype=dtype)
        return fk.transition(x, g, beta, rm, rv, cw, None, True, 0.1, 1e-5, 2, backend=backend)

    return [x, g, beta, cw], run


def _bilinear_pool(device, dtype=torch.float32):
    a = torch.randn(2, 3, 2, 3, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(2, 4, 2, 3, device=device, dtype=dtype, requires_grad=True)
    return [a, b], lambda backend: fk.bilinear_pool(a, b, backend=backend)


def _bilinear_classifier(device, dtype=torch.float32):
    a = torch.randn(2, 3, 2, 3, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(2, 4, 2, 3, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(5, 12, device=device, dtype=dtype, requires_grad=True)
    bias = torch.randn(5, device=device, dtype=dtype, requires_grad=True)
    return [a, b, w, bias], lambda backend: fk.bilinear_classifier(a, b, w, bias, backend=backend)


CASES = {
    "dense_block": _dense_block,
    "fusion_conv": _fusion_conv,
    "transition": _transition,
    "bilinear_pool": _bilinear_pool,
    "bilinear_classifier": _bilinear_classifier,
}


def _kernels():
    """Every Triton kernel of the project (a JITFunction, or an InterpretedFunction under the interpreter)."""
    from triton.runtime.jit import KernelInterface

    found = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        found += [obj for key, obj in vars(module).items()
                  if key.endswith("_kernel") and isinstance(obj, KernelInterface)]
    return found


class _LaunchLog:
    """Replaces ``_common.device_guard`` (delegating to the real one) and wraps each kernel's ``run``."""

    def __init__(self, monkeypatch, execute=True):
        from fer_kernels.triton import _common

        self.guards, self.launches, self._active = [], [], []
        real_guard = _common.device_guard

        @contextlib.contextmanager
        def guard(t):
            self.guards.append(t.device)
            self._active.append(t.device)
            try:
                with real_guard(t):
                    yield
            finally:
                self._active.pop()

        monkeypatch.setattr(_common, "device_guard", guard)
        for kernel in _kernels():
            monkeypatch.setattr(kernel, "run", self._wrap(kernel, kernel.run, execute))

    def _wrap(self, kernel, run, execute):
        def launch(*args, **kwargs):
            devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
            guarded = self._active[-1] if self._active else None
            self.launches.append((kernel.__name__, guarded, devices, kwargs))
            return run(*args, **kwargs) if execute else None

        return launch

    def take(self):
        out = self.guards, self.launches
        self.guards, self.launches = [], []
        return out


@requires_interpreter
@pytest.mark.parametrize("case", list(CASES))
def test_every_launch_runs_under_the_inputs_device_guard(case, monkeypatch):
    log = _LaunchLog(monkeypatch)
    inputs, forward = CASES[case]("cpu")
    device = inputs[0].device
    y = forward("triton")
    fwd = log.take()
    torch.autograd.grad(y, inputs, torch.randn_like(y))
    bwd = log.take()
    for phase, (guards, launches) in (("forward", fwd), ("backward", bwd)):
        assert guards and launches, f"{case} {phase}: no guard ({guards}) or no Triton launch ({launches})"
        assert all(g == device for g in guards), f"{case} {phase}: guards for {guards}, inputs on {device}"
        for name, guarded, devices, _ in launches:
            assert guarded == device, f"{case} {phase}: {name} launched outside a device guard"
            assert devices == {device}, f"{case} {phase}: {name} got tensors on {devices}"


@requires_interpreter
def test_tiles_follow_the_tensors_not_the_host(monkeypatch):
    """Tile sizes come from ``_common.on_gpu(tensor)``: CPU tensors get the interpreter's small tiles even on
    a CUDA host, and replacing ``on_gpu`` (as the AOT compile check does) selects the GPU tiles."""
    from fer_kernels.triton import _common

    log = _LaunchLog(monkeypatch, execute=False)  # tiles only: nothing runs
    inputs, forward = _dense_block("cpu")
    with torch.no_grad():
        forward("triton")
    small = {kw["BLOCK_M"] for name, _, _, kw in log.take()[1] if name == "_dense_block_fwd_kernel"}
    monkeypatch.setattr(_common, "on_gpu", lambda t: True)
    with torch.no_grad():
        forward("triton")
    gpu = {kw["BLOCK_M"] for name, _, _, kw in log.take()[1] if name == "_dense_block_fwd_kernel"}
    assert small == {16} and gpu == {64}, (small, gpu)


def test_common_helpers_on_cpu_tensors():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("the triton package is not installed")
    from fer_kernels.triton import _common

    x = torch.zeros(2)
    assert not _common.on_gpu(x)
    with _common.device_guard(x):  # a null context: touches no CUDA state
        pass


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.skipif(not _TRITON.available, reason=f"backend triton: {_TRITON.reason}")
@pytest.mark.parametrize("case", list(CASES))
def test_ops_on_the_second_gpu_while_the_first_is_current(case):
    with torch.cuda.device(0):
        torch.manual_seed(0)
        inputs, forward = CASES[case]("cuda:1")
        y = forward("triton")
        gy = torch.randn_like(y)
        grads = torch.autograd.grad(y, inputs, gy)
        torch.cuda.synchronize(1)
        assert torch.cuda.current_device() == 0
        y_ref = forward("reference")
        grads_ref = torch.autograd.grad(y_ref, inputs, gy)
    assert y.device == torch.device("cuda:1")
    assert_close(y, y_ref, f"{case} output")
    for i, (g, r) in enumerate(zip(grads, grads_ref, strict=True)):
        assert_close(g, r, f"{case} grad of input {i}")
