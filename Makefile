# Set-up and the two jobs. `make parity` and `make test` each create .venv on first use:
# torch 2.13.0 (CPU) first, then this package with its test extras, then the optional fastBPE backend.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The venv's tools on PATH without activating it: torch looks for ninja there to build xlm.fast's kernel.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: parity test lint bench experiment setup clean

parity: setup  ## the main job: xlm vs transformers on a synthetic xlm-clm-enfr-1024, offline
	$(BIN)/python scripts/parity_check.py

test: setup  ## lint, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: setup  ## speed and memory against transformers (minutes); writes docs/performance.md's table
	$(BIN)/python scripts/bench.py --write-docs

experiment: setup  ## docs/experiments.md: corpus, three small pretraining runs (45-50 min on 2 idle cores), plots, tables
	$(BIN)/python -m pip install --quiet -e '.[experiment]'
	$(BIN)/python scripts/experiment.py $(if $(TOKENS),--tokens $(TOKENS))

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# fastBPE's sdist builds only with Cython and without build isolation (README, "Optional: fastBPE").
	$(BIN)/python -m pip install --quiet --upgrade setuptools wheel cython
	$(BIN)/python -m pip install --quiet --no-build-isolation fastBPE || echo "fastBPE did not build: its tests will be skipped"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
