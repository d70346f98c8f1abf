# tierwise: the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/datasets
export TIERWISE_SHARED_DATA ?= $(abspath $(SHARED))
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns/mlflow.db
STAMP := $(VENV)/.installed
PEER_BUNDLES ?= bundles/student bundles/teacher-int8

.PHONY: venv demo full test test-fast bench bench-scale lint fuzz load clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build lies on disk; a bare requirement would pull CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[train,eval,serve,dev,ray]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m scripts.demo

# The full preset: the numbers in the README (50 minutes on a fresh clone in session 19; on a slower 2-core machine training alone took 78 minutes).
full: $(STAMP)
	$(BIN)/python -m scripts.demo --full

# Everything (about 8 minutes on 2 idle cores; the browser test needs Chromium).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The inner loop: every test not marked slow (no full shared data, no pretrained model, no browser,
# no server process, nothing over ~0.5 s). The tiny model and bundle come from pytest's cache
# (TIERWISE_TEST_CACHE=1, see tests/conftest.py), rebuilt when anything they are built from changed.
test-fast: $(STAMP)
	TIERWISE_TEST_CACHE=1 $(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench
	$(BIN)/python -m benchmarks.long_requests
	# peers side by side (needs the optional extra: pip install -c constraints.txt -e '.[peers]')
	$(BIN)/python -m benchmarks.peers $(foreach b,$(PEER_BUNDLES),--bundle $(b))
	# fast path (student, int8 teacher, cascade when bundles/student has a cascade.json): evaluation/bench_fast_path.json
	$(BIN)/python -m benchmarks.fast_path --student student=bundles/student --teacher bundles/teacher-int8 \
		$(if $(wildcard bundles/student/cascade.json),--cascade bundles/student)

# Scale-out: 1M prompts through Ray Data vs the first 200k through one process (same prompts,
# decisions compared one by one), drift and report statistics over the decisions (needs the
# 'ray' extra; SCALE_N / SCALE_SINGLE_N to resize); writes evaluation/bench_scale.json.
SCALE_N ?= 1000000
SCALE_SINGLE_N ?= 200000
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --n $(SCALE_N) --single-n $(SCALE_SINGLE_N)

# ruff, then the import layers of docs/design.md (the contracts are in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check classifier tests benchmarks scripts
	$(BIN)/lint-imports

# Fuzzing, about FUZZ_SECONDS per tool: the hypothesis properties of the runtime and policy
# (sharing the budget), schemathesis against a live server, then atheris on the runtime entry
# points (crash reproducers and the corpus go to FUZZ_OUT; FUZZ_BUNDLE, default a tiny bundle
# built for the run). `make test` runs short versions.
FUZZ_SECONDS ?= 60
FUZZ_OUT ?= /tmp/tierwise-fuzz
FUZZ_BUNDLE ?=
fuzz: $(STAMP)
	TIERWISE_FUZZ_SECONDS=$$(( $(FUZZ_SECONDS) / 4 )) TIERWISE_FUZZ_EXAMPLES=500 \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py -k "not api"
	TIERWISE_FUZZ_SECONDS=$(FUZZ_SECONDS) TIERWISE_FUZZ_EXAMPLES=500 \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py -k api
	mkdir -p $(FUZZ_OUT)/corpus
	$(BIN)/python fuzz/fuzz_runtime.py $(if $(FUZZ_BUNDLE),--bundle=$(FUZZ_BUNDLE)) $(FUZZ_OUT)/corpus -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
		-rss_limit_mb=4096 -artifact_prefix=$(FUZZ_OUT)/ -print_final_stats=1

# Load and soak: `tierwise serve` on 127.0.0.1 under a bounded load (LOAD_SECONDS, default 180),
# errors must be 0, RSS sampled; writes evaluation/load.json. LOAD_BUNDLE defaults to
# bundles/student, else bundles/quick-student, else a tiny bundle built for the run.
LOAD_SECONDS ?= 180
LOAD_BUNDLE ?=
load: $(STAMP)
	LOAD_SECONDS=$(LOAD_SECONDS) $(BIN)/python -m benchmarks.loadtest $(LOAD_BUNDLE)

clean:
	rm -rf data/build mlruns bundles models
