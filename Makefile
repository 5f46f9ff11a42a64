# trainguard's entry points. `make test` and `make demo` each install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: help venv constraints lint typecheck layers crds crds-check dashboards dashboards-check controlplane tools test-tools node-tools test unit demo demo-stop demo-scenarios bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install trainguard with its dev extras

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

constraints: ## re-pin constraints.txt to the newest versions pyproject.toml allows (then run make test)
	rm -rf .venv-pin && $(PYTHON) -m venv .venv-pin && .venv-pin/bin/pip install --quiet -e '.[dev]'
	{ echo "# Exact versions for CI and the images (make constraints). Used with pip install -c constraints.txt."; \
	  .venv-pin/bin/pip freeze --exclude-editable | LC_ALL=C sort; } > constraints.txt && rm -rf .venv-pin

lint: venv ## ruff
	$(BIN)/ruff check operator tests bench dashboards

typecheck: venv ## mypy --strict on operator/trainguard and dashboards/
	$(BIN)/mypy
	$(BIN)/mypy --strict dashboards

layers: venv ## the import layering (import-linter)
	$(BIN)/lint-imports

crds: venv ## regenerate crds/, the chart's CRD copy and docs/sample.schema.json from the models
	$(BIN)/trainguard crdgen

crds-check: venv ## fail if the generated files differ from the models
	$(BIN)/trainguard crdgen --check

dashboards: venv ## regenerate the chart's Grafana dashboard JSON from dashboards/trainguard.py
	$(BIN)/python dashboards/trainguard.py

dashboards-check: venv ## fail if the dashboard JSON differs from dashboards/trainguard.py
	$(BIN)/python dashboards/trainguard.py --check

controlplane: ## build (or reuse from the cache) the local Kubernetes control plane
	scripts/controlplane build

tools: ## install helm, promtool and kwok into the cache
	scripts/controlplane tools

test-tools: ## install the tools the red-team tests attack with (root; skipped tests say what is missing)
	scripts/test-tools

node-tools: ## install the real-node tier (root): Debian packages, kubelet, kube-router, pod images
	scripts/realnode install

unit: venv ## the tests that need no control plane
	$(BIN)/pytest -m 'not integration'

test: venv lint typecheck layers crds-check dashboards-check controlplane tools test-tools ## everything CI runs
	$(BIN)/pytest

demo: venv ## the ROME incident, caught and contained (DEMO_SCENARIO=, DEMO_KEEP=1; needs root)
	$(BIN)/trainguard demo

demo-stop: venv ## stop what DEMO_KEEP=1 left running
	$(BIN)/trainguard demo --stop

demo-scenarios: venv ## every scenario of examples/traces/ played by the demo, each outcome asserted (slow)
	DEMO_ALL_SCENARIOS=1 $(BIN)/pytest tests/demo/test_scenarios.py

bench: venv ## the benchmarks under bench/
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean: ## remove the virtualenv and caches in the checkout
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
