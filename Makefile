# Everything a newcomer needs: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-lake demo-lake-stop test lint chaos bench dashboard screenshots docs clean test-airflow airflow-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,dashboard]'
	touch $(STAMP)

demo: install ## start the sandbox, load both sources, build the marts into warehouse/loyalty_warehouse.duckdb
	$(BIN)/loyalty-etl demo

demo-lake: install ## the demo on a DuckLake: starts its own PostgreSQL (warehouse/demo-lake/), left running to attach
	$(BIN)/loyalty-etl demo --lake

demo-lake-stop: install ## stop the PostgreSQL `make demo-lake` left running (its data stays until `make clean`)
	$(BIN)/loyalty-etl demo --stop-lake

test: install ## the fast suite (< 10 min): sandbox, pipeline, dbt, reliability subset, ops, dashboard
	$(BIN)/python -m pytest -m "not chaos and not airflow" -n 2 --dist loadfile -q

# Apache Airflow in its own venv (never in .venv: its pins and the project's must not meet), installed with the
# constraints Airflow publishes for this version and Python 3.11, vendored in deploy/airflow/ (see its README.md).
AIRFLOW_VERSION     := 3.0.1
AIRFLOW_VENV        := .airflow-venv
AIRFLOW_CONSTRAINTS := deploy/airflow/constraints-3.11.txt
AIRFLOW_STAMP       := $(AIRFLOW_VENV)/.installed-$(AIRFLOW_VERSION)

airflow-venv: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): $(AIRFLOW_CONSTRAINTS)
	cd deploy/airflow && sha256sum --check --quiet constraints-3.11.txt.sha256
	@start=$$(date +%s); \
	$(PYTHON) -m venv $(AIRFLOW_VENV) && \
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip && \
	$(AIRFLOW_VENV)/bin/pip install --quiet "apache-airflow==$(AIRFLOW_VERSION)" --constraint $(AIRFLOW_CONSTRAINTS) && \
	echo "airflow-venv: apache-airflow $(AIRFLOW_VERSION) installed in $$(( $$(date +%s) - start )) s"
	touch $(AIRFLOW_STAMP)

test-airflow: install airflow-venv ## the DAG on a real Airflow 3 (`airflow dags test`): sandbox, shards, pools, rows = truth
	LOYALTY_AIRFLOW_VENV=$(CURDIR)/$(AIRFLOW_VENV) LOYALTY_REQUIRE_AIRFLOW=1 LOYALTY_REQUIRE_POSTGRES=1 \
	  $(BIN)/python -m pytest -m airflow -p no:xdist -q -rs --durations=0 tests/test_airflow_dag.py

lint: install ## sqlfluff on the dbt project (also part of `make test`)
	$(BIN)/sqlfluff lint sql/

chaos: install ## the full fault / crash / bad-input suite
	$(BIN)/python -m pytest -m chaos -q

bench: install ## side-by-side benchmark: naive dlt rest_api vs this pipeline vs DuckDB read_json
	$(BIN)/python -m bench.run

dashboard: install
	$(BIN)/loyalty-etl dashboard

screenshots: install
	$(BIN)/python -m dashboard.screenshots

docs: install ## dbt docs for the marts; open with `make docs` then browse http://127.0.0.1:8080
	$(BIN)/loyalty-etl models --docs --serve

clean:  ## removes warehouse/ (the lake demo's PostgreSQL is stopped first)
	@if [ -x $(BIN)/loyalty-etl ] && [ -d warehouse/demo-lake ]; then $(BIN)/loyalty-etl demo --stop-lake; fi
	rm -rf warehouse sql/target sql/logs .pytest_cache
