"""Summarise pytest-benchmark JSON as one ratio table (markdown) and a PNG bar chart.

For every benchmark group (``<op>-<mode>-<shape>``, ``-bf16`` appended for bfloat16) the fused provider (cpp
on CPU; cuda or triton on GPU, the faster, the other shown beside it) is compared with eager and torch.compile
measured in the same run: speed-up = other's time / fused time (the median over interleaved repeats of each
provider's median), memory ratio = fused peak (GPU) or saved-for-backward bytes / eager's. A table with
more than one dtype gets a dtype column; a GPU table gives both the peak and the saved ratio. With several
repeats, the table also gives the range of the per-repeat ratio to eager
(eager's median in repeat r / the fused provider's in the same repeat) and, from three repeats on, its
geometric mean with a 95% confidence interval (Student's t on the log ratios, the repeats taken as independent
pairs): when the interval contains 1, the run did not resolve the difference.

Several JSON files (separate runs of the same suites, each its own process) are pooled: the medians over all
their repeats, and the paired interval over the runs' geometric means, one sample per run. A process can be
a few per cent faster for one provider than another process is, from where its buffers happen to lie, and
repeats within one run cannot average that out.

``fer-bench`` adds a ``fer_bench`` key to its JSON (environment, command, and each suite's status and
failures); :func:`markdown` renders it as the header and a failures section.

    python -m fer_kernels.benchmarks.report RESULTS.json [MORE.json ...] [--markdown OUT.md] [--png OUT.png]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from fer_kernels.extras import message, missing_modules

FUSED = ("cpp", "cuda", "triton")


def load(*paths: str | Path) -> dict:
    """One pytest-benchmark JSON, or several runs pooled; each benchmark is tagged with its run's index."""
    if not paths:
        raise ValueError("paths: expected at least one JSON file")
    return {"benchmarks": [{**b, "run": run} for run, path in enumerate(paths)
                           for b in json.loads(Path(path).read_text()).get("benchmarks", [])]}


def aggregate(data: dict) -> dict[str, dict[str, dict]]:
    """group -> provider -> {median_s, n, reps, extra}: median over interleaved repeats; ``reps`` maps each
    (run, repeat) to that repeat's median."""
    reps: dict[str, dict[str, dict[tuple[int, int], float]]] = defaultdict(lambda: defaultdict(dict))
    extras: dict[tuple[str, str], dict] = {}
    for b in data.get("benchmarks", []):
        provider = b.get("params", {}).get("provider") or b.get("extra_info", {}).get("provider")
        if provider is None:
            continue
        rep = (int(b.get("run", 0)), int(b.get("params", {}).get("bench_rep", 0)))
        if rep in reps[b["group"]][provider]:
            raise ValueError(f"{b['group']}: two {provider} benchmarks in repeat {rep[1]} of run {rep[0]}; "
                             "expected one per repeat")
        reps[b["group"]][provider][rep] = b["stats"]["median"]
        extras[(b["group"], provider)] = b.get("extra_info", {})
    return {
        group: {
            p: {"median_s": statistics.median(r.values()), "n": len(r), "reps": r,
                "extra": extras[(group, p)]}
            for p, r in provs.items()
        }
        for group, provs in reps.items()
    }


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # Student's t, 97.5% quantile, for few degrees of freedom


