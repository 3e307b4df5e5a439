"""The GPU benchmark check (``fer-bench --gpu-check``): its plan, how it survives a failing, crashing or
overrunning suite, and, on a CUDA machine, the peak-memory measurement. All but the last run on CPU."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
import torch

from fer_kernels import bench as fer_bench

ROOT = Path(__file__).resolve().parents[1]
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FER_BENCH_DEVICE")}
    env["TRITON_INTERPRET"] = "0"
    env.update(extra)
    return env


def _collect(*args, device="cuda"):
    files = list(fer_bench.suites().values())
    out = subprocess.run([sys.executable, "-m", "pytest", *map(str, files), "--collect-only", "-q", "-p",
                          "no:cacheprovider", "-p", fer_bench.PLUGIN, *args], cwd=ROOT,
                         env=_env(FER_BENCH_DEVICE=device), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return [line.split("::", 1)[1] for line in out.stdout.splitlines() if "::" in line]


@pytest.mark.slow
def test_gpu_check_plan_is_the_issue_s_cases():
    items = _collect("--gpu-check")
    by_test: dict[str, list[str]] = {}
    for it in items:
        by_test.setdefault(it.split("[")[0], []).append(it)
    # dense block: block 1, eval fwd and train fwd+bwd, 2 dtypes x (eager, compile, triton, cpp: skips on GPU)
    assert len(by_test["test_dense_block"]) == 2 * 2 * 4
    assert all("block1" in it for it in by_test["test_dense_block"])
    # fusion conv and transition 1, training, 2 dtypes x 5 providers
    assert len(by_test["test_fusion_conv"]) == 2 * 2 * 5
    # bilinear pool and classifier at EIFN's and the B-CNN map, training, 2 dtypes x 4 providers
    assert len(by_test["test_bilinear"]) == 2 * 2 * 2 * 4
    shapes = {it.split("-")[1] for it in by_test["test_bilinear"]}
    assert shapes == {"eifn_32x512x4x4_k7", "bcnn_32x512x28x28_k200"}
    training = by_test["test_bilinear"] + by_test["test_fusion_conv"]
    assert all("-full-" in it or it.endswith("-full]") for it in training)
    # both training steps, 2 dtypes x (eager, triton, cuda) and compile in bfloat16 only; EIFN's head alone;
    # no inference
    steps = by_test["test_train_step"]
    assert len(steps) == 2 * (2 * 3 + 1) and len(by_test["test_eifn_head"]) == 2 * 3
    assert sorted(it for it in steps if it.endswith("-compile]")) == [
        "test_train_step[bfloat16-eifn-n16-compile]", "test_train_step[bfloat16-idennet_if_40-n64-compile]"]
    assert "test_inference" not in by_test
    for name, its in by_test.items():
        its = [it for it in its if not (name == "test_train_step" and it.endswith("-compile]"))]
        assert sum("[bfloat16-" in it for it in its) == sum("[float32-" in it for it in its), name


@pytest.mark.slow
def test_cpu_collection_is_unchanged_but_for_skipped_bfloat16():
    items = _collect("--quick", device="cpu")
    fp32 = [it for it in items if "[float32-" in it]
    assert len(fp32) * 2 == len(items)  # bfloat16 twins are collected, and skip (below)
    from fer_kernels.benchmarks import plugin

    params = {p.id: p for p in plugin.dtype_params()}
    assert plugin.ENABLED_DTYPES == ("float32",)
    assert not params["float32"].marks
    assert [m.name for m in params["bfloat16"].marks] == ["skip"]


_FAKE_SUITE = '''
import os, signal, time
import pytest
from fer_kernels.benchmarks.plugin import bench, sync


def test_a_passes(benchmark):
    bench(benchmark, lambda: sync("cpu"), group="fake-full-a", provider="eager", dtype="float32", rounds=2)


def test_b_fails(benchmark):
    raise RuntimeError("triton compile error: out of shared memory")


def test_c_hangs_or_dies(benchmark):
    if os.environ.get("FAKE_MODE") == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    open(os.environ["FAKE_MARKER"], "w").close()
    time.sleep(120)


def test_d_never_runs(benchmark):
    bench(benchmark, lambda: None, group="fake-full-d", provider="eager", dtype="float32", rounds=2)
'''


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stop", "crash"])
def test_a_suite_that_fails_overruns_or_crashes_is_recorded_and_keeps_its_benchmarks(tmp_path, mode):
    suite = tmp_path / "bench_fake.py"
    suite.write_text(_FAKE_SUITE)
    marker = tmp_path / "started"
    args = ["-q", "-p", "no:cacheprovider", "-p", fer_bench.PLUGIN, f"--rootdir={tmp_path}"]
    t0 = time.monotonic()
    rec = fer_bench.run_suite("fake", [suite], args, tmp_path, ROOT,
                              _env(FAKE_MARKER=str(marker), FAKE_MODE=mode, PYTHONPATH=str(ROOT)),
                              deadline=t0 + 240, grace=10, stop=marker.exists)
    assert time.monotonic() - t0 < 120
    assert [b["group"] for b in rec["benchmarks"]] == ["fake-full-a"]
    failures = [(f["nodeid"].split("::")[1], f["outcome"]) for f in rec["failures"]]
    assert failures == [("test_b_fails", "failed in call")]
    assert "out of shared memory" in rec["failures"][0]["message"]
    assert [n.split("::")[1] for n in rec["not_run"]] == ["test_d_never_runs"]
    if mode == "stop":
        assert rec["status"] == "STOPPED at the budget" and rec["rc"] == 2
    else:
        assert rec["status"] == "CRASHED (signal 9)"
    assert "test_c_hangs_or_dies" in rec["error"]

    info = {"command": "fer-bench --gpu-check", "env": {"gpu": "NVIDIA H100 80GB HBM3 (sm_90)"},
            "suites": [{**{k: v for k, v in rec.items() if k != "benchmarks"}}]}
    from fer_kernels.benchmarks import report

    md = report.markdown([], "t", info)
    assert "#### Failures and benchmarks not run" in md
    assert "`bench_fake.py::test_b_fails` failed in call: RuntimeError: triton compile error" in md
    assert "not run (1): `test_d_never_runs`" in md


def test_suites_ship_in_the_packages_and_models_comes_from_its_entry_point():
    # fer-bench finds every suite without importing fer_models (fer_kernels never imports it), and nothing of
    # the suites is left in the source tree's benchmarks/ folder (RESULTS.md and results/ only).
    code = ("import json, sys; from fer_kernels import bench; s = bench.suites(); "
            "print(json.dumps({k: str(v) for k, v in s.items()})); assert 'fer_models' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    found = {k: Path(v) for k, v in json.loads(p.stdout.splitlines()[-1]).items()}
    assert list(found) == ["dense_block", "fusion_conv", "bilinear", "models"]
    for name in fer_bench.KERNEL_SUITES:
        assert found[name].parent.parts[-2:] == ("fer_kernels", "benchmarks") and found[name].is_file()
    assert found["models"].parts[-3:] == ("fer_models", "benchmarks", "bench_models.py")
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    assert project["project"]["entry-points"][fer_bench.SUITE_GROUP] == {
        "models": "fer_models.benchmarks.bench_models"}
    assert fer_bench.module_file("fer_models.benchmarks.bench_models") == found["models"]
    assert fer_bench.module_file("fer_models.benchmarks.no_such_suite") is None
    assert fer_bench.module_file("no_such_package_xyz.bench") is None
    left = [p.name for p in (ROOT / "benchmarks").iterdir() if p.name != "__pycache__" and p.name[0] != "."]
    assert sorted(left) == ["RESULTS.md", "experiments", "results"]  # experiments: fer-experiment configs


def test_the_wheel_carries_the_suites():
    # the packages setuptools puts in the wheel (pyproject's [tool.setuptools.packages.find]) hold the suites,
    # their plugin and the report; the suites need no data files besides their .py
    import setuptools

    with open(ROOT / "pyproject.toml", "rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = setuptools.find_packages(str(ROOT), include=include)
    assert {"fer_kernels.benchmarks", "fer_models.benchmarks"} <= set(packages)
    shipped = {p.name for p in (ROOT / "fer_kernels" / "benchmarks").iterdir() if p.is_file()}
    assert {"plugin.py", "report.py", *(f"bench_{n}.py" for n in fer_bench.KERNEL_SUITES)} <= shipped
    assert all(n.endswith(".py") for n in shipped)


def test_budget_deadlines_are_cumulative_shares():
    names = ["dense_block", "fusion_conv", "bilinear", "models"]
    d = fer_bench._deadlines(names, 100.0, 1000.0)
    assert d == pytest.approx([1027.0, 1042.0, 1064.0, 1100.0])
    assert fer_bench._deadlines(["models"], 100.0, 0.0) == [pytest.approx(100.0)]
    assert fer_bench._deadlines(names, None, 0.0) == [None] * 4


def test_summarize_log_takes_benchmarks_failures_and_the_test_in_flight():
    events = [{"event": "collected", "items": ["m::a", "m::b", "m::c", "m::d"]},
              {"event": "start", "nodeid": "m::a"},
              {"event": "benchmark",
               "entry": {"group": "g", "extra_info": {"provider": "compile", "warmup_s": 3.0}}},
              {"event": "result", "nodeid": "m::a", "when": "call", "outcome": "passed"},
              {"event": "start", "nodeid": "m::b"},
              {"event": "result", "nodeid": "m::b", "when": "setup", "outcome": "skipped"},
              {"event": "start", "nodeid": "m::c"}]
    s = fer_bench.summarize_log(events)
    assert s["running"] == "m::c" and s["not_run"] == ["m::d"] and s["failures"] == []
    assert s["warmup_s"] == {"compile": 3.0} and len(s["benchmarks"]) == 1


def test_gpu_check_without_a_gpu_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fer_bench.main(["--gpu-check", "--out", "/nonexistent/never-written"]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_gpu_check_and_quick_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exc:
        fer_bench.main(["--gpu-check", "--quick"])
    assert exc.value.code == 2


def test_machine_name_is_a_file_name():
    name = fer_bench.machine_name("cpu")
    assert name and not any(c in name for c in " /\\:")


@requires_gpu
def test_peak_bytes_counts_one_call_above_what_was_allocated():
    from fer_kernels.benchmarks.plugin import peak_bytes

    keep = torch.empty(8 << 20, dtype=torch.uint8, device="cuda")  # allocated before: not counted

    def step():
        tmp = torch.empty(4 << 20, dtype=torch.uint8, device="cuda")
        out = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
        del tmp
        return out

    assert peak_bytes(step, "cuda") == 5 << 20
    assert keep.numel() == 8 << 20
    assert peak_bytes(lambda: None, "cpu") is None
