"""``python -m fer_kernels``: the backends this install has, and one forward throughput line per op."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fer_kernels
from fer_kernels import ops


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_kernels", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per line (median reported)")
    args = parser.parse_args(argv)

    print(f"fer_kernels {fer_kernels.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("backends:")
    for name, status in fer_kernels.available_backends().items():
        print(f"  {name:<10} {'yes' if status.available else 'no ':<4} {status.reason}")
    print("ops (forward, CPU, float32, median of %d):" % args.repeats)
    with torch.no_grad():
        for op_name, make in ops.demo_cases().items():
            label, run = make()
            auto = fer_kernels.backends.resolve(op_name, ops.impls(op_name), [torch.empty(0)])
            t_fused = _median_ms(lambda: run(None), args.repeats)
            t_ref = _median_ms(lambda: run("reference"), args.repeats)
            print(f"  {label:<48} {auto:>9}: {t_fused:8.2f} ms   reference: {t_ref:8.2f} ms   "
                  f"ratio {t_ref / t_fused:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
