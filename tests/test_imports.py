"""The package's imports run one way (docs/ARCHITECTURE.md):

    base (_extension, backends) <- reference <- triton <- ops <- nn <- the package, its CLI and benchmarks

Every import statement of every module is read from the source (function-level ones included), relative
imports resolved; ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, and a parent
package's ``__init__`` (which Python runs first for any submodule) is not counted as imported. The test
fails on an import against the layers, on a cycle among the package's modules, and on any import of
``fer_models`` or of the source tree's ``benchmarks``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fer_kernels"

# Layer of each module by its first dotted part after the package; modules not listed are the top layer.
LAYERS = {"_C": 0, "_extension": 0, "backends": 0, "reference": 1, "triton": 2, "ops": 3, "nn": 4}
TOP = 5
FORBIDDEN = ("fer_models", "benchmarks")


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    out[f"{root.name}._C"] = root / "_C"  # the compiled library (layer 0), built or not
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules ``name`` imports anywhere in its source (absolute dotted names)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            subs = {f"{mod}.{a.name}" for a in node.names}
            found.update(subs & modules.keys())
            if not subs <= modules.keys():  # names defined in mod itself
                found.add(mod)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def problems(root: Path) -> list[str]:
    """Every import against the layers, every forbidden import and every cycle of the package at ``root``."""
    modules = module_names(root)
    pkg = root.name
    graph: dict[str, set[str]] = {}
    out = []
    for name, path in modules.items():
        if not path.suffix:
            graph[name] = set()
            continue
        deps = imports_of(name, path, modules)
        for dep in sorted(deps):
            if dep.split(".")[0] in FORBIDDEN:
                out.append(f"{name} imports {dep}")
        graph[name] = {d for d in deps if d in modules and d != name}
        for dep in sorted(graph[name]):
            if dep.split(".")[0] == pkg and layer(dep) > layer(name):
                out.append(f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)}), an upper layer")
    # Cycles: depth-first search, reporting each back edge's cycle once.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                out.append("cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return out


def test_fer_kernels_imports_run_one_way():
    found = problems(ROOT)
    assert not found, "\n".join(found)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("files, expected", [
    # ops imports an nn helper inside a function: against the layers.
    ({"ops/__init__.py": "", "ops/a.py": "def f():\n    from ..nn import b\n", "nn/__init__.py": "",
      "nn/b.py": ""}, "pkg.ops.a (layer 3) imports pkg.nn.b (layer 4)"),
    # triton and a same-layer sibling import each other: a cycle.
    ({"triton/__init__.py": "", "triton/a.py": "from pkg.triton import b\n",
      "triton/b.py": "import pkg.triton.a\n"}, "cycle: pkg.triton.a -> pkg.triton.b -> pkg.triton.a"),
    ({"bench.py": "import importlib\nimportlib.import_module('benchmarks.report')\n"},
     "pkg.bench imports benchmarks.report"),
    ({"nn/__init__.py": "", "nn/x.py": "from fer_models.export import to_reference\n"},
     "pkg.nn.x imports fer_models.export"),
])
def test_import_checker_finds_each_kind_of_problem(tmp_path, files, expected):
    root = tmp_path / "pkg"
    _write(root, {"__init__.py": "", **files})
    found = problems(root)
    assert any(expected in p for p in found), found


def test_import_checker_accepts_downward_imports(tmp_path):
    root = tmp_path / "pkg"
    _write(root, {"__init__.py": "from pkg import nn\n", "reference/__init__.py": "",
                  "ops/__init__.py": "from pkg.reference import *\nfrom . import _common\n", "ops/_common.py": "",
                  "nn/__init__.py": "from ..ops import _common\n"})
    assert problems(root) == []
