"""A command that needs an optional dependency which is missing says in one line which extra installs it, and
exits 2, instead of a ModuleNotFoundError traceback. A missing module is simulated with
``sys.modules[name] = None`` (import then raises ModuleNotFoundError, as when it is not installed)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from fer_kernels import bench as fer_bench
from fer_kernels import extras

ROOT = Path(__file__).resolve().parents[1]
with open(ROOT / "pyproject.toml", "rb") as f:
    PYPROJECT = tomllib.load(f)["project"]


def entry(script: str):
    """The function a console script of pyproject.toml runs."""
    module, fn = PYPROJECT["scripts"][script].split(":")
    return getattr(importlib.import_module(module), fn)


DATA = ["--dataset", "synthfer", "--data", "{tmp}/data", "--out", "{tmp}/out"]
# script, its arguments ({tmp}: a scratch folder), a module it needs, the extra that installs it
CASES = [
    ("fer-train", DATA, "cv2", "train"),
    ("fer-train", DATA, "matplotlib", "train"),
    ("fer-eval", ["--checkpoint", "{tmp}/best.pt", "--out", "{tmp}/out"], "matplotlib", "train"),
    ("fer-predict", ["--checkpoint", "{tmp}/best.pt", "{tmp}/a.png", "--out", "{tmp}/out"], "PIL", "train"),
    ("fer-prep", DATA, "cv2", "train"),
    ("fer-bench", ["--device", "cpu", "--ops", "fusion_conv", "--out", "{tmp}/out"], "pytest_benchmark",
     "test"),
]


@pytest.mark.parametrize("script, argv, module, extra", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_a_missing_optional_module_is_one_line_naming_the_extra(script, argv, module, extra, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)
    rc = entry(script)([a.format(tmp=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{script}: {module}") and "not installed" in lines[0], lines[0]
    assert lines[0].endswith(f"install the {extra} extra: pip install 'fer-kernels[{extra}]'"), lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()  # checked before any work


def test_the_extras_named_exist_in_pyproject():
    extras_declared = PYPROJECT["optional-dependencies"]
    assert {"train", "test", "plot"} <= extras_declared.keys()
    assert extras_declared["plot"] == ["matplotlib"]
    for module, extra in (("PIL", "train"), ("cv2", "train"), ("matplotlib", "train"),
                          ("pytest_benchmark", "test"), ("matplotlib", "plot")):
        dist = extras.PROVIDERS[module].split("<")[0]
        assert any(req.startswith(dist) for req in extras_declared[extra]), (module, extra)


def test_a_module_missing_deeper_in_a_command_is_caught_too(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)

    @extras.cli_entry("fer-x", extra="train")
    def main():
        import cv2  # noqa: F401

    assert main() == 2
    assert capsys.readouterr().err.splitlines() == [
        "fer-x: cv2 (opencv-python-headless<5) is not installed; install the train extra: "
        "pip install 'fer-kernels[train]'"]

    @extras.cli_entry("fer-x", extra="train")
    def other():
        import fer_kernels_no_such_module  # noqa: F401  (not an optional dependency: a real error)

    with pytest.raises(ModuleNotFoundError):
        other()


def test_a_broken_install_says_why_in_the_same_line(monkeypatch):
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "cv2":
            raise ImportError("libGL.so.1: cannot open shared object file")
        return real(name, *a, **k)

    monkeypatch.setattr(extras.importlib, "import_module", fake)
    with pytest.raises(extras.MissingExtra) as exc:
        extras.require("fer-prep", "train", "PIL", "cv2")
    assert str(exc.value) == ("fer-prep: cv2 (opencv-python-headless<5, ImportError: libGL.so.1: cannot open "
                              "shared object file) cannot be imported; install the train extra: "
                              "pip install 'fer-kernels[train]'")


def _fake_suite(name, files, pytest_args, workdir, cwd, env, deadline=None, **kw):
    """run_suite's record for a suite that measured one group (no pytest process)."""
    bench = lambda provider, median: {  # noqa: E731
        "group": "fusion_conv-full-x", "params": {"provider": provider, "bench_rep": 0},
        "stats": {"median": median}, "extra_info": {"provider": provider}}
    return {"name": name, "status": "ok", "rc": 0, "wall_s": 0.1, "failures": [], "warmup_s": {},
            "benchmarks": [bench("eager", 0.004), bench("cpp", 0.002)], "machine_info": None}


def test_fer_bench_without_matplotlib_prints_the_table_and_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fer_bench, "run_suite", _fake_suite)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert entry("fer-bench")(["--device", "cpu", "--ops", "fusion_conv", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "| fusion_conv-full-x | cpp | 2.00 | 4.00 |" in out
    assert err.strip().splitlines() == ["fer-bench: no chart: matplotlib is not installed; install the plot "
                                        "extra: pip install 'fer-kernels[plot]'"]
    assert len(list(tmp_path.glob("*.md"))) == 1 and not list(tmp_path.glob("*.png"))


def test_a_real_process_exits_2_with_the_line():
    code = ("import sys; sys.modules['cv2'] = None; from fer_models.prep import main; "
            "sys.exit(main(['--dataset', 'synthfer', '--data', '/nonexistent', '--out', '/nonexistent/o']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == [
        "fer-prep: cv2 (opencv-python-headless<5) is not installed; install the train extra: "
        "pip install 'fer-kernels[train]'"]
