"""Harness shared by the benchmark suites (CONVENTIONS rule 10): a pytest plugin, loaded with
``-p fer_kernels.benchmarks.plugin`` (``fer-bench`` does), and the helpers the suites import from it.

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
- Device: ``FER_BENCH_DEVICE`` (``cpu`` / ``cuda``; default cuda when available) is every suite's ``DEVICE``.
  On CUDA, float32 means IEEE float32 everywhere: TF32 is switched off in cuDNN and matmul, as the fused
  Triton kernels run float32 dots in ``ieee`` precision (cuDNN's default TF32 convolutions would compare a
  10-bit-mantissa eager with them), and Triton never runs interpreted (``TRITON_INTERPRET=0``).
- dtypes (``dtype_params()``, parameter ``dtype``): ``float32`` and ``bfloat16``. bfloat16 is mixed precision
  as a model trains in it: the call runs under ``torch.autocast(device, torch.bfloat16)`` with bfloat16
  activations (the inputs a layer gets from the bf16 layer before it) and float32 parameters, for eager,
  compile and the fused ops alike (their autocast rule computes in bf16 with float32 accumulation). Its
  groups end in ``-bf16``. It runs on CUDA (or with ``--bench-dtypes``/``--gpu-check``) and skips on CPU.
- GPU memory: ``bench`` records ``peak_bytes`` on CUDA, the most memory allocated above what was allocated
  before one call of the timed function (one forward, or forward + backward), from
  ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated``; and ``warmup_s``, the first call's time
  (compile, Triton JIT, cuDNN plans), which the timings exclude.
- ``--gpu-check``: the plan of the one-command GPU check: in each suite, only the cases its module's
  ``GPU_CHECK`` names (test -> {parameter: allowed values}, or a list of such alternatives; a test not named
  is deselected), both dtypes, 20 rounds. ``--bench-smoke``: batch 2 and 2 rounds, a dry run of the code
  paths (no measurement). ``--bench-log PATH``: one JSON line per collected list, test start, test result
  and benchmark entry, flushed as it happens, so ``fer-bench`` can report failures and keep the results of
  a suite it had to stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import time

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
DEVICE = os.environ.get("FER_BENCH_DEVICE") or ("cuda" if HAS_CUDA else "cpu")
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "0")  # never benchmark the interpreter

PROVIDERS = ("eager", "compile", "reference", "cpp", "triton", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_SUFFIX = {"float32": "", "bfloat16": "-bf16"}
GPU_CHECK_ROUNDS = 20


def pytest_addoption(parser):
    group = parser.getgroup("fer-kernels benchmarks")
    group.addoption("--bench-repeat", type=int, default=1, help="interleaved repeats of every benchmark")
    group.addoption("--quick", action="store_true", help="fewer rounds, the first shape of each suite only")
    group.addoption("--bench-rounds", type=int, default=None,
                    help="timed rounds of every benchmark (default: each benchmark's own; 3 with --quick, "
                         f"{GPU_CHECK_ROUNDS} with --gpu-check, 2 with --bench-smoke)")
    group.addoption("--bench-dtypes", default=None,
                    help="comma-separated dtypes to run, from float32,bfloat16 (default: both on CUDA or "
                         "with --gpu-check, float32 elsewhere; the others skip)")
    group.addoption("--gpu-check", action="store_true",
                    help="only the cases each suite's GPU_CHECK names, both dtypes, "
                         f"{GPU_CHECK_ROUNDS} rounds (the one-command GPU check)")
    group.addoption("--bench-smoke", action="store_true",
                    help="batch 2 and 2 rounds everywhere: a dry run of the code paths, not a measurement")
    group.addoption("--bench-log", default=None,
                    help="append JSON lines on progress, results and benchmarks here")


QUICK = False
ROUNDS: int | None = None
GPU_CHECK = False
SMOKE = False
ENABLED_DTYPES: tuple[str, ...] = ("float32",)
_LOG_PATH: str | None = None


def pytest_configure(config):
    global QUICK, ROUNDS, GPU_CHECK, SMOKE, ENABLED_DTYPES, _LOG_PATH
    config.addinivalue_line("markers", "full_only: a shape skipped by --quick")
    QUICK = bool(config.getoption("--quick", False))
    ROUNDS = config.getoption("--bench-rounds", None)
    if ROUNDS is not None and ROUNDS < 1:
        raise pytest.UsageError(f"--bench-rounds: expected at least 1, got {ROUNDS}")
    GPU_CHECK = bool(config.getoption("--gpu-check", False))
    SMOKE = bool(config.getoption("--bench-smoke", False))
    dtypes = config.getoption("--bench-dtypes", None)
    if dtypes:
        ENABLED_DTYPES = tuple(d.strip() for d in dtypes.split(",") if d.strip())
        bad = [d for d in ENABLED_DTYPES if d not in DTYPES]
        if bad or not ENABLED_DTYPES:
            raise pytest.UsageError(
                f"--bench-dtypes: expected names from {', '.join(DTYPES)}, got {dtypes!r}")
    else:
        ENABLED_DTYPES = tuple(DTYPES) if (DEVICE == "cuda" or GPU_CHECK) else ("float32",)
    if DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"FER_BENCH_DEVICE: expected cpu or cuda, got {DEVICE!r}")
    if DEVICE == "cuda" and not HAS_CUDA and not config.getoption("collectonly", False):
        raise pytest.UsageError("FER_BENCH_DEVICE=cuda, but torch sees no CUDA device "
                                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    if DEVICE == "cuda":
        # Here, not at import: a test that imports this module must not change its own process. fer_kernels
        # imports its triton.jit kernels at their first call, after this.
        os.environ["TRITON_INTERPRET"] = "0"  # never benchmark the interpreter
        torch.backends.cudnn.allow_tf32 = False  # float32 = IEEE float32, as the fused kernels compute it
        torch.backends.cuda.matmul.allow_tf32 = False
    _LOG_PATH = config.getoption("--bench-log", None)


def _log(event: str, **fields) -> None:
    """One JSON line in the --bench-log file, flushed at once (it survives a killed process)."""
    if _LOG_PATH:
        with open(_LOG_PATH, "a") as f:
            f.write(json.dumps({"event": event, "t": time.time(), **fields}, default=str) + "\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Drop a benchmark that an interrupt (fer-bench's time budget) cut before its first round:
    pytest-benchmark would fail on its empty statistics and write no JSON for the benchmarks that finished."""
    bs = getattr(session.config, "_benchmarksession", None)
    try:
        bs.benchmarks[:] = [b for b in bs.benchmarks if b.stats is None or len(b.stats.data) > 0]
    except AttributeError:  # another pytest-benchmark layout: leave it alone
        pass
    return (yield)


