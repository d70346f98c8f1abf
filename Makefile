# tierwise: the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/datasets
export TIERWISE_SHARED_DATA ?= $(abspath $(SHARED))
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns/mlflow.db
STAMP := $(VENV)/.installed

.PHONY: venv demo full test bench lint fuzz load clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build lies on disk; a bare requirement would pull CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[train,eval,serve,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m classifier.demo

# The full preset: the numbers in the README (about an hour on 2 cores).
full: $(STAMP)
	$(BIN)/python -m classifier.demo --full

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m classifier.bench

lint: $(STAMP)
	$(BIN)/ruff check classifier tests

clean:
	rm -rf data/build mlruns bundles models
