# The two set-up commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NEWEST := tests/constraints/dvc-newest.txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(NEWEST) plugins/*/pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

DVC_VENV := .venv-dvc
DVC_STAMP := $(DVC_VENV)/.installed-$(shell cat pyproject.toml $(NEWEST) | cksum | cut -d' ' -f1)

.PHONY: venv test test-dvc test-dvc-low test-cluster test-browser demo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(NEWEST)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(NEWEST) -e '.[test,bench]'
	@if ls plugins/*/pyproject.toml >/dev/null 2>&1; then \
	  for p in plugins/*/; do $(BIN)/python -m pip install --quiet -e "$$p"; done; fi
	@# bytecode for the editable package too (pip compiles only what it copies): with
	@# PYTHONDONTWRITEBYTECODE set, every command would compile lauf_dvc from source
	$(BIN)/python -m compileall -q lauf_dvc
	rm -f $(VENV)/.installed-*
	touch $@

test: venv
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# DVC's own repro tests (from the sdist of the DVC installed), plain and through lauf,
# on the newest DVC (tests/constraints/dvc-newest.txt; `make test-dvc-low`: the lowest).
test-dvc: $(DVC_STAMP)
	$(DVC_VENV)/bin/python tests/dvc_suite/run.py

$(DVC_STAMP): pyproject.toml $(NEWEST)
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DVC_VENV)/bin/python -m pip install --quiet -c $(NEWEST) -e . 'dvc[tests]'
	rm -f $(DVC_VENV)/.installed-*
	touch $@

# The DVC-facing tests (equivalence with dvc repro, status agreement, crashes, the seam,
# the API) and DVC's own repro tests through lauf, on the lowest DVC pyproject.toml
# allows (tests/constraints/dvc-lowest.txt); `make test` and `make test-dvc` run on the
# newest (tests/constraints/dvc-newest.txt).
LOW_VENV := .venv-dvc-low
LOW_STAMP := $(LOW_VENV)/.installed-$(shell cat pyproject.toml tests/constraints/dvc-lowest.txt Makefile | cksum | cut -d' ' -f1)
LOW_TESTS := tests/dvc/test_dropin.py tests/dvc/test_fingerprint_sync.py tests/dvc/test_pipeline.py \
	tests/dvc/test_lockfile.py tests/dvc/test_runner.py tests/dvc/test_api.py \
	tests/dvc/test_compat.py tests/dvc/test_one_engine.py tests/dvc/test_fingerprinters.py \
	tests/dvc/test_crash.py

test-dvc-low: $(LOW_STAMP)
	$(LOW_VENV)/bin/python -c "import dvc; print('DVC', dvc.__version__)"
	$(LOW_VENV)/bin/python -m pytest -n 2 $(LOW_TESTS) $(PYTEST_ARGS)
	$(LOW_VENV)/bin/python tests/dvc_suite/run.py

$(LOW_STAMP): pyproject.toml tests/constraints/dvc-lowest.txt Makefile
	test -x $(LOW_VENV)/bin/python || $(PYTHON) -m venv $(LOW_VENV)
	$(LOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOW_VENV)/bin/python -m pip install --quiet -c tests/constraints/dvc-lowest.txt -e '.[test]' 'dvc[tests]'
	@for p in plugins/*/; do $(LOW_VENV)/bin/python -m pip install --quiet -e "$$p"; done
	rm -f $(LOW_VENV)/.installed-*
	touch $@

# A real single-node SLURM cluster (munged, slurmctld, slurmd in a temporary folder, as
# root) running docs/slurm.md's job script and `lauf-dvc submit`. Installs Debian's
# slurm-wlm and munge when they are missing and it may; else says what to install.
test-cluster: venv
	@bash tests/cluster/install.sh
	LAUF_DVC_TEST_CLUSTER=1 $(BIN)/python -m pytest -p no:xdist tests/cluster $(PYTEST_ARGS)

# `lauf-dvc report --html` of the example pipeline in a real headless Chromium (no console
# errors, a bar per stage run, a screenshot) and `lauf-dvc dag --dot` through Graphviz.
# Installs Debian's chromium and graphviz when they are missing and it may (root, apt).
test-browser: venv
	@bash tests/browser/install.sh
	LAUF_DVC_TEST_BROWSER=1 $(BIN)/python -m pytest -p no:xdist -s tests/browser $(PYTEST_ARGS)

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# Snakemake for bench/peers.py, in a venv of its own (it is no dependency of lauf-dvc).
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet 'snakemake>=9,<10'
	touch $@

bench: venv $(PEERS_VENV)/.installed
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/scheduler.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/fingerprint.py
	$(BIN)/python bench/status.py --params per-stage
	$(BIN)/python bench/status.py --params one-file
	$(BIN)/python bench/idle.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(DVC_VENV) $(LOW_VENV) $(PEERS_VENV) .cache .pytest_cache .ruff_cache
