# Two commands do all set-up on a fresh machine:
#   make demo   build .venv and run the workflow on the bundled demo
#   make test   build .venv and run the whole test suite (make test-fast: without the
#               end-to-end Snakemake runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= 2
# Test processes: the suite is mostly real Snakemake runs, which wait on their jobs as much
# as they compute; a test file runs whole in one process (--dist loadfile), so a file's
# module fixtures are made once. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

.PHONY: venv test test-fast demo lint dryrun bench clean

venv: $(STAMP)

# torch is installed first and pinned: the CPU build lies on local disk, while an
# unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[workflow,test]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The edit loop: everything but the end-to-end Snakemake runs (marker `slow`).
test-fast: venv
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

demo: venv
	$(BIN)/snakemake --cores $(CORES) --resources gpu=1
	$(BIN)/snakemake --report results/report.html
	@echo; echo "Prepare summary (results/prepare_summary.tsv):"; column -t results/prepare_summary.tsv
	@echo; echo "Per-read summary (first rows of results/demo/summary.tsv):"; head -6 results/demo/summary.tsv | column -t
	@echo; echo "Calls:"; cat results/demo/counts.json | head -6
	@echo; echo "Per-sample counts (results/samples_summary.tsv):"; cut -f1-8 results/samples_summary.tsv | column -t
	@echo; echo "Reads called virus, as given (paired: both mates of the virus pairs):"; ls results/*/virus_*.gz
	@echo; echo "Overview: results/overview.html (also in results/report.html, category Overview)"
	@echo; $(BIN)/virnucpro status results
	@echo; echo "Report: results/report.html"

# The workflow's linter, its formatter (configured in pyproject.toml) and the Python linter.
lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow/
	$(BIN)/ruff check src workflow/scripts tests bench

dryrun: venv
	$(BIN)/snakemake -n

bench: venv
	$(BIN)/python bench/prepare.py
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/embed_processes.py
	$(BIN)/python bench/ops.py
	$(BIN)/python bench/kill_resume.py
	$(BIN)/python bench/dag.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/virus_reads.py
	$(BIN)/python bench/preflight.py
	$(BIN)/python bench/dedup.py

clean:
	rm -rf results .snakemake .test/results
