# Two set-up commands for a fresh clone (Python 3.11 on PATH as python3.11 or python3):
#   make demo   run the product locally on the stand-ins and print each request's outcome
#   make test   run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-fast lint typecheck check bench chaos clean worker-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when a dependency list changes.
$(STAMP): $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Azurite's table service, for the journal's Table Storage tests. 3.35.0 is the newest release that
# declares Node 20 support (3.36 wants Node 21, 3.37 Node 22).
AZURITE_VERSION := 3.35.0
AZURITE_STAMP := $(VENV)/node/.installed-azurite-$(AZURITE_VERSION)

$(AZURITE_STAMP): $(BIN)/python
	npm install --prefix $(VENV)/node --no-audit --no-fund azurite@$(AZURITE_VERSION)
	touch $(AZURITE_STAMP)

# The official AsyncAPI parser, for tests/contract (the upstream contract document). 3.6.3 runs on Node 20.
ASYNCAPI_PARSER_VERSION := 3.6.3
ASYNCAPI_STAMP := $(VENV)/asyncapi/.installed-parser-$(ASYNCAPI_PARSER_VERSION)

$(ASYNCAPI_STAMP): $(BIN)/python
	npm install --prefix $(VENV)/asyncapi --no-audit --no-fund @asyncapi/parser@$(ASYNCAPI_PARSER_VERSION)
	touch $(ASYNCAPI_STAMP)

# The Functions worker's own indexing check (tests/worker) runs in a Python 3.13 venv: the deployed
# runtime (azure-functions-runtime) exists only for 3.13. It is python3.13 on PATH, else a pyenv-installed
# 3.13 (pyenv's shim hides versions that are not selected). Without one the tests skip, saying why (under CI=true they fail).
PYENV_VERSIONS := $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
WORKER_PY ?= $(firstword $(shell python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null) \
	$(wildcard $(PYENV_VERSIONS)/3.13*/bin/python3.13))
WORKER_STAMP := $(VENV)/worker/.installed
$(WORKER_STAMP): requirements.txt tests/worker/requirements.txt
	@if [ -z "$(WORKER_PY)" ]; then echo "python3.13 not found: tests/worker will skip"; else \
		rm -rf $(VENV)/worker && $(WORKER_PY) -m venv $(VENV)/worker && \
		$(VENV)/worker/bin/python -m pip install --quiet -r tests/worker/requirements.txt && touch $(WORKER_STAMP); fi

worker-venv: $(WORKER_STAMP)

demo: $(STAMP)
	$(BIN)/onboard demo

# Four workers (pytest-xdist): the stack tests wait far more than they compute. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 4
test: $(STAMP) $(AZURITE_STAMP) $(ASYNCAPI_STAMP) $(WORKER_STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)

# The pure tests only (no emulator, sandbox, Azurite or child process): seconds, for the edit loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not stack"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

check: lint typecheck test

# 1,000 requests through a misbehaving tenant, host kills and a broker restart; exits 1 if any request
# was lost or duplicated (docs/reliability.md).
chaos: $(STAMP)
	$(BIN)/python -m tools.chaos

# Prints numbers; nothing is asserted (see README, Benchmarks).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.servicebus_emulator
	$(BIN)/python -m benchmarks.servicebus_emulator --database $(VENV)/bench-servicebus.db --messages 2000
	rm -f $(VENV)/bench-servicebus.db*
	$(BIN)/python -m benchmarks.tenant_sandbox
	$(BIN)/python -m benchmarks.pipeline

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