def pytest_collection_finish(session):
    _log("collected", items=[it.nodeid for it in session.items])


def pytest_runtest_logstart(nodeid, location):
    _log("start", nodeid=nodeid)


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        message = ""
        if report.outcome != "passed":
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)[-2000:]
        _log("result", nodeid=report.nodeid, when=report.when, outcome=report.outcome,
             duration=report.duration, message=message)


def pytest_collect_file(file_path, parent):
    """A folder given to pytest (``pytest -p fer_kernels.benchmarks.plugin fer_kernels/benchmarks``) has its
    ``bench_*.py`` suites collected (files named on the command line are collected by pytest itself)."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(autouse=True)
def bench_rep(request):
    """Index of the interleaved repeat (see --bench-repeat)."""
    return getattr(request, "param", 0)


def pytest_generate_tests(metafunc):
    n = metafunc.config.getoption("--bench-repeat")
    if n > 1 and "benchmark" in metafunc.fixturenames:
        metafunc.parametrize("bench_rep", range(n), indirect=True, ids=lambda r: f"rep{r}")


def in_gpu_check(item) -> bool:
    """Whether ``item`` is in the --gpu-check plan. Its module's ``GPU_CHECK[test name]`` is {parameter:
    allowed values} (a parameter not named: any value), or a list of such dicts, any of which may match."""
    plan = getattr(item.module, "GPU_CHECK", {}).get(item.originalname)
    if plan is None:
        return False
    params = getattr(getattr(item, "callspec", None), "params", {})

    def match(alt: dict) -> bool:
        return all(str(params[k]) in set(map(str, allowed)) for k, allowed in alt.items() if k in params)

    return any(match(alt) for alt in (plan if isinstance(plan, list) else [plan]))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--quick"):
        removed = [it for it in items if it.get_closest_marker("full_only") is not None]
        if removed:
            config.hook.pytest_deselected(items=removed)
            items[:] = [it for it in items if it.get_closest_marker("full_only") is None]
    if config.getoption("--gpu-check"):
        removed = [it for it in items if not in_gpu_check(it)]
        if removed:
            config.hook.pytest_deselected(items=removed)
            items[:] = [it for it in items if in_gpu_check(it)]

    def case_rep_provider(item):
        params = dict(getattr(getattr(item, "callspec", None), "params", {}))
        rep = params.pop("bench_rep", 0)
        provider = params.pop("provider", "")
        case = (item.module.__name__, item.originalname,
                tuple(sorted((k, str(v)) for k, v in params.items())))
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


def dtype_params():
    """pytest params for the ``dtype`` parameter; the dtypes not enabled here skip (module docstring)."""
    out = []
    for name in DTYPES:
        marks = []
        if name not in ENABLED_DTYPES:
            why = ("bfloat16 (autocast) is benchmarked on GPU only; --bench-dtypes float32,bfloat16 runs it "
                   "here" if name == "bfloat16" else f"--bench-dtypes does not name {name}")
            marks.append(pytest.mark.skip(reason=why))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def group_name(base: str, dtype: str) -> str:
    """``base`` for float32 (the groups of every CPU run so far), ``base-bf16`` for bfloat16."""
    return base + DTYPE_SUFFIX[dtype]


def autocast(dtype: str, device: str | torch.device = DEVICE):
    """The context a ``dtype`` benchmark runs its calls in: autocast for bfloat16, nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


