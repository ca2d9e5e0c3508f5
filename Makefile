# The two set-up commands: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run test bench lint clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Until the gateway exists: build the hello example and run one request through the sandbox.
run: install
	$(BIN)/edgefn invoke functions/hello /hello/world -i

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/runtime.py

lint: install
	$(BIN)/ruff check sdk runtime platform tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .cache functions/*/.edgefn tests/functions/*/.edgefn
