# The two commands of the README. Both create the virtual environment themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench schemas clean

demo: $(STAMP)  ## set up, write the demo scene as a static STAC catalog, build the offline demo recipe
	$(BIN)/python -m eo_etl.demo out/demo-catalog
	$(BIN)/eo-etl build pipelines/demo.yaml

test: $(STAMP)  ## set up, then run the whole test suite
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check eo_etl tests bench
	$(BIN)/ruff format --check eo_etl tests bench

bench: $(STAMP)
	$(BIN)/python bench/grid.py
	$(BIN)/python bench/acquire.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/pipeline.py

schemas: $(STAMP)
	$(BIN)/eo-etl schema

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) out
