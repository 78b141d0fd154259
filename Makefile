# The two commands of the README. Both create the virtual environment themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench schemas clean

demo: $(STAMP)  ## set up, then build the offline demo recipe
	$(BIN)/eo-etl build pipelines/demo.yaml

test: $(STAMP)  ## set up, then run the whole test suite
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check eo_etl tests bench
	$(BIN)/ruff format --check eo_etl tests bench

bench: $(STAMP)
	$(BIN)/python bench/grid.py

schemas: $(STAMP)
	$(BIN)/eo-etl schema

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) out
