# The README's two commands: `make demo` and `make test`. Each creates .venv and installs llmlab first.
PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip
# Without an NVIDIA GPU, this torch release installs as a CPU build from the project machines' local disk;
# with a GPU, or once torch is installed, pip resolves torch as usual.
CPU_TORCH := torch==2.13.0
INSTALL_TORCH_WITHOUT_GPU = \
	if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(VENV_PYTHON) -c 'import torch' >/dev/null 2>&1; then \
		echo "no NVIDIA GPU found: installing $(CPU_TORCH) first"; \
		$(PIP) install '$(CPU_TORCH)' || echo "$(CPU_TORCH) is not available here; pip will choose a torch build"; \
	fi

.PHONY: demo test venv install install-dev clean

demo: install
	$(VENV)/bin/llmlab demo

test: install-dev
	$(VENV_PYTHON) -m pytest -q -n auto --dist loadgroup tests

venv: $(VENV_PYTHON)

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV_PYTHON)
	@$(INSTALL_TORCH_WITHOUT_GPU)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV_PYTHON)
	@$(INSTALL_TORCH_WITHOUT_GPU)
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf build src/*.egg-info .pytest_cache .hypothesis
