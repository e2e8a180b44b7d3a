# enface — two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.enface-installed
TORCH  := torch==2.13.0
PYTEST := $(BIN)/python -m pytest

.PHONY: demo test test-fast lint install clean

demo: $(STAMP)
	$(BIN)/enface demo --out demo

# the whole suite; prints the 15 slowest tests (a hung test fails after the timeout in pyproject.toml)
test: $(STAMP)
	$(PYTEST) -q --durations=15

# the quick lane for the edit loop: everything but the tests marked slow, stop at the first failure
test-fast: $(STAMP)
	$(PYTEST) -q -x -m "not slow" --durations=5

# what CI checks before the tests (also run by the pre-commit hooks)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

install: $(STAMP)

# torch is installed first and pinned, so no dependency pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml src/enface/__init__.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
