"""The kernel benchmark suites (pytest-benchmark; CONVENTIONS rule 10), shipped with the package so that
``fer-bench`` runs from any install.

- ``bench_dense_block.py``, ``bench_fusion_conv.py``, ``bench_bilinear.py``: one suite per op family.
- ``plugin.py``: the pytest plugin (options, interleaving, the ``--gpu-check`` plan, the progress log) and the
  helpers the suites share (``bench``, ``provider_params``, ``dtype_params``, ``saved_bytes``, ...).
- ``report.py``: the ratio table (markdown) and the chart of a pytest-benchmark JSON.

Other packages add suites through the ``fer_kernels.bench_suites`` entry-point group (name = suite, value =
the module of its ``bench_<name>.py``); ``fer_models`` declares its models suite there. ``fer-bench --list``
prints every suite's file; one suite by hand:

    python -m pytest -p fer_kernels.benchmarks.plugin SUITE_FILE --benchmark-json=out.json
"""
