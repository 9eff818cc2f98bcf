# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv if missing, install sdekit, run the main job
#   make test   same set-up, then the whole test suite
# The CPU build of torch is installed first and pinned (torch==2.13.0): an
# unpinned torch (or torchsde resolving it) would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/sdekit sample --model gmm:ring8 --sampler pc -n 5000 --steps 500 --out out/demo --overwrite

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
