# unet_fast: set-up, build and tests. On a fresh machine `make test` and `make demo` do everything:
# a virtual environment in .venv with pinned dependencies, the package installed editable with its
# C++/CUDA extension, then the job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
# The oldest supported stack (torch 2.11 + triton 3.6, what the GPU servers run) in a side environment,
# testing a copy of the tree: an editable install here would replace $(VENV)'s extension.
OLDEST_CONSTRAINTS := requirements/constraints-oldest.txt
OLDEST_VENV := .venv-oldest
OLDEST_TREE := build/oldest
CUDA_ROOT ?= /usr/local/cuda
NVCC := $(shell command -v nvcc 2>/dev/null || ls $(CUDA_ROOT)/bin/nvcc 2>/dev/null)

# Wherever nvcc exists the CUDA kernels are compiled, even without a GPU, so they never stop compiling.
ifneq ($(NVCC),)
export UNET_FAST_FORCE_CUDA ?= 1
endif
export MAX_JOBS ?= 2

DEPS_STAMP := $(VENV)/.deps-installed
INSTALL_STAMP := $(VENV)/.unet-fast-installed
OLDEST_DEPS_STAMP := $(OLDEST_VENV)/.deps-installed
OLDEST_STAMP := $(OLDEST_TREE)/.unet-fast-installed
CSRC := $(shell find csrc -type f)

.PHONY: install test pytest demo bench aot-check cmake-check compat-check wheel wheel-gpu-server sdist clean

$(DEPS_STAMP): requirements/dev.txt $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c $(CONSTRAINTS) --upgrade pip
	$(PIP) install -c $(CONSTRAINTS) -r requirements/dev.txt
	touch $@

$(INSTALL_STAMP): $(DEPS_STAMP) setup.py pyproject.toml $(CSRC)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

install: $(INSTALL_STAMP)

demo: install
	$(VENV)/bin/unet-fast demo

# The CI-sized benchmark on this machine; the full suite is `unet-fast bench` (see benchmarks/README.md).
bench: install
	$(VENV)/bin/unet-fast bench --quick --device cpu --json runs/bench-quick.json --plot runs/bench-quick.png

# Tests last, so that pytest's summary closes the output.
test: install cmake-check aot-check compat-check pytest

pytest: install
	$(PY) -m pytest -q tests

# Every Triton kernel configuration compiled for sm_80 and sm_90 with the pinned Triton, then the flag
# combinations the paper's model launches with their default tiles (what runs untuned and under graph
# capture) for sm_80, sm_90 and the 99 KB sm_86/sm_89. Measured here (2 shared cores, empty Triton
# cache): every tile of the launched variants (--variants launched alone) took 7.0 min, 8.3 CPU-min,
# 530 compiles; --default-tiles 5.7 min, 6.0 CPU-min, 316 compiles, of which the 98 per-pixel GEMM and
# pool-gradient ones are the registered configurations the first command leaves in Triton's cache.
# The full set is past the ~5 min a make-test step may take: run it by hand (README).
aot-check: install
	$(PY) -m unet_fast.tools.aot_check --arch 80 --arch 90
	$(PY) -m unet_fast.tools.aot_check --variants launched --default-tiles --arch 80 --arch 90 --arch 86 --arch 89

# On the oldest stack: the extension built (CUDA sources too), the whole test suite, and every kernel
# in every dtype compiled ahead of time with triton 3.6. Tests that need ../shared skip in the copy, and
# UNET_FAST_SKIP_HEAVY skips the heaviest (the 10k-pixel memory bound, DDP and fp16 resume), which the main run covers.
compat-check: $(OLDEST_STAMP)
	$(SYNC_OLDEST_TREE)
	cd $(OLDEST_TREE) && UNET_FAST_SKIP_HEAVY=1 $(CURDIR)/$(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not wheel" tests
	cd $(OLDEST_TREE) && $(CURDIR)/$(OLDEST_VENV)/bin/python -m unet_fast.tools.aot_check --arch 80 --arch 90 --one-per-kernel

# The copy's sources are replaced (so files deleted here go there too) and its build outputs kept (_C
# and the _build_info.py written with it): tar restores the sources' times, so rebuilds stay incremental.
OLDEST_SOURCES := csrc unet_fast tests benchmarks requirements setup.py pyproject.toml CMakeLists.txt README.md
SYNC_OLDEST_TREE = mkdir -p $(OLDEST_TREE) && (cd $(OLDEST_TREE) && find $(OLDEST_SOURCES) -type f -not -name '*.so' \
	-not -path unet_fast/_build_info.py -delete 2>/dev/null; true) && tar -c --exclude='*.so' --exclude=__pycache__ \
	--exclude=unet_fast/_build_info.py $(OLDEST_SOURCES) | tar -x -C $(OLDEST_TREE) \
	&& $(RECORD_OLDEST_COMMIT)
# The copy has no .git: its COMMIT file tells benchmarks and first-contact which commit they ran (see
# unet_fast/benchmark/environment.py), with -dirty when tracked files differ from it.
RECORD_OLDEST_COMMIT = { commit=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD -- 2>/dev/null || commit=$$commit-dirty; } \
	&& echo $$commit > $(OLDEST_TREE)/COMMIT || rm -f $(OLDEST_TREE)/COMMIT; }

