#!/usr/bin/env python3
"""Compiles the CUDA half of fer_kernels._C against the headers of a CUDA build of torch.

`make cuda-bindings-check`. Why: the CI torch is a CPU wheel, which ships no c10/cuda or ATen/cuda headers,
so csrc/cuda/*_binding.cpp is never compiled there; `make cuda-check` compiles only the .cu files, which
include no torch header. This tool fetches the CUDA wheel of the pinned torch once (pip download --no-deps,
~0.5 GB), keeps only its headers (torch/include/**) in a cache outside the repository, and compiles to object
files, with no link and no GPU:

  * csrc/cuda/*_binding.cpp and csrc/fer_kernels.cpp with the C++ compiler,
  * csrc/cuda/*.cu with nvcc for each --arch (default sm_80 and sm_90),

with the flags setup.py's CUDAExtension gets from torch.utils.cpp_extension (torch 2.13): -std=c++20,
-fPIC, -DTORCH_API_INCLUDE_EXTENSION_H, -DTORCH_EXTENSION_NAME=_C, -DFER_KERNELS_WITH_CUDA=1, setup.py's
cxx/nvcc flags, torch's COMMON_NVCC_FLAGS, and the include dirs csrc/, <torch>/include,
<torch>/include/torch/csrc/api/include, the Python include dir and the CUDA include dir. One line per file
(ok / FAIL plus the compiler's error lines), a summary, exit 0 only when every file compiles (1: a file
failed; 2: setup error: no nvcc, download failed).

Cache: --cache-dir, else $FER_KERNELS_CUDA_TORCH_CACHE, else
${XDG_CACHE_HOME:-~/.cache}/fer-kernels/cuda-torch-<version>. A second run finds the headers there and
downloads nothing. The wheel is deleted after unpacking unless --keep-wheel. The local pip configuration
(find-links, constraints) is bypassed for the download only.

Usage: python tools/cuda_bindings_check.py [--torch-version 2.13.0] [--arch 80 90] [-j 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "FER_KERNELS_CUDA_TORCH_CACHE"
MARKER = "fer-kernels-cache.json"  # written last: its presence means the cache is complete
CACHE_LAYOUT = 1

# setup.py (non-DEBUG build): extra_compile_args and define_macros of the CUDAExtension.
SETUP_CXX_FLAGS = ["-O3", "-ffp-contract=fast", "-fopenmp", "-DFER_KERNELS_WITH_CUDA=1"]
SETUP_NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]
SETUP_DEFINES = ["-DFER_KERNELS_WITH_CUDA=1"]
# torch.utils.cpp_extension (2.13): what BuildExtension adds to every CUDAExtension compile.
TORCH_DEFINES = ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]
CXX_STD = "-std=c++20"  # cpp_extension's default since torch 2.10; the 2.13 headers require C++20
ERROR_LINES = 25  # compiler lines shown per failing file; the full log is kept beside the object


class SetupError(Exception):
    """Anything that stops the check before a file is compiled (exit 2)."""


def log(msg: str) -> None:
    print(f"cuda-bindings-check: {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------- cache


def default_cache_dir(version: str) -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fer-kernels" / f"cuda-torch-{version}"


def read_cache(cache: Path, version: str) -> dict | None:
    try:
        meta = json.loads((cache / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("torch_version") != version or meta.get("layout") != CACHE_LAYOUT:
        return None
    if not (cache / "torch" / "include" / "c10" / "cuda" / "CUDAGuard.h").is_file():
        return None
    return meta


def pip_download(version: str, dest: Path, index_url: str, platform_tag: str) -> Path:
    """Fetches the torch wheel with pip, ignoring the local wheel folder and pip config (constraints)."""
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    abi = f"cp{py}" + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        platform_tag,
        "--python-version",
        py,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "--index-url",
        index_url,
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        f"torch=={version}",
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PIP_FIND_LINKS",
            "PIP_CONSTRAINT",
            "PIP_INDEX_URL",
            "PIP_EXTRA_INDEX_URL",
            "PIP_NO_INDEX",
            "PIP_REQUIRE_VIRTUALENV",
        )
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    log(f"downloading torch=={version} ({abi}, {platform_tag}) from {index_url} (once; about 0.5 GB)")
    log("  " + " ".join(shlex.quote(c) for c in cmd))
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wheels = sorted(dest.glob("torch-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise SetupError(f"pip download of torch=={version} failed (exit {proc.returncode}):\n{tail}")
    log(f"  got {wheels[0].name} ({wheels[0].stat().st_size / 2**20:.0f} MiB) in {time.time() - t0:.0f}s")
    return wheels[0]


def unpack_headers(wheel: Path, cache: Path, version: str) -> dict:
    """Extracts torch/include/** (and reads a few build facts) from the wheel into cache, atomically."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        if "torch/include/c10/cuda/CUDAGuard.h" not in names:
            raise SetupError(f"{wheel.name} has no torch/include/c10/cuda headers: not a CUDA build of torch")
        text = lambda name: zf.read(name).decode("utf-8", "replace") if name in names else ""
        abi_m = re.search(r"_GLIBCXX_USE_CXX11_ABI=([01])", text("torch/share/cmake/Torch/TorchConfig.cmake"))
        cuda_m = re.search(r"^cuda\s*(?::\s*\S+\s*)?=\s*'([^']*)'", text("torch/version.py"), re.M)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache.parent))
        try:
            members = [n for n in names if n.startswith("torch/include/") and not n.endswith("/")]
            for name in members:
                zf.extract(name, tmp)
            meta = {
                "layout": CACHE_LAYOUT,
                "torch_version": version,
                "wheel": wheel.name,
                "torch_cuda": cuda_m.group(1) if cuda_m else None,
                # torch >= 2.7 wheels use the C++11 ABI only (older TorchConfig.cmake files say which).
                "cxx11_abi": int(abi_m.group(1)) if abi_m else 1,
                "cxx11_abi_source": "TorchConfig.cmake" if abi_m else "default for torch >= 2.7 wheels",
                "headers": len(members),
            }
            (tmp / MARKER).write_text(json.dumps(meta, indent=1) + "\n")
            if cache.exists():
                shutil.rmtree(cache)
            tmp.rename(cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def ensure_headers(args: argparse.Namespace) -> tuple[Path, dict]:
    cache = args.cache_dir.expanduser().resolve()
    meta = read_cache(cache, args.torch_version)
    if meta is not None:
        log(f"torch {args.torch_version} CUDA headers: {cache} (cached, {meta['wheel']})")
        return cache, meta
    cache.parent.mkdir(parents=True, exist_ok=True)
    if args.wheel:
        wheel, dl_dir = args.wheel.resolve(), None
    else:
        dl_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=cache.parent))
        try:
            wheel = pip_download(args.torch_version, dl_dir, args.index_url, args.platform)
        except BaseException:
            shutil.rmtree(dl_dir, ignore_errors=True)
            raise
    try:
        meta = unpack_headers(wheel, cache, args.torch_version)
        if args.keep_wheel and dl_dir is not None:
            shutil.move(str(wheel), cache / wheel.name)
            log(f"  kept the wheel: {cache / wheel.name}")
    finally:
        if dl_dir is not None:
            shutil.rmtree(dl_dir, ignore_errors=True)
    wheel_note = "" if dl_dir is None else "; wheel kept" if args.keep_wheel else "; wheel deleted"
    log(
        f"torch {args.torch_version} CUDA headers: {cache} (unpacked {meta['headers']} files from "
        f"{meta['wheel']}, built with CUDA {meta['torch_cuda']}{wheel_note})"
    )
    return cache, meta


# ---------------------------------------------------------------------------------------------------- compile


def find_nvcc(explicit: str | None) -> str:
    if explicit:  # --nvcc: that one or an error, no fallback
        found = shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
        if not found:
            raise SetupError(f"nvcc not found: --nvcc {explicit} is not an executable")
        return found
    cands = [os.environ.get("NVCC") or None, shutil.which("nvcc")]
    cands += [
        str(Path(os.environ[v]) / "bin" / "nvcc") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)
    ]
    cands.append("/usr/local/cuda/bin/nvcc")
    for c in cands:
        if c and (shutil.which(c) or os.access(c, os.X_OK)):
            return shutil.which(c) or c
    raise SetupError(
        "nvcc not found: install the CUDA toolkit, put nvcc on PATH, or pass --nvcc / set NVCC or CUDA_HOME"
    )


def find_cuda_include(nvcc: str) -> Path:
    """The CUDA include dir (cpp_extension: CUDA_HOME/include); nvcc may be a wrapper, so ask it too."""
    homes = [
        os.environ.get("CUDA_HOME"),
        os.environ.get("CUDA_PATH"),
        str(Path(nvcc).resolve().parent.parent),
    ]
    try:  # nvcc --dryrun prints the TOP= / INCLUDES= it would use
        out = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        ).stdout
        m = re.search(r"^#\$ TOP=(\S+)", out, re.M)
        if m:
            homes.append(m.group(1))
    except (OSError, subprocess.SubprocessError):
        pass
    homes.append("/usr/local/cuda")
    for h in homes:
        if h and (Path(h) / "include" / "cuda_runtime.h").is_file():
            return (Path(h) / "include").resolve()
    raise SetupError(f"no CUDA include dir (cuda_runtime.h) found next to {nvcc}; set CUDA_HOME")


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run(
        [nvcc, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ).stdout
    m = re.search(r"release (\S+?),", out)
    return m.group(1) if m else "?"


def error_lines(output: str) -> list[str]:
    """The compiler's error lines, each with the source line it quotes (gcc and nvcc/cudafe formats)."""
    lines = output.splitlines()
    picked: list[str] = []
    for i, line in enumerate(lines):
        if re.search(r"\berror\b|fatal|required from here|Error limit", line, re.I):
            picked.append(line)
            if (
                i + 1 < len(lines)
                and lines[i + 1].startswith(" ")
                and not re.search(r"\berror\b", lines[i + 1])
            ):
                picked.append(lines[i + 1])
    return picked or lines[-ERROR_LINES:]


def compile_one(job: dict) -> dict:
    t0 = time.time()
    proc = subprocess.run(job["cmd"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    Path(job["log"]).write_text(" ".join(shlex.quote(c) for c in job["cmd"]) + "\n\n" + proc.stdout)
    return {**job, "rc": proc.returncode, "output": proc.stdout, "seconds": time.time() - t0}


def make_jobs(args: argparse.Namespace, headers: Path, meta: dict, nvcc: str, cuda_inc: Path) -> list[dict]:
    tinc = headers / "torch" / "include"
    includes = [
        ROOT / "csrc",
        tinc,
        tinc / "torch" / "csrc" / "api" / "include",
        Path(sysconfig.get_paths()["include"]),
        cuda_inc,
    ]
    inc = [f"-I{p}" for p in includes]
    common = inc + SETUP_DEFINES + TORCH_DEFINES + [f"-D_GLIBCXX_USE_CXX11_ABI={meta['cxx11_abi']}"]
    cxx = shlex.split(args.cxx)
    archs = [a.removeprefix("sm_") for a in args.arch]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    build = args.build_dir if args.build_dir.is_absolute() else ROOT / args.build_dir
    build.mkdir(parents=True, exist_ok=True)

    sources = sorted((ROOT / "csrc" / "cuda").glob("*_binding.cpp")) + [ROOT / "csrc" / "fer_kernels.cpp"]
    jobs = []
    for src in sources:
        obj = build / (src.stem + ".o")
        cmd = (
            cxx
            + ["-c", str(src.relative_to(ROOT)), "-o", str(obj), "-fPIC"]
            + common
            + SETUP_CXX_FLAGS
            + [CXX_STD]
        )
        jobs.append(
            {
                "src": str(src.relative_to(ROOT)),
                "tool": "c++",
                "obj": str(obj),
                "log": str(obj) + ".log",
                "cmd": cmd,
            }
        )
    for src in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        obj = build / (src.stem + ".cu.o")
        cmd = (
            [nvcc, "-c", str(src.relative_to(ROOT)), "-o", str(obj)]
            + common
            + TORCH_NVCC_FLAGS
            + ["--compiler-options", "-fPIC"]
            + SETUP_NVCC_FLAGS
            + gencode
            + [CXX_STD]
        )
        jobs.append(
            {
                "src": str(src.relative_to(ROOT)),
                "tool": "nvcc " + ",".join(f"sm_{a}" for a in archs),
                "obj": str(obj),
                "log": str(obj) + ".log",
                "cmd": cmd,
            }
        )
    return jobs


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--torch-version",
        default=os.environ.get("TORCH_VERSION") or "2.13.0",
        help="torch whose CUDA headers to compile against (default: $TORCH_VERSION or 2.13.0)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where the headers are kept (default: ${CACHE_ENV} or ~/.cache/fer-kernels/cuda-torch-<ver>)",
    )
    p.add_argument(
        "--build-dir",
        type=Path,
        default=Path("build/cuda-bindings-check"),
        help="object files and compiler logs (default: build/cuda-bindings-check)",
    )
    p.add_argument("--keep-wheel", action="store_true", help="keep the downloaded wheel in the cache dir")
    p.add_argument(
        "--wheel", type=Path, default=None, help="unpack this local torch wheel instead of downloading"
    )
    p.add_argument(
        "--index-url", default="https://pypi.org/simple", help="index to download the CUDA wheel from"
    )
    p.add_argument("--platform", default=f"manylinux_2_28_{platform.machine()}", help="wheel platform tag")
    p.add_argument(
        "--arch", nargs="+", default=["80", "90"], help="CUDA archs for the .cu files (default: 80 90)"
    )
    p.add_argument("--nvcc", default=None, help="nvcc to use (default: $NVCC, PATH, $CUDA_HOME/bin)")
    p.add_argument(
        "--cxx", default=os.environ.get("CXX") or "c++", help="C++ compiler (default: $CXX or c++)"
    )
    p.add_argument("-j", "--jobs", type=int, default=2, help="parallel compile jobs (default: 2)")
    p.add_argument("--fetch-only", action="store_true", help="populate the header cache and stop")
    args = p.parse_args(argv)
    if args.cache_dir is None:
        args.cache_dir = default_cache_dir(args.torch_version)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        nvcc = None if args.fetch_only else find_nvcc(args.nvcc)
        headers, meta = ensure_headers(args)
        if args.fetch_only:
            return 0
        cuda_inc = find_cuda_include(nvcc)
        if shutil.which(shlex.split(args.cxx)[0]) is None:
            raise SetupError(f"C++ compiler {args.cxx!r} not found (set CXX or pass --cxx)")
    except SetupError as e:
        log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        return 130

    log(
        f"nvcc {nvcc_version(nvcc)} ({nvcc}), CUDA include {cuda_inc}; torch {args.torch_version} built "
        f"with CUDA {meta['torch_cuda']}, _GLIBCXX_USE_CXX11_ABI={meta['cxx11_abi']}, {CXX_STD}"
    )
    jobs = make_jobs(args, headers, meta, nvcc, cuda_inc)
    t0 = time.time()
    failed = 0
    width = max(len(j["src"]) for j in jobs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for res in pool.map(compile_one, jobs):
            if res["rc"] == 0:
                print(f"ok    {res['src']:<{width}}  [{res['tool']}, {res['seconds']:.0f}s]", flush=True)
                continue
            failed += 1
            print(
                f"FAIL  {res['src']:<{width}}  [{res['tool']}, exit {res['rc']}; full log: "
                f"{os.path.relpath(res['log'], ROOT)}]",
                flush=True,
            )
            errs = error_lines(res["output"])
            for line in errs[:ERROR_LINES]:
                print(f"      {line}")
            if len(errs) > ERROR_LINES:
                print(f"      ... {len(errs) - ERROR_LINES} more error line(s) in the log")
    build = os.path.relpath(jobs[0]["obj"], ROOT).rsplit("/", 1)[0]
    status = "all compiled" if failed == 0 else f"{failed} FAILED"
    log(
        f"{len(jobs) - failed}/{len(jobs)} file(s) compiled against torch {args.torch_version} CUDA headers "
        f"({status}; objects in {build}/, {time.time() - t0:.0f}s)"
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
