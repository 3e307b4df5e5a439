"""The benchmark report: ratios over interleaved repeats, memory ratio, markdown table and chart."""

import json

import pytest

from benchmarks import report


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
    assert "| op-full-a | cpp | 2000.00 | 6000.00 | 3000.00 | 3.00 | 2.00-3.00 | 1.50 | 0.25 | 2.0 |" in md
    png = tmp_path / "c.png"
    report.chart(table, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_repeat_has_no_per_repeat_range(tmp_path):
    data = {"benchmarks": [_bench("op-full-a", "eager", 0, 4.0), _bench("op-full-a", "cpp", 0, 2.0)]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    row = report.rows(report.aggregate(report.load(path)))[0]
    assert "vs_eager_range" not in row
    assert "| op-full-a | cpp | 2000.00 | 4000.00 |  | 2.00 |  |  |  |  |" in report.markdown([row])


def test_two_benchmarks_of_one_provider_in_one_repeat_are_an_error(tmp_path):
    data = {"benchmarks": [_bench("op-full-a", "cpp", 0, 2.0), _bench("op-full-a", "cpp", 0, 3.0)]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="op-full-a: two cpp benchmarks in repeat 0"):
        report.aggregate(report.load(path))
