# Quick start: `make demo` then `make test`. PYTHON is the active interpreter (use a venv if you like:
# `python -m venv .venv && . .venv/bin/activate` first).
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test test-slow lint docs bench fashion-data clean

install:
	$(PIP) install -q -e '.[dev]'

demo: install
	$(PYTHON) scripts/demo.py

# The default tier runs in TEST_WORKERS processes (pytest-xdist): most tests are bound by XLA compile time,
# which is single-threaded, so two workers use both cores of the CI machine (worksteal: an idle worker takes
# queued tests from the busy one, so a long test at the end does not leave a core idle). TEST_WORKERS=0 runs
# in-process. Workers and the CLI subprocesses of tests share one JAX compilation cache for the session
# (tests/conftest.py: a fresh temporary folder, deleted at the end).
TEST_WORKERS ?= 2

test: install
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=20

test-slow: install
	$(PYTHON) -m pytest -q -m slow

lint: install
	$(PYTHON) -m ruff check emtdamp tests scripts

# The docs site (MkDocs + mkdocstrings: the Markdown of docs/ as it is, plus the API reference from the
# docstrings); --strict turns every warning into an error. Output: build/site/.
docs: install
	$(PYTHON) -m mkdocs build --strict --quiet

bench: install
	$(PYTHON) scripts/benchmark.py
	$(PYTHON) scripts/bench_tdamp.py
	$(PYTHON) scripts/bench_scaling.py

# Full Fashion-MNIST (70,000 IDX images) from Debian's package, for configs/*fashion_mnist*.yaml.
fashion-data:
	apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist

clean:
	rm -rf runs build .pytest_cache .ruff_cache