$(OLDEST_DEPS_STAMP): requirements/dev.txt $(CONSTRAINTS) $(OLDEST_CONSTRAINTS)
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	{ cat $(OLDEST_CONSTRAINTS); grep -vE "^($$(sed -n 's/==.*//p' $(OLDEST_CONSTRAINTS) | paste -sd'|'))==" $(CONSTRAINTS); } \
	  > $(OLDEST_VENV)/constraints.txt
	$(OLDEST_VENV)/bin/python -m pip install -c $(OLDEST_VENV)/constraints.txt --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install -c $(OLDEST_VENV)/constraints.txt -r requirements/dev.txt triton
	touch $@

$(OLDEST_STAMP): $(OLDEST_DEPS_STAMP) setup.py pyproject.toml $(CSRC)
	$(SYNC_OLDEST_TREE)
	cd $(OLDEST_TREE) && $(CURDIR)/$(OLDEST_VENV)/bin/python -m pip install --no-build-isolation --no-deps -e .
	touch $@

# The C++ library for C++ consumers (CMakeLists.txt), CPU kernels; tests/test_cmake_library.py loads it.
cmake-check: $(DEPS_STAMP)
	$(VENV)/bin/cmake -S . -B cmake-build -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
	  $(if $(wildcard $(CUDA_ROOT)),-DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_ROOT))
	$(VENV)/bin/cmake --build cmake-build -j $(MAX_JOBS)

# Wheels (README "Wheels"): _C for CPU and CUDA (TORCH_CUDA_ARCH_LIST, default 8.0;9.0+PTX) against
# the torch of the environment, versioned e.g. 0.1.0+cu130torch2.14, into dist/. pip wheel builds
# in build/ and installs nothing, so the editable install stays as it is.
WHEEL_ENV := UNET_FAST_FORCE_CUDA=1 UNET_FAST_NO_CUDA=0
wheel: $(DEPS_STAMP)
	@test -n "$(NVCC)" || { echo "make wheel compiles the CUDA kernels: nvcc not found (CUDA_ROOT=$(CUDA_ROOT))"; exit 1; }
	$(WHEEL_ENV) $(PIP) wheel --no-build-isolation --no-deps -w dist .

# The wheel for the GPU servers (CPython 3.12, torch 2.11.0+cu130), built in its own environment
# from pyenv's newest 3.12; downloads torch once, not part of `make test`.
GPU_SERVER_PYTHON_VERSION := 3.12
GPU_SERVER_TORCH := 2.11.0
GPU_SERVER_CUDA := 13.0
GPU_SERVER_VENV := build/venv-gpu-server
GPU_SERVER_STAMP := $(GPU_SERVER_VENV)/.deps-installed
PYENV_PYTHON = $(lastword $(sort $(wildcard $(shell pyenv root 2>/dev/null)/versions/$(GPU_SERVER_PYTHON_VERSION).*/bin/python$(GPU_SERVER_PYTHON_VERSION))))

$(GPU_SERVER_STAMP): $(OLDEST_CONSTRAINTS) $(CONSTRAINTS)
	@test -n "$(PYENV_PYTHON)" || { echo "no CPython $(GPU_SERVER_PYTHON_VERSION) under \$$(pyenv root)/versions: pyenv install $(GPU_SERVER_PYTHON_VERSION)"; exit 1; }
	test -x $(GPU_SERVER_VENV)/bin/python || $(PYENV_PYTHON) -m venv $(GPU_SERVER_VENV)
	$(GPU_SERVER_VENV)/bin/python -m pip install -c $(OLDEST_CONSTRAINTS) torch==$(GPU_SERVER_TORCH) setuptools numpy \
	  $$(grep -E '^(wheel|ninja|pybind11)==' $(CONSTRAINTS))
	$(GPU_SERVER_VENV)/bin/python -c "import sys, torch; v = torch.version.cuda; \
	  sys.exit(None if v == '$(GPU_SERVER_CUDA)' else f'torch {torch.__version__} is built for CUDA {v}, not $(GPU_SERVER_CUDA)')"
	touch $@

wheel-gpu-server: $(GPU_SERVER_STAMP)
	@test -n "$(NVCC)" || { echo "make wheel-gpu-server compiles the CUDA kernels: nvcc not found (CUDA_ROOT=$(CUDA_ROOT))"; exit 1; }
	$(WHEEL_ENV) $(GPU_SERVER_VENV)/bin/python -m pip wheel --no-build-isolation --no-deps -w dist .

# The source distribution (plain version, csrc/ and CMakeLists.txt included), through setuptools'
# own PEP 517 hook; it builds a wheel with `pip wheel --no-build-isolation --no-deps dist/<sdist>`.
sdist: $(DEPS_STAMP)
	$(PY) -c "import setuptools.build_meta as backend; print('dist/' + backend.build_sdist('dist'))"

clean:
	rm -rf build cmake-build dist unet_fast/_C*.so unet_fast/_build_info.py *.egg-info $(INSTALL_STAMP)
