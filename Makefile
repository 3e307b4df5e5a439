# fer-kernels: the README's commands. `make test` and `make demo` set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
NVCC   ?= $(shell command -v nvcc 2>/dev/null)
CUDA_ARCHS ?= 80 90
CSRC_CU := $(wildcard csrc/cuda/*.cu)

.PHONY: all install build test demo bench bench-quick cuda-check lint clean

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

test: build cuda-check
	FER_KERNELS_REQUIRE_CPP=1 $(PY) -m pytest -q

demo: build
	$(PY) -m fer_kernels

bench: build
	$(VENV)/bin/fer-bench

bench-quick: build
	$(VENV)/bin/fer-bench --quick

lint: install
	$(PY) -m ruff check fer_kernels fer_models tests benchmarks

clean:
	rm -rf build fer_kernels/_C*.so *.egg-info .pytest_cache
