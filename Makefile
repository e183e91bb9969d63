# gpux — common tasks.  Everything runs from the project's own virtualenv (.venv),
# which `make` creates and fills from pyproject.toml on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gpux-installed

.PHONY: venv test lint demo bench clean

# The virtualenv is ready once the project and its dev extras are installed into it.
# Re-installs when pyproject.toml changes; never deletes an existing .venv.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

.venv: $(STAMP)
venv: $(STAMP)

# pytest exits 5 when it collects no test; say so instead of failing the build.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/gpux demo

bench: $(STAMP)
	$(BIN)/python -m bench.book --commands 1000000 --json

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache .hypothesis .benchmarks
