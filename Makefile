# Two commands do all the set-up on a fresh machine (Python 3.11, no venv yet):
#   make demo   -- create/refresh .venv, then run `volseg demo` end to end
#   make test   -- create/refresh .venv, then run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
DEMO_DIR ?= demo-output

.PHONY: venv demo test test-fast bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/volseg demo -o $(DEMO_DIR)

test: venv
	$(BIN)/python -m pytest -q -ra

# the suite without the tests marked slow (end-to-end runs, trainings): a quick check
test-fast: venv
	$(BIN)/python -m pytest -q -ra -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
