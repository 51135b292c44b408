# Front door. `make demo` runs the weekly DAG on the bundled real data; `make test` runs the tests.
# Both create the virtual environment on first use. Nothing needs to be started by hand.

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
export PYTHONPATH          := $(CURDIR)
# The deployment starts its components as `airflow` subprocesses: the venv must be on PATH.
export PATH                := $(CURDIR)/$(VENV)/bin:$(PATH)
export AIRFLOW_HOME        ?= $(CURDIR)/var/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN ?= sqlite:///$(AIRFLOW_HOME)/airflow.db
export AIRFLOW__CORE__PARALLELISM ?= 4
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL ?= 10
export AIRFLOW__API__HOST ?= 127.0.0.1
export GX_ANALYTICS_ENABLED := false

DEMO_DATES ?= 2023-12-24 2023-12-31
DEMO_CONF  ?=

.PHONY: install demo monitor tune test airflow airflow-stop backfill lint docs clean-state bench

install: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

## Run weekly_retrain through Airflow for two consecutive weeks of the bundled data.
demo: install
	$(BIN)/python -m include.demo $(DEMO_DATES) $(if $(DEMO_CONF),--conf '$(DEMO_CONF)')

## Run monitor_production through Airflow over the week after a production model's training data
## (trains one for the week ending 2023-12-17 first if BTCUSDT has none that early), in a market
## store and registry of its own (var/monitor/), so that it works before or after `make demo`.
monitor: install
	mkdir -p var/monitor
	MARKET_DB_URL=sqlite:///$(CURDIR)/var/monitor/market.sqlite MODEL_REGISTRY_DIR=$(CURDIR)/var/monitor/models \
	RUN_ARTIFACTS_DIR=$(CURDIR)/var/monitor/runs $(BIN)/python -m include.monitoring.demo

## Tune each model family's hyperparameters for BTCUSDT as of 2023-06-30 through Airflow
## (tune_hyperparameters), then list the recorded sets; weekly runs whose first test fold starts
## on or after that date use them.
TUNE_AS_OF ?= 2023-06-30
TUNE_TRIALS ?= 10
TUNE_FOLDS ?= 6
tune: install
	$(BIN)/python -m include.tuning run --as-of $(TUNE_AS_OF) --markets BTCUSDT --trials $(TUNE_TRIALS) --folds $(TUNE_FOLDS)

## The whole test suite (what CI runs).
test: install
	$(BIN)/python -m pytest

## Local deployment (include/deployment/): PostgreSQL (embedded, or DEPLOY_DATABASE_URL), api-server,
## scheduler (LocalExecutor), dag-processor and triggerer on http://127.0.0.1:8080, user admin, password
## $AIRFLOW_ADMIN_PASSWORD (unset: one is generated and shown once).
## Ctrl-C or `make airflow-stop` stops all of it.
airflow: install
	$(BIN)/python -m include.deployment up

airflow-stop: install
	$(BIN)/python -m include.deployment down

## Backfill weekly_retrain on the running deployment, from a second terminal, and follow it:
## make backfill FROM=2023-11-05 TO=2023-12-24 [CONF='{"cv_folds": 4}']
backfill: install
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make backfill FROM=2023-11-05 TO=2023-12-24 [CONF='{...}']"; exit 2; }
	$(BIN)/python -m include.deployment backfill $(FROM) $(TO) $(if $(CONF),--conf '$(CONF)')

lint: install
	$(BIN)/ruff check .

## The documentation site into var/site/ (strict: a broken link or a missing page fails).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## Forget local state: Airflow metadata, market store (and registry state), run artifacts, model artifacts.
clean-state:
	rm -rf var models/versions models/.lock

## Benchmarks (not tests): one default weekly run; three consecutive weeks of one market against
## the floor of six default fits (bench/market_week.py); PostgreSQL bulk load; incremental exchange
## ingestion; a four-week backfill on a local deployment (PostgreSQL on 127.0.0.1:5432 needed);
## serving latency; one universe run of 2 markets against 1; monitoring (one bar, one week); the
## gate's check pass rates on 20 random-walk markets.
bench: install
	$(BIN)/python bench/demo_run.py 2023-12-31
	$(BIN)/python bench/market_week.py
	$(BIN)/python bench/store_bulk_load.py
	$(BIN)/python bench/incremental_ingest.py
	$(BIN)/python bench/backfill_run.py 4
	$(BIN)/python bench/serving_latency.py
	$(BIN)/python bench/universe_run.py
	$(BIN)/python bench/universe_scale.py 2 20
	$(BIN)/python bench/bad_input.py
	$(BIN)/python bench/monitoring.py
	$(BIN)/python bench/random_walk_gate.py --seeds 20
