# Two commands: `make run` (workflow on the embedded example) and `make test` (test suite).
# Both create a pinned virtual environment in .venv/ from requirements.lock on first use.
# The stack (scanpy 1.12, anndata 0.13) needs Python >= 3.12: found on the PATH, else through pyenv,
# or given as `make PYTHON=/path/to/python3.12`.

PYTHON ?= $(shell sh tools/find_python.sh)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-lock
CORES ?= all
NO_PYTHON := make: no Python >= 3.12 found (python3 here is $(shell python3 --version 2>&1 | cut -d' ' -f2)). \
	Install one (e.g. `pyenv install 3.12` or your distribution's python3.12), or run `make PYTHON=/path/to/python3.12`.

.PHONY: run test test-trial test-heavy test-fast lint format report example lock benchmark clean

$(STAMP): requirements.lock
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)"; exit 1; }
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip check
	cp requirements.lock $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

# Everything, as CI runs it: the linters, then unit tests and whole-workflow runs, as three pytest
# processes side by side (one alone leaves a core idle: unit tests are single-threaded, and the
# SLURM test mostly waits for SLURM's status checks; pytest-xdist cannot keep it on one worker).
# Workflow tests marked beside_unit run in the unit tests' process, and the null trial after the
# SLURM test in its process (done in 8.5 of the unit tests' 19.5 minutes when the null trial ran
# beside the unit tests). The workflow tests print as they go; the other two logs follow at the end.
AFTER_SLURM := tests/test_workflow_null.py
test: lint
	@$(BIN)/python -m pytest tests/test_slurm.py $(AFTER_SLURM) > .test-slurm.log 2>&1 & slurm=$$!; \
	$(BIN)/python -m pytest -m "(not workflow or beside_unit) and not heavy" > .test-unit.log 2>&1 & unit=$$!; \
	$(BIN)/python -m pytest -m "workflow and not trial and not beside_unit" --ignore=tests/test_slurm.py \
		$(addprefix --ignore=,$(AFTER_SLURM)); workflow=$$?; \
	wait $$unit; unit_status=$$?; wait $$slurm; slurm_status=$$?; \
	echo "---- unit tests (run beside the workflow tests) ----"; cat .test-unit.log; \
	echo "---- tests/test_slurm.py $(AFTER_SLURM) (run beside the workflow tests) ----"; cat .test-slurm.log; \
	test $$workflow -eq 0 && test $$unit_status -eq 0 && test $$slurm_status -eq 0

# The simulated placebo-controlled trial through the workflow (tests/test_workflow_trial.py): about
# 6 minutes on 2 cores, beyond make test's 20-minute budget, so run on its own (before a release,
# after a change to a statistical test). The null trial and the planted-interaction unit tests run
# in make test.
test-trial: $(STAMP)
	$(BIN)/python -m pytest -m trial

# The kNN-cache check (tests/test_runtime.py, marker heavy): numba compiles pynndescent's kernels
# from cold in two fresh processes, 2-4 minutes of one core that make test's 20 minutes cannot
# spare; run it after a change to the numba cache set-up or to scanpy/pynndescent versions.
test-heavy: $(STAMP)
	$(BIN)/python -m pytest -m heavy

# Unit tests only (no whole-workflow run, no subprocess compile checks): a few minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not workflow and not slow"

# ruff (lint and format), snakefmt and Snakemake's own linter; `make format` fixes what they can.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile workflow/rules

report: $(STAMP)
	$(BIN)/snakemake --report report.html

# Time and memory of the workflow against a single-process scanpy script at 10k-200k simulated
# cells; writes docs/benchmarks.md (about 1.5 hours on 2 cores; SIZES="10000 50000" for a quick one).
SIZES ?= 10000 50000 100000 200000
benchmark: $(STAMP)
	$(BIN)/python tools/benchmark/run_benchmarks.py --sizes $(SIZES)

# Regenerate the embedded example (resources/example/ and config/samples.tsv) with the simulator.
example: $(STAMP)
	rm -rf resources/example
	PYTHONPATH=workflow/scripts $(BIN)/python -m pbmc_prepost.simulation --preset example \
		--outdir resources/example --sheet config/samples.tsv --relative-to .

# Re-resolve requirements.in into requirements.lock and envs/analysis.yaml.
lock:
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)"; exit 1; }
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -r requirements.in
	(echo "# Exact versions of every package of the workflow environment (pip freeze of requirements.in)."; \
	 echo "# Regenerate with 'make lock'; envs/analysis.yaml is written from this file."; \
	 .venv-lock/bin/python -m pip freeze) > requirements.lock
	rm -rf .venv-lock
	.venv/bin/python tools/write_envs.py 2>/dev/null || $(PYTHON) tools/write_envs.py

clean:
	rm -rf results logs benchmarks .snakemake report.html .benchmark-runs
