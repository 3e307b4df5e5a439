"""Test set-up shared by every test file.

Triton kernels run on CPU tensors through the interpreter: TRITON_INTERPRET must be set before triton is
imported, so it is set here when no CUDA device is present. On a CUDA host it is left as the caller set it:
unset, Triton compiles for the GPU (the CUDA-tensor tests run compiled kernels and the CPU-tensor Triton cases
skip with the resolver's reason, see harness.backend_params); ``TRITON_INTERPRET=1`` runs the CPU cases
interpreted instead (``make gpu-check`` runs the suite both ways).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_backend():
    """Fresh seeded randomness per test, and the backend default restored after it."""
    import fer_kernels.backends as b

    torch.manual_seed(0)
    saved = b._global
    yield
    b._global = saved


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_isa(name): run the C++ CPU kernels with this instruction set")


@pytest.fixture(autouse=True)
def _cpu_isa(request):
    """Applies a test's ``cpu_isa`` mark (harness.backend_params: the cpp backend once per ISA) for the test."""
    mark = request.node.get_closest_marker("cpu_isa")
    if mark is None:
        yield
        return
    from fer_kernels.backends import use_cpu_isa

    with use_cpu_isa(mark.args[0]):
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests (faster than fanning out on 2 shared cores)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
