# Two commands for a new user: `make demo` and `make test` (README.md). Both create .venv and
# install requirements.txt, then requirements-nodeps.txt without dependencies, on first use;
# later runs skip the install until either file changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

demo: setup
	$(BIN)/python -m experiments.pipeline --preset=demo --dataset=synthetic --run_dir=$(RUN_DIR)

test: setup
	$(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

# Daily work: the suite without the tests marked slow (tests/conftest.py); `make test` runs all.
test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
