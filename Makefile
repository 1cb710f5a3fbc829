# Two commands for a new user: `make demo` and `make test` (README.md). Both create .venv and
# install requirements.txt on first use; later runs skip the install until requirements change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

demo: setup
	$(BIN)/python -m experiments.pipeline --preset=demo --dataset=synthetic --run_dir=$(RUN_DIR)

test: setup
	$(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
