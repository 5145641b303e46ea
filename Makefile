# Quick start: `make run` starts the server on the embedded default, `make test` runs the tests.
# Both create and reuse a local virtualenv in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/prepaidctl db upgrade
	$(BIN)/prepaidctl demo seed
	$(BIN)/prepaid-radiusd --log-format console

test: $(BIN)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BIN)/.installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy billing radiusd admin_cli bench schema

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
