# fer-kernels: the README's commands. `make test` and `make demo` set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
NVCC   ?= $(shell command -v nvcc 2>/dev/null)
CUDA_ARCHS ?= 80 90
CSRC_CU := $(wildcard csrc/cuda/*.cu)

.PHONY: all install build test demo bench bench-quick cuda-check gpu-aot-check cuda-bindings-check gpu-check lint clean

all: test

# The install path CI uses: torch pinned (CPU wheel here), then the package without build isolation so
# pip never re-installs torch in a build environment.
$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q --no-build-isolation -e ".[test,train]"
	touch $@

install: $(VENV)/.installed

# Rebuilds fer_kernels._C in place after a C++ change (ninja recompiles only what changed).
build: install
	$(PY) setup.py -q build_ext --inplace

cuda-check:
ifeq ($(NVCC),)
	@echo "cuda-check: nvcc not found, skipped"
else
	@mkdir -p build/cuda-check
	@for f in $(CSRC_CU); do for a in $(CUDA_ARCHS); do \
	  o=build/cuda-check/$$(basename $$f .cu).sm_$$a.o; \
	  echo "nvcc sm_$$a $$f"; \
	  $(NVCC) -std=c++17 -O3 -Icsrc -gencode arch=compute_$$a,code=sm_$$a -c $$f -o $$o || exit 1; \
	done; done
	@echo "cuda-check: $(words $(CSRC_CU)) kernel file(s) compiled for sm_$(firstword $(CUDA_ARCHS)) .. sm_$(lastword $(CUDA_ARCHS))"
endif

# Every Triton kernel compiled for sm_80 and sm_90 without a GPU (tools/gpu_aot_check.py), under the Triton that
# the CUDA build of torch $(TORCH_VERSION) requires and under the newest one, each in a cached venv
# (~/.cache/fer-kernels/aot). `make test` runs it under the pinned one at the benchmark and >2^31-element shapes in
# float32, bfloat16 and float64 (about 2 minutes here; the full set, test shapes and float16 too, takes 8-9).
AOT_TRITONS ?= pinned newest
gpu-aot-check: install
	$(PY) tools/gpu_aot_check.py --triton $(AOT_TRITONS) --torch-version $(TORCH_VERSION)

# The CUDA bindings (csrc/cuda, csrc/fer_kernels.cpp) compiled to objects against the headers of the CUDA build of
# torch $(TORCH_VERSION) (downloaded once, ~530 MB, cached in ~/.cache/fer-kernels). Not part of `make test`.
cuda-bindings-check: install
	$(PY) tools/cuda_bindings_check.py --torch-version $(TORCH_VERSION) --arch $(CUDA_ARCHS)

test: build cuda-check
	FER_KERNELS_REQUIRE_CPP=1 $(PY) -m pytest -q
	$(PY) tools/gpu_aot_check.py --triton pinned --torch-version $(TORCH_VERSION) --dtypes fp32 bf16 fp64 --shapes bench large

# The one command for a machine with a CUDA GPU and a CUDA build of torch in $(GPU_PYTHON) (no download needed):
# a venv over that Python, the package built with its CUDA kernels, the test suite with Triton compiled for the GPU
# and the cuda backend, the CPU-tensor Triton cases under the interpreter, then the GPU benchmarks and their report
# (benchmarks/results/<gpu>-<date>.{json,md,png}).
GPU_PYTHON ?= python3
gpu-check:
	GPU_PYTHON=$(GPU_PYTHON) bash tools/gpu_check.sh

# The main job: backends and per-op throughput, then SynthFER -> train IDEnNet-IF (fused) on one fold -> evaluate.
demo: build
	$(PY) -m fer_kernels
	$(PY) -m fer_models.demo --model idennet_if_16 --out runs/demo --budget-minutes 5

# The suites ship in the packages (fer_kernels/benchmarks, fer_models/benchmarks); results go to benchmarks/results.
bench: build
	$(VENV)/bin/fer-bench --out benchmarks/results

bench-quick: build
	$(VENV)/bin/fer-bench --quick --out benchmarks/results

lint: install
	$(PY) -m ruff check fer_kernels fer_models tests

clean:
	rm -rf build fer_kernels/_C*.so *.egg-info .pytest_cache .venv-gpu
