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
#   make gpu-check              on a GPU: the gpu-quick profile, the CUDA tests and the render, one summary table
#   make wheels WHEELS=DIR      wheels of every requirement but torch, for an install without network
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
# WHEELS=DIR (or several, space-separated): install from those folders only, no package index
# (pip --no-index --find-links DIR); `make wheels WHEELS=DIR` fills one on a machine with network.
WHEELS ?=
WHEEL_SOURCE := $(if $(WHEELS),--no-index $(foreach w,$(WHEELS),--find-links $(w)))
INSTALL_QUIET ?= --quiet

.PHONY: install report render test bench-tools list status preview clean distclean gpu-check wheels $(SECTIONS)

# When $(PYTHON) already imports torch (>= 2.4: a cluster module, a container, a machine without network),
# the venv sees its packages (--system-site-packages, plus a .pth naming $(PYTHON)'s site-packages for when
# $(PYTHON) is itself a venv's) and pip installs only what is missing: torch is pinned to the version already
# there, so it is never downloaded again. Otherwise a fresh venv gets TORCH_SPEC.
# The PDF tools (extra `pdf`: pandoc, Typst) are optional on that path: without their wheels lmreport
# writes Markdown only.
$(VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c 'import sys, torch; v = torch.__version__.split("+")[0].split("."); sys.exit(0 if (int(v[0]), int(v[1])) >= (2, 4) else 1)' >/dev/null 2>&1; then \
	  echo "install: $(PYTHON) has torch $$($(PYTHON) -c 'import torch; print(torch.__version__)'): the venv reuses it and the packages beside it"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV) && \
	  $(PYTHON) -c 'import site; print("\n".join(site.getsitepackages()))' \
	    > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_lmreport_python_site.pth" && \
	  $(PYTHON) -c 'import torch; print("torch==" + torch.__version__)' > $(VENV)/torch-constraint.txt && \
	  { $(BIN)/pip install $(INSTALL_QUIET) $(WHEEL_SOURCE) -c $(VENV)/torch-constraint.txt -e '.[dev,pdf]' || \
	    { echo "install: could not install the PDF tools (typst, pypandoc-binary): trying without them (lmreport then writes Markdown only)"; \
	      $(BIN)/pip install $(INSTALL_QUIET) $(WHEEL_SOURCE) -c $(VENV)/torch-constraint.txt -e '.[dev]'; }; }; \
	else \
	  echo "install: a new venv with $(TORCH_SPEC)$(if $(TORCH_INDEX), from $(TORCH_INDEX))"; \
	  $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/pip install $(INSTALL_QUIET) $(WHEEL_SOURCE) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)" && \
	  $(BIN)/pip install $(INSTALL_QUIET) $(WHEEL_SOURCE) -e '.[dev,pdf]'; \
	fi
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

# On a GPU machine: run the gpu-quick profile (about 5 minutes on an H100/H200), the CUDA tests and the render,
# then print one table (cells per section, CUDA tests, cross-checks); non-zero if anything failed. Without a GPU
# it says so in one line, exit 2, before installing anything. GPU_CHECK_ARGS: flags of `lmreport gpu-check`.
GPU_CHECK_ARGS ?=
gpu-check: $(if $(HAS_CUDA),install)
	$(if $(HAS_CUDA),,$(error gpu-check needs a CUDA GPU: nvidia-smi finds none on this machine))
	$(LMREPORT) gpu-check $(GPU_CHECK_ARGS)

# Wheels of every requirement but torch (and of the build backend), for `make install WHEELS=DIR` on a machine
# without network. Run it with the target's Python version, or pass DOWNLOAD_ARGS, e.g.
# "--python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all:".
DOWNLOAD_ARGS ?=
wheels:
	$(if $(WHEELS),,$(error make wheels: name the folder, e.g. make wheels WHEELS=wheels))
	mkdir -p $(firstword $(WHEELS))
	$(PYTHON) -m lmreport.requirements --extra dev --extra pdf --build --without torch > $(firstword $(WHEELS))/requirements.txt
	$(PYTHON) -m pip download $(INSTALL_QUIET) --dest $(firstword $(WHEELS)) $(DOWNLOAD_ARGS) -r $(firstword $(WHEELS))/requirements.txt

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV)
