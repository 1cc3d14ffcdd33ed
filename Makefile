# `make demo` and `make test` set everything up on a fresh machine, then run.
VENV ?= .venv
PY := $(VENV)/bin/python
# Two install levels: the base package (what `make demo` needs) and every extra plus the test tools.
STAMP_BASE := $(VENV)/.rllib-stpn-base
STAMP := $(VENV)/.rllib-stpn-installed
# The CPU build of torch unless a GPU is present; a torch already in $(VENV) is kept as it is.
TORCH_VERSION ?= 2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
LOCAL_CPU_WHEEL := $(wildcard $(or $(PIP_FIND_LINKS),/opt/wheels)/torch-$(TORCH_VERSION)+cpu-*.whl)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_ARGS := $(if $(HAS_GPU),torch,torch==$(TORCH_VERSION) $(if $(LOCAL_CPU_WHEEL),,--index-url $(TORCH_CPU_INDEX)))

.PHONY: install demo assoc test lint format clean bench

install: $(STAMP)

$(VENV)/.torch:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_ARGS)
	touch $@

# The base install: ray[rllib], torch, gymnasium, numpy, pyyaml, ninja.
$(STAMP_BASE): setup.cfg pyproject.toml | $(VENV)/.torch
	$(PY) -m pip install -q -e .
	touch $@

# Every extra ([all]: Atari, MuJoCo, plots, TensorBoard) and the test tools ([test]).
$(STAMP): setup.cfg pyproject.toml | $(VENV)/.torch
	$(PY) -m pip install -q -e ".[all,test]"
	touch $@ $(STAMP_BASE)

# The main job: STPN + A2C on a small maze through the `rllib` command (results under results/).
demo: $(STAMP_BASE)
	$(VENV)/bin/rllib train file tuned_examples/maze-a2c-stpn-quick.yaml --storage-path $(CURDIR)/results

# STPN vs LSTM on associative retrieval (supervised, a few minutes on CPU).
assoc: $(STAMP_BASE)
	$(PY) -m benchmarks.associative_retrieval

bench: $(STAMP_BASE)
	$(PY) -m benchmarks.stpn_cell --quick
	$(PY) -m benchmarks.maze_env

test: $(STAMP)
	$(PY) -m pytest -ra --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
