# pgwarden: `make demo` shows it working, `make test` proves it.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV := .venv
PY := $(VENV)/bin/python
# Debian's interpreter, not a per-user one: the postgres OS user must be able to run the
# venv (archive_command and restore_command call pgwarden as postgres).
SYSTEM_PYTHON := $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
PYTEST_ARGS ?=

.PHONY: help install system-packages test lint unit integration demo bench clean

help:
	@echo "make demo    install, then run a lab cluster and show replication"
	@echo "make test    install, then ruff, mypy and pytest"
	@echo "make bench   install, then run benchmarks/*.py (JSON into bench-results/)"

install: $(VENV)/.installed system-packages

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

system-packages:
	@scripts/install-system-packages.sh

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: install
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

demo: install
	$(PY) -m pgwarden.demo

bench: install
	@mkdir -p bench-results
	@set -e; for f in benchmarks/*.py; do \
		name=$$(basename $$f .py); \
		echo "== $$name"; \
		$(PY) $$f --json bench-results/$$name.json; \
	done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis bench-results
