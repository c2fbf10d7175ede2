# edgepipe: `make run` (whole pipeline on the bundled data), `make test` (the suite CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install run serve test stack-test test-serve-stop lint docs repro bench mlflow-ui prefect-ui lock clean

# The venv is rebuilt only when the lock file (or this recipe) changes. uv installs the exact pinned set and
# compiles it to bytecode once: with PYTHONDONTWRITEBYTECODE set (as on CI machines and in docker/) every
# process would otherwise compile TensorFlow's sources again (import 11 s -> 4 s; docs/figures.md).
$(VENV)/.installed: requirements.lock pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "uv==0.13.9"
	$(VENV)/bin/uv pip sync --quiet --compile-bytecode --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $@

install: $(VENV)/.installed

run: install
	edgepipe run

# Prefect + MLflow servers on 127.0.0.1 and the pipeline served on its schedule and on new data (Ctrl-C stops all).
serve: install
	edgepipe serve

# The README's test command and what CI runs: lint, then every test (the docs build is one of them).
test: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 3 --dist loadgroup --no-loadscope-reorder -ra --durations=15 -m "not stack"

# The team stack (PostgreSQL, Prefect and MLflow servers, two workers) under a burst of triggers and four
# faults; prints the summary last. CI runs it after make test.
stack-test: install
	$(PY) -m pytest -n 0 -ra -m stack tests/test_stack_scenarios.py

# The Ctrl-C-with-a-run-in-flight scenario of edgepipe serve, 10 times (every 2nd under CPU load).
test-serve-stop: install
	SERVE_STOP_REPEATS=10 $(PY) -m pytest -s tests/test_serve_shutdown.py -k ctrl_c_with

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The documentation site (mkdocs-material) into site/; reference pages are generated from the code.
docs: install
	$(VENV)/bin/mkdocs build --strict

# DVC alone, without Prefect: make sure the data is tracked, then reproduce every stage.
repro: install
	edgepipe ingest && dvc repro

# Latency, memory and size of every exported artifact in every runtime (after `make run`); see bench/README.md.
bench: install
	$(PY) bench/benchmark.py

mlflow-ui: install
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1

# A Prefect server for the UI; run the pipeline with PREFECT_API_URL=http://127.0.0.1:4200/api to see it there.
prefect-ui: install
	prefect server start --host 127.0.0.1 --port 4200

# Re-resolve requirements.lock from pyproject.toml (then commit both).
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra dask --extra docs --python-version 3.11 --no-header -o requirements.lock

clean:
	rm -rf data/prepared models metrics reports mlruns mlartifacts mlflow.db
