"""``fer-bench``: run the throughput suites and print the ratio table (fused vs eager vs torch.compile).

    fer-bench [--quick] [--ops dense_block,bilinear,...] [--device cpu|cuda] [--repeat N] [--rounds N]
              [--out DIR] [--gpu-check] [--isolate] [--budget S] [--dtypes float32,bfloat16] [-k EXPR]
              [--smoke] [--list]

Writes ``<out>/<machine>-<date>[-tag].json`` (pytest-benchmark, with a ``fer_bench`` record of the
environment, the command and each suite's status), ``.md`` (the table) and ``.png`` (the chart; it needs
matplotlib, the ``plot`` extra). The machine is the GPU's name (``torch.cuda.get_device_name``) on CUDA, the
CPU model elsewhere. ``<out>`` defaults to ``benchmarks/results`` under the current folder.

``--gpu-check`` is the one-command check of a GPU machine (``make gpu-check``): on CUDA, every suite's
``GPU_CHECK`` plan (see each ``bench_*.py``) in float32 and bfloat16 (autocast), 20 rounds, one
repeat, each suite in its own process (``--isolate``) within ``--budget`` seconds (default 240). A suite that
fails or crashes is recorded in the report and the others still run; a suite still running at its share of
the budget is stopped (SIGINT, then SIGKILL) and keeps the benchmarks it finished. The exit status is non-zero
when anything failed, crashed or was cut by the budget. ``--device cpu --gpu-check --smoke`` dry-runs the same
code paths on CPU (batch 2, 2 rounds).

The suites ship in the packages, so any install runs them: the kernel suites in ``fer_kernels/benchmarks/``
(with the pytest plugin, ``-p fer_kernels.benchmarks.plugin``, and the report), and those other packages
declare in the ``fer_kernels.bench_suites`` entry-point group (``fer_models``: ``models``), each run by pytest
from its file. Nothing here imports those packages (``--list`` prints every suite's file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fer_kernels.extras import cli_entry, message, missing_modules, require

KERNEL_SUITES = ("dense_block", "fusion_conv", "bilinear")  # fer_kernels/benchmarks/bench_<name>.py
SUITE_GROUP = "fer_kernels.bench_suites"  # entry points: name = suite, value = the module of its file
PLUGIN = "fer_kernels.benchmarks.plugin"
# --gpu-check: each suite's share of the budget. Deadlines are cumulative (suite i must end by
# start + budget * (share_1 + ... + share_i)), so time a suite leaves unused goes to the next ones.
# The shares follow an estimate of each suite's time on an H100 with 16 cores and cold compile caches (s):
# dense_block 60, fusion_conv 35, bilinear 50, models 80 (process start, torch.compile, Triton JIT, timing).
BUDGET_SHARE = {"dense_block": 0.27, "fusion_conv": 0.15, "bilinear": 0.22, "models": 0.36}
GPU_CHECK_BUDGET_S = 240.0
GRACE_S = 20.0  # after SIGINT, time to finish the test in flight and write the JSON, before SIGKILL


def suites() -> dict[str, Path]:
    """Every suite this install has: name -> its ``bench_<name>.py``. The kernel suites ship in
    ``fer_kernels/benchmarks``; other packages declare theirs in the ``fer_kernels.bench_suites`` entry-point
    group. A suite's file is found without importing its package (fer-bench never imports fer_models)."""
    here = Path(__file__).resolve().parent / "benchmarks"
    out = {name: here / f"bench_{name}.py" for name in KERNEL_SUITES}
    for ep in sorted(importlib.metadata.entry_points(group=SUITE_GROUP), key=lambda e: e.name):
        path = module_file(ep.value)
        if path is None:
            print(f"fer-bench: suite {ep.name!r}: module {ep.value} not found; skipped", file=sys.stderr)
        else:
            out.setdefault(ep.name, path)
    return out


