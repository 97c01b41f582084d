# Two commands: `make run` (workflow on the embedded example) and `make test` (test suite).
# Both create a pinned virtual environment in .venv/ from requirements.lock on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-lock
CORES ?= all

.PHONY: run test report example lock lint benchmark clean

$(STAMP): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip check
	cp requirements.lock $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest

report: $(STAMP)
	$(BIN)/snakemake --report report.html

lint: $(STAMP)
	$(BIN)/snakemake --lint

# Time and memory of the workflow against a single-process scanpy script at 10k-200k simulated
# cells; writes docs/benchmarks.md (about 1.5 hours on 2 cores; SIZES="10000 50000" for a quick one).
SIZES ?= 10000 50000 100000 200000
benchmark: $(STAMP)
	$(BIN)/python tools/benchmark/run_benchmarks.py --sizes $(SIZES)

# Regenerate the embedded example (resources/example/ and config/samples.tsv) with the simulator.
example: $(STAMP)
	rm -rf resources/example
	PYTHONPATH=workflow/scripts $(BIN)/python -m pbmc_prepost.simulate --preset example \
		--outdir resources/example --sheet config/samples.tsv --relative-to .

# Re-resolve requirements.in into requirements.lock and envs/analysis.yaml.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -r requirements.in
	(echo "# Exact versions of every package of the workflow environment (pip freeze of requirements.in)."; \
	 echo "# Regenerate with 'make lock'; envs/analysis.yaml is written from this file."; \
	 .venv-lock/bin/python -m pip freeze) > requirements.lock
	rm -rf .venv-lock
	$(PYTHON) tools/write_envs.py

clean:
	rm -rf results logs benchmarks .snakemake report.html .benchmark-runs
