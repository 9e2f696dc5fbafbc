PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test install install-test install-bench system-deps check bench bench-full docs dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

install: $(BIN)/python
	$(PIP) install -e .

## make demo: the chat example on the embedded memory broker, http://127.0.0.1:5000
demo: install
	$(BIN)/flask --app examples/chat/app.py run  # 127.0.0.1:5000, or FLASK_RUN_PORT

system-deps:
	bash scripts/system-deps.sh

install-test: $(BIN)/python system-deps
	$(PIP) install -e '.[redis,gevent,client,metrics,jwt]' --group test --group lint --group dist

## make test: installs what the suite needs, then runs all of it
test: install-test
	$(BIN)/python -m pytest

## make check: format, lint, types
check: install-test
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/mypy

install-bench: $(BIN)/python system-deps
	$(PIP) install -e '.[redis,gevent]' --group bench

## make bench: quick benchmarks vs Flask-SSE and sse-starlette (about 10 minutes on 2 cores);
## writes benchmarks/results/<date>-quick.md and .png
bench: install-bench
	$(BIN)/python -m benchmarks.run --quick

## make bench-full: the full sizes (10,000 streams, 1,000 x 200 fan-out)
bench-full: install-bench
	$(BIN)/python -m benchmarks.run --full

## make docs: builds the documentation site into site/ (warnings are errors)
docs: $(BIN)/python
	$(PIP) install -e . --group docs
	$(BIN)/mkdocs build --strict

## make dist: builds the sdist and wheel into dist/ and checks them with twine
dist: $(BIN)/python
	$(PIP) install --group dist
	rm -rf dist
	$(BIN)/python -m build
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) build dist site .pytest_cache .mypy_cache .ruff_cache
