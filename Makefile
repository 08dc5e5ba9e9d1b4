# payables-agent: `make demo` and `make test` do all set-up on a fresh machine with Python 3.11.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
DEV_PORT ?= 2024

# Offline by default: no tracing or telemetry unless the caller's environment turns it on.
export LANGSMITH_TRACING ?= false
export RAGAS_DO_NOT_TRACK ?= true
export LANGGRAPH_CLI_NO_ANALYTICS ?= 1
export LANGGRAPH_NO_VERSION_CHECK ?= true

.PHONY: help install demo dev test check format format-check lint typecheck eval bench profile loadtest clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra eval --python $(PYTHON)
	@touch $@

install: $(VENV)/.installed ## Create .venv with the locked dependencies (installs uv if missing)

demo: install ## Start the embedded Postgres, seed the sample world, run the sample inbox
	$(BIN)/payables demo

dev: install ## Serve the graph with `langgraph dev` (Postgres checkpointer) on 127.0.0.1:2024 (DEV_PORT=...)
	@echo "API:    http://127.0.0.1:$(DEV_PORT)  (OpenAPI docs: http://127.0.0.1:$(DEV_PORT)/docs)"
	@echo "Inbox:  http://127.0.0.1:$(DEV_PORT)/inbox  (sign in with a token from PAYABLES_AUTH_TOKENS)"
	@echo "Studio: https://smith.langchain.com/studio/?baseUrl=http://127.0.0.1:$(DEV_PORT)"
	PAYABLES_DATABASE_URI="$${PAYABLES_DATABASE_URI:-$${DATABASE_URI:-}}" \
		$(BIN)/langgraph dev --host 127.0.0.1 --port $(DEV_PORT) --no-browser

test: install ## Run the test suite (unit, integration on real Postgres, e2e)
	$(BIN)/pytest

format: install ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

format-check: install ## Check formatting
	$(BIN)/ruff format --check .

lint: install ## Lint
	$(BIN)/ruff check .

typecheck: install ## Type-check (mypy --strict on the packages)
	$(BIN)/mypy

check: format-check lint typecheck test ## Everything CI runs

EVAL_ARGS ?= --gate
eval: install ## Run the eval suites (golden, policy_qa, redteam) offline, write reports/eval/, check the gates
	$(BIN)/payables eval $(EVAL_ARGS)

BENCH_ARGS ?=
bench: install ## Agent overhead vs bare LangGraph and plain psycopg; prints a table, writes reports/bench/bench.json
	$(BIN)/python -m bench $(BENCH_ARGS)

PROFILE_RUNS ?= 200
profile: install ## Where invoice-flow runs spend their time (pyinstrument); prints a tree, writes reports/bench/profile.html
	$(BIN)/python -m bench --profile $(PROFILE_RUNS)

LOADTEST_ARGS ?=
loadtest: install ## Bounded load test on a local langgraph dev (8 clients x 5 runs, 120 s); prints throughput, p50/p95, errors
	$(BIN)/python -m loadtest $(LOADTEST_ARGS)

clean: ## Remove the virtualenv, caches and the embedded database
	rm -rf $(VENV) .tools .data .mypy_cache .ruff_cache .pytest_cache
