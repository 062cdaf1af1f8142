# Two entry points that work on a fresh machine: `make quickstart` and `make test`.
# Each creates the virtual environment itself, with the CPU build of torch (an unpinned torch would pull a
# multi-GB CUDA build), then installs hdpo-tune with its test dependencies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install quickstart test test-all lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/hdpo-tune run examples/quickstart.yaml

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check hdpo_core service tests bench examples scripts
	$(VENV)/bin/hadolint Dockerfile

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) runs
