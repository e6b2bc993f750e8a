# The two commands a newcomer needs, on a fresh machine:
#   make run   - install, migrate the embedded SQLite default, serve on http://127.0.0.1:8000
#   make test  - install everything the suite needs, lint, run the whole suite (real PostgreSQL)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# Processes for the independent tests (pytest-xdist); most of their time is spent waiting on
# PostgreSQL and subprocesses, so a two-core machine runs three well.
TEST_JOBS ?= 3
# How much lower the independent tests' priority is than the serial tests' (nice(1) steps).
TEST_NICE ?= 10
# What the suite drives for real, as command:Debian-package: PgBouncer, the compose validator, the
# PostgreSQL server (throwaway clusters) and client (pg_dump), Node.js for Better Auth, wrk for
# the benchmark, HAProxy for the rolling restart. Commands are checked, not package names: Node
# often comes from elsewhere.
SYSTEM_TOOLS := pgbouncer:pgbouncer docker-compose:docker-compose pg_dump:postgresql-client \
	node:nodejs npm:npm wrk:wrk haproxy:haproxy

.PHONY: run test test-containers lint format bench mutation system-deps clean

run: $(VENV)/.runtime
	$(BIN)/flask --app wsgi db upgrade
	HOST=$(HOST) PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py

# The suite in two parts, side by side: the tests marked `serial` (load, faults, real gunicorn
# under time bounds) one at a time at normal priority, and the independent tests in TEST_JOBS
# processes at a lower one (nice), so they take only the CPU the serial part leaves idle. The
# parallel part's output follows the serial part's. Both parts always run; the exit status is the
# first failure's (5, no test selected, is no failure: PYTEST_ARGS may select one part's tests).
test: $(VENV)/.dev system-deps tests/better_auth/node_modules/.package-lock.json
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@log=$$(mktemp); \
	nice -n $(TEST_NICE) $(BIN)/pytest -n $(TEST_JOBS) --dist loadfile \
	  -m "not serial and not containers" $(PYTEST_ARGS) >$$log 2>&1 & parallel=$$!; \
	$(BIN)/pytest -m "serial and not containers" $(PYTEST_ARGS); serial=$$?; \
	wait $$parallel; independent=$$?; cat $$log; rm -f $$log; \
	for s in $$independent $$serial; do [ $$s = 0 ] || [ $$s = 5 ] || exit $$s; done

# The container tests (tests/test_container_stack.py, marker `containers`, which `make test` leaves
# out): build the image, run the compose stack on free ports, break it, take it down. They need a
# Docker engine and docker-compose, not the host's PostgreSQL (hence --noconftest). About a minute.
test-containers: $(VENV)/.dev
	@command -v docker >/dev/null && command -v docker-compose >/dev/null || { \
	  echo "make test-containers: needs docker and docker-compose (v1, or a docker-compose wrapper)"; \
	  exit 1; }
	DOCKER_BUILDKIT=0 $(BIN)/pytest -m containers --noconftest tests/test_container_stack.py $(PYTEST_ARGS)

# The benchmark behind docs/performance.md (about 6 minutes; BENCH_ARGS=--smoke for a quick run).
bench: $(VENV)/.dev system-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

# Mutation testing of the modules that carry a guarantee (docs/testing.md); not part of `make test`.
# MUTATION_ARGS=errors runs one module; MUTATION_JOBS sets the parallel lanes (default 3).
mutation: $(VENV)/.dev
	$(BIN)/python -m mutation.run $(MUTATION_ARGS)

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
	@missing=$$(for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || echo $${pair#*:}; done; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo postgresql); \
	if [ -n "$$missing" ]; then \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages:" $$missing; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing \
	    >/dev/null || { echo "make test: could not install" $$missing "(need root or sudo)"; exit 1; }; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mutation tests/better_auth/node_modules instance
