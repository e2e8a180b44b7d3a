# enface — two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.enface-installed
TORCH  := torch==2.13.0

.PHONY: demo test install clean

demo: $(STAMP)
	$(BIN)/enface demo --out demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

install: $(STAMP)

# torch is installed first and pinned, so no dependency pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo .pytest_cache
