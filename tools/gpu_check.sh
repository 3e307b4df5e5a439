#!/usr/bin/env bash
# `make gpu-check`: the one command for a machine with a CUDA GPU and a CUDA build of torch in $GPU_PYTHON.
# Every step runs even when an earlier one fails (a GPU session is short: one run should show everything);
# the exit status is non-zero if any step failed. Logs go to benchmarks/results/gpu-check-<date>.log too.
set -u
cd "$(dirname "$0")/.."
GPU_PYTHON=${GPU_PYTHON:-python3}
VENV=${GPU_VENV:-.venv-gpu}
PY=$VENV/bin/python
mkdir -p benchmarks/results
LOG=benchmarks/results/gpu-check-$(date -u +%Y-%m-%d).log
failed=()
step() {  # step NAME CMD...: run, time, remember a failure
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  if "$@" 2>&1 | tee -a "$LOG"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
    echo "=== $name: ok ($((SECONDS - t0)) s)" | tee -a "$LOG"
  else
    echo "=== $name: FAILED ($((SECONDS - t0)) s)" | tee -a "$LOG"
    failed+=("$name")
  fi
}
: >"$LOG"
test -x "$PY" || "$GPU_PYTHON" -m venv --system-site-packages "$VENV" || exit 1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch in $GPU_PYTHON sees no CUDA device')" || exit 1
export PYTHONUNBUFFERED=1
step install env FER_KERNELS_CUDA=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
step build env FER_KERNELS_CUDA=1 "$PY" setup.py -q build_ext --inplace
step backends "$PY" -m fer_kernels
# Triton compiled for the GPU and the cuda backend; the CPU-tensor Triton cases skip here (the resolver's reason)
step tests-compiled env FER_KERNELS_REQUIRE_CPP=1 "$PY" -m pytest -q -p no:cacheprovider tests
# the same CPU-tensor Triton cases that `make test` runs on a machine without a GPU, interpreted
step tests-interpreted env TRITON_INTERPRET=1 "$PY" -m pytest -q -p no:cacheprovider tests -k "triton or autocast"
step benchmarks "$VENV/bin/fer-bench" --device cuda --gpu-check --out benchmarks/results
if [ ${#failed[@]} -ne 0 ]; then
  echo "gpu-check: FAILED steps: ${failed[*]} (log: $LOG)"
  exit 1
fi
echo "gpu-check: all steps passed (log: $LOG)"
