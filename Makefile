# lmreport — `make report` sets everything up and writes build/writeup.md + build/writeup.pdf;
# `make test` runs the test suite. Both create the virtual environment on first use.
#
#   make report                 every section for this machine's default profile, then render
#   make render                 render from existing records only (never reruns experiments)
#   make accounting | precision | bench | ...   one section's experiments
#   make test                   CPU test suite (GPU-only tests skip without CUDA)
#   make bench-tools            benchmarks of lmreport's own tools (speed/memory targets)
#   make status                 cells per section: ok, failed, queued/running on Slurm, not run
#   make preview                docs/preview.png (README picture) from the last render
#   RUN_ARGS="--executor slurm"   extra flags for the run targets (slurm, local-gpus; see README)
#   PROFILE=handout-2025 EDITION=2026 ...       choose a profile or an edition
#   MODEL=cs336_basics.model:BasicsTransformerLM   measure your own model (also OPTIMIZER=..., LOSS=...)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LMREPORT := $(BIN)/lmreport
PROFILE ?=
EDITION ?=
ARGS := $(if $(PROFILE),--profile $(PROFILE)) $(if $(EDITION),--edition $(EDITION))
# Your implementation instead of lmreport's (lmreport/user_model.py): MODULE:CLASS, imported from here or .venv.
MODEL ?=
OPTIMIZER ?=
LOSS ?=
ARGS += $(if $(MODEL),--model $(MODEL)) $(if $(OPTIMIZER),--optimizer $(OPTIMIZER)) $(if $(LOSS),--loss $(LOSS))
# Extra flags for the run commands only, e.g. RUN_ARGS="--executor slurm" or "--executor local-gpus".
RUN_ARGS ?=
SECTIONS := $(filter-out _%,$(basename $(notdir $(wildcard lmreport/report/sections/*.py))))

# torch: without an NVIDIA driver, the small CPU build 2.13.0; with one, the CUDA build from PyPI.
# Override with TORCH_SPEC=... and/or TORCH_INDEX=https://download.pytorch.org/whl/cpu (or /cu126).
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_CUDA),torch>=2.4,torch==2.13.0)
TORCH_INDEX ?=

.PHONY: install report render test bench-tools list status preview clean distclean $(SECTIONS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# A cell that fails is data (shown as error/OOM in the writeup), so render even then; the exit
# status still says that something failed.
report: install
	@$(LMREPORT) run all $(ARGS) $(RUN_ARGS); status=$$?; $(LMREPORT) render $(ARGS) && exit $$status

render: install
	$(LMREPORT) render $(ARGS)

$(SECTIONS): install
	$(LMREPORT) run $@ $(ARGS) $(RUN_ARGS)

list: install
	$(LMREPORT) list

# Where each cell stands: records, and Slurm jobs queued or running (lmreport/slurm.py).
status: install
	$(LMREPORT) status $(ARGS)

test: install
	$(BIN)/python -m pytest -q

bench-tools: install
	@failed=""; for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "targets missed by:$$failed"; exit 1; fi

# docs/preview.png, the picture of the output in the README, from the last render.
preview: install
	$(BIN)/python docs/make_preview.py

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV)
