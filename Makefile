# stagelr: the two commands a new machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo serve test test-quick lint bench-decision clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[server,postgres,demo,bench,dev,lightning,transformers]"
	touch $(STAMP)

install: $(STAMP)

# The server on a SQLite file plus a real training job (an MLP on the digits set).
demo: install
	$(BIN)/stagelr demo --local

serve: install
	$(BIN)/stagelr migrate && $(BIN)/stagelr serve

# Every test, slow ones included (what CI runs).
test: install
	$(BIN)/python -m pytest

# The quick local loop: everything but the slow tests.
test-quick: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check client service migrations tests benchmarks
	$(BIN)/mypy client/stagelr service/stagelr_service

bench-decision: install
	$(BIN)/python benchmarks/decision_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
