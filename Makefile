# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
DEMO_STATE ?= $(CURDIR)/.state/demo
DEMO_LISTEN ?= 127.0.0.1:9464
PYTEST_ARGS ?=

.PHONY: demo test lint bench venv docs fuzz

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

demo: $(STAMP)
	@mkdir -p $(DEMO_STATE)
	@echo "Fraisier demo: reconciling examples/fleet/ of this repository (SQLite in $(DEMO_STATE))"
	@echo "  services:  curl http://127.0.0.1:18081/   curl http://127.0.0.1:18082/"
	@echo "  status:    RECONCILER_STATE_DIR=$(DEMO_STATE) $(BIN)/reconciler status"
	@echo "  history:   RECONCILER_STATE_DIR=$(DEMO_STATE) $(BIN)/reconciler history api"
	@echo "  metrics:   curl http://$(DEMO_LISTEN)/metrics   (and /healthz, /readyz)"
	@echo "  change:    edit GREETING in examples/fleet/services.yaml, git commit: rolled out in ~1s"
	@echo "  rollback:  set FAIL_HEALTH: \"1\" in its env, git commit: health gate fails, rolled back"
	@echo "  stop:      Ctrl-C (the services keep running; the next start adopts them)"
	RECONCILER_STATE_DIR=$(DEMO_STATE) $(BIN)/reconciler --log-format text daemon \
	  --repo . --path examples/fleet --environment demo --listen $(DEMO_LISTEN)

# compileall: the suite starts `python -m reconciler` hundreds of times; with
# PYTHONDONTWRITEBYTECODE set (as on these machines) each would compile the package from source
# (~0.1 s) — an installed copy has its bytecode, so tests and benches run with it too
BYTECODE = $(BIN)/python -m compileall -q reconciler >/dev/null

# Tests mostly wait (SSH hosts, systemd, process start-up), so they run in pytest-xdist workers;
# --dist loadgroup keeps the tests on the shared test hosts in one worker (tests/conftest.py).
# PYTEST_WORKERS=0 runs them in this process (xdist off), e.g. for a debugger.
PYTEST_WORKERS ?= 4
test: $(STAMP)
	@$(BYTECODE)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy reconciler

# every script in bench/, one table (docs/performance.md; ~10 min on a quiet 2-core machine);
# BENCH_ARGS=--quick shortens the slow ones (idle 20 s window, no ansible-core, fewer rounds)
BENCH_ARGS ?=
bench: $(STAMP)
	@$(BYTECODE)
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# ≥ 10,000 generated cases per fuzz target (the suite runs FUZZ_EXAMPLES=100 inside `make test`);
# about 12 min on 2 quiet cores (25 min on busy ones), figures in docs/reliability.md
FUZZ_EXAMPLES ?= 10000
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/run.py --examples $(FUZZ_EXAMPLES)

docs: $(STAMP)  ## regenerate docs/cli.md, docs/yaml-reference.md and schemas/fraisier.json (after CLI, schema or provider fragment changes)
	$(BIN)/python docs/generate.py
