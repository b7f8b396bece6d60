# nni-labelfree: `make run` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The tested set (DEVELOPERS.md); setup.py declares the looser ranges users elsewhere can satisfy.
TESTED := torch==2.14.1 torchvision==0.29.1 nni==3.0 'pytorch-lightning>=2.0,<3' 'setuptools<81' numpy scipy pyyaml pytest
# nnictl starts trials with the first python3 on PATH: the venv must come first.
export PATH := $(abspath $(BIN)):$(PATH)
export PYTHONWARNINGS := ignore::DeprecationWarning

.PHONY: install run test test-all bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip<27'
	$(BIN)/python -m pip install --quiet $(TESTED)
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

# The main job: an NNI experiment (manager + web UI) of RLNAS searches on NAS-Bench-201, then a summary table.
# KEEP_UI=1 keeps the web UI up after the experiment ends (Ctrl-C to stop).
run: install
	$(BIN)/nni-labelfree experiment experiment_configs/quickstart.yml $(if $(KEEP_UI),--keep-ui,)

test: install
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
