"""The C++ CPU kernels' instruction sets: run-time choice, FER_KERNELS_ISA, and a library that never puts an AVX
instruction where a CPU without AVX could meet it.

The parity suites themselves run once per ISA this CPU has (harness.backend_params: ``cpp-scalar``,
``cpp-avx2``, ``cpp``), so every ISA build is checked against the reference there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import fer_kernels
from fer_kernels import _extension
from fer_kernels.backends import cpu_isa, cpu_isas, use_cpu_isa

pytestmark = pytest.mark.skipif(
    not _extension.cpp_loaded() and os.environ.get("FER_KERNELS_REQUIRE_CPP") != "1",
    reason="fer_kernels._C is not built",
)

ISAS = ("scalar", "avx2", "avx512")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


def test_isas_of_this_cpu():
    have = cpu_isas()
    assert have[0] == "scalar" and set(have) <= set(ISAS)
    assert have == [i for i in ISAS if i in have]  # baseline first, best last
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if re.search(r"\bavx2\b", flags) and re.search(r"\bfma\b", flags):
        assert "avx2" in have
    if all(re.search(rf"\b{f}\b", flags) for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")):
        assert "avx512" in have
    # Unforced, the best one runs.
    if os.environ.get("FER_KERNELS_ISA", "auto") in ("", "auto"):
        assert cpu_isa() == have[-1]


@pytest.mark.parametrize("isa", ISAS)
def test_forced_isa_is_reported(isa):
    """FER_KERNELS_ISA=<isa> runs that ISA and cpu_isa() says so; an ISA the CPU lacks is a clear error."""
    code = ("import torch, fer_kernels\n"
            "x = torch.randn(2, 3, 4, 4); w = torch.randn(5, 3, 1, 1)\n"
            "y, _ = torch.ops.fer_kernels.fusion_conv([x], w, None, 2)\n"
            "print(fer_kernels.cpu_isa())\n"
            "print(fer_kernels.available_backends()['cpp'].reason)\n")
    r = _run(code, FER_KERNELS_ISA=isa)
    if isa in cpu_isas():
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == isa
        assert f"ISA {isa}" in lines[1]
    else:
        assert r.returncode != 0
        assert f"FER_KERNELS_ISA={isa}: this CPU lacks" in r.stderr


def test_bad_isa_name_is_a_clear_error():
    r = _run("import fer_kernels; print(fer_kernels.cpu_isa())", FER_KERNELS_ISA="sse9")
    assert r.returncode != 0
    assert "FER_KERNELS_ISA: expected one of scalar, avx2, avx512 or auto, got 'sse9'" in r.stderr
    with pytest.raises(RuntimeError, match="isa: expected one of scalar, avx2, avx512 or auto, got 'neon9'"):
        torch.ops.fer_kernels._set_cpu_isa("neon9")


def test_use_cpu_isa_switches_and_restores():
    before = cpu_isa()
    for isa in cpu_isas():
        with use_cpu_isa(isa) as active:
            assert active == isa == cpu_isa()
    assert cpu_isa() == before


def test_use_cpu_isa_restores_the_forced_isa():
    """With FER_KERNELS_ISA set and no kernel run yet, leaving use_cpu_isa goes back to the forced ISA, not to the
    CPU's best (the test fixture switches ISAs this way around every parity case)."""
    code = ("import fer_kernels\nfrom fer_kernels.backends import use_cpu_isa\n"
            "with use_cpu_isa('avx2' if 'avx2' in fer_kernels.backends.cpu_isas() else 'scalar'):\n    pass\n"
            "print(fer_kernels.cpu_isa())\n")
    r = _run(code, FER_KERNELS_ISA="scalar")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "scalar"


