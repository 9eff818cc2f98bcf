# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv if missing, install sdekit, train on digits, sample, evaluate
#   make test   same set-up, then the whole test suite (with the example plugins' tests)
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

# The example plugins (plugins/*) after sdekit: --no-deps, so their "sdekit" dependency
# never re-resolves torch.
PLUGINS := plugins/sdekit-teaching plugins/sdekit-unipc

$(STAMP): $(BIN)/python pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[test]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

setup: $(STAMP)

# The main job: train the digits VP model (about 3 minutes on 2 CPU cores), sample it with
# predictor-corrector, judge the samples. Running it again continues the run (--resume:
# nothing to do once finished) and redraws the samples.
DEMO := runs/demo
demo: setup
	$(BIN)/sdekit train --config configs/digits_vp.toml --workdir $(DEMO) --resume
	$(BIN)/sdekit sample --ckpt $(DEMO) --sampler pc --steps 500 -n 64 --seed 0 --out $(DEMO)/demo.png --overwrite
	$(BIN)/sdekit eval $(DEMO)/demo.npz
	@echo
	@echo "samples      $(DEMO)/demo.png (and demo.npz; training-time grids in $(DEMO)/samples/)"
	@echo "tensorboard  $(BIN)/tensorboard --logdir $(DEMO)/tb"

test: setup
	$(BIN)/python -m pytest -q tests plugins

clean:
	rm -rf $(VENV) out runs/demo .pytest_cache
