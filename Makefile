# Everything a newcomer needs: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint chaos bench dashboard screenshots docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,dashboard]'
	touch $(STAMP)

demo: install ## start the sandbox, load both sources, build the marts into warehouse/loyalty_warehouse.duckdb
	$(BIN)/loyalty-etl demo

test: install ## the fast suite (< 10 min): sandbox, pipeline, dbt, reliability subset, ops, dashboard
	$(BIN)/python -m pytest -m "not chaos" -n 2 --dist loadfile -q

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

clean:
	rm -rf warehouse sql/target sql/logs .pytest_cache
