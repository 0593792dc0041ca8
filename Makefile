# One command per intent. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SRC    := $(wildcard app tests bench chaos loadtest)

.PHONY: install run test test-fast check format bench bench-scale chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --editable '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## migrate and serve on :8000 (starts a local SecantusDB unless MONGO_URL is set)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/run-local

test: $(STAMP)  ## unit, integration and end-to-end tests against the real services, branch coverage of app/
	$(BIN)/pytest --cov=app --cov-branch --cov-report=term:skip-covered

test-fast: $(STAMP)  ## the inner loop: unit and quick integration tests (not the slow ones)
	$(BIN)/pytest -q -m "not slow" tests/unit tests/integration

check: $(STAMP)  ## formatting, lint and types
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/ruff check $(SRC)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format $(SRC)
	$(BIN)/ruff check --fix $(SRC)

bench: $(STAMP)  ## measure against this machine's ceilings (BENCH_QUICK=1 for a short run)
	$(BIN)/python -m bench

bench-scale: $(STAMP)  ## rebuild, compare and verify on a log of a million orders: peak RSS and rates
	$(BIN)/python -m bench.at_scale

chaos: $(STAMP)  ## faults under traffic on two replicas, then the tally (CHAOS_QUICK=1: ~60 s; docs/reliability.md)
	$(BIN)/python -m chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .secantus .mypy_cache .ruff_cache .pytest_cache .coverage
