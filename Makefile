# The README's two commands: `make demo` and `make test`. Each creates .venv and installs llmlab first, at the exact
# versions of requirements/dev.lock. `make test-latest` runs the same suite on the newest releases in .venv-latest;
# `make lock` does that and then records those versions as the new lock.
PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip
LOCK := requirements/dev.lock
LATEST_VENV := .venv-latest
LATEST_PYTHON := $(LATEST_VENV)/bin/python
TEST_COMMAND = -m pytest -q -n auto --dist loadgroup tests
# Without an NVIDIA GPU, this torch release installs as a CPU build from the project machines' local disk;
# with a GPU, or once torch is installed, pip resolves torch as usual.
CPU_TORCH := torch==2.13.0
install_torch_without_gpu = \
	if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(1) -c 'import torch' >/dev/null 2>&1; then \
		echo "no NVIDIA GPU found: installing $(CPU_TORCH) first"; \
		$(1) -m pip install '$(CPU_TORCH)' || echo "$(CPU_TORCH) is not available here; pip will choose a torch build"; \
	fi

.PHONY: demo test test-latest lock venv install install-dev clean

# The demo's output (runs/demo) is its own: a second `make demo` replaces the checkpoint there.
demo: install
	$(VENV)/bin/llmlab demo --overwrite

test: install-dev
	$(VENV_PYTHON) $(TEST_COMMAND)

venv: $(VENV_PYTHON)

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(LOCK) | $(VENV_PYTHON)
	@$(call install_torch_without_gpu,$(VENV_PYTHON))
	$(PIP) install -c $(LOCK) -e '.[data,train,plot]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(LOCK) | $(VENV_PYTHON)
	@$(call install_torch_without_gpu,$(VENV_PYTHON))
	$(PIP) install -c $(LOCK) -e '.[dev]'
	touch $@ $(VENV)/.installed

# A fresh environment with the newest release of every dependency (torch: the CPU build above, without a GPU).
test-latest:
	$(PYTHON) -m venv --clear $(LATEST_VENV)
	@$(call install_torch_without_gpu,$(LATEST_PYTHON))
	$(LATEST_PYTHON) -m pip install -e '.[dev]'
	$(LATEST_PYTHON) -m pip list --format=freeze | grep -iE '^(torch|transformers|tokenizers|datasets|numpy)=='
	$(LATEST_PYTHON) $(TEST_COMMAND)

# Only after test-latest passed: its versions become the lock (a local +cpu tag dropped, so GPU machines match).
lock: test-latest
	@mkdir -p $(dir $(LOCK))
	@{ echo "# Exact versions for 'make test' and 'make demo', written by 'make lock' after 'make test-latest' passed"; \
	   echo "# ($$($(LATEST_PYTHON) --version), $$(uname -sm), $$(date -u +%F)). Edit pyproject.toml, not this file."; \
	   $(LATEST_PYTHON) -m pip freeze --all --exclude-editable | grep -v '^pip==' | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	@echo "wrote $(LOCK); 'make test' reinstalls from it"

clean:
	rm -rf build src/*.egg-info .pytest_cache .hypothesis
