"""The models benchmark suite, found by ``fer-bench`` through the ``fer_kernels.bench_suites`` entry point
(pyproject.toml) and run with the kernel suites' plugin, ``fer_kernels.benchmarks.plugin``."""
