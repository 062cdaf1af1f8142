# Entry points that work on a fresh machine: `make quickstart`, `make test` and (root, Debian/Ubuntu)
# `make test-container`; `make image` builds the container image.
# Each creates the virtual environment itself, with the CPU build of torch (an unpinned torch would pull a
# multi-GB CUDA build), then installs hdpo-tune with its test dependencies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
VARIANT ?= cuda
ENGINE ?=

.PHONY: install quickstart test test-e2e test-all test-container image lint bench clean

# Two stamps: the quickstart needs the runtime dependencies only (.runtime); the tests add the dev extras
# (trackers, TRL, linters, the SDKs the tests drive).
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.runtime
	HF_HUB_OFFLINE=1 $(VENV)/bin/hdpo-tune run examples/quickstart.yaml
	@echo "Watch it in the console (curves, eval, exports): $(VENV)/bin/hdpo-tune ui runs/quickstart"

# The everyday suite; the costly end-to-end tests (marker `e2e`: multi-process launches, the benchmark's
# child processes, the quickstart, the genai runtime) run in `make test-e2e`, CI's step after it (docs/testing.md).
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)

test-e2e: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "e2e and not slow" $(PYTEST_ARGS)

# The real image through podman: installs podman and a local Debian 12 base image when missing (root), builds
# the CPU image and runs tests/container against it (deploy/docker/test_container.sh).
test-container: install
	PY=$(PY) bash deploy/docker/test_container.sh

# The image with docker or podman: VARIANT=cuda|cpu, ENGINE=docker|podman; BASE_IMAGE, PYTHON, TAG and
# TORCH_INDEX pass through from the environment (deploy/docker/build.sh).
image:
	VARIANT=$(VARIANT) ENGINE=$(ENGINE) bash deploy/docker/build.sh

test-all: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# mypy (pyproject [tool.mypy]): strict on hdpo_core and service/serve; its cache lives in the venv, so a rerun
# rechecks only what changed
MYPY_TARGETS ?= hdpo_core service/serve
lint: install
	$(VENV)/bin/ruff check hdpo_core service tests bench examples scripts
	$(VENV)/bin/mypy $(MYPY_TARGETS)
	$(VENV)/bin/hadolint Dockerfile

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) runs
