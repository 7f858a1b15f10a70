# unet_fast: set-up, build and tests. On a fresh machine `make test` and `make demo` do everything:
# a virtual environment in .venv with pinned dependencies, the package installed editable with its
# C++/CUDA extension, then the job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
# The oldest Triton the GPU servers run; every kernel is also compiled ahead of time with it.
TRITON_OLDEST := 3.6.0
OLDEST_VENV := .venv-triton-oldest
CUDA_ROOT ?= /usr/local/cuda
NVCC := $(shell command -v nvcc 2>/dev/null || ls $(CUDA_ROOT)/bin/nvcc 2>/dev/null)

# Wherever nvcc exists the CUDA kernels are compiled, even without a GPU, so they never stop compiling.
ifneq ($(NVCC),)
export UNET_FAST_FORCE_CUDA ?= 1
endif
export MAX_JOBS ?= 2

DEPS_STAMP := $(VENV)/.deps-installed
INSTALL_STAMP := $(VENV)/.unet-fast-installed
OLDEST_STAMP := $(OLDEST_VENV)/.installed
CSRC := $(shell find csrc -type f)

.PHONY: install test pytest demo bench aot-check cmake-check clean

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
test: install cmake-check aot-check pytest

pytest: install
	$(PY) -m pytest -q tests

# Every Triton kernel configuration compiled for sm_80 and sm_90 with the pinned Triton, and every
# kernel in every dtype with the oldest supported one (a side environment borrowing torch from $(VENV)).
aot-check: install $(OLDEST_STAMP)
	$(PY) -m unet_fast.tools.aot_check --arch 80 --arch 90
	$(OLDEST_VENV)/bin/python -m unet_fast.tools.aot_check --arch 80 --arch 90 --one-per-kernel

$(OLDEST_STAMP): $(DEPS_STAMP)
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install triton==$(TRITON_OLDEST)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(OLDEST_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/unet_fast_main_venv.pth"
	touch $@

# The C++ library for C++ consumers (CMakeLists.txt), CPU kernels; tests/test_cmake_library.py loads it.
cmake-check: $(DEPS_STAMP)
	$(VENV)/bin/cmake -S . -B cmake-build -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
	  $(if $(wildcard $(CUDA_ROOT)),-DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_ROOT))
	$(VENV)/bin/cmake --build cmake-build -j $(MAX_JOBS)

clean:
	rm -rf build cmake-build unet_fast/_C*.so *.egg-info $(INSTALL_STAMP)
