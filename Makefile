# Everything a developer runs is a target here. Each target sets up .venv itself,
# so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ACTIVATE_HINT := the poller command is in $(BIN): run $(BIN)/poller --help, or 'source $(BIN)/activate' first to type poller

.PHONY: help install test lint typecheck pytest demo sim bench clean

help:
	@echo "make demo   run the engine against the built-in simulator (about 30 s)"
	@echo "make test   lint, type-check and run the test suite"
	@echo "make sim    serve the jobs-API simulator on 127.0.0.1:8080"
	@echo "make bench  run the benchmarks and regenerate the README's results"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)
	@echo "$(ACTIVATE_HINT)"

lint: $(STAMP)
	$(BIN)/ruff check poller tests benchmarks
	$(BIN)/ruff format --check poller tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python -m poller demo
	@echo "$(ACTIVATE_HINT)"

sim: $(STAMP)
	$(BIN)/python -m poller sim --port 8080

# BENCH_ARGS: benchmark names and/or --quick, e.g. make bench BENCH_ARGS="decode --quick".
# The bench extra (numpy, httpx, pydantic, uvloop, matplotlib) is installed only when missing.
bench: $(STAMP)
	$(BIN)/python -c 'import numpy, httpx, pydantic, uvloop, matplotlib' 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
