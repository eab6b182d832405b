# Fresh-machine entry points. Everything installs into .venv (CPU torch 2.13.0 here;
# on a machine that already has torch, set PYTHON to that interpreter and use `make build`).
PYTHON ?= .venv/bin/python
PIP := $(PYTHON) -m pip
PYTEST_ARGS ?=
export OMP_NUM_THREADS ?= 2

.PHONY: all venv deps build test check-cuda demo bench selfcheck clean install-check bench-results triton-aot gpu-check

all: build

.venv/bin/python:
	python3 -m venv .venv

venv: .venv/bin/python

# torch first and pinned, so nothing later can pull a second (CUDA) torch; then the build tools
# (a Python 3.12 venv has no setuptools). Every other dependency comes from pyproject.toml in `build`.
TORCH_SPEC ?= torch==2.13.0
deps: venv
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=64" wheel ninja

# The package with its declared dependencies and the test extra (pyproject.toml), built against
# the torch above. Serialized with flock: several builds in one tree at once would clash.
build: deps
	flock .build.lock $(PIP) install -q --no-build-isolation -e ".[test]"

selfcheck: build
	$(PYTHON) -m leo selfcheck

# The main job: synthetic data -> trains animator, LMDM and first-frame model -> videos in ./demo_out.
DEMO_ARGS ?=
demo: build
	$(PYTHON) -m leo demo $(DEMO_ARGS)

# A fresh venv with only torch + build tools, `pip install --no-build-isolation -e .`, then `leo --help`
# and `leo demo --quick`: proves pyproject.toml declares every runtime dependency (CI runs it).
install-check:
	TORCH_SPEC="$(TORCH_SPEC)" bash .ci/install_check.sh

check-cuda: deps
	$(PYTHON) tools/check_cuda_compile.py

# Every Triton kernel AOT-compiled for sm_90 and sm_80 without a GPU, shared memory checked (CI runs
# it; AOT_ARGS="--full -j 16" compiles every variant). Needs triton (make build installs it) but not
# the compiled extension. tools/compile_triton.py, docs/GPU.md.
AOT_ARGS ?=
triton-aot: deps
	$(PYTHON) tools/compile_triton.py $(AOT_ARGS)

# On a lent GPU (make gpu-check PYTHON=python3): builds the CUDA extension, runs the CUDA/Triton tests,
# compute-sanitizer and short benchmarks, writes one results file, ends with a pass/fail summary.
# Without a GPU it prints one line and exits 0. Needs no network. tools/gpu_check.py, docs/GPU.md.
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)

test: build
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

bench: build
	$(PYTHON) -m pytest benchmarks --benchmark-only $(PYTEST_ARGS)

# Every benchmark once, then benchmarks/RESULTS.md rewritten (machine, threads and command per table).
bench-results: build
	$(PYTHON) benchmarks/report.py

clean:
	rm -rf build leo_kernels/*.so *.egg-info .build.lock