def activation_dtype(dtype: str) -> torch.dtype:
    """The dtype of a benchmark's input activations (parameters stay float32)."""
    return DTYPES[dtype]


def batch(n: int) -> int:
    """A suite's batch size: ``n``, or 2 under --bench-smoke."""
    return 2 if SMOKE else n


def precision(dtype: str, device: str | torch.device = DEVICE) -> str:
    if dtype == "bfloat16":
        return "autocast bfloat16: activations bfloat16, parameters float32, float32 accumulation"
    if torch.device(device).type == "cuda":
        tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
        return "float32 (TF32 on)" if tf32 else "float32 (IEEE; TF32 off)"
    return "float32"


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_bytes(fn, device: str | torch.device = DEVICE) -> int | None:
    """On CUDA, the most bytes allocated during one ``fn()`` above what was allocated before it (its
    activations, saved tensors, gradients and workspaces; not the inputs and weights); None elsewhere."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    del out
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def first_call(fn) -> float:
    """Run ``fn()`` once (compile, JIT, warm-up) and return its wall time in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


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
    (per call) and ``saved_bytes``; the report derives GFLOP/s and GB/s. On CUDA, ``peak_bytes`` of one call
    of ``fn`` is measured here after the warm-up (unless ``extra`` has it). ``warmup_s``: the warm-up call's
    time plus the ``warmup_s`` of ``extra`` (the first calls the test made itself: compile, JIT).
    ``warmed``: ``fn`` has already run in this process (a state kept across repeats), so no warm-up call.
    """
    benchmark.group = group
    benchmark.extra_info.update({"device": str(device), "allocator_pinned": ALLOCATOR_PINNED,
                                 "threads": torch.get_num_threads(), "torch": torch.__version__, **extra})
    cuda = torch.device(device).type == "cuda"
    if cuda:
        benchmark.extra_info.update({
            "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
            "tf32": bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)})
    if "dtype" in extra and extra["dtype"] in DTYPES:
        benchmark.extra_info.setdefault("precision", precision(extra["dtype"], device))
    if not warmed:
        t = first_call(fn)  # warm-up (and compile) outside the timing
        benchmark.extra_info["warmup_s"] = float(extra.get("warmup_s") or 0.0) + t
    if cuda and "peak_bytes" not in benchmark.extra_info:
        benchmark.extra_info["peak_bytes"] = peak_bytes(fn, device)
    if QUICK:
        rounds = 3
    if GPU_CHECK:
        rounds = GPU_CHECK_ROUNDS
    if SMOKE:
        rounds = 2
    if ROUNDS is not None:
        rounds = ROUNDS
    if rounds:
        result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0 if warmed else 1)
    else:
        result = benchmark(fn)
    if _LOG_PATH and benchmark.stats is not None:
        _log("benchmark", entry=benchmark.stats.as_dict(include_data=False))
    return result
