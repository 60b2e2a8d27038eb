# The README's commands call these targets. Each installs into ./.venv first, so they work on a
# fresh machine: `make demo` (the main job) and `make test` (the test suite).
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0: a CPU build from this machine's local disk; elsewhere pip picks the usual wheel
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
# test processes (pytest-xdist): the suite spends most of its time in one-core work (Inductor
# and C compiles, subprocesses starting Python), so two share a 2-core machine well. worksteal:
# each process starts on one half of the suite in order and takes from the other's when done
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast bench lint format

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"

demo: install
	$(BIN)/vimc demo

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/scan.py
	$(BIN)/python benchmarks/model.py
	$(BIN)/python benchmarks/export.py

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
