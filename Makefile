# diffcore developer entry points: make setup | test | test-fast | lint | demo | bench | clean
PYTHON ?= python3
VENV = .venv
VENV_PY = $(VENV)/bin/python
PIP = $(VENV_PY) -m pip --disable-pip-version-check
# Re-run `pip install -e` when packaging or native sources change (rebuilds diffcore._C).
STAMP = $(VENV)/.diffcore-installed
NATIVE_SOURCES = $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
# ruff covers every Python file of the repo; mypy's files are listed in pyproject.toml ([tool.mypy])
LINT_PATHS = diffcore plugins tests benchmarks examples setup.py

export TORCH_EXTENSIONS_DIR := $(CURDIR)/build/torch_extensions

.PHONY: setup test test-fast lint demo bench clean

setup: $(STAMP)

$(VENV_PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "diffcore needs Python 3.10+, but $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

# torch is installed only when missing: a plain `torch` requirement would pull a multi-GB
# CUDA build, while torch==2.13.0 takes the CPU build this machine provides.
$(STAMP): pyproject.toml setup.py $(NATIVE_SOURCES) | $(VENV_PY)
	@$(VENV_PY) -c 'import torch' 2>/dev/null || $(PIP) install --progress-bar off torch==2.13.0
	$(PIP) install --progress-bar off ninja pybind11 setuptools wheel
	$(PIP) install --progress-bar off --no-build-isolation -e ".[test,text,lint]"
	@# test oracles: k-diffusion's sampler functions (its package pulls torchvision and training tools,
	@# so it comes without dependencies; the tests load only k_diffusion/sampling.py) and torchsde
	$(PIP) install --progress-bar off --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5 trampoline==0.1.2
	@touch $@

test: setup
	$(VENV_PY) -m pytest -q -rs

# The edit loop: everything but the tests marked @pytest.mark.slow (~1,230 of ~1,400 tests, under a minute on
# 2 cores against the full suite's 3-4 minutes).
test-fast: setup
	$(VENV_PY) -m pytest -q -rs -m "not slow"

# Checks only, never rewrites: `ruff check --fix`, `ruff format` and `clang-format -i` do the fixing
# (or the pre-commit hooks: `pre-commit install`).
lint: setup
	$(VENV_PY) -m ruff check $(LINT_PATHS)
	$(VENV_PY) -m ruff format --check $(LINT_PATHS)
	$(VENV_PY) -m mypy
	$(VENV)/bin/clang-format --dry-run --Werror $(NATIVE_SOURCES)

# Trains the demo models (reused on a rerun), runs the five tasks, writes outputs/demo/report.html,
# then checks that every image of the page loads (in headless Chromium when one is installed).
demo: setup
	$(VENV_PY) -m diffcore demo --out outputs/demo
	$(VENV_PY) -m diffcore_plugins.demo.check outputs/demo/report.html

bench: setup
	mkdir -p outputs/bench
	DIFFCORE_BENCH_THREADS=$${DIFFCORE_BENCH_THREADS:-1} $(VENV_PY) -m pytest benchmarks -q --benchmark-json=outputs/bench/bench.json
	@if [ -f benchmarks/summarize.py ]; then $(VENV_PY) benchmarks/summarize.py outputs/bench/bench.json; fi
	@if [ -f benchmarks/summarize_e2e.py ]; then $(VENV_PY) benchmarks/summarize_e2e.py outputs/bench/bench.json --out outputs/bench/e2e_summary.md; fi
	@if [ -f benchmarks/summarize_calls.py ]; then $(VENV_PY) benchmarks/summarize_calls.py outputs/bench/bench.json --out outputs/bench/calls_summary.md; fi

# Removes build products and the install stamp (the next `make setup` rebuilds the
# native extension); keeps the venv and everything under outputs/.
clean:
	rm -rf build dist *.egg-info .pytest_cache .benchmarks $(STAMP)
	rm -f diffcore/_C*.so diffcore/_C*.pyd
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
