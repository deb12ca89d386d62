# jwtkeymap developer entry points. `make demo` and `make test` set everything up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help deps venv tools images litellm demo test test-fast mutate lint fmt bench bench-operator controlplane-up controlplane-down cluster-up cluster-down e2e chart-crds chart-lint clean

help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

deps: ## Install missing system packages (PostgreSQL, Redis, PgBouncer, nginx, etcd, wrk, podman, debootstrap, gcc).
	@hack/install-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create the virtualenv with the package and test tools.

tools: ## Build or fetch the cluster's binaries: kube-apiserver, etcd, kubectl, helm, kubelet & co, containerd, CoreDNS (cached outside the repo).
	@hack/envtest/install.sh --node >/dev/null

litellm: deps ## Build the pinned LiteLLM proxy the tests run (own virtualenv, cached outside the repo).
	@hack/litellm/install.sh >/dev/null

demo: deps venv ## Run the whole flow on a throwaway PostgreSQL, no cluster needed.
	$(BIN)/jwtkeymap demo

lint: venv ## ruff (lint + format check) and mypy (strict on the package).
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy

test: deps venv tools images litellm lint ## Every test: unit, integration (real PostgreSQL/Redis/nginx/Envoy/LiteLLM), control plane.
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: venv ## Unit tests only.
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# Not part of `test`: it reruns the core's tests for every mutant (about 20 minutes on 2 cores).
mutate: deps venv ## Mutation testing of core (claims, cache, keys, tokens, policy); scores into docs/mutation.md.
	PYTHONPATH=operator:tests$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/python -m support.mutation.runner --write docs/mutation.md $(MUTATE_ARGS)

images: deps tools ## Build the single-node cluster's images (Debian base, jwtkeymap, pause, CoreDNS) as docker archives.
	@hack/node/images.sh >/dev/null

e2e: venv ## Opt-in end-to-end run on kind (needs Docker, kind, kubectl, helm); E2E_ARGS=--dry-run prints the steps.
	e2e/run.sh $(E2E_ARGS)

# crds/ is the source; tests/unit/packaging/test_chart_crds.py reads these cp lines and fails
# when a chart copy differs, is missing, or has no source here.
chart-crds: ## Copy crds/ into the Helm chart (the CRD is rendered from files/crds/; kopf's peering CRDs go to crds/).
	cp crds/jwtkeymappings.jwtkeymap.io.yaml charts/jwtkeymap/files/crds/
	cp crds/jwtkeymappingpolicies.jwtkeymap.io.yaml charts/jwtkeymap/files/crds/
	cp crds/kopf-peering.yaml charts/jwtkeymap/crds/

chart-lint: tools ## helm lint the chart with each of its ci/ values files.
	@for values in charts/jwtkeymap/ci/*-values.yaml; do \
	  $$(hack/envtest/install.sh --check --print-env | sed -n 's/^JWTKEYMAP_HELM=//p') lint --strict charts/jwtkeymap -f $$values || exit 1; \
	done

bench: deps venv tools litellm ## Every benchmark (figures, not pass/fail): core, resolver, operator, fleet, LiteLLM, cold calls.
	$(BIN)/python -P bench/core.py
	$(BIN)/python -P bench/check.py
	$(BIN)/python -P bench/operator_resume.py --count $(or $(COUNT),1000)
	$(BIN)/python -P bench/fleet.py
	$(BIN)/python -P bench/litellm.py
	$(BIN)/python -P bench/cold.py

bench-operator: deps venv tools ## Operator benchmark: resume with 1,000 JWTKeyMappings, CR -> NOTIFY latency.
	$(BIN)/python -P bench/operator_resume.py --count $(or $(COUNT),1000)

controlplane-up: venv tools ## Start kube-apiserver + etcd in the background; prints the KUBECONFIG to export.
	$(BIN)/python tests/controlplane/harness.py up

controlplane-down: venv ## Stop the control plane started by controlplane-up and delete its files.
	$(BIN)/python tests/controlplane/harness.py down

cluster-up: venv tools images ## Start a real single-node cluster (root; pods 198.18.0.0/16, Services 198.19.0.0/16); prints the KUBECONFIG to export.
	$(BIN)/python tests/node/cluster.py up

cluster-down: venv ## Stop the cluster started by cluster-up and remove everything it left (processes, mounts, netns, iptables, bridge, cgroups).
	$(BIN)/python tests/node/cluster.py down

fmt: venv ## Format the code.
	$(BIN)/ruff format operator tests bench
	$(BIN)/ruff check --fix operator tests bench

clean: ## Remove the virtualenv and caches.
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis
