# keel's two commands: `make demo` (see it work) and `make test` (prove it works).
PYTHON ?= python3
VENV := .venv
PACKAGES := contracts workflows activities workers starters services infra llmsim devstack api migrations
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: install compile demo down test lint format bench clean

$(BIN)/.keel-installed: pyproject.toml uv.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# A .venv made by uv has no pip: bootstrap it from the standard library.
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	@# --inexact keeps uv itself, which is not a project dependency.
	@# Bytecode compiled at install: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every
	@# process would otherwise compile every module it imports again (`keel` start-up 4.5 -> 2.2 s).
	@UV_COMPILE_BYTECODE=1 UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync --frozen --inexact --quiet
	@touch $@

# keel's own modules, compiled likewise (a no-op when nothing changed).
compile: install
	@$(BIN)/python -m compileall -q $(PACKAGES) tests bench >/dev/null

install: $(BIN)/.keel-installed

demo: compile
	$(BIN)/keel dev up
	$(BIN)/keel demo

down:
	@if [ -x $(BIN)/keel ]; then $(BIN)/keel dev down; fi

# Four pytest processes, each with its own Temporal dev server, simulator and template database:
# the suite mostly waits (on servers, subprocesses, timers), so four share two cores well
# (one process: 28-30 min; four: under 10). A test file stays in one process (--dist loadfile),
# so module fixtures (the console's browser, a dev stack) start once.
TEST_WORKERS ?= 4

test: compile
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	@# The layers and their allowed imports (pyproject.toml [tool.importlinter], ARCHITECTURE.md).
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/llm_overhead.py

# --purge: run as root, the embedded Postgres may keep its cluster outside .keel/ (in
# /var/lib/keel-postgres, when the system user it runs as cannot reach .keel/), which rm misses.
clean:
	@if [ -x $(BIN)/keel ]; then $(BIN)/keel dev down --purge; fi
	rm -rf $(VENV) .keel .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
