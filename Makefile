# Front door. `make demo` runs the weekly DAG on the bundled real data; `make test` runs the tests.
# Both create the virtual environment on first use. Nothing needs to be started by hand.

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
export PYTHONPATH          := $(CURDIR)
# airflow standalone starts its components as `airflow` subprocesses: the venv must be on PATH.
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

.PHONY: install demo test airflow lint clean-state bench

install: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

## Run weekly_retrain through Airflow for two consecutive weeks of the bundled data.
demo: install
	$(BIN)/python -m include.demo $(DEMO_DATES) $(if $(DEMO_CONF),--conf '$(DEMO_CONF)')

## The whole test suite (what CI runs).
test: install
	$(BIN)/python -m pytest

## Airflow standalone (scheduler, api-server, dag-processor) on http://127.0.0.1:8080, login admin/admin.
airflow: install
	mkdir -p $(AIRFLOW_HOME)
	test -f $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated || \
		echo '{"admin": "admin"}' > $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated
	$(BIN)/airflow db migrate > /dev/null
	# The thread budget's pool: how many model fits run at once on this machine (include/resources.py).
	$(BIN)/airflow pools set training $$($(BIN)/python -m include.resources) "model training (include/resources.py)" > /dev/null
	$(BIN)/airflow standalone

lint: install
	$(BIN)/ruff check .

## Forget local state: Airflow metadata, market store (and registry state), run artifacts, model artifacts.
clean-state:
	rm -rf var models/versions models/.lock

## Benchmarks (not tests): one default weekly run; PostgreSQL bulk load; incremental exchange
## ingestion; a four-week backfill on a local deployment (PostgreSQL on 127.0.0.1:5432 needed);
## serving latency; one universe run of 2 markets against 1.
bench: install
	$(BIN)/python bench/demo_run.py 2023-12-31
	$(BIN)/python bench/store_bulk_load.py
	$(BIN)/python bench/incremental_ingest.py
	$(BIN)/python bench/backfill_run.py 4
	$(BIN)/python bench/serving_latency.py
	$(BIN)/python bench/universe_run.py
	$(BIN)/python bench/bad_input.py
