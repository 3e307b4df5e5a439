#!/usr/bin/env python3
"""``make gpu-aot-check``: compile every Triton kernel the public ops launch for real NVIDIA targets, no GPU needed.

Driver (the default): for each Triton asked for (``--triton pinned newest``: the version the CUDA build of the
pinned torch requires, read from that wheel's metadata on PyPI, and the newest release), make or reuse a cached
venv that holds that Triton (``~/.cache/fer-kernels/aot/triton-<version>``; torch comes from the interpreter
running this script, through a .pth file rewritten each run), and run this script in it with ``--here``.

Worker (``--here``), under whatever Triton is importable:
1. Record. The public ops (dense_block, fusion_conv, transition, bilinear_pool, bilinear_classifier; forward and
   autograd backward; training and eval) run with ``backend="triton"`` on CPU tensors (``small`` and ``bench``
   shapes) and on meta tensors (``large`` shapes, past 2^31 elements or 65535 samples: nothing is allocated).
   ``JITFunction.run`` is replaced by a recorder, so no kernel executes: each launch's kernel, arguments and grid
   are kept, exactly as the launchers issue them for a GPU (``fer_kernels.triton._common.on_gpu`` answers True).
2. Compile each distinct specialisation (typed by Triton's own binder) with ``triton.compile`` for sm_80 and
   sm_90, down to a cubin with Triton's ptxas, in every dtype the ops accept on a GPU plus float64.
3. Check. Fails on: a compile error; shared memory above the target's per-block limit; a grid beyond CUDA's
   limits (x < 2^31, y and z <= 65535); an int32 value in the kernel's integer arithmetic that can leave the int32
   range at a recorded launch (interval analysis of the TTIR from the known arguments and grid: program ids,
   ranges, loop bounds; 64-bit values are not bounded). Prints registers, spills and shared memory per kernel.

Exit status 0 when everything compiles and passes; 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FER_KERNELS_CACHE", Path.home() / ".cache" / "fer-kernels"))
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # per-block opt-in shared memory, bytes (A100, H100)
GPU = {80: "A100", 90: "H100"}
GRID_LIMIT = (2**31 - 1, 65535, 65535)
INT32 = (-(2**31), 2**31 - 1)
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}


# ================================================================================================ driver


def _pypi_json(url: str, accept: str | None = None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read().decode())


def _cached(name: str, fetch) -> str:
    """``fetch()``, remembered in the cache; the cached answer when PyPI cannot be reached."""
    path = CACHE / "aot" / name
    try:
        value = fetch()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        return value
    except Exception as exc:  # offline: the last answer, or a clear error
        if path.exists():
            print(f"gpu-aot-check: PyPI unreachable ({exc}); using the cached answer in {path}", flush=True)
            return path.read_text().strip()
        raise SystemExit(f"gpu-aot-check: cannot read {name} from PyPI ({exc}) and nothing is cached; pass "
                         "--triton VERSION explicitly") from None


def pinned_triton(torch_version: str) -> str:
    """The Triton that the CUDA build of torch ``torch_version`` requires: its wheel's Requires-Dist (PEP 658
    metadata of the manylinux x86_64 wheel for this Python on PyPI, which is the CUDA build)."""

    def fetch():
        tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
        index = _pypi_json("https://pypi.org/simple/torch/", "application/vnd.pypi.simple.v1+json")
        files = [f for f in index["files"] if f["filename"].startswith(f"torch-{torch_version}-{tag}-{tag}-")
                 and "manylinux" in f["filename"] and f["filename"].endswith("x86_64.whl")]
        if not files:
            raise RuntimeError(f"no manylinux x86_64 wheel of torch {torch_version} for {tag} on PyPI")
        with urllib.request.urlopen(files[0]["url"] + ".metadata", timeout=60) as r:
            meta = r.read().decode()
        m = re.search(r"^Requires-Dist: triton ?==([\w.]+)", meta, re.M)
        if not m:
            raise RuntimeError(f"{files[0]['filename']} does not pin triton")
        return m.group(1)

    return _cached(f"pinned-triton-torch-{torch_version}.txt", fetch)


def newest_triton() -> str:
    return _cached("newest-triton.txt", lambda: _pypi_json("https://pypi.org/pypi/triton/json")["info"]["version"])


def triton_venv(version: str) -> Path:
    """A cached venv with triton==version; torch and the rest come from this interpreter's site-packages."""
    import site
    import sysconfig

    venv = CACHE / "aot" / f"triton-{version}-py{sys.version_info.major}{sys.version_info.minor}"
    py = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        print(f"gpu-aot-check: making {venv} (triton=={version})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        target = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target,
                        f"triton=={version}"], check=True)
        (venv / ".ready").write_text(version)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # torch, numpy and fer_kernels' other imports from this interpreter, after the venv's own triton
    here = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    Path(purelib, "fer_kernels_host.pth").write_text("\n".join(dict.fromkeys(here)) + "\n")
    return py


