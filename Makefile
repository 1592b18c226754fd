# chatd: `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DB     ?= chatd.db

.PHONY: run test test-fast bench lint clean chromium services

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

# Debian's redis-server and postgresql for the tests that run chatd as several processes
# (they start private instances on free loopback ports and stop them; Debian's own
# PostgreSQL cluster, if the package starts one, is left alone).
services:
	@command -v redis-server >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's redis-server and postgresql for the several-process tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server postgresql >/dev/null; }

# The contract's behaviour again with two processes joined by Redis, on SQLite and on
# PostgreSQL (docs/scaling.md).
CONTRACT := tests/test_stream.py tests/test_api.py tests/test_changes.py tests/test_access.py \
            tests/test_rooms.py tests/test_private.py tests/test_search.py

test: install chromium services
	CHATD_REQUIRE_SERVICES=1 $(BIN)/pytest -q -p no:cacheprovider
	CHATD_REQUIRE_SERVICES=1 CHATD_TEST_CONFIG=sqlite+redis $(BIN)/pytest -q -p no:cacheprovider \
	  -m "not browser" $(CONTRACT)
	CHATD_REQUIRE_SERVICES=1 CHATD_TEST_CONFIG=postgresql+redis $(BIN)/pytest -q -p no:cacheprovider \
	  -m "not browser" $(CONTRACT)

# Skips the browser, and the several-process tests when redis-server or postgresql is not installed.
test-fast: install
	$(BIN)/pytest -q -p no:cacheprovider -m "not browser"

bench: $(BIN)/python
	$(BIN)/pip install --quiet ".[uvloop,scale]" -r bench/requirements.txt
	$(BIN)/python bench/run.py

lint: $(BIN)/python
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check chatd tests bench

clean:
	rm -rf $(VENV) build dist *.egg-info