def test_cli_shows_the_isa():
    r = subprocess.run([sys.executable, "-m", "fer_kernels", "--repeats", "1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"ISA {cpu_isa()}" in r.stdout


def test_same_results_on_every_isa():
    """The ISA builds compute the same op: float64 agrees to rounding across them (the tiling is the same)."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 7, 5, 5, dtype=torch.float64), torch.randn(3, 13, 5, 5, dtype=torch.float64)
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    block = fer_kernels.nn.DenseBlock(2, 5, 3, 2).double()
    outs = {}
    for isa in cpu_isas():
        with use_cpu_isa(isa), fer_kernels.use_backend("cpp"):
            outs[isa] = (fer_kernels.bilinear_pool(a, b), block(x))
    ref = outs["scalar"]
    for isa, (z, y) in outs.items():
        torch.testing.assert_close(z, ref[0], rtol=1e-12, atol=1e-12, msg=f"bilinear_pool on {isa}")
        torch.testing.assert_close(y, ref[1], rtol=1e-12, atol=1e-12, msg=f"dense_block on {isa}")


# Mangled names of the functions of fer_kernels::avx2 / fer_kernels::avx512 (methods, lambdas, clones included).
_ISA_FUNCTION = re.compile(r"^_Z+N[KVr]*[RO]?11fer_kernels(4avx2|6avx512)")
_HEADER = re.compile(r"^[0-9a-f]+ <(.*)>:$")
_VEX = re.compile(r"^\s*[0-9a-f]+:\s+v[a-z0-9]+\s")  # a VEX/EVEX mnemonic: AVX or later
_AVX512_REG = re.compile(r"%zmm|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64", reason="x86-64 Linux")
def test_no_avx_outside_the_isa_namespaces():
    """Only fer_kernels::avx2 / ::avx512 functions hold AVX code, and only ::avx512 AVX-512 code.

    The ISA builds wrap the kernels in target pragmas; the torch and standard-library code they instantiate must
    stay baseline, or the linker could keep an AVX copy of a shared inline function and a CPU without AVX would
    die with an illegal instruction.
    """
    so = _extension._C.__file__
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", so], capture_output=True, text=True, check=True)
    counts = {"avx2": 0, "avx512": 0, "baseline": 0}
    bad: dict[str, int] = {}
    fn, isa = None, "baseline"
    for line in dis.stdout.splitlines():
        m = _HEADER.match(line)
        if m:
            fn = m.group(1)
            mm = _ISA_FUNCTION.match(fn)
            isa = "baseline" if not mm else ("avx2" if mm.group(1) == "4avx2" else "avx512")
            counts[isa] += 1
            continue
        if fn is None or isa == "avx512":
            continue
        if (isa == "baseline" and _VEX.match(line)) or _AVX512_REG.search(line):
            bad[fn] = bad.get(fn, 0) + 1
    assert counts["avx2"] > 50 and counts["avx512"] > 50 and counts["baseline"] > 50, counts
    assert not bad, f"{len(bad)} function(s) with instructions past their ISA, e.g. {sorted(bad)[:3]}"


_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S.*)$")
_JUMP = re.compile(r"^j\w+\s+([0-9a-f]+)\b")
_STACK_FMA = re.compile(r"^vfmadd\S*\s+-?0x[0-9a-f]+\(%r[sb]p\)")  # an FMA operand read from the stack
_STACK_STORE = re.compile(r"^vmov[au]p[sd]\s+%[xyz]mm\d+,-?0x[0-9a-f]+\(%r[sb]p\)")  # a vector register to the stack


def _compiled_by_gcc(so: str) -> bool:
    out = subprocess.run(["objdump", "-s", "-j", ".comment", so], capture_output=True, text=True)
    return out.returncode == 0 and "GCC" in out.stdout


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64", reason="x86-64 Linux")
def test_inner_loops_keep_their_accumulators_in_registers():
    """No innermost loop of the avx2 / avx512 kernels moves its register tile through the stack.

    Session 15 found GCC 12 keeping whole register tiles in memory (a load and a store around every FMA) from
    harmless-looking source: an empty asm on an array element, an element-wise copy of a tile, a loop to a
    run-time row count. The kernels stayed correct and ran at half speed. Here every innermost loop (a backward
    jump with no other inside it) with at least 8 FMAs may hold at most 3 stack accesses (FMA operands read from
    the stack, vector stores to it) per 4 FMAs; the faults measured 1 to 2.2 per FMA, a single spilled accumulator
    (the AVX2 3x3 kernel, 16 registers) about 0.08. A loop of 32 FMAs or more (a deep tile) may hold at most 1 per
    3 FMAs: session 16 met a partial fault there, the AVX2 3x3 forward inlined into its phase with a prefetcher,
    at 0.6 (65 per 108 FMAs, the forward 10% slower), while the worst sound loop of that size is at 0.19.
    Heuristic and compiler-specific: checked on GCC builds only.
    """
    so = _extension._C.__file__
    if not _compiled_by_gcc(so):
        pytest.skip("the thresholds were set on GCC 12's code")
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", so], capture_output=True, text=True, check=True)
    funcs: list[tuple[str, list[tuple[int, str]]]] = []
    for line in dis.stdout.splitlines():
        m = _HEADER.match(line)
        if m:
            funcs.append((m.group(1), []))
            continue
        m = _INSN.match(line)
        if m and funcs:
            funcs[-1][1].append((int(m.group(1), 16), m.group(2)))
    checked, bad = 0, []
    for name, insns in funcs:
        if not insns or not _ISA_FUNCTION.match(name):
            continue
        start = insns[0][0]
        loops = [(int(j.group(1), 16), a) for a, t in insns if (j := _JUMP.match(t)) and start <= int(j.group(1), 16) < a]
        for lo, hi in loops:
            if any(o != (lo, hi) and lo <= o[0] and o[1] <= hi for o in loops):
                continue  # not innermost
            body = [t for a, t in insns if lo <= a <= hi]
            fmas = sum(t.startswith("vfmadd") for t in body)
            if fmas < 8:
                continue
            checked += 1
            stack = sum(bool(_STACK_FMA.match(t) or _STACK_STORE.match(t)) for t in body)
            if stack > (0.75 if fmas < 32 else 1 / 3) * fmas:
                bad.append(f"{name[:100]} at {lo:#x}: {stack} stack accesses, {fmas} FMAs")
    assert checked > 50, checked
    assert not bad, f"{len(bad)} inner loop(s) with their tile on the stack:\n" + "\n".join(bad[:5])