def drive(args) -> int:
    versions = []
    for spec in args.triton:
        if spec == "pinned":
            v = pinned_triton(args.torch_version)
            print(f"gpu-aot-check: torch {args.torch_version} (CUDA build) pins triton=={v}", flush=True)
        elif spec == "newest":
            v = newest_triton()
            print(f"gpu-aot-check: newest triton on PyPI: {v}", flush=True)
        else:
            v = spec
        if v not in versions:
            versions.append(v)
    status = 0
    for v in versions:
        py = triton_venv(v)
        cmd = [str(py), str(Path(__file__).resolve()), "--here", "--arch", *map(str, args.arch), "--dtypes",
               *args.dtypes, "--shapes", *args.shapes, "--jobs", str(args.jobs)]
        if args.report:
            cmd += ["--report", str(Path(args.report).with_suffix(f".triton-{v}.md"))]
        print(f"\n=== triton {v}: {' '.join(cmd)}", flush=True)
        rc = subprocess.run(cmd, cwd=REPO).returncode
        print(f"=== triton {v}: {'passed' if rc == 0 else 'FAILED'}", flush=True)
        status |= rc != 0
    return status


# ================================================================================================ recording


class Arg:
    """A recorded tensor argument: what Triton's binder reads (dtype, data_ptr), and how many elements the
    tensor spans from its pointer, so the recorded launch keeps no tensor alive."""

    def __init__(self, t):
        self.dtype = t.dtype
        self._ptr = t.data_ptr() if t.device.type != "meta" else 1 << 20  # meta: any 16-byte-aligned address
        self.span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) if t.numel() else 0

    def data_ptr(self):
        return self._ptr


class Launch:
    def __init__(self, fn, grid, args, kwargs, case):
        self.fn, self.grid, self.args, self.kwargs, self.case = fn, grid, args, kwargs, case


