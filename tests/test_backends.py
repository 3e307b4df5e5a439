"""Backend choice: resolution order, availability report, errors for requests that cannot run."""

import os
import subprocess
import sys

import pytest
import torch

import fer_kernels
from fer_kernels.backends import BackendUnavailableError, resolve


def test_available_backends_reports_every_backend_with_a_reason():
    status = fer_kernels.available_backends()
    assert set(status) == {"reference", "cpp", "triton", "cuda"}
    assert status["reference"].available
    for name, s in status.items():
        assert isinstance(s.available, bool) and s.reason, name
    if not torch.cuda.is_available():
        assert not status["cuda"].available


@pytest.mark.skipif(os.environ.get("FER_KERNELS_REQUIRE_CPP") != "1", reason="only where the build is required")
def test_cpp_extension_is_built():
    status = fer_kernels.available_backends()["cpp"]
    assert status.available, status.reason


def test_resolution_order(monkeypatch):
    impls = {"reference": None, "cpp": None}
    x = torch.zeros(1)
    monkeypatch.setenv("FER_KERNELS_BACKEND", "reference")
    assert resolve("op", impls, [x]) == "reference"  # environment
    fer_kernels.set_backend("auto")
    expected_auto = "cpp" if fer_kernels.available_backends()["cpp"].available else "reference"
    assert resolve("op", impls, [x]) == expected_auto  # set_backend beats the environment
    with fer_kernels.use_backend("reference"):
        assert fer_kernels.get_backend() == "reference"  # context beats set_backend
        with fer_kernels.use_backend("auto"):
            assert resolve("op", impls, [x]) == expected_auto  # innermost context wins
        assert resolve("op", impls, [x], backend="reference") == "reference"  # explicit argument wins
    assert fer_kernels.get_backend() == "auto"


def test_unknown_backend_name_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        fer_kernels.set_backend("fast")
    monkeypatch.setenv("FER_KERNELS_BACKEND", "nope")
    with pytest.raises(ValueError, match="FER_KERNELS_BACKEND"):
        fer_kernels.get_backend()


def test_forced_backend_that_cannot_run_raises_naming_backend_and_reason():
    x = torch.zeros(2, 3, 4, 4)
    w = torch.zeros(5, 3, 1, 1)
    # cuda cannot run CPU tensors: the message names the backend, the op and why.
    with pytest.raises(BackendUnavailableError, match=r"backend 'cuda' cannot run fusion_conv: .*CUDA tensors"):
        fer_kernels.fusion_conv([x], w, backend="cuda")
    with fer_kernels.use_backend("cuda"), pytest.raises(BackendUnavailableError, match="backend 'cuda'"):
        fer_kernels.fusion_conv([x], w)


def test_forced_backend_without_implementation_raises():
    with pytest.raises(BackendUnavailableError, match=r"backend 'reference' cannot run myop: it has no 'reference'"):
        resolve("myop", {"cpp": None}, [torch.zeros(1)], backend="reference")


def test_mixed_devices_rejected():
    with pytest.raises(ValueError, match="one device type"):
        resolve("op", {"reference": None}, [torch.zeros(1), torch.zeros(1, device="meta")])


def _run_python(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


def test_import_works_when_the_compiled_library_is_missing():
    # A meta-path finder that makes fer_kernels._C unimportable, as in an install where the build failed.
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'fer_kernels._C': raise ImportError('simulated: _C missing')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, fer_kernels\n"
        "s = fer_kernels.available_backends()\n"
        "print(s)\n"
        "assert not s['cpp'].available and 'simulated: _C missing' in s['cpp'].reason, s\n"
        "assert not s['cuda'].available\n"
        "x = [torch.randn(2, 3, 4, 4)]; w = torch.randn(5, 3, 1, 1)\n"
        "y = fer_kernels.fusion_conv(x, w)\n"
        "assert y.shape == (2, 5, 2, 2)\n"
        "try:\n"
        "    fer_kernels.fusion_conv(x, w, backend='cpp')\n"
        "except fer_kernels.BackendUnavailableError as e:\n"
        "    assert \"backend 'cpp'\" in str(e) and 'simulated' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('forced cpp did not raise')\n"
        "print('OK')\n"
    )
    r = _run_python(code)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_disable_env_var():
    r = _run_python("import fer_kernels; print(fer_kernels.available_backends()['cpp'])", FER_KERNELS_DISABLE_C="1")
    assert r.returncode == 0 and "FER_KERNELS_DISABLE_C" in r.stdout, r.stdout + r.stderr


def test_demo_prints_backends_and_one_line_per_op():
    r = subprocess.run([sys.executable, "-m", "fer_kernels", "--repeats", "1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "backends:" in r.stdout and "reference" in r.stdout
    for family in fer_kernels.ops.FAMILIES:
        assert any(line.strip().startswith(family) for line in r.stdout.splitlines()), r.stdout


def test_simulated_cuda_host_selection(monkeypatch):
    """On a CUDA host without TRITON_INTERPRET, Triton compiles for the GPU: CPU tensors with backend="triton"
    are refused with a reason (never a kernel launched on the wrong device), the harness skips those test
    parameters with that reason instead of failing, auto still picks the C++ kernels for CPU tensors, and with
    TRITON_INTERPRET=1 the CPU cases run interpreted."""
    import importlib.util

    import fer_kernels.backends as backends
    from tests.harness import backend_params

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(2, 3)
    impls = {"reference": None, "cpp": None, "triton": None}
    assert fer_kernels.available_backends()["triton"].available
    with pytest.raises(BackendUnavailableError, match="compiles its kernels for the CUDA device.*cpu tensors"):
        resolve("op", impls, [x], "triton")
    expected_auto = "cpp" if fer_kernels.available_backends()["cpp"].available else "reference"
    assert resolve("op", impls, [x], "auto") == expected_auto
    (param,) = backend_params("triton", device="cpu")
    reasons = [m.kwargs.get("reason", "") for m in param.marks if m.name == "skip"]
    assert len(reasons) == 1 and "TRITON_INTERPRET=1" in reasons[0], param.marks
    (param,) = backend_params("triton", device="cuda")
    assert not param.marks, param.marks  # CUDA tensors run the compiled kernels

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve("op", impls, [x], "triton") == "triton"
    (param,) = backend_params("triton", device="cpu")
    assert not param.marks, param.marks
    assert backends.why_not("cuda", "cpu") is not None  # the CUDA C++ backend never takes CPU tensors


def test_resolve_traces_without_graph_break():
    """torch.compile(fullgraph=True) through the backend choice: nothing in resolve() may break the graph."""
    impls = {"reference": None, "cpp": None, "triton": None}

    def f(x):
        name = resolve("op", impls, [x], "auto")
        return x + (1.0 if name in ("cpp", "reference") else 2.0)

    x = torch.zeros(3)
    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x), f(x))
