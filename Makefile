# Two entry points for a new user: `make demo` and `make test`.
# Both build .venv from the pinned constraints, so a fresh machine gets the
# versions we tested (torch 2.13.0 is the CPU build on our machines).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
OUT ?= runs/demo

.PHONY: install demo demo-quick test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,ray]'
	touch $@

demo: install
	$(BIN)/learncc demo --out $(OUT)

demo-quick: install
	$(BIN)/learncc demo --quick --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache
