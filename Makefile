# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit clean bench bench-variants

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/widedeep demo --output runs/demo

unit: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: unit lint typecheck

BENCH := $(BIN)/python benchmarks/bench.py --repeats 3 --peer-repeats 1

bench: $(STAMP)
	$(BIN)/python benchmarks/peers/setup_envs.py
	$(BENCH)

# The issue's other settings and the bundled Adult data, each to its own RESULTS file.
bench-variants: $(STAMP)
	$(BIN)/python benchmarks/peers/setup_envs.py
	$(BENCH) --hidden 400,400,400 --results benchmarks/RESULTS-mlp400.md
	$(BENCH) --batch-size 4096 --results benchmarks/RESULTS-batch4096.md
	$(BENCH) --data adult --epochs 10 --peer-repeats 3 --results benchmarks/RESULTS-adult.md

clean:
	rm -rf $(VENV) runs build dist .pytest_cache .mypy_cache .ruff_cache
