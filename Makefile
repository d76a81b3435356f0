# The README's two commands: `make quickstart` and `make test`.
# Each creates a project-local virtual environment (.venv) when it is missing and installs what it needs with
# plain pip, so pip's own configuration on the machine is honoured (a local CPU wheel here, the CUDA build of
# PyTorch on a GPU machine). Override the interpreter with `make PYTHON=python3.12 ...`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: quickstart test lint bench browser clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so that the resolver never reaches for a newer multi-GB build on its own.
$(VENV)/.torch: | $(VENV)/bin/python
	$(PIP) install -q "$(TORCH_SPEC)"
	touch $@

$(VENV)/.train: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e ".[train]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e ".[dev]"
	touch $@ $(VENV)/.train

quickstart: $(VENV)/.train
	$(VENV)/bin/lmforge quickstart

test: $(VENV)/.dev browser
	$(VENV)/bin/python -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -n 2 -q

bench: $(VENV)/.dev
	$(VENV)/bin/python benchmarks/prepare_throughput.py

# Headless Chromium for the chat page's browser test (tests/serve/test_chat_page.py skips, saying so, without it):
# Debian's package where apt can install it, else the build Playwright downloads.
browser: $(VENV)/.dev
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && \
		 apt-get install -y -q chromium >/dev/null))) || $(VENV)/bin/python -m playwright install chromium || \
		echo "no browser could be installed: the chat page's browser test will skip, saying so"

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
