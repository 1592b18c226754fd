# chatd: `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DB     ?= chatd.db

.PHONY: run test test-fast bench lint clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The app installs from a wheel (templates and static inside), so tests run what users run.
install: $(BIN)/python
	$(BIN)/pip install --quiet --force-reinstall --no-deps .
	$(BIN)/pip install --quiet ".[test]"

run: $(BIN)/python
	$(BIN)/pip install --quiet ".[uvloop]"
	$(BIN)/chatd serve --db $(DB)

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: install chromium
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/pytest -q -p no:cacheprovider -m "not browser"

bench: $(BIN)/python
	$(BIN)/pip install --quiet ".[uvloop]" -r bench/requirements.txt
	$(BIN)/python bench/run.py

lint: $(BIN)/python
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check chatd tests bench

clean:
	rm -rf $(VENV) build dist *.egg-info
