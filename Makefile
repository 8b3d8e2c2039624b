# simapp — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COUNT ?= 200
WORKERS ?= 1
RPS ?= 200
ARGS ?=

.PHONY: install run test test-fast lint loadtest bench bench-kafka chaos soak tools up down clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## The main job on the embedded stack (Tansu + mock LLM + sink + workers), with a report.
run: install
	$(BIN)/python -m simapp.embedded.run --count $(COUNT) --workers $(WORKERS) $(ARGS)

## Debian tools some tests use (promtool, chromium, stunnel4 for the Kafka TLS tests);
## installed when we are root with apt.
tools:
	@if ! command -v promtool >/dev/null || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v stunnel4 >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian tools: prometheus chromium chromium-driver stunnel4"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus chromium chromium-driver stunnel4 >/dev/null) \
	      || echo "WARNING: could not install Debian tools; tests that need them will skip"; \
	  else echo "WARNING: promtool/chromium/stunnel4 missing and cannot apt-get; tests that need them will skip"; fi; \
	fi

test: install tools
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check simapp agents tables tests

## Load test against KAFKA_BOOTSTRAP_SERVERS, or the embedded stack when none is configured.
loadtest: install
	$(BIN)/faust -A simapp loadtest --count $(COUNT) --follow $(ARGS)

## Benchmark on the embedded stack (see docs/benchmarks.md).
bench: install
	$(BIN)/python -m simapp.lab.bench --count $(if $(filter file,$(origin COUNT)),10000,$(COUNT)) --workers $(if $(filter file,$(origin WORKERS)),2,$(WORKERS)) --rps $(RPS) $(ARGS)

## Worker CPU per Kafka operation (read, send, table write), Faust in the loop (docs/benchmarks.md).
bench-kafka: install
	$(BIN)/python -m simapp.lab.bench_kafka $(ARGS)

## Losses under faults: workers killed, stopped and added mid-burst (see docs/reliability.md).
chaos: install
	$(BIN)/python -m simapp.lab.chaos --count $(if $(filter file,$(origin COUNT)),1000,$(COUNT)) --workers $(if $(filter file,$(origin WORKERS)),3,$(WORKERS)) $(ARGS)

## State over time: many batches with short retention periods, memory, metrics and table rows
## after each (see docs/reliability.md).
soak: install
	$(BIN)/python -m simapp.lab.soak $(ARGS)

up:
	@test -f .env || { echo "no .env: run 'cp .env.example .env' and edit it (see docs/deployment.md)"; exit 1; }
	docker compose -f docker/docker-compose.yml --env-file .env up -d --build --scale worker=$(or $(REPLICAS),5)

down:
	docker compose -f docker/docker-compose.yml $(if $(wildcard .env),--env-file .env) --profile dry-run down

clean:
	rm -rf $(VENV) var *.egg-info .pytest_cache .ruff_cache
