# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE := $(CURDIR)/.state
DAGSTER_HOME_DIR := $(STATE)/dagster_home
DEMO_DIR := $(STATE)/demo-data
DEMO_ENTRIES ?= 100000
DEMO_DAYS ?= 31
DEMO_START ?= 2024-01-01
DEMO_END ?= 2024-01-31
PORT ?= 3000
# The UI listens on loopback only; UI_HOST=0.0.0.0 exposes it (put an authenticating proxy in front).
UI_HOST ?= 127.0.0.1

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export DAGSTER_HOME := $(DAGSTER_HOME_DIR)
export LEDGER_BACKFILL_HOME := $(STATE)

.PHONY: setup demo test ui lint format bench clean dagster-home status

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed dagster-home

dagster-home:
	@mkdir -p $(DAGSTER_HOME_DIR)
	@ln -sf $(CURDIR)/dagster.yaml $(DAGSTER_HOME_DIR)/dagster.yaml

demo: setup
	$(BIN)/ledger-backfill generate --out $(DEMO_DIR) --entries $(DEMO_ENTRIES) --days $(DEMO_DAYS) --start $(DEMO_START)
	BACKFILL_SOURCE_FILE=$(DEMO_DIR)/ledger_export.csv ACCOUNTS_FILE=$(DEMO_DIR)/accounts.csv \
	  $(BIN)/dagster asset materialize -m ledger_backfill_dagster.definitions --select '*' \
	  --partition-range $(DEMO_START)...$(DEMO_END)
	@echo
	BACKFILL_SOURCE_FILE=$(DEMO_DIR)/ledger_export.csv $(BIN)/ledger-backfill summary
	@echo
	@echo "Open the Dagster UI with: make ui   (then http://127.0.0.1:$(PORT))"

test: setup
	$(BIN)/pytest -q

ui: setup
	BACKFILL_SOURCE_FILE=$${BACKFILL_SOURCE_FILE:-$(DEMO_DIR)/ledger_export.csv} \
	ACCOUNTS_FILE=$${ACCOUNTS_FILE:-$(DEMO_DIR)/accounts.csv} \
	  $(BIN)/dagster dev -h $(UI_HOST) -p $(PORT) -w workspace.yaml

status: setup
	$(BIN)/ledger-backfill status

# Style, the layers (import-linter, contracts in pyproject.toml) and the types (mypy, strict defs).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/dg check defs

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The benchmark (benchmarks/README.md): make bench BENCH_ARGS="--rss-entries 2000000,10000000"
bench: setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(STATE) reports
