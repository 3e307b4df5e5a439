"""Harness shared by the benchmark suites (CONVENTIONS rule 10).

- Same allocator for every provider: glibc is told never to serve big temporaries with fresh mmap()s
  (M_MMAP_MAX=0) and never to trim (M_TRIM_THRESHOLD max), so page faults do not inflate any provider.
- ``PROVIDERS``: eager, compile, reference, cpp, triton, cuda; ``provider_params(...)`` skips the ones
  this machine cannot run (cuda/triton without a GPU).
- torch.compile: static shapes for every benchmarked shape (no automatic dynamic batch), recompile limit
  raised, and hitting it fails the benchmark instead of silently running eager.
- ``saved_bytes(fn)``: bytes saved for backward by one forward, measured with saved_tensors_hooks
  (storages counted once).
- ``sync(device)``: synchronise inside the timed function.
- ``bench(benchmark, fn, group, extra)``: runs pytest-benchmark with the group and extra_info filled in.
- Interleaving: ``--bench-repeat N`` runs every benchmark N times, ordered so that the providers of one
  group alternate, their order rotated by one each repeat (eager, compile, cpp, then compile, cpp, eager,
  then cpp, eager, compile, ...); the report takes the median over the repeats, so a slow spell of the
  machine hits every provider alike, and no provider always runs right after the same other one (a
  provider's step may slow the next: benchmarks/RESULTS.md, session 6).
- ``--quick`` times fewer rounds; ``--bench-rounds N`` sets the rounds of every benchmark
  (``--bench-rounds 1`` with many repeats pairs single steps of the providers a few seconds apart, the
  finest interleaving). Benchmarks name their provider parameter ``provider``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import pytest
import torch

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def _pin_allocator() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
        return bool(ok)
    except (OSError, AttributeError):
        return False


ALLOCATOR_PINNED = _pin_allocator()

# torch.compile gets a static-shape graph for every benchmarked shape. By default a frame that meets a second
# batch size is recompiled with a symbolic batch (automatic dynamic shapes), which made the compile provider
# about 10% slower at IDEnNet-IF-40 batch 64 after batch 1 (median 0.48-0.50 s against 0.43-0.46 s static)
# and handicapped it in every later group of that model. A frame past the recompile limit would silently run
# eager; the limit is raised and hitting it is an error.
torch._dynamo.config.automatic_dynamic_shapes = False
torch._dynamo.config.recompile_limit = 64
torch._dynamo.config.fail_on_recompile_limit_hit = True
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "0")  # never benchmark the interpreter

PROVIDERS = ("eager", "compile", "reference", "cpp", "triton", "cuda")


def pytest_addoption(parser):
    group = parser.getgroup("fer-kernels benchmarks")
    group.addoption("--bench-repeat", type=int, default=1, help="interleaved repeats of every benchmark")
    group.addoption("--quick", action="store_true", help="fewer rounds and only the first shape of each suite")
    group.addoption("--bench-rounds", type=int, default=None,
                    help="timed rounds of every benchmark (default: each benchmark's own; 3 with --quick)")


QUICK = False
ROUNDS: int | None = None


def pytest_configure(config):
    global QUICK, ROUNDS
    config.addinivalue_line("markers", "full_only: a shape skipped by --quick")
    QUICK = bool(config.getoption("--quick", False))
    ROUNDS = config.getoption("--bench-rounds", None)
    if ROUNDS is not None and ROUNDS < 1:
        raise pytest.UsageError(f"--bench-rounds: expected at least 1, got {ROUNDS}")


@pytest.fixture(autouse=True)
def bench_rep(request):
    """Index of the interleaved repeat (see --bench-repeat)."""
    return getattr(request, "param", 0)


def pytest_generate_tests(metafunc):
    n = metafunc.config.getoption("--bench-repeat")
    if n > 1 and "benchmark" in metafunc.fixturenames:
        metafunc.parametrize("bench_rep", range(n), indirect=True, ids=lambda r: f"rep{r}")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--quick"):
        removed = [it for it in items if it.get_closest_marker("full_only") is not None]
        if removed:
            config.hook.pytest_deselected(items=removed)
            items[:] = [it for it in items if it.get_closest_marker("full_only") is None]

    def case_rep_provider(item):
        params = dict(getattr(getattr(item, "callspec", None), "params", {}))
        rep = params.pop("bench_rep", 0)
        provider = params.pop("provider", "")
        case = (item.module.__name__, item.originalname, tuple(sorted((k, str(v)) for k, v in params.items())))
        return case, rep, provider

    items[:] = [items[i] for i in interleave([case_rep_provider(it) for it in items])]


def interleave(entries: list[tuple]) -> list[int]:
    """Run order of benchmarks given as (case, repeat, provider): case by case, repeat by repeat, the
    providers of a case in PROVIDERS order rotated left by the repeat index. Returns indices into entries."""
    rank = lambda p: (PROVIDERS.index(p), p) if p in PROVIDERS else (len(PROVIDERS), p)
    present: dict = {}
    for case, _, provider in entries:
        present.setdefault(case, set()).add(provider)
    order = {case: sorted(ps, key=rank) for case, ps in present.items()}

    def key(i):
        case, rep, provider = entries[i]
        provs = order[case]
        return case, rep, (provs.index(provider) - rep) % len(provs)

    return sorted(range(len(entries)), key=key)


def provider_params(*names: str, device: str = "cpu"):
    """pytest params for providers, skipping the ones that cannot run on ``device`` here."""
    import fer_kernels

    status = fer_kernels.available_backends()
    out = []
    for name in names:
        marks = []
        if name in ("cpp", "triton", "cuda") and not status[name].available:
            marks.append(pytest.mark.skip(reason=f"{name}: {status[name].reason}"))
        elif name == "cpp" and device != "cpu":
            marks.append(pytest.mark.skip(reason="cpp runs CPU tensors only"))
        elif name in ("triton", "cuda") and device != "cuda":
            marks.append(pytest.mark.skip(reason=f"{name} is benchmarked on GPU only"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def saved_bytes(fn) -> int:
    """Bytes of distinct storages saved for backward while running ``fn()`` (a forward with grad)."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        # Not ``t`` itself: a saved output would then hold its own grad_fn through the packed object, a
        # reference cycle through C++ that Python's gc cannot see, and every call leaked its whole graph
        # (EIFN: 0.45 GiB of weights per benchmark; a 5-repeat models run reached 24 GiB). The graph is
        # never backpropagated; a detached alias keeps the same storage alive just as long.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def bench(benchmark, fn, *, group: str, device="cpu", rounds: int | None = None, warmed: bool = False,
          **extra):
    """Time ``fn`` (which must synchronise itself) under pytest-benchmark, recording ``extra_info``.

    ``extra`` should carry ``provider``, ``shape``, ``dtype`` and, where known, ``flops`` and ``bytes``
    (per call) and ``saved_bytes`` (CPU) / ``peak_bytes`` (GPU); the report derives GFLOP/s and GB/s.
    ``warmed``: ``fn`` has already run in this process (a state kept across repeats), so no warm-up call.
    """
    benchmark.group = group
    benchmark.extra_info.update({"device": str(device), "allocator_pinned": ALLOCATOR_PINNED,
                                 "threads": torch.get_num_threads(), "torch": torch.__version__, **extra})
    if not warmed:
        fn()  # warm-up (and compile) outside the timing
    if QUICK:
        rounds = 3
    if ROUNDS is not None:
        rounds = ROUNDS
    if rounds:
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0 if warmed else 1)
    return benchmark(fn)