def t975(df: int) -> float:
    """97.5% quantile of Student's t with ``df`` degrees of freedom (Cornish-Fisher series from 5 on,
    within 0.2% of the exact value)."""
    if df < 1:
        raise ValueError(f"df: expected at least 1, got {df}")
    if df in _T975:
        return _T975[df]
    z = statistics.NormalDist().inv_cdf(0.975)
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def paired_ratio(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of per-repeat ratios and its 95% confidence interval: (mean, low, high)."""
    if len(ratios) < 3:
        raise ValueError(f"ratios: expected at least 3 repeats, got {len(ratios)}")
    logs = [math.log(r) for r in ratios]
    m = statistics.fmean(logs)
    half = t975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def meta(*paths: str | Path) -> dict:
    """The ``fer_bench`` record of the first JSON that has one (see fer_kernels.bench), else {}."""
    for path in paths:
        m = json.loads(Path(path).read_text()).get("fer_bench")
        if m:
            return m
    return {}


def _mem(extra: dict, key: str) -> float | None:
    return float(extra[key]) if extra.get(key) else None


def rows(agg: dict) -> list[dict]:
    table = []
    for group in sorted(agg):
        provs = agg[group]
        fused = [p for p in FUSED if p in provs]
        if not fused:
            continue
        best = min(fused, key=lambda p: provs[p]["median_s"])
        f = provs[best]
        row = {"group": group, "fused": best, "fused_ms": f["median_s"] * 1e3, "repeats": f["n"],
               "dtype": str(f["extra"].get("dtype", "float32"))}
        others = {p: provs[p]["median_s"] * 1e3 for p in fused if p != best}
        if others:
            row["other_fused_ms"] = others
        for other in ("eager", "compile", "reference"):
            if other in provs:
                row[f"{other}_ms"] = provs[other]["median_s"] * 1e3
                row[f"vs_{other}"] = provs[other]["median_s"] / f["median_s"]
        if "eager" in provs:
            common = sorted(set(f["reps"]) & set(provs["eager"]["reps"]))
            per_rep = [provs["eager"]["reps"][r] / f["reps"][r] for r in common]
            if len(per_rep) >= 2:
                row["vs_eager_range"] = (min(per_rep), max(per_rep))
            by_run: dict[int, list[float]] = defaultdict(list)
            for (run, _), r in zip(common, per_rep, strict=True):
                by_run[run].append(r)
            # several runs pooled: one sample per run (its geometric mean); one run: one sample per repeat
            samples = ([math.exp(statistics.fmean(map(math.log, rs))) for rs in by_run.values()]
                       if len(by_run) > 1 else per_rep)
            if len(samples) >= 3:
                row["vs_eager_paired"] = paired_ratio(samples)
                row["runs"] = len(by_run)
        eager_extra = provs.get("eager", {}).get("extra", {})
        for key, name in (("peak_bytes", "peak_ratio"), ("saved_bytes", "saved_ratio")):
            fm, em = _mem(f["extra"], key), _mem(eager_extra, key)
            if fm is not None and em:
                row[name] = fm / em
        # the memory ratio: peak where both have it (GPU), else saved-for-backward (CPU)
        mem = row.get("peak_ratio", row.get("saved_ratio"))
        if mem is not None:
            row["mem_ratio"] = mem
        flops = f["extra"].get("flops")
        if flops:
            row["gflops"] = flops / f["median_s"] / 1e9
        nbytes = f["extra"].get("bytes")
        if nbytes:
            row["gbs"] = nbytes / f["median_s"] / 1e9
        table.append(row)
    return table


def _header(info: dict) -> list[str]:
    """Bullet lines for the environment and command of a ``fer_bench`` record."""
    env = info.get("env", {})
    lines = []
    if env.get("gpu"):
        lines.append(f"- GPU: {env['gpu']}" + (f", driver {env['driver']}" if env.get("driver") else ""))
    if env.get("cpu"):
        lines.append(f"- CPU: {env['cpu']}")
    if env.get("cpu_flags"):
        lines.append(f"- CPU SIMD flags: {env['cpu_flags']}; C++ kernels' ISA: {env.get('cpu_isa', '?')}")
    versions = [f"{k} {env[k]}" for k in ("torch", "CUDA", "cuDNN", "Triton", "Python") if env.get(k)]
    if versions:
        lines.append("- " + ", ".join(versions))
    if env.get("backends"):
        lines.append(f"- fer_kernels backends: {env['backends']}")
    if env.get("precision"):
        lines.append(f"- precision: {env['precision']}")
    if info.get("command"):
        lines.append(f"- command: `{info['command']}`")
    if info.get("suites"):
        parts = []
        for su in info["suites"]:
            part = f"{su['name']} {su['status']} ({su.get('wall_s', 0):.0f} s"
            warm = su.get("warmup_s") or {}
            if warm:
                part += "; first calls " + ", ".join(f"{p} {t:.0f} s" for p, t in warm.items())
            parts.append(part + ")")
        total = info.get("wall_s")
        lines.append("- suites: " + "; ".join(parts) + (f"; total {total:.0f} s" if total is not None else "")
                     + (f" of a {info['budget_s']:.0f} s budget" if info.get("budget_s") else ""))
    return lines


def _failures(info: dict) -> list[str]:
    lines = []
    for su in info.get("suites", []):
        for fail in su.get("failures", []):
            msg = " ".join(str(fail.get("message", "")).split())[:400]
            lines.append(f"- {su['name']}: `{fail['nodeid']}` {fail.get('outcome', 'failed')}: {msg}")
        if su.get("error"):
            lines.append(f"- {su['name']}: {su['error']}")
        if su.get("not_run"):
            shown = ", ".join(f"`{n.split('::')[-1]}`" for n in su["not_run"][:20])
            more = len(su["not_run"]) - 20
            lines.append(f"- {su['name']}: not run ({len(su['not_run'])}): {shown}"
                         + (f" and {more} more" if more > 0 else ""))
    return lines


def markdown(table: list[dict], title: str = "", info: dict | None = None) -> str:
    """The ratio table; ``info`` (a ``fer_bench`` record) adds the environment header and the failures."""
    fmt = lambda v, spec: "" if v is None else format(v, spec)
    lines = [f"### {title}", ""] if title else []
    if info:
        header = _header(info)
        lines += header + ([""] if header else [])
    dtypes = any(r.get("dtype", "float32") != "float32" for r in table)
    others = any(r.get("other_fused_ms") for r in table)
    peak = any("peak_ratio" in r for r in table)

    def other(r):
        return ", ".join(f"{p} {ms:.2f}" for p, ms in sorted(r.get("other_fused_ms", {}).items()))

    def pair(r):
        v = r.get("vs_eager_paired")
        return f"{v[0]:.3f} ({v[1]:.3f}-{v[2]:.3f})" if v else ""

    def rng(r):
        v = r.get("vs_eager_range")
        return f"{v[0]:.2f}-{v[1]:.2f}" if v else ""

    cols = [("group", "---", lambda r: r["group"])]
    if dtypes:
        cols.append(("dtype", "---", lambda r: r.get("dtype", "float32")))
    cols += [("fused", "---", lambda r: r["fused"]),
             ("fused ms", "---:", lambda r: fmt(r["fused_ms"], ".2f"))]
    if others:
        cols.append(("other fused ms", "---:", other))
    cols += [("eager ms", "---:", lambda r: fmt(r.get("eager_ms"), ".2f")),
             ("compile ms", "---:", lambda r: fmt(r.get("compile_ms"), ".2f")),
             ("x eager", "---:", lambda r: fmt(r.get("vs_eager"), ".2f")),
             ("x eager per repeat", "---:", rng),
             ("x eager paired (95% CI)", "---:", pair),
             ("x compile", "---:", lambda r: fmt(r.get("vs_compile"), ".2f"))]
    if peak:
        cols += [("peak vs eager", "---:", lambda r: fmt(r.get("peak_ratio"), ".2f")),
                 ("saved vs eager", "---:", lambda r: fmt(r.get("saved_ratio"), ".2f"))]
    else:
        cols.append(("memory vs eager", "---:", lambda r: fmt(r.get("mem_ratio"), ".2f")))
    cols.append(("GFLOP/s", "---:", lambda r: fmt(r.get("gflops"), ".1f")))
    lines += ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "|".join(c[1] for c in cols) + "|"]
    for r in table:
        lines.append("| " + " | ".join(c[2](r) for c in cols) + " |")
    lines.append("")
    lines.append("x eager / x compile: speed-up of the fused provider (their time / its time, higher is "
                 "better); x eager per repeat: the lowest and highest ratio to eager within one interleaved "
                 "repeat; "
                 "x eager paired: geometric mean of those per-repeat ratios with its 95% confidence "
                 "interval (3 repeats or more; with several runs pooled, over the runs' geometric means, "
                 "3 runs or more); "
                 + ("peak: the most GPU memory one call allocated beyond its inputs and weights, fused over "
                    "eager's; saved: bytes saved for backward by one forward, fused over eager's (lower is "
                    "better)." if peak else
                    "memory: fused saved-for-backward (CPU) or peak (GPU) bytes over eager's "
                    "(lower is better)."))
    if dtypes:
        lines.append("")
        lines.append("dtype bfloat16: torch.autocast(bfloat16) around every provider's calls, bfloat16 "
                     "activations and float32 parameters; float32 on GPU: IEEE float32 (TF32 off), as the "
                     "fused kernels compute it.")
    if others:
        lines.append("")
        lines.append("fused: the faster of the fused backends; other fused ms: the other one's time.")
    fails = _failures(info or {})
    if fails:
        lines += ["", "#### Failures and benchmarks not run", ""] + fails
    return "\n".join(lines) + "\n"


def chart(table: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [r["group"] for r in table]
    series = [("vs_eager", "x eager"), ("vs_compile", "x compile"), ("mem_ratio", "memory / eager")]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups) + 2), 4.5))
    width = 0.27
    for i, (key, label) in enumerate(series):
        vals = [r.get(key) or 0.0 for r in table]
        ax.bar([x + (i - 1) * width for x in range(len(groups))], vals, width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ratio")
    ax.set_title("fer_kernels fused provider vs eager and torch.compile")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json output (several: runs pooled)")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--png", help="write the bar chart here")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    table = rows(aggregate(load(*args.json)))
    md = markdown(table, args.title, meta(*args.json))
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md)
    if args.png and table:
        no_plot = missing_modules("matplotlib")
        if no_plot:
            print(message("report: no chart", "plot", no_plot), file=sys.stderr)
            return 2
        chart(table, args.png)
        print(f"chart: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