@contextlib.contextmanager
def recording(launches: list, case: list):
    """Launches are recorded instead of run; the launchers take their GPU paths on CPU and meta tensors."""
    import torch
    import triton.runtime.jit as jit

    import fer_kernels.backends as backends
    import fer_kernels.ops._common as common
    import fer_kernels.triton._common as tcommon

    saved = (jit.JITFunction.run, backends.why_not, common.FLOAT_DTYPES, tcommon.on_gpu)
    why_not = backends.why_not
    cuda_available = torch.cuda.is_available

    def run(self, *args, grid, warmup, **kwargs):
        g = grid(dict(zip(self.arg_names, args))) if callable(grid) else grid
        args = tuple(Arg(a) if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: Arg(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        launches.append(Launch(self, tuple(int(x) for x in g), args, kwargs, case[0]))

    jit.JITFunction.run = run
    backends.why_not = lambda name, device: None if name == "triton" else why_not(name, device)
    common.FLOAT_DTYPES = common.GPU_DTYPES
    tcommon.on_gpu = lambda t: True
    torch.cuda.is_available = lambda: True  # host code that asks (e.g. for a message) sees a GPU machine
    # Meta tensors reach a triton_op's fake impl, which is the launcher itself with its launches traced as a
    # higher-order op; with wrapping off they go straight to JITFunction.run, i.e. to the recorder.
    from torch._library.triton import set_wrap_triton_enabled

    try:
        with set_wrap_triton_enabled(False):
            yield
    finally:
        jit.JITFunction.run, backends.why_not, common.FLOAT_DTYPES, tcommon.on_gpu = saved
        torch.cuda.is_available = cuda_available


def _grad(out):
    out.float().sum().backward()


def cases(torch, dtype, shapes: str):
    """(name, thunk) per call of a public op, forward and backward; ``shapes``: small | bench | large."""
    import fer_kernels as fk

    dev = "meta" if shapes == "large" else "cpu"

    def t(*shape, grad=True):
        return torch.randn(*shape, dtype=dtype, device=dev).requires_grad_(grad)

    # dense block: (N, C0, HW, layers, growth)
    dense = {"small": [(2, 5, 7, 2, 3), (2, 3, 1, 1, 12)], "bench": [(64, 24, 48, 6, 12)],
             "large": [(12000, 24, 48, 6, 12), (70000, 24, 4, 2, 12)]}[shapes]
    for n, c0, hw, layers, k in dense:
        block = fk.nn.DenseBlock(layers, c0, growth_rate=k, bn_size=4).to(device=dev, dtype=dtype)
        for training in (True, False):
            block.train(training)
            x = t(n, c0, hw, hw)
            yield f"dense_block {'train' if training else 'eval'} ({n},{c0},{hw},{hw}) L={layers} k={k}", \
                lambda x=x, block=block: _grad(block(x, backend="triton"))
    # fusion conv: (N, C per input, H, W, C_out, pool, bias, channels_last)
    fusion = {"small": [(2, 3, 7, 5, 5, 2, True, False), (1, 13, 1, 1, 3, 1, False, False)],
              "bench": [(64, 48, 24, 24, 48, 2, True, False), (64, 48, 25, 25, 48, 2, False, False),
                        (64, 48, 24, 24, 48, 2, True, True)],
              "large": [(24000, 48, 48, 48, 48, 2, True, False), (70000, 8, 4, 4, 8, 2, True, False)]}[shapes]
    for n, c, h, w, co, p, bias, cl in fusion:
        xs = [t(n, c, h, w) for _ in range(2)]
        if cl:
            xs = [x.detach().to(memory_format=torch.channels_last).requires_grad_() for x in xs]
        wt, b = t(co, 2 * c, 1, 1), t(co) if bias else None
        yield f"fusion_conv 2x({n},{c},{h},{w})->{co} pool {p}{' bias' if bias else ''}{' channels_last' * cl}", \
            lambda xs=xs, wt=wt, b=b, p=p: _grad(fk.fusion_conv(xs, wt, b, p, backend="triton"))
    # transition: (N, C, HW, C_out, channels_last)
    trans = {"small": [(3, 7, 5, 4, False), (2, 1, 2, 3, False)],
             "bench": [(64, 96, 48, 48, False), (64, 96, 48, 48, True)],
             "large": [(12000, 96, 48, 48, False), (70000, 8, 4, 4, False)]}[shapes]
    for n, c, hw, co, cl in trans:
        x = t(n, c, hw, hw)
        if cl:
            x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        g, beta, wt = t(c), t(c), t(co, c, 1, 1)
        rm, rv = torch.zeros(c, dtype=dtype, device=dev), torch.ones(c, dtype=dtype, device=dev)
        for training in (True, False):
            yield f"transition {'train' if training else 'eval'} ({n},{c},{hw},{hw})->{co}{' channels_last' * cl}", \
                lambda x=x, g=g, beta=beta, wt=wt, rm=rm, rv=rv, tr=training: _grad(
                    fk.transition(x, g, beta, rm, rv, wt, None, tr, 0.1, 1e-5, 2, backend="triton"))
    # bilinear: (N, Ca, Cb, HW, K)
    bil = {"small": [(2, 5, 3, 3, 7), (1, 13, 7, 1, 1)], "bench": [(32, 512, 512, 4, 7), (32, 512, 512, 28, 200)],
           "large": [(4, 512, 512, 4, 8200), (70000, 16, 16, 2, 7), (9000, 512, 512, 28, 7)]}[shapes]
    for n, ca, cb, hw, k in bil:
        a, b = t(n, ca, hw, hw), t(n, cb, hw, hw)
        wt, bias = t(k, ca * cb), t(k)
        yield f"bilinear_classifier ({n},{ca}|{cb},{hw},{hw}) -> {k}", \
            lambda a=a, b=b, wt=wt, bias=bias: _grad(fk.bilinear_classifier(a, b, wt, bias, backend="triton"))
        for flags in ((True, True, False), (False, False, True)):
            yield f"bilinear_pool ({n},{ca}|{cb},{hw},{hw}) signed/l2/mean={flags}", \
                lambda a=a, b=b, f=flags: _grad(fk.bilinear_pool(a, b, 1e-5, *f, backend="triton"))


def record(dtypes, shapes):
    import torch

    launches, case, errors = [], [None], []
    with recording(launches, case):
        for shape_set in shapes:
            for dname in (["fp32"] if shape_set == "large" else dtypes):  # offsets and grids do not depend on it
                for name, fn in cases(torch, getattr(torch, DTYPES[dname]), shape_set):
                    case[0] = f"{shape_set}: {name} {dname}"
                    try:
                        fn()
                    except Exception as exc:  # a launcher failing before any compile is a finding too
                        errors.append((case[0], f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    return launches, errors


# ================================================================================================ compiling


def specialize(launch, backend):
    """(options, signature, constexprs, attrs) exactly as ``JITFunction.run`` computes them for this launch."""
    import triton.knobs as knobs
    from triton.runtime.jit import create_function_from_signature

    fn, kwargs = launch.fn, dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # what run() adds, where Triton has it
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    bound, spec, options = create_function_from_signature(fn.signature, fn.params, backend)(*launch.args, **kwargs)
    return fn._pack_args(backend, kwargs, bound, spec, options)


def ptxas_usage(ptx: str, arch: int, options) -> dict:
    """Registers, spill bytes and stack of the PTX, from Triton's own ptxas (-v) with the flags Triton uses."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        Path(d, "k.ptx").write_text(ptx)
        # the flags Triton's make_cubin passes (its --regAllocOptLevel=2 changes the spills reported)
        extra = options.ptx_options.split() if getattr(options, "ptx_options", None) else []
        cmd = [get_ptxas(arch).path, "-v", *([] if options.enable_fp_fusion else ["--fmad=false"]),
               "--regAllocOptLevel=2", *extra, f"--gpu-name={sm_arch_from_capability(arch)}",
               str(Path(d, "k.ptx")), "-o", str(Path(d, "k.o"))]
        log = subprocess.run(cmd, capture_output=True, text=True).stderr
    out = {}
    if m := re.search(r"Used (\d+) registers", log):
        out["regs"] = int(m.group(1))
    if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log):
        out["stack"], out["spill"] = int(m.group(1)), int(m.group(2)) + int(m.group(3))
    return out


# ---- int32 interval analysis of the TTIR ----

_OP = re.compile(r"^\s*(%[\w.#]+)(?::\d+)? = ([\w.]+)\s*(.*)$")
_FOR = re.compile(r"scf\.for (%[\w.#]+) = (%[\w.#]+) to (%[\w.#]+) step (%[\w.#]+)")
_ARG = re.compile(r"(%[\w.#]+): (i32|i64|i1|!tt\.ptr<[^>]*>)")
_SAME = {"tt.splat", "tt.broadcast", "tt.expand_dims", "tt.reshape", "tt.trans", "ttg.convert_layout",
         "arith.index_cast", "arith.extsi", "arith.extui", "arith.trunci"}


def _width(rest: str) -> int | None:
    ty = rest.rsplit(" loc(", 1)[0]
    ty = ty.split(" to ")[-1] if " to " in ty else ty.rsplit(" : ", 1)[-1]
    m = re.search(r"\bi(1|8|16|32|64)\b|x(i1|i8|i16|i32|i64)>", ty)
    if not m:
        return None
    return int((m.group(1) or m.group(2)).lstrip("i"))


def int32_overflows(ttir: str, values: dict, grid) -> list[str]:
    """Integer ops of the kernel whose int32 result can leave the int32 range, by interval arithmetic.

    ``values``: the kernel's scalar int arguments by name (known at the launch); program ids range over the
    grid. Values the analysis cannot bound (loads, loop-carried integers, 64-bit arithmetic) are unknown and
    never reported. Returns one line per overflowing op: the op, its interval and its source location.
    """
    env: dict[str, tuple[int, int]] = {}
    found = []
    header = re.search(r"tt\.func public @\w+\((.*?)\) attributes", ttir, re.S)
    if header:
        for name, ty in _ARG.findall(header.group(1)):
            key = name[1:]
            if ty in ("i32", "i64") and isinstance(values.get(key), int):
                env[name] = (values[key], values[key])
    locs = dict(re.findall(r"^(#loc\d+) = loc\((.*)\)$", ttir, re.M))
    for line in ttir.splitlines():
        if m := _FOR.search(line):
            iv, lo, hi, _ = m.groups()
            if lo in env and hi in env:
                env[iv] = (env[lo][0], max(env[lo][0], env[hi][1] - 1))
            continue
        m = _OP.match(line)
        if not m:
            continue
        res, op, rest = m.groups()
        operands = re.findall(r"%[\w.#]+", rest.split(" : ")[0])
        width = _width(rest)
        r = None
        if op == "arith.constant":
            c = re.match(r"(?:dense<)?(-?\d+)>? : (?:i(?:32|64)|tensor<[\dx]*i(?:32|64)>)", rest)
            r = (int(c.group(1)),) * 2 if c else None
        elif op == "tt.get_program_id":
            axis = "xyz".index(rest.split()[0])
            r = (0, (grid[axis] if axis < len(grid) else 1) - 1)
        elif op == "tt.make_range":
            s, e = re.search(r"end = (\d+).*start = (\d+)", rest).groups()
            r = (int(e) - 1, int(s))[::-1]
        elif op in _SAME and operands and operands[0] in env:
            r = env[operands[0]]
        elif op in ("arith.addi", "arith.subi", "arith.muli", "arith.divsi", "arith.divui", "arith.remsi",
                    "arith.remui", "arith.maxsi", "arith.minsi", "arith.select") and all(
                o in env for o in operands[-2:]) and len(operands) >= 2:
            (a0, a1), (b0, b1) = env[operands[-2]], env[operands[-1]]
            if op == "arith.addi":
                r = (a0 + b0, a1 + b1)
            elif op == "arith.subi":
                r = (a0 - b1, a1 - b0)
            elif op == "arith.muli":
                p = (a0 * b0, a0 * b1, a1 * b0, a1 * b1)
                r = (min(p), max(p))
            elif op in ("arith.divsi", "arith.divui") and b0 > 0:
                r = (min(a0 // b0, a0 // b1), max(a1 // b0, a1 // b1))
            elif op in ("arith.remsi", "arith.remui") and b0 > 0:
                r = (0, min(b1 - 1, max(a1, 0))) if a0 >= 0 else (-(b1 - 1), b1 - 1)
            elif op == "arith.maxsi":
                r = (max(a0, b0), max(a1, b1))
            elif op == "arith.minsi":
                r = (min(a0, b0), min(a1, b1))
            elif op == "arith.select":
                r = (min(a0, b0), max(a1, b1))
        if r is None:
            continue
        env[res] = r
        inputs_fit = all(INT32[0] <= env[o][0] and env[o][1] <= INT32[1] for o in operands if o in env)
        if width == 32 and op != "arith.trunci" and inputs_fit and (r[0] < INT32[0] or r[1] > INT32[1]):
            loc = re.search(r"loc\((#loc\d+)\)\s*$", line)  # only where the overflow starts, at its source line
            found.append(f"{op} -> [{r[0]}, {r[1]}] at {_where(loc.group(1), locs) if loc else '?'}")
    return found


def _where(ref: str, locs: dict, depth: int = 0) -> str:
    """The source position of a TTIR location reference (through names and call sites)."""
    text = locs.get(ref, ref)
    if depth > 8:
        return text
    if m := re.fullmatch(r'"([^"]+)":(\d+):(\d+)', text):
        return f"{Path(m.group(1)).name}:{m.group(2)}"
    if m := re.search(r"(#loc\d+)", text):  # "name"(#locN) or callsite(#locA at #locB): the first reference
        return _where(m.group(1), locs, depth + 1)
    return text


def compile_rows(launches, archs, jobs: int, job: int):
    """Compile this job's share of the distinct specialisations; returns (rows, failures)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    rows, seen, failures = [], {}, 0
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        for la in launches:
            try:
                options, signature, constexprs, attrs = specialize(la, backend)
            except Exception as exc:
                rows.append({"arch": arch, "kernel": la.fn.__name__, "case": la.case, "ok": False,
                             "error": f"specialise: {type(exc).__name__}: {exc}"})
                continue
            key = (la.fn.fn.__module__, la.fn.__name__, tuple(signature.items()),
                   tuple(sorted((k, repr(v)) for k, v in constexprs.items())),
                   tuple(sorted((k, repr(v)) for k, v in attrs.items())), repr(sorted(options.__dict__.items())),
                   arch)
            ints = {la.fn.arg_names[i]: a for i, a in enumerate(la.args) if isinstance(a, int)
                    and not isinstance(a, bool)}
            if key in seen:
                seen[key]["launches"].append((la.case, la.grid, ints))
                continue
            row = {"arch": arch, "kernel": la.fn.__name__, "case": la.case,
                   "dtypes": "/".join(sorted({v[1:] for v in signature.values() if v.startswith("*")})),
                   "warps": options.num_warps, "stages": options.num_stages, "launches": [(la.case, la.grid, ints)],
                   "mine": len(seen) % jobs == job}
            seen[key] = row
            rows.append(row)
            if not row["mine"]:
                continue
            t0 = time.time()
            try:
                ck = triton.compile(ASTSource(la.fn, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
                row["shared"] = ck.metadata.shared
                row["ttir"] = ck.asm["ttir"]
                row.update(ptxas_usage(ck.asm["ptx"], arch, options))
                row["ok"] = True
            except Exception as exc:
                cause, text = exc, f"{type(exc).__name__}: {str(exc).strip()[:1500]}"
                for _ in range(4):  # CompilationError keeps the reason in its cause
                    cause = cause.__cause__ or cause.__context__
                    if cause is None:
                        break
                    tb = traceback.extract_tb(cause.__traceback__)[-1] if cause.__traceback__ else None
                    where = f" [{Path(tb.filename).name}:{tb.lineno}: {(tb.line or '').strip()}]" if tb else ""
                    text += f"\n  caused by {type(cause).__name__}: {str(cause).strip()[:400]}{where}"
                row["ok"], row["error"] = False, text
            row["secs"] = time.time() - t0
    return [r for r in rows if r.get("mine", True)], failures


def check_rows(rows) -> list[str]:
    """Failures of the compiled rows: errors, shared memory, grids, int32 overflows."""
    bad, reported = [], set()
    for r in rows:
        name = f"sm_{r['arch']} {r['kernel']} ({r['case']})"
        if not r.get("ok"):
            bad.append(f"compile {name}: {r.get('error')}")
            continue
        limit = SHARED_LIMIT[r["arch"]]
        if r["shared"] > limit:
            bad.append(f"shared memory {name}: {r['shared']} B > {limit} B per block")
        for case, grid, ints in r["launches"]:
            g = tuple(grid) + (1,) * (3 - len(grid))
            over = [f"{'xyz'[i]}={g[i]} > {GRID_LIMIT[i]}" for i in range(3) if g[i] > GRID_LIMIT[i]]
            if over or min(g) < 1 and min(g) != 0:
                bad.append(f"grid {r['kernel']} in {case}: {g} ({', '.join(over) or 'negative'})")
            for o in int32_overflows(r["ttir"], ints, g):
                where = o.rsplit(" at ", 1)[-1]
                if (r["kernel"], where) not in reported:  # one line per kernel and source line
                    reported.add((r["kernel"], where))
                    bad.append(f"int32 overflow in {r['kernel']} at {where}: {o.rsplit(' at ', 1)[0]} "
                               f"(first seen in {case}, grid {g})")
    return list(dict.fromkeys(bad))


def work(args) -> int:
    os.environ.pop("TRITON_INTERPRET", None)  # the real compiler: must be off before triton is imported
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset (same default)
    os.environ["FER_KERNELS_DISABLE_C"] = "1"  # the C++ library plays no part; keep the run independent of it
    cache = tempfile.mkdtemp(prefix="fer_aot_")
    os.environ["TRITON_CACHE_DIR"] = cache
    sys.path.insert(0, str(REPO))
    import torch
    import triton

    import fer_kernels  # noqa: F401

    torch.set_num_threads(1)
    t0 = time.time()
    print(f"torch {torch.__version__}, triton {triton.__version__}, targets "
          f"{' '.join(f'sm_{a}' for a in args.arch)}, dtypes {' '.join(args.dtypes)} (large shapes: fp32), "
          f"shapes {' '.join(args.shapes)}", flush=True)
    launches, errors = record(args.dtypes, args.shapes)
    print(f"recorded {len(launches)} launches in {time.time() - t0:.1f} s", flush=True)
    failures = [f"record {case}: {msg}" for case, msg, _ in errors]
    for case, _, tb in errors[:3]:
        print(f"--- traceback of the launcher failure in {case}:\n{tb}")

    # compile in `jobs` processes: each child records again (cheap) and compiles its share
    if args.jobs > 1 and args.job is None:
        procs = []
        outs = []
        for j in range(args.jobs):
            out = Path(cache, f"rows{j}.json")
            outs.append(out)
            cmd = [sys.executable, __file__, "--here", "--job", str(j), "--jobs", str(args.jobs), "--rows", str(out),
                   "--arch", *map(str, args.arch), "--dtypes", *args.dtypes, "--shapes", *args.shapes]
            procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL))
        rc = [p.wait() for p in procs]
        if any(rc):
            failures.append(f"compile worker exit status {rc}")
        rows = [r for out in outs if out.exists() for r in json.loads(out.read_text())]
    else:
        rows, _ = compile_rows(launches, args.arch, args.jobs, args.job or 0)
        if args.rows:
            Path(args.rows).write_text(json.dumps(rows))
            return 0
    failures += check_rows(rows)

    rows.sort(key=lambda r: (r["kernel"], r["arch"], r.get("dtypes", ""), r["case"]))
    lines = ["| kernel | target | specialisations | dtypes | max registers | max spill bytes | max shared memory |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    for r in rows:
        s = summary.setdefault((r["kernel"], r["arch"]), {"n": 0, "dt": set(), "regs": 0, "spill": 0, "smem": 0})
        s["n"] += 1
        s["dt"].add(r.get("dtypes", "?"))
        s["regs"] = max(s["regs"], r.get("regs", 0))
        s["spill"] = max(s["spill"], r.get("spill", 0))
        s["smem"] = max(s["smem"], r.get("shared", 0))
        if args.verbose:
            print(f"{'ok  ' if r.get('ok') else 'FAIL'} sm_{r['arch']} {r['kernel']:<34} {r.get('dtypes', ''):<10} "
                  f"w{r.get('warps')} s{r.get('stages')} regs {r.get('regs', '?')} spill {r.get('spill', '?')} "
                  f"smem {r.get('shared', '?')} ({r['case']})")
    for (kernel, arch), s in sorted(summary.items()):
        lines.append(f"| {kernel} | sm_{arch} ({GPU[arch]}) | {s['n']} | {', '.join(sorted(s['dt']))} | {s['regs']} | "
                     f"{s['spill']} | {s['smem']} B ({100 * s['smem'] / SHARED_LIMIT[arch]:.0f}%) |")
    worst = {}
    for r in rows:
        if r.get("spill"):
            key = (r["kernel"], r["arch"], r.get("dtypes", "?"))
            worst[key] = max(worst.get(key, 0), r["spill"])
    spills = [f"{k} sm_{a} {d}: {b} B" for (k, a, d), b in sorted(worst.items())]
    table = "\n".join(lines)
    print("\n" + table)
    if spills:
        print("\nregister spills: " + "; ".join(spills))
    print(f"\n{len(rows)} compilations of {len(summary)} kernel x target pairs, {len(failures)} failure(s), "
          f"{time.time() - t0:.0f} s (triton {triton.__version__})")
    for f in failures:
        print("FAIL " + f.replace("\n", "\n     "))
    if args.report:
        Path(args.report).write_text(f"triton {triton.__version__}, torch {torch.__version__}, "
                                     f"{len(rows)} compilations, {len(failures)} failure(s)\n\n{table}\n")
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--triton", nargs="+", default=["pinned", "newest"],
                    help="Tritons to check: pinned (what the CUDA build of --torch-version requires), newest, or "
                         "versions (default: pinned newest)")
    ap.add_argument("--torch-version", default=os.environ.get("TORCH_VERSION", "2.13.0"))
    ap.add_argument("--here", action="store_true", help="check under the Triton importable here (no venv)")
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT))
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16", "fp64"], choices=sorted(DTYPES))
    ap.add_argument("--shapes", nargs="+", default=["small", "bench", "large"], choices=["small", "bench", "large"])
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="compile processes")
    ap.add_argument("--report", default=None, help="write the per-kernel table (markdown) here")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per compiled specialisation")
    ap.add_argument("--job", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return work(args) if args.here else drive(args)


if __name__ == "__main__":
    sys.exit(main())