def module_file(module: str) -> Path | None:
    """The source file of a dotted ``module`` (``pkg.sub.mod``), located from its top-level package's folder
    (``importlib.util.find_spec`` of a top-level name imports nothing), or None."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for base in spec.submodule_search_locations or []:
        for path in (Path(base, *rest[:-1], f"{rest[-1]}.py"), Path(base, *rest, "__init__.py")):
            if path.is_file():
                return path.resolve()
    return None


def _rootdir(files: list[Path]) -> Path:
    """The folder the suites' packages sit in (the source checkout, or site-packages): pytest's rootdir, so
    node ids read ``fer_kernels/benchmarks/bench_<op>.py::...``."""
    tops = []
    for f in files:
        d = f.parent
        while (d / "__init__.py").exists() and d.parent != d:
            d = d.parent
        tops.append(str(d))
    return Path(os.path.commonpath(tops))


def _cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
              "avx512_bf16", "amx_tile", "neon", "asimd", "sve")


def _cpu_isa_flags() -> str:
    """The SIMD flags of /proc/cpuinfo that matter to the kernels (those present), space-separated."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in _ISA_FLAGS if f in have)
    except OSError:
        pass
    return "unknown"


def machine_name(device: str | None = None) -> str:
    """The GPU's name (torch.cuda.get_device_name) for CUDA runs, else ``<cpu model>-<cores>c``; spaces and
    slashes become dashes (a file name)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"{_cpu_model()}-{os.cpu_count()}c"
    return re.sub(r"[\s/\\:]+", "-", name.strip())


def _run_quiet(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: str) -> dict:
    """What the report header records: GPU and CPU, torch / CUDA / cuDNN / Triton / Python, backends."""
    import torch

    import fer_kernels

    env: dict = {"torch": torch.__version__, "Python": platform.python_version()}
    env["CUDA"] = torch.version.cuda or "none (CPU build of torch)"
    try:
        import triton

        env["Triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001 (any import failure is worth reporting, not raising)
        env["Triton"] = f"not importable ({type(exc).__name__})"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = (f"{torch.cuda.get_device_name(0)} (sm_{props.major}{props.minor}, "
                      f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs; "
                      f"{torch.cuda.device_count()} visible)")
        env["cuDNN"] = str(torch.backends.cudnn.version())
        if shutil.which("nvidia-smi"):
            driver = _run_quiet(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
            env["driver"] = driver.splitlines()[0] if driver else ""
        env["precision"] = ("float32 = IEEE float32 (TF32 off in cuDNN and matmul, as the fused kernels "
                            "compute it); bfloat16 = torch.autocast(cuda, bfloat16) with bfloat16 "
                            "activations and float32 parameters")
    env["cpu"] = f"{_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    env["cpu_flags"] = _cpu_isa_flags()
    try:
        env["cpu_isa"] = fer_kernels.cpu_isa() or "none (fer_kernels._C not loaded)"
    except RuntimeError as exc:  # FER_KERNELS_ISA names an ISA this CPU lacks
        env["cpu_isa"] = f"error: {str(exc).splitlines()[0]}"
    env["backends"] = ", ".join(f"{k} {'yes' if s.available else 'no'}"
                                for k, s in fer_kernels.available_backends().items())
    env["host"] = socket.gethostname()
    return env


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return out


def summarize_log(events: list[dict]) -> dict:
    """From a --bench-log: benchmarks (pytest-benchmark entries), failures, the test in flight at the end,
    the tests never started, and each provider's total first-call (compile / JIT) time."""
    collected: list[str] = []
    started: list[str] = []
    finished: set[str] = set()
    failures, benchmarks = [], []
    for e in events:
        kind = e.get("event")
        if kind == "collected":
            collected = list(e.get("items", []))
        elif kind == "start":
            started.append(e["nodeid"])
        elif kind == "result":
            if e.get("when") == "call" or e.get("outcome") != "passed":
                finished.add(e["nodeid"])
            if e.get("outcome") == "failed":
                failures.append({"nodeid": e["nodeid"], "outcome": f"failed in {e.get('when')}",
                                 "message": e.get("message", "")})
        elif kind == "benchmark":
            benchmarks.append(e["entry"])
    running = next((n for n in reversed(started) if n not in finished), None)
    not_run = [n for n in collected if n not in set(started)]
    warm: dict[str, float] = {}
    for b in benchmarks:
        extra = b.get("extra_info", {})
        if extra.get("warmup_s") is not None:
            p = extra.get("provider", "?")
            warm[p] = warm.get(p, 0.0) + float(extra["warmup_s"])
    return {"benchmarks": benchmarks, "failures": failures, "running": running, "not_run": not_run,
            "collected": len(collected), "warmup_s": warm}


