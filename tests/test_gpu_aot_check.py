"""tools/gpu_aot_check.py: the int32 interval analysis that fails `make gpu-aot-check` on index overflow.

The TTIR below is Triton 3.9's for this kernel (compiled for sm_90), kept as text so the test needs no compiler:

    @triton.jit
    def k(X, Y, N, stride, BLOCK: tl.constexpr):
        n = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        for i in range(0, N, BLOCK):
            v = tl.load(X + n * stride + offs + i, mask=offs < N, other=0.0)   # line 13: int32 n * stride
            tl.store(Y + n.to(tl.int64) * stride + offs, v)                   # line 14: 64-bit
"""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("gpu_aot_check", Path(__file__).parents[1] / "tools" / "gpu_aot_check.py")
aot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aot)

TTIR = """#loc = loc("probe.py":9:1)
#loc13 = loc("X"(#loc))
#loc14 = loc("Y"(#loc))
#loc15 = loc("N"(#loc))
#loc16 = loc("stride"(#loc))
module {
  tt.func public @k(%X: !tt.ptr<f32> loc("X"(#loc)), %Y: !tt.ptr<f32> loc("Y"(#loc)), %N: i32 loc("N"(#loc)), %stride: i32 loc("stride"(#loc))) attributes {noinline = false} {
    %c0_i32 = arith.constant 0 : i32 loc(#loc1)
    %cst = arith.constant dense<0.000000e+00> : tensor<64xf32> loc(#loc2)
    %c64_i32 = arith.constant 64 : i32 loc(#loc2)
    %n = tt.get_program_id x : i32 loc(#loc17)
    %offs = tt.get_program_id y : i32 loc(#loc18)
    %offs_0 = arith.muli %offs, %c64_i32 : i32 loc(#loc18)
    %offs_1 = tt.make_range {end = 64 : i32, start = 0 : i32} : tensor<64xi32> loc(#loc19)
    %offs_2 = tt.splat %offs_0 : i32 -> tensor<64xi32> loc(#loc18)
    %offs_3 = arith.addi %offs_2, %offs_1 : tensor<64xi32> loc(#loc18)
    scf.for %i = %c0_i32 to %N step %c64_i32  : i32 {
      %v = tt.splat %N : i32 -> tensor<64xi32> loc(#loc20)
      %v_4 = arith.cmpi slt, %offs_3, %v : tensor<64xi32> loc(#loc20)
      %v_5 = arith.muli %n, %stride : i32 loc(#loc21)
      %v_6 = tt.addptr %X, %v_5 : !tt.ptr<f32>, i32 loc(#loc22)
      %v_7 = tt.splat %v_6 : !tt.ptr<f32> -> tensor<64x!tt.ptr<f32>> loc(#loc22)
      %v_8 = tt.addptr %v_7, %offs_3 : tensor<64x!tt.ptr<f32>>, tensor<64xi32> loc(#loc22)
      %v_9 = tt.splat %i : i32 -> tensor<64xi32> loc(#loc22)
      %v_10 = tt.addptr %v_8, %v_9 : tensor<64x!tt.ptr<f32>>, tensor<64xi32> loc(#loc22)
      %v_11 = tt.load %v_10, %v_4, %cst : tensor<64x!tt.ptr<f32>> loc(#loc23)
      %0 = arith.extsi %n : i32 to i64 loc(#loc10)
      %1 = arith.extsi %stride : i32 to i64 loc(#loc10)
      %2 = arith.muli %0, %1 : i64 loc(#loc10)
      %3 = tt.addptr %Y, %2 : !tt.ptr<f32>, i64 loc(#loc11)
      %4 = tt.splat %3 : !tt.ptr<f32> -> tensor<64x!tt.ptr<f32>> loc(#loc11)
      %5 = tt.addptr %4, %offs_3 : tensor<64x!tt.ptr<f32>>, tensor<64xi32> loc(#loc11)
      tt.store %5, %v_11 : tensor<64x!tt.ptr<f32>> loc(#loc12)
    } loc(#loc1)
    tt.return loc(#loc)
  } loc(#loc)
} loc(#loc)
#loc1 = loc("probe.py":12:5)
#loc2 = loc(unknown)
#loc3 = loc("probe.py":10:9)
#loc4 = loc("probe.py":11:12)
#loc5 = loc("probe.py":11:39)
#loc6 = loc("probe.py":13:53)
#loc7 = loc("probe.py":13:25)
#loc8 = loc("probe.py":13:21)
#loc9 = loc("probe.py":13:13)
#loc10 = loc("probe.py":14:22)
#loc11 = loc("probe.py":14:18)
#loc12 = loc("probe.py":14:9)
#loc17 = loc("n"(#loc3))
#loc18 = loc("offs"(#loc4))
#loc19 = loc("offs"(#loc5))
#loc20 = loc("v"(#loc6))
#loc21 = loc("v"(#loc7))
#loc22 = loc("v"(#loc8))
#loc23 = loc("v"(#loc9))

"""


def test_int32_product_past_2_31_is_found_at_its_source_line():
    # 40000 samples of 60000 elements: n * stride reaches 2.4e9 in int32 (X), while Y's offset is 64-bit.
    found = aot.int32_overflows(TTIR, {"N": 60000, "stride": 60000}, (40000, 938, 1))
    assert len(found) == 1, found
    assert found[0].startswith("arith.muli -> [0, 2399940000]") and found[0].endswith("probe.py:13"), found


def test_no_overflow_when_the_launch_fits_int32():
    assert aot.int32_overflows(TTIR, {"N": 60000, "stride": 60000}, (30000, 938, 1)) == []


@pytest.mark.parametrize("grid", [(1, 1, 1), (2**31 - 1, 1, 1)])
def test_program_id_range_follows_the_grid(grid):
    found = aot.int32_overflows(TTIR, {"N": 64, "stride": 2}, grid)
    assert bool(found) == (grid[0] * 2 > 2**31 - 1), found
