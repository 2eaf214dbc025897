# Every target works from a fresh clone with only python3.11 (or python3) and pip: the first run
# bootstraps a pinned uv into .venv-tools, and uv builds .venv from uv.lock.
SHELL := bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
UV_VERSION := 0.13.9
UV := .venv-tools/bin/uv
BIN := .venv/bin

.PHONY: venv run demo browser test unit integration e2e fault check schemas docs conformance bench bench-load bench-views bench-console bench-bus bench-hop soak soak-cluster soak-tuning lock clean distclean

$(UV):
	$(PYTHON) -m venv .venv-tools
	.venv-tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Cheap when nothing changed, so every target depends on it rather than on a stamp file.
venv: $(UV)
	$(UV) sync --frozen

run: venv
	$(BIN)/writ up

demo: venv
	$(BIN)/writ demo --embedded

# The console's browser tests drive Debian's chromium: a fresh machine (root, apt) gets it here, so
# `make test` needs nothing else; where it cannot be installed the browser tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; } || \
	  echo "chromium could not be installed: the browser tests will skip and say why" >&2

# CI runs exactly this: lint and types first, then every test tier against real servers.
test: check browser
	$(BIN)/pytest -q

unit: venv
	$(BIN)/pytest -q tests/unit

integration: venv
	$(BIN)/pytest -q tests/integration

e2e: venv
	$(BIN)/pytest -q tests/e2e

# Kills real processes (services, nats-server, MCP servers) mid-run; a few minutes.
fault: venv
	$(BIN)/pytest -q tests/fault

check: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy libs/contract/src sdk/src libs/common/src services/*/src src examples

schemas: venv
	$(BIN)/python -m writ_common.schemagen schemas

# docs/reference/{configuration,cli}.md from WritSettings and the typer app; a unit test keeps them current.
docs: venv
	$(BIN)/python -m writ.docsgen

# The official MCP conformance suite (npm, pinned in src/writ/conformance.py; needs Node and npm):
# its server scenarios directly against a conformance target server and through `writ gateway
# --http` with a permit-all policy, side by side; ends `conformance: direct P/N, through writ Q/N`.
conformance: venv
	$(BIN)/python -m writ.conformance $(CONFORMANCE_ARGS)

# BENCH_ARGS=--cluster: the same intents on `writ up --cluster 3` (R3) after one node, both printed.
bench: venv
	$(BIN)/python -m writ.bench $(BENCH_ARGS)

# Not in CI: closed-loop load at several concurrencies, fast and 200 ms tools, CPU per call per process.
bench-load: venv
	$(BIN)/python -m writ.bench_load $(BENCH_LOAD_ARGS)

# Not in CI: a full views rebuild over a generated log of >= 100,000 events, then query p50/p99.
bench-views: venv
	$(BIN)/python -m writ.bench_views

# Not in CI: how soon a request reaches an open inbox (SSE vs a 2 s poll), ledger CPU per open Plane page.
bench-console: venv
	$(BIN)/python -m writ.bench_console

# Revocation on `writ up --cluster 3`: connect a user JWT to every node, push, closed everywhere.
bench-bus: venv
	$(BIN)/python -m writ.bench_bus

# The bus's floor under one hop (append -> ack -> delivered), single node vs. R3, consumer state on file vs. memory.
bench-hop: venv
	$(BIN)/python -m writ.bench_hop $(BENCH_HOP_ARGS)

# Not in CI: the kill scenarios at length (override with SOAK_INTENTS / SOAK_KILLS), then a summary.
SOAK_INTENTS ?= 1000
SOAK_KILLS ?= 8
soak: venv
	WRIT_SOAK_INTENTS=$(SOAK_INTENTS) WRIT_SOAK_KILLS=$(SOAK_KILLS) $(BIN)/pytest -q -s -p no:cacheprovider tests/fault -k "killing_a_service"

# Not in CI: `writ up --cluster 3` on loopback (R3 streams); kill the intents stream's leader, a
# follower, two of three nodes for 10 s, each under load, then SOAK_CLUSTER_STEADY sequential
# intents; one summary table (override SOAK_CLUSTER_INTENTS per fault scenario).
SOAK_CLUSTER_INTENTS ?= 120
SOAK_CLUSTER_STEADY ?= 1000
soak-cluster: venv
	WRIT_SOAK_CLUSTER=1 WRIT_SOAK_CLUSTER_INTENTS=$(SOAK_CLUSTER_INTENTS) WRIT_SOAK_CLUSTER_STEADY=$(SOAK_CLUSTER_STEADY) \
	  $(BIN)/pytest -q -s -p no:cacheprovider tests/fault/test_cluster_faults.py

lock: $(UV)
	$(UV) lock

# Leaves .writ alone: it is the plane's data, not a build product.
clean:
	find . -path ./.venv -prune -o -path ./.venv-tools -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist
	find . -path ./.venv -prune -o -path ./.venv-tools -prune -o -type d -name '*.egg-info' -exec rm -rf {} +

distclean: clean
	rm -rf .venv .venv-tools

# Not in CI: the executor's own concurrency loop against real MCP servers (2 s windows, 30-45 s).
soak-tuning: venv
	WRIT_SOAK_TUNING=1 $(BIN)/pytest -q -p no:cacheprovider tests/integration/test_concurrency_loop.py
