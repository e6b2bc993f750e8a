# The two commands a newcomer needs, on a fresh machine:
#   make run   - install, migrate the embedded SQLite default, serve on http://127.0.0.1:8000
#   make test  - install everything the suite needs, lint, run the whole suite (real PostgreSQL)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# Debian packages the suite drives for real: PgBouncer, the compose validator, the PostgreSQL
# server binaries (throwaway clusters), its client tools (pg_dump), Node.js for Better Auth.
SYSTEM_PACKAGES := pgbouncer docker-compose postgresql postgresql-client nodejs npm wrk

.PHONY: run test lint format bench system-deps clean

run: $(VENV)/.runtime
	$(BIN)/flask --app wsgi db upgrade
	HOST=$(HOST) PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py

test: $(VENV)/.dev system-deps tests/better_auth/node_modules/.package-lock.json
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

# The benchmark behind docs/performance.md (about 3 minutes; BENCH_ARGS=--smoke for a quick run).
bench: $(VENV)/.dev system-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

tests/better_auth/node_modules/.package-lock.json: tests/better_auth/package-lock.json
	cd tests/better_auth && npm ci --no-audit --no-fund

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages: $$missing"; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing \
	    >/dev/null || { echo "make test: could not install $$missing (need root or sudo)"; exit 1; }; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache tests/better_auth/node_modules instance
