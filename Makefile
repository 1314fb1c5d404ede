# Set-up and everyday commands. `make demo` and `make test` work on a fresh
# clone with only Python 3.11: they create .venv and install everything first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,postgres,celery]'
	touch $(STAMP)

demo: install
	bash scripts/demo.sh

test: install
	bash scripts/test.sh

lint: install
	$(BIN)/ruff check recs dags plugins tests bench scripts

bench: install
	$(BIN)/python bench/pipeline_bench.py

clean:
	rm -rf var airflow_home .pytest_cache
