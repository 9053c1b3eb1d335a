# The README's two Quick start commands are `make demo` and `make test`.
PYTHON ?= python

.PHONY: install install-dev demo test test-all bench

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

bench: install
	$(PYTHON) benchmarks/run.py