def run_suite(name: str, files: list[Path], pytest_args: list[str], workdir: Path, cwd: Path, env: dict,
              deadline: float | None = None, grace: float = GRACE_S,
              stop: Callable[[], bool] | None = None) -> dict:
    """Run one pytest process over ``files``; stop it at ``deadline`` (time.monotonic()) or when ``stop()``
    says so: SIGINT (pytest finishes the test in flight's teardown and writes its reports), SIGKILL after
    ``grace`` seconds. Returns the suite's record: name, status, rc, wall_s, failures, not_run, error,
    warmup_s, and its benchmarks and machine_info (popped by the caller)."""
    json_path, log_path = workdir / f"{name}.json", workdir / f"{name}.log.jsonl"
    cmd = [sys.executable, "-m", "pytest", *map(str, files), *pytest_args, f"--benchmark-json={json_path}",
           f"--bench-log={log_path}"]
    print(f"fer-bench [{name}]:", " ".join(cmd[1:]), flush=True)
    t0 = time.monotonic()
    stopped = False
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True)
    try:
        while (rc := proc.poll()) is None:
            if (deadline is not None and time.monotonic() >= deadline) or (stop is not None and stop()):
                stopped = True
                print(f"fer-bench [{name}]: time budget reached after {time.monotonic() - t0:.0f} s; "
                      "stopping it", file=sys.stderr, flush=True)
                _signal_group(proc, signal.SIGINT)
                try:
                    rc = proc.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    rc = proc.wait()
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:  # fer-bench itself interrupted: take the suite down with it
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    wall = time.monotonic() - t0
    log = summarize_log(_read_log(log_path))
    record = {"name": name, "rc": rc, "wall_s": round(wall, 1), "failures": log["failures"],
              "warmup_s": {k: round(v, 1) for k, v in log["warmup_s"].items()},
              "benchmarks": log["benchmarks"], "machine_info": None}
    if json_path.exists():
        try:
            data = json.loads(json_path.read_text())
            record["machine_info"] = {k: data.get(k) for k in ("machine_info", "commit_info", "version")}
        except json.JSONDecodeError:
            pass
    not_run = log["not_run"]
    if stopped:
        record["status"] = "STOPPED at the budget"
        record["error"] = (f"stopped by the time budget after {wall:.0f} s"
                           + (f" while running `{log['running']}`" if log["running"] else ""))
    elif rc < 0:
        record["status"] = f"CRASHED (signal {-rc})"
        record["error"] = f"the pytest process died of signal {-rc}" + (
            f" while running `{log['running']}`" if log["running"] else "")
    elif rc == 0:
        record["status"] = "ok"
    elif rc == 5:
        record["status"] = "no benchmarks selected"
    elif rc == 1:
        record["status"] = f"FAILED ({len(log['failures'])} failure(s))"
    else:
        record["status"] = f"ERROR (pytest exit {rc})"
        record["error"] = f"pytest exited with {rc} (interrupted, internal or usage error: see its output)"
    if not_run and rc != 5:
        record["not_run"] = not_run
    return record


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _deadlines(names: list[str], budget: float | None, t0: float) -> list[float | None]:
    if budget is None:
        return [None] * len(names)
    shares = [BUDGET_SHARE.get(n, 1.0) for n in names]
    total = sum(shares)
    out, acc = [], 0.0
    for s in shares:
        acc += s
        out.append(t0 + budget * acc / total)
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fer-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="first shape of each suite, 3 rounds (a few minutes)")
    ap.add_argument("--ops", default=None,
                    help=f"comma-separated suites (default: all; {', '.join(KERNEL_SUITES)}, and those other "
                         f"packages declare in the {SUITE_GROUP} entry points, e.g. models; see --list)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="default: cuda when available (with --gpu-check: cuda)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="interleaved repeats (default 1 quick or --gpu-check, 3 full)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="timed rounds of every benchmark (default: each suite's own, 3 quick, 20 "
                         "--gpu-check); with many --repeat, 1 pairs single steps of the providers")
    ap.add_argument("--out", default=None,
                    help="results folder (default: benchmarks/results under the current folder)")
    ap.add_argument("--gpu-check", action="store_true",
                    help="the GPU check: each suite's GPU_CHECK plan, float32 and bfloat16, isolated suites, "
                         f"a {GPU_CHECK_BUDGET_S:.0f} s budget")
    ap.add_argument("--isolate", action="store_true",
                    help="each suite in its own process (a crash or a broken CUDA context stays in it)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for all suites together; a suite past its share is stopped "
                         f"(default: none; {GPU_CHECK_BUDGET_S:.0f} with --gpu-check)")
    ap.add_argument("--dtypes", default=None,
                    help="comma-separated from float32,bfloat16 (default: both on CUDA, float32 on CPU)")
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to narrow the benchmarks")
    ap.add_argument("--smoke", action="store_true",
                    help="batch 2, 2 rounds: a dry run of the code paths (not a measurement)")
    ap.add_argument("--list", action="store_true", help="print every suite and its file, and exit")
    return ap


@cli_entry("fer-bench", extra="test")
def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    argv_str = " ".join(argv if argv is not None else sys.argv[1:])

    available = suites()
    if args.list:
        for name, path in available.items():
            print(f"{name}\t{path}")
        return 0
    names = list(available) if args.ops is None else [s.strip() for s in args.ops.split(",") if s.strip()]
    unknown = [s for s in names if s not in available]
    if unknown:
        ap.error(f"--ops: unknown suite(s) {', '.join(unknown)}; choose from {', '.join(available)}")
    if args.gpu_check and args.quick:
        ap.error("--gpu-check and --quick: choose one (the GPU check has its own plan)")
    repeat = args.repeat if args.repeat is not None else (1 if args.quick or args.gpu_check else 3)
    if repeat < 1:
        ap.error(f"--repeat: expected at least 1, got {repeat}")
    if args.rounds is not None and args.rounds < 1:
        ap.error(f"--rounds: expected at least 1, got {args.rounds}")
    budget = args.budget if args.budget is not None else (GPU_CHECK_BUDGET_S if args.gpu_check else None)
    if budget is not None and budget <= 0:
        ap.error(f"--budget: expected a positive number of seconds, got {budget:g}")
    if not names:
        raise SystemExit("fer-bench: nothing to run")
    files = {s: available[s] for s in names}
    rootdir = _rootdir(list(files.values()))

    require("fer-bench", "test", "pytest", "pytest_benchmark")
    import torch

    device = args.device or ("cuda" if args.gpu_check or torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print(f"fer-bench: --device cuda{' (--gpu-check)' if args.gpu_check else ''}, but torch sees no CUDA "
              f"device (torch {torch.__version__}, built with CUDA {torch.version.cuda}); --device cpu "
              "runs on CPU", file=sys.stderr)
        return 2

    out = Path(args.out) if args.out else Path("benchmarks", "results")
    out.mkdir(parents=True, exist_ok=True)
    tag = "" if set(names) == set(available) else "-" + "+".join(names)
    flags = (("-gpu-check", args.gpu_check), ("-quick", args.quick), ("-smoke", args.smoke))
    tag += "".join(t for t, on in flags if on)
    machine = machine_name(device)
    stem = f"{machine}-{dt.date.today().isoformat()}{tag}"
    json_path, md_path, png_path = out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"

    env = dict(os.environ)
    env["FER_BENCH_DEVICE"] = device
    env["TRITON_INTERPRET"] = "0"  # never benchmark the interpreter (a test run may have exported it)
    pytest_args = ["-q", "-p", "no:cacheprovider", "-p", PLUGIN, f"--rootdir={rootdir}",
                   f"--bench-repeat={repeat}", "--benchmark-columns=median,iqr,rounds",
                   "--benchmark-sort=name"]
    if args.quick:
        pytest_args.append("--quick")
    if args.gpu_check:
        pytest_args.append("--gpu-check")
    if args.smoke:
        pytest_args.append("--bench-smoke")
    if args.rounds is not None:
        pytest_args.append(f"--bench-rounds={args.rounds}")
    if args.dtypes:
        pytest_args.append(f"--bench-dtypes={args.dtypes}")
    if args.keyword:
        pytest_args += ["-k", args.keyword]

    info = {"command": f"fer-bench {argv_str}".strip(), "device": device, "date": dt.datetime.now().isoformat(
        timespec="seconds"), "budget_s": budget, "env": environment(device), "suites": []}
    print(f"machine: {machine} ({socket.gethostname()}), python {platform.python_version()}, device {device}")
    isolate = args.isolate or args.gpu_check
    groups = [[s] for s in names] if isolate else [names]
    t0 = time.monotonic()
    deadlines = _deadlines(["+".join(g) for g in groups], budget, t0)
    benchmarks, machine_info = [], None
    with tempfile.TemporaryDirectory(prefix="fer-bench-") as tmp:
        for group, deadline in zip(groups, deadlines, strict=True):
            name = "+".join(group)
            if deadline is not None and deadline - time.monotonic() < 5:
                info["suites"].append({"name": name, "status": "NOT RUN (budget spent)", "rc": None,
                                       "wall_s": 0.0, "failures": [],
                                       "error": "the time budget was spent before it started"})
                continue
            rec = run_suite(name, [files[s] for s in group], pytest_args, Path(tmp), rootdir, env, deadline)
            benchmarks += rec.pop("benchmarks")
            mi = rec.pop("machine_info")
            machine_info = machine_info or mi
            info["suites"].append(rec)
    info["wall_s"] = round(time.monotonic() - t0, 1)

    data = {**(machine_info or {}), "benchmarks": benchmarks,
            "datetime": dt.datetime.now(dt.timezone.utc).isoformat(), "fer_bench": info}
    json_path.write_text(json.dumps(data, indent=2, default=str))
    from fer_kernels.benchmarks import report

    table = report.rows(report.aggregate(report.load(json_path)))
    title = f"{machine}, {dt.date.today().isoformat()}, `fer-bench {argv_str}`"
    md = report.markdown(table, title, info)
    md_path.write_text(md)
    print(md)
    print(f"json: {json_path}\nreport: {md_path}")
    if table:  # the chart is optional (the plot extra); the table and the JSON are the results
        no_plot = missing_modules("matplotlib")
        if no_plot:
            print(message("fer-bench: no chart", "plot", no_plot), file=sys.stderr)
        else:
            report.chart(table, png_path)
            print(f"chart: {png_path}")
    bad = [s for s in info["suites"] if s["status"] not in ("ok", "no benchmarks selected")]
    if bad:
        print("fer-bench: " + "; ".join(f"{s['name']}: {s['status']}" for s in bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
