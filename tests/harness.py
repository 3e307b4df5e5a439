"""Helpers shared by all op tests (CONVENTIONS rule 8).

- ``TOLERANCES``: the one tolerance table, per dtype.
- ``assert_close``: compare with a reference, printing the worst element before asserting.
- ``run_gradcheck``: ``torch.autograd.gradcheck`` in float64.
- ``run_opcheck``: ``torch.library.opcheck`` on a sample.
- ``backend_params`` / ``device_params``: pytest parameters that skip cleanly when a backend or a GPU is
  missing (Triton parameters run on CPU under TRITON_INTERPRET=1; see conftest.py).
- ``make_input``: random inputs, optionally non-contiguous or channels_last.
"""

from __future__ import annotations

import os

import pytest
import torch

from fer_kernels.backends import cpu_isas, why_not

# dtype -> (rtol, atol). Op files may tighten these for an issue's parity targets, never loosen them.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}

HAS_CUDA = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def tol(dtype: torch.dtype, **override) -> dict:
    """Tolerances for ``dtype`` from the table, with per-test overrides."""
    out = dict(TOLERANCES[dtype])
    out.update(override)
    return out


def _worst(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str:
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    err = (a - e).abs() - (atol + rtol * e.abs())
    if err.numel() == 0:
        return "empty tensors"
    idx = int(torch.argmax(err.flatten().nan_to_num(float("inf"))))
    pos = tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), a.shape)) if a.dim() else ()
    af, ef = a.flatten()[idx].item(), e.flatten()[idx].item()
    rel = abs(af - ef) / max(abs(ef), 1e-300)
    return f"worst at {pos}: actual {af:.10g}, expected {ef:.10g}, abs err {abs(af - ef):.3g}, rel err {rel:.3g}"


def assert_close(actual, expected, name: str = "output", *, rtol: float | None = None,
                 atol: float | None = None) -> None:
    """Assert ``actual`` matches ``expected`` within the table's tolerance; print the worst element first."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), (
            f"{name}: expected {len(expected)} tensors, got {type(actual).__name__} of "
            f"{len(actual) if isinstance(actual, (list, tuple)) else 1}"
        )
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{name}[{i}]", rtol=rtol, atol=atol)
        return
    if expected is None:
        assert actual is None, f"{name}: expected None, got a tensor"
        return
    assert actual is not None, f"{name}: expected a tensor, got None"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    t = tol(expected.dtype)
    rtol = t["rtol"] if rtol is None else rtol
    atol = t["atol"] if atol is None else atol
    report = _worst(actual, expected, rtol, atol)
    print(f"{name}: {report}")
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol,
                               msg=lambda m: f"{name}: {report}\n{m}")


def run_gradcheck(fn, inputs, **kwargs) -> None:
    """``torch.autograd.gradcheck`` in float64 (inputs must be float64 and require grad)."""
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            assert t.dtype == torch.float64, "gradcheck inputs must be float64"
    kwargs.setdefault("eps", 1e-6)
    kwargs.setdefault("atol", 1e-5)
    kwargs.setdefault("rtol", 1e-4)
    assert torch.autograd.gradcheck(fn, tuple(inputs), **kwargs)


def run_opcheck(op, args, kwargs=None, **opts) -> None:
    """``torch.library.opcheck`` on one sample; fails with the failing utility named."""
    result = torch.library.opcheck(op, args, kwargs, raise_exception=False, **opts)
    bad = {k: v for k, v in result.items() if v != "SUCCESS"}
    assert not bad, f"opcheck failed for {op}: {bad}"


def make_input(*shape, dtype=torch.float32, device="cpu", layout: str = "contiguous",
               requires_grad: bool = False, scale: float = 1.0) -> torch.Tensor:
    """Random normal tensor; ``layout`` is ``contiguous``, ``noncontig`` (a strided view of a bigger
    tensor) or ``channels_last`` (4-d only)."""
    if layout == "noncontig":
        big = torch.randn(*shape[:-1], shape[-1] * 2, dtype=dtype, device=device) * scale
        t = big[..., ::2]
        assert not t.is_contiguous() or t.numel() <= 1
    elif layout == "channels_last":
        t = (torch.randn(*shape, dtype=dtype, device=device) * scale).contiguous(memory_format=torch.channels_last)
    elif layout == "contiguous":
        t = torch.randn(*shape, dtype=dtype, device=device) * scale
    else:
        raise ValueError(layout)
    return t.requires_grad_(requires_grad)


def backend_available(name: str, device: str = "cpu") -> tuple[bool, str]:
    """Whether backend ``name`` can run tensors on ``device`` here, and why not: the resolver's own answer
    (on a CUDA host, Triton runs CPU tensors only where TRITON_INTERPRET=1 was set)."""
    why = why_not(name, device)
    return why is None, why or ""


def backend_params(*names: str, device: str = "cpu"):
    """pytest params for ``names`` that skip cleanly where a backend cannot run on ``device``.

    With FER_KERNELS_REQUIRE_CPP=1 (set by ``make test``) a missing cpp backend fails instead of skipping,
    so CI cannot pass without the compiled kernels.

    The cpp backend comes once per CPU instruction set this machine runs (``cpu_isas()``): id ``cpp`` for the
    best (the one ``auto`` uses), ``cpp-scalar`` / ``cpp-avx2`` for the others, each with a ``cpu_isa`` mark that
    conftest's fixture applies for the test. With ``FER_KERNELS_ISA`` set, only that ISA.
    """
    params = []
    for name in names:
        ok, why = backend_available(name, device)
        marks = []
        if not ok and not (name == "cpp" and os.environ.get("FER_KERNELS_REQUIRE_CPP") == "1"):
            marks.append(pytest.mark.skip(reason=f"backend {name}: {why}"))
        if name == "cpp" and ok and device == "cpu":
            forced = os.environ.get("FER_KERNELS_ISA", "auto")
            isas = cpu_isas() if forced in ("", "auto") else [forced]  # forced: that one only, as the user asked
            for isa in isas:
                isa_id = "cpp" if isa == isas[-1] else f"cpp-{isa}"
                params.append(pytest.param(name, marks=[*marks, pytest.mark.cpu_isa(isa)], id=isa_id))
            continue
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def device_params():
    """``cpu`` always, ``cuda`` where a device exists (skips cleanly otherwise)."""
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=requires_gpu, id="cuda")]
