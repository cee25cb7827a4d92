# Two set-up commands for a fresh clone (Python 3.13, as python3.13 on PATH or installed by pyenv):
#   make demo   run the product locally on the stand-ins and print each request's outcome
#   make test   run the whole test suite
#
# Python 3.13 because Azure runs the app on it (docs/functions-host.md): the suite, the demo and the
# local host then load the very libraries Azure loads. python3.13 on PATH, else a pyenv-installed 3.13
# (pyenv's shim hides versions that are not selected); `make PYTHON=/path/to/python3.13` chooses one.
PYENV_VERSIONS := $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
PYTHON ?= $(firstword $(shell python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null) \
	$(wildcard $(PYENV_VERSIONS)/3.13*/bin/python3.13))
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# What `pip install -r requirements.txt` resolves on its own, as Azure's build does: the dev tools are
# installed under it as constraints, so they can never move a library the deployed app loads.
DEPLOYED_SET := $(VENV)/deployed-set.txt

.PHONY: demo test test-fast lint typecheck check bench chaos clean worker-venv

$(BIN)/python:
	@if [ -z "$(PYTHON)" ]; then \
		echo "Python 3.13 is needed (Azure runs this app on it) and none was found." >&2; \
		echo "Install it as python3.13 on PATH (e.g. 'apt-get install python3.13' where the distribution has it," >&2; \
		echo "or 'pyenv install 3.13'), or name one: make PYTHON=/path/to/python3.13" >&2; \
		exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' || \
		{ echo "$(PYTHON) is not Python 3.13 (Azure runs this app on 3.13): make PYTHON=/path/to/python3.13" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when a dependency list changes. First the deployed set alone, then the project and its
# dev extras constrained to it: a dev tool that needs another version of one of its libraries fails here.
$(STAMP): $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip freeze --exclude-editable > $(DEPLOYED_SET)
	$(BIN)/python -m pip install --quiet -c $(DEPLOYED_SET) -e '.[dev]'
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

# The Functions worker's own indexing check (tests/worker) runs in a venv of its own holding only the
# deployed requirements (no dev tool can lend the app a library Azure would not install). Same Python.
WORKER_PY ?= $(PYTHON)
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

# Prints numbers; nothing is asserted (docs/performance.md). About 90 minutes on 2 cores, most of it
# the chaos run at CHAOS_SIZE requests beside its 1,000-request baseline.
CHAOS_SIZE ?= 10000
bench: $(STAMP)
	$(BIN)/python -m benchmarks.servicebus_emulator
	$(BIN)/python -m benchmarks.servicebus_emulator --database $(VENV)/bench-servicebus.db --messages 2000
	rm -f $(VENV)/bench-servicebus.db*
	$(BIN)/python -m benchmarks.tenant_sandbox
	$(BIN)/python -m benchmarks.pipeline
	$(BIN)/python -m benchmarks.scale_out
	$(BIN)/python -m benchmarks.latency
	$(BIN)/python -m benchmarks.drift
	$(BIN)/python -m benchmarks.size --requests $(CHAOS_SIZE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
