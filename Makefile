# EDG: `make demo` runs the pipeline on the embedded data; `make test` runs the test suite.
# Both install what they need into .venv first (from nothing, on a fresh machine).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned on these machines: the local wheel files of torch/torchvision (CUDA build, runs on CPU too).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-all demo bench lint clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[qm9,reference,dev]' $(TORCH_PINS)
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/edg pipeline --config configs/demo.yaml

# --quick: small configs that finish on a 2-core CPU; on a GPU machine use `make bench BENCH_ARGS=`.
BENCH_ARGS ?= --quick
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf build *.egg-info .pytest_cache runs/demo
