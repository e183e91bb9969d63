# gpux — common tasks.  Everything runs from the project's own virtualenv (.venv),
# which `make` creates and fills from pyproject.toml on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gpux-installed

.PHONY: venv test lint demo bench clean

# The virtualenv is ready once the project and its dev extras are installed into it, and the
# jitted code compiled into numba's cache (cli/warm.py: most of a minute, once).
# Re-installs when pyproject.toml changes; never deletes an existing .venv.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m cli.warm
	touch $(STAMP)

.venv: $(STAMP)
venv: $(STAMP)

# The whole suite, then the rule tests of the numba book and the settlement engine's test
# against its reference once more as plain Python (NUMBA_DISABLE_JIT=1): the same source must
# hold the rules with and without the compiler.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -q -k numba -W ignore::RuntimeWarning tests/test_rules_*.py
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -q -W ignore::RuntimeWarning tests/test_settlement_core.py

lint: $(STAMP)
	$(BIN)/ruff check .

# the live demo: exchange + simulated market + dashboard (docs/demo.md); e.g. DEMO_ARGS="--port 9000"
demo: $(STAMP)
	$(BIN)/gpux demo $(DEMO_ARGS)

# the README's figures measured here (bench/figures.py): bench.book 5 times, bench.scenario 3 times,
# median and spread with the load average; a couple of minutes.  e.g. BENCH_ARGS="--cold --json"
bench: $(STAMP)
	$(BIN)/python -m bench.figures $(BENCH_ARGS)

# also numba's cache (orderbook/jitcache.py: .numba-cache/, and compiled files numba keeps beside
# the sources of the jitted code that does not use it): the next run compiles again
clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache .hypothesis .benchmarks .numba-cache
	find orderbook settlement feeds -name '*.nb[ic]' -delete
