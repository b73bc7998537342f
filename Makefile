# AgentMill — the two commands: `make up` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# Two stamps: `make up` needs the runtime only; `make test` also the dev tools (pytest, ruff, mypy).
RUN_STAMP := $(VENV)/.installed-runtime-stamp
DEV_STAMP := $(VENV)/.installed-dev-stamp
EXAMPLES := examples/research-brief.yaml examples/planner-map.yaml examples/supervisor.yaml examples/approval.yaml examples/form-approval.yaml examples/sub-workflow.yaml

.PHONY: install install-dev up demo test lint typecheck pytest bench clean

$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUN_STAMP)

# The dev extra includes the runtime, so it satisfies `make up` too.
$(DEV_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(DEV_STAMP) $(RUN_STAMP)

install: $(RUN_STAMP) ## Create .venv and install AgentMill (runtime only)

install-dev: $(DEV_STAMP) ## Create .venv and install AgentMill with its dev tools

up: install ## Start AgentMill (API + workers, SQLite) with the examples loaded; PORT=8123 HOST=0.0.0.0 to change where it listens; Ctrl-C stops it
	$(BIN)/agentmill up --host $(HOST) --port $(PORT) --examples examples

demo: install ## Run every example once in the terminal, offline, without the server
	@for f in $(EXAMPLES); do \
		echo; echo "=== agentmill run $$f"; \
		$(BIN)/agentmill run $$f --auto-approve || exit $$?; \
	done

test: install-dev lint typecheck pytest ## ruff, mypy and the whole test suite (needs PostgreSQL)

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck:
	$(BIN)/mypy

# Two processes (pytest-xdist): no test measures wall-clock time (overlap is proved by the
# steps' recorded start and finish times, waits poll for the event they mean, see
# tests/waiting.py), and each process has its own databases, Redis keys, ports and files.
pytest:
	$(BIN)/pytest -n 2

bench: install-dev ## Engine, API, distributed, gateway, memory-search and CLI start-up benchmarks (SQLite, PostgreSQL, Redis)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/distributed.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) .agentmill .mypy_cache .ruff_cache .pytest_cache
