"""Optional dependencies: which extra of the ``fer-kernels`` distribution installs each, and the one line a
command prints instead of a ``ModuleNotFoundError`` traceback when one is missing.

    @cli_entry("fer-train", extra="train")
    def main(argv=None) -> int:
        args = parser.parse_args(argv)              # --help works without the extra
        require("fer-train", "train", "PIL", "cv2", "matplotlib")
        ...

A command checks what it needs up front (:func:`require`, before hours of training end in a missing
plotting library); :func:`cli_entry` turns any other missing optional module met later into the same line.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable

DISTRIBUTION = "fer-kernels"
# import name -> the package that provides it
PROVIDERS = {
    "matplotlib": "matplotlib",
    "PIL": "pillow",
    "cv2": "opencv-python-headless<5",
    "pytest": "pytest",
    "pytest_benchmark": "pytest-benchmark",
}


class MissingExtra(ImportError):
    """Optional modules a command needs are not importable; ``str()`` is the one line to print."""


def install_hint(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def message(command: str, extra: str, missing: dict[str, str]) -> str:
    """One line: what is missing (import name -> '' when not installed, else why it cannot be imported)
    and the extra that installs it."""
    parts = []
    for name, why in missing.items():
        pkg = PROVIDERS.get(name, name)
        shown = [] if pkg.lower() == name.lower() else [pkg]
        parts.append(name + (f" ({', '.join([*shown, why] if why else shown)})" if shown or why else ""))
    if any(missing.values()):
        state = "cannot be imported"
    else:
        state = "is not installed" if len(parts) == 1 else "are not installed"
    return f"{command}: {', '.join(parts)} {state}; install the {extra} extra: {install_hint(extra)}"


def missing_modules(*modules: str) -> dict[str, str]:
    """The modules of ``modules`` that cannot be imported: name -> '' (not installed) or the error's first
    line (installed but broken, e.g. a missing shared library)."""
    out = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            own = exc.name is not None and (exc.name == name or name.startswith(exc.name + "."))
            out[name] = "" if own else _first_line(exc)
        except ImportError as exc:
            out[name] = _first_line(exc)
    return out


def require(command: str, extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` with the one-line message when any of ``modules`` cannot be imported."""
    missing = missing_modules(*modules)
    if missing:
        raise MissingExtra(message(command, extra, missing))


def cli_entry(command: str, extra: str) -> Callable:
    """Decorate a console-script ``main``: a :class:`MissingExtra`, or a ``ModuleNotFoundError`` of a module
    in :data:`PROVIDERS`, prints one line on stderr and returns 2."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def entry(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except MissingExtra as exc:
                line = str(exc)
            except ModuleNotFoundError as exc:
                top = (exc.name or "").split(".")[0]
                if top not in PROVIDERS:
                    raise
                line = message(command, extra, {top: ""})
            print(line, file=sys.stderr)
            return 2

        return entry

    return wrap


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
