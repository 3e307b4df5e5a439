"""The benchmark report: ratios over interleaved repeats, memory ratio, markdown table and chart."""

import json
import math

import pytest

from fer_kernels.benchmarks import report


def _bench(group, provider, rep, median, **extra):
    return {"group": group, "params": {"provider": provider, "bench_rep": rep},
            "stats": {"median": median}, "extra_info": {"provider": provider, **extra}}


def test_ratios_use_median_over_repeats_and_fastest_fused(tmp_path):
    data = {"benchmarks": [
        _bench("op-full-a", "eager", 0, 4.0, saved_bytes=1000),
        _bench("op-full-a", "eager", 1, 6.0, saved_bytes=1000),
        _bench("op-full-a", "eager", 2, 100.0, saved_bytes=1000),  # one slow spell: the median ignores it
        _bench("op-full-a", "compile", 0, 3.0),
        _bench("op-full-a", "cpp", 0, 2.0, saved_bytes=250, flops=4e9),
        _bench("op-full-a", "cpp", 1, 2.0, saved_bytes=250, flops=4e9),
        _bench("op-full-a", "reference", 0, 5.0),
        _bench("op-fwd-b", "eager", 0, 1.0),  # no fused provider: not in the table
    ]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    table = report.rows(report.aggregate(report.load(path)))
    assert [r["group"] for r in table] == ["op-full-a"]
    row = table[0]
    assert row["fused"] == "cpp" and row["repeats"] == 2
    assert row["vs_eager"] == pytest.approx(6.0 / 2.0)
    assert row["vs_compile"] == pytest.approx(1.5)
    assert row["mem_ratio"] == pytest.approx(0.25)
    assert row["gflops"] == pytest.approx(2.0)
    assert row["vs_eager_range"] == pytest.approx((2.0, 3.0))  # repeats 0 and 1 have both providers
    md = report.markdown(table, "t")
    assert "vs_eager_paired" not in row  # two repeats: no interval
    assert "| op-full-a | cpp | 2000.00 | 6000.00 | 3000.00 | 3.00 | 2.00-3.00 |  | 1.50 | 0.25 | 2.0 |" in md
    png = tmp_path / "c.png"
    report.chart(table, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_repeat_has_no_per_repeat_range(tmp_path):
    data = {"benchmarks": [_bench("op-full-a", "eager", 0, 4.0), _bench("op-full-a", "cpp", 0, 2.0)]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    row = report.rows(report.aggregate(report.load(path)))[0]
    assert "vs_eager_range" not in row
    assert "| op-full-a | cpp | 2000.00 | 4000.00 |  | 2.00 |  |  |  |  |  |" in report.markdown([row])


def test_two_benchmarks_of_one_provider_in_one_repeat_are_an_error(tmp_path):
    data = {"benchmarks": [_bench("op-full-a", "cpp", 0, 2.0), _bench("op-full-a", "cpp", 0, 3.0)]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="op-full-a: two cpp benchmarks in repeat 0 of run 0"):
        report.aggregate(report.load(path))


def test_paired_ratio_is_the_geometric_mean_with_a_t_interval(tmp_path):
    # per-repeat eager/cpp ratios 1.0, 1.1, 1.2, 0.9, 1.3 (eager's times; cpp always 1.0)
    ratios = [1.0, 1.1, 1.2, 0.9, 1.3]
    data = {"benchmarks": [_bench("op-full-a", "cpp", r, 1.0) for r in range(5)]
            + [_bench("op-full-a", "eager", r, v) for r, v in enumerate(ratios)]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    row = report.rows(report.aggregate(report.load(path)))[0]
    logs = [math.log(v) for v in ratios]
    mean = sum(logs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 4)
    half = 2.7764 * sd / math.sqrt(5)  # t(0.975, 4 df)
    assert row["vs_eager_paired"] == pytest.approx(
        (math.exp(mean), math.exp(mean - half), math.exp(mean + half)), rel=1e-4)
    gm, lo, hi = row["vs_eager_paired"]
    assert lo < 1.0 < hi  # this run does not resolve a difference
    assert f"| {gm:.3f} ({lo:.3f}-{hi:.3f}) |" in report.markdown([row])


@pytest.mark.parametrize("df, exact", [(1, 12.7062), (4, 2.7764), (5, 2.5706), (10, 2.2281), (30, 2.0423),
                                       (120, 1.9799)])
def test_t_quantile_matches_the_table(df, exact):
    assert report.t975(df) == pytest.approx(exact, rel=2e-3)


def test_paired_ratio_rejects_fewer_than_three_repeats():
    with pytest.raises(ValueError, match="at least 3 repeats, got 2"):
        report.paired_ratio([1.0, 1.1])


@pytest.mark.parametrize("argv, message", [(["--rounds", "0"], "--rounds: expected at least 1, got 0"),
                                           (["--repeat", "0"], "--repeat: expected at least 1, got 0"),
                                           (["--ops", "nope"], "--ops: unknown suite(s) nope")])
def test_fer_bench_rejects_bad_arguments_before_running(argv, message, capsys):
    from fer_kernels import bench

    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_interleave_rotates_the_providers_every_repeat():
    from fer_kernels.benchmarks.plugin import interleave

    case = ("m", "t", ())
    entries = [(case, rep, p) for p in ("cpp", "eager", "compile") for rep in (2, 0, 1)]
    entries.append((("m", "u", ()), 0, "eager"))  # a second case comes after the first, whole
    got = [entries[i] for i in interleave(entries)]
    assert [(r, p) for c, r, p in got if c == case] == [
        (0, "eager"), (0, "compile"), (0, "cpp"),
        (1, "compile"), (1, "cpp"), (1, "eager"),
        (2, "cpp"), (2, "eager"), (2, "compile")]
    assert got[-1][0] == ("m", "u", ())


def test_several_runs_pool_their_repeats_and_the_interval_is_over_runs(tmp_path):
    run_ratios = [[1.0, 1.2], [1.1, 1.1], [0.9, 1.0, 1.1]]  # eager/cpp per repeat, cpp always 1.0
    paths = []
    for k, ratios in enumerate(run_ratios):
        data = {"benchmarks": [_bench("op-full-a", "cpp", r, 1.0) for r in range(len(ratios))]
                + [_bench("op-full-a", "eager", r, v) for r, v in enumerate(ratios)]}
        paths.append(tmp_path / f"r{k}.json")
        paths[-1].write_text(json.dumps(data))
    row = report.rows(report.aggregate(report.load(*paths)))[0]
    assert row["repeats"] == 7 and row["runs"] == 3
    assert row["vs_eager"] == pytest.approx(1.1)  # median of all seven repeats' eager medians
    gms = [math.exp(sum(map(math.log, rs)) / len(rs)) for rs in run_ratios]
    assert row["vs_eager_paired"] == pytest.approx(report.paired_ratio(gms))
    assert row["vs_eager_range"] == pytest.approx((0.9, 1.2))
    with pytest.raises(ValueError, match="op-full-a: two cpp benchmarks in repeat 0 of run 1"):
        report.aggregate({"benchmarks": [{**_bench("op-full-a", "cpp", 0, 1.0), "run": 1},
                                         {**_bench("op-full-a", "cpp", 0, 2.0), "run": 1}]})


def test_gpu_run_table_has_dtype_rows_peak_memory_and_the_header(tmp_path):
    gpu = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "tf32": False}
    benches = []
    for dtype, suffix, scale in (("float32", "", 1.0), ("bfloat16", "-bf16", 0.5)):
        g = f"dense_block-full-block1{suffix}"
        benches += [
            _bench(g, "eager", 0, 4.0e-3 * scale, dtype=dtype, peak_bytes=1000, saved_bytes=800, **gpu),
            _bench(g, "compile", 0, 3.0e-3 * scale, dtype=dtype, peak_bytes=900, **gpu),
            _bench(g, "triton", 0, 2.0e-3 * scale, dtype=dtype, peak_bytes=250, saved_bytes=200, **gpu),
        ]
    benches += [  # an op with two fused GPU backends: the faster one is "fused", the other is shown beside it
        _bench("bilinear-full-pool_eifn-bf16", "eager", 0, 1.0e-3, dtype="bfloat16", peak_bytes=4000, **gpu),
        _bench("bilinear-full-pool_eifn-bf16", "triton", 0, 0.4e-3, dtype="bfloat16", peak_bytes=1000, **gpu),
        _bench("bilinear-full-pool_eifn-bf16", "cuda", 0, 0.5e-3, dtype="bfloat16", peak_bytes=1000, **gpu),
    ]
    info = {"command": "fer-bench --device cuda --gpu-check --out benchmarks/results", "budget_s": 240.0,
            "wall_s": 201.0,
            "env": {"gpu": "NVIDIA H100 80GB HBM3 (sm_90, 79 GiB, 132 SMs; 1 visible)", "driver": "550.54",
                    "torch": "2.13.0+cu128", "CUDA": "12.8", "cuDNN": "91000", "Triton": "3.9.0",
                    "Python": "3.11.7", "backends": "reference yes, cpp yes, triton yes, cuda yes",
                    "precision": "float32 = IEEE float32 (TF32 off)"},
            "suites": [{"name": "dense_block", "status": "ok", "wall_s": 50.0, "failures": [],
                        "warmup_s": {"compile": 31.0, "triton": 6.0}},
                       {"name": "bilinear", "status": "FAILED (1 failure(s))", "wall_s": 40.0,
                        "failures": [{"nodeid": "benchmarks/bench_bilinear.py::test_bilinear[x]",
                                      "outcome": "failed in call", "message": "CompilationError: at 12:4"}]}]}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"benchmarks": benches, "fer_bench": info}))
    table = report.rows(report.aggregate(report.load(path)))
    md = report.markdown(table, "NVIDIA-H100-80GB-HBM3, 2026-12-04", report.meta(path))
    assert "| group | dtype | fused | fused ms | other fused ms | eager ms | compile ms | x eager |" in md
    assert "| x compile | peak vs eager | saved vs eager | GFLOP/s |" in md
    assert ("| dense_block-full-block1 | float32 | triton | 2.00 |  | 4.00 | 3.00 | 2.00 |  |  | 1.50 | 0.25 "
            "| 0.25 |  |") in md
    assert ("| dense_block-full-block1-bf16 | bfloat16 | triton | 1.00 |  | 2.00 | 1.50 | 2.00 |  |  | 1.50 "
            "| 0.25 | 0.25 |") in md
    assert "| bilinear-full-pool_eifn-bf16 | bfloat16 | triton | 0.40 | cuda 0.50 | 1.00 |  | 2.50 |" in md
    row = next(r for r in table if r["group"] == "dense_block-full-block1")
    assert row["mem_ratio"] == pytest.approx(0.25)  # the peak ratio where both have peak_bytes
    for line in ("- GPU: NVIDIA H100 80GB HBM3 (sm_90, 79 GiB, 132 SMs; 1 visible), driver 550.54",
                 "- torch 2.13.0+cu128, CUDA 12.8, cuDNN 91000, Triton 3.9.0, Python 3.11.7",
                 "- command: `fer-bench --device cuda --gpu-check --out benchmarks/results`",
                 "- suites: dense_block ok (50 s; first calls compile 31 s, triton 6 s); "
                 "bilinear FAILED (1 failure(s)) (40 s); total 201 s of a 240 s budget",
                 "- bilinear: `benchmarks/bench_bilinear.py::test_bilinear[x]` failed in call: "
                 "CompilationError: at 12:4"):
        assert line in md, line
    assert md.index("- GPU:") < md.index("| group |") < md.index("#### Failures")
    png = tmp_path / "gpu.png"
    report.chart(table, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
