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

# Each benchmark prints JSON and writes it to bench-results/; CHAOS_MINUTES=10 for the
# issue's full chaos target.
CHAOS_MINUTES ?= 3
bench: install
	@mkdir -p bench-results
	$(PY) benchmarks/lab_up.py --json bench-results/lab_up.json
	$(PY) benchmarks/codec.py --json bench-results/codec.json
	@set -e; for fault in host_loss host_freeze postgres_crash; do \
		$(PY) benchmarks/failover.py --runs 5 --fault $$fault --json bench-results/failover_$$fault.json; \
	done
	@if [ -f benchmarks/switchover.py ]; then \
		$(PY) benchmarks/switchover.py --runs 5 --json bench-results/switchover.json; fi
	$(PY) benchmarks/chaos.py --minutes $(CHAOS_MINUTES) --json bench-results/chaos.json
	$(PY) benchmarks/pages.py --json bench-results/pages.json
	$(PY) benchmarks/backup.py --scale 64 --json bench-results/backup.json
	$(PY) benchmarks/wal_archive.py --seconds 30 --json bench-results/wal_archive.json
	$(PY) benchmarks/drill.py --scale 64 --json bench-results/drill.json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis bench-results
