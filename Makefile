# The README's two Quick start commands are `make demo` and `make test`.
PYTHON ?= python

.PHONY: install install-dev demo test test-fast test-all bench

install:
	$(PYTHON) -m pip install -e .

install-dev:
	$(PYTHON) -m pip install -e ".[dev]"

# Installs, generates the demo data, trains the small demo detector, evaluates it, runs inference.
demo: install
	$(PYTHON) tools/demo.py

# Installs with the test extras and runs the whole test suite (CI runs exactly this).
test: install-dev
	$(PYTHON) -m pytest -q

# The loop to run while changing code (about 1.5 min on 2 cores, no install step): every
# test except the slow and the heavy ones (tests/conftest.py HEAVY_TESTS); every package
# module is still exercised. Before a commit, run `make test`.
test-fast:
	$(PYTHON) -m pytest -q -m "not slow and not heavy"

bench: install
	$(PYTHON) benchmarks/run.py
