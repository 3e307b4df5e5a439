"""``fer-bench``: run the throughput suites and print the ratio table (fused vs eager vs torch.compile).

    fer-bench [--quick] [--ops dense_block,bilinear,...] [--device cpu|cuda] [--repeat N] [--rounds N]
              [--out DIR]

Writes ``<out>/<machine>-<date>.json`` (pytest-benchmark), ``.md`` (the table) and ``.png`` (the chart).
The suites live in the source tree's ``benchmarks/`` folder (an editable install, ``pip install -e .``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

SUITES = ("dense_block", "fusion_conv", "bilinear", "models")


def _bench_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    d = root / "benchmarks"
    if not (d / "conftest.py").exists():
        raise SystemExit(f"fer-bench: benchmark suites not found at {d}; install from a source checkout with "
                         "`pip install --no-build-isolation -e .`")
    return d


def machine_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu.replace(' ', '-')}-{os.cpu_count()}c"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fer-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="first shape of each suite, 3 rounds (a few minutes)")
    ap.add_argument("--ops", default=",".join(SUITES), help=f"comma-separated suites from {', '.join(SUITES)}")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    ap.add_argument("--repeat", type=int, default=None, help="interleaved repeats (default 1 quick, 3 full)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="timed rounds of every benchmark (default: each suite's own, 3 quick); with many "
                         "--repeat, 1 pairs single steps of the providers")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    args = ap.parse_args(argv)

    bench_dir = _bench_dir()
    suites = [s.strip() for s in args.ops.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        ap.error(f"--ops: unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    files = [bench_dir / f"bench_{s}.py" for s in suites]
    missing = [f.name for f in files if not f.exists()]
    files = [f for f in files if f.exists()]
    if missing:
        print(f"fer-bench: not in this checkout yet, skipped: {', '.join(missing)}")
    if not files:
        raise SystemExit("fer-bench: nothing to run")

    out = Path(args.out) if args.out else bench_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    tag = "" if set(suites) == set(SUITES) else "-" + "+".join(suites)
    stem = f"{machine_name()}-{dt.date.today().isoformat()}{tag}{'-quick' if args.quick else ''}"
    json_path, md_path, png_path = out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        ap.error(f"--repeat: expected at least 1, got {repeat}")
    if args.rounds is not None and args.rounds < 1:
        ap.error(f"--rounds: expected at least 1, got {args.rounds}")
    env = dict(os.environ)
    if args.device:
        env["FER_BENCH_DEVICE"] = args.device
    cmd = [sys.executable, "-m", "pytest", *map(str, files), "-q", "-p", "no:cacheprovider",
           f"--rootdir={bench_dir.parent}", f"--bench-repeat={repeat}", f"--benchmark-json={json_path}",
           "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=name"]
    if args.quick:
        cmd.append("--quick")
    if args.rounds is not None:
        cmd.append(f"--bench-rounds={args.rounds}")
    print("fer-bench:", " ".join(cmd[1:]))
    print(f"machine: {machine_name()} ({socket.gethostname()}), python {platform.python_version()}")
    rc = subprocess.call(cmd, cwd=bench_dir.parent, env=env)
    if rc not in (0, 5) or not json_path.exists():
        print(f"fer-bench: the benchmark run failed (exit {rc})", file=sys.stderr)
        return rc or 1
    sys.path.insert(0, str(bench_dir.parent))
    from benchmarks import report

    table = report.rows(report.aggregate(report.load(json_path)))
    title = f"{machine_name()}, {dt.date.today().isoformat()}, `fer-bench {' '.join(argv or sys.argv[1:])}`"
    md = report.markdown(table, title)
    md_path.write_text(md)
    if table:
        report.chart(table, png_path)
    print(md)
    print(f"json: {json_path}\nreport: {md_path}" + (f"\nchart: {png_path}" if table else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
