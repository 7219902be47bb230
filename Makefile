# One task runner; CI runs `make test` (see .ci/run). Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the embedded demo: example tenant, a real conversation, the web chat widget
	$(BIN)/switchboard demo

test: lint typecheck unit  ## the whole test suite

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# One pytest worker per core, at most 4: each worker loads the models, and its tests start servers and open
# databases of their own (tests/conftest.py gives every worker its own Postgres database and Redis keys).
unit: $(STAMP)
	$(BIN)/pytest -q -n auto --maxprocesses=4 --durations=25

bench: $(STAMP)  ## benchmarks; results go to docs/benchmarks.md by hand, with machine and date
	$(BIN)/python benchmarks/retrieval_covid.py
	$(BIN)/python benchmarks/pipeline_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
