# Two commands do all the set-up on a fresh machine (Python 3.11, no venv yet):
#   make demo   -- create/refresh .venv, then run `volseg demo` end to end
#   make test   -- create/refresh .venv, then run the test suite (`make test-slow`: the slow rest)
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
DEMO_DIR ?= demo-output

.PHONY: venv demo test test-fast test-slow test-all bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/volseg demo -o $(DEMO_DIR)

# The suite on 2 worker processes, without the tests marked slow (under 8 minutes on
# 2 cores); `make test-slow` runs those (trainings, end-to-end chains, real Slurm jobs).
# CI runs both.
PYTEST = $(BIN)/python -m pytest -q -ra -n 2 --dist loadfile

test: venv
	$(PYTEST) -m "not slow"

test-slow: venv
	$(PYTEST) -m slow

# the name of `make test` before it left the slow tests out
test-fast: test

# everything, one command
test-all: venv
	$(PYTEST)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
