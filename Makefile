# The verbs people use; the README and CI call these targets.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: install run test unit lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Start the whole service (API on :8000 and workers) on embedded defaults.
## `serve` owns the shutdown of all it starts: Ctrl-C, or SIGINT/SIGTERM to make or to it.
PORT ?= 8000
run: install
	exec $(PY) manage.py serve --port $(PORT)

## Run the test suite against real PostgreSQL and Redis.
test: install
	$(PY) -m pytest

## The unit tier alone: pure Python, no PostgreSQL or Redis needed.
unit: install
	$(PY) -m pytest -p no:django -W ignore::pytest.PytestConfigWarning tests/unit

## Static checks.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/bandit -q -c pyproject.toml -r brokers delivery messaging_project manage.py

## Benchmarks (figures printed; see docs/benchmarks.md).
bench: install
	$(PY) manage.py benchmark all

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
