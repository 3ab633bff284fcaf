# Every target bootstraps the virtual environment first. BOOK_DATA_DIR defaults to ../shared/data when that
# folder exists (this workspace and CI); otherwise data are looked up in ./data (fill it with `make data`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | md5sum | cut -c1-12)
ifneq ($(wildcard ../shared/data),)
export BOOK_DATA_DIR ?= $(abspath ../shared/data)
endif
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Progress bars are for live sessions: in the built book they would be frozen widgets loading JS from a CDN.
BUILD_ENV := BOOK_BUILD=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

.PHONY: help setup data book book-clean test test-lib test-notebooks test-browser test-live browser bench serve lab \
        smoke-full full clean

help:
	@echo "make book   build the HTML book (set-up included) into _build/html"
	@echo "make test   run every test: lib, notebooks, the browser test of the built book"
	@echo "make data   download the data sets into ./data and verify checksums"
	@echo "make bench  run the benchmarks (tables of ratios)"
	@echo "make lab    open the notebooks in JupyterLab;  make serve  serve _build/html on localhost:8000"
	@echo "make smoke-full   every chapter's FULL code path with loops cut to a few steps (FULL=1 BOOK_SMOKE=1)"
	@echo "make full CHAPTER=NN   run one chapter with FULL=1 and record results/full/NN_slug.json"

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*; touch $@

setup: $(STAMP)

data: $(STAMP)
	$(PY) -m lib.data

book: $(STAMP)
	$(PY) -m lib.build prepare
	$(BUILD_ENV) $(VENV)/bin/jupyter-book build . --warningiserror --keep-going
	@echo "open _build/html/index.html (or: make serve)"

book-clean:
	rm -rf _build

# Chromium for the browser test comes from Debian's packages (never downloaded by a test tool).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test-lib: $(STAMP)
	$(PY) -m pytest -m "not notebook and not browser and not live" -n 2 -q

test-notebooks: $(STAMP)
	$(PY) -m lib.build prepare
	$(BUILD_ENV) $(PY) -m pytest -m notebook -n 2 -q --durations=0

test-browser: $(STAMP) browser book
	$(PY) -m pytest -m browser -q

# The live path: JupyterLab from the venv on 127.0.0.1, a chapter run in Chromium, a widget slider moved.
test-live: $(STAMP) browser
	$(PY) -m pytest -m live -q

test: test-lib test-notebooks test-browser test-live

# FULL code paths with every lib.train.fit loop cut to 3 steps, in a temporary folder with its own empty cache.
smoke-full: $(STAMP)
	$(PY) -m lib.full smoke $(CHAPTERS)

full: $(STAMP)
	@test -n "$(CHAPTER)" || (echo "usage: make full CHAPTER=NN" && exit 2)
	$(PY) -m lib.full run $(CHAPTER)

bench: $(STAMP)
	for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

serve: $(STAMP)
	$(PY) -m http.server 8000 --bind 127.0.0.1 --directory _build/html

# JupyterLab asks nothing of the network: no news feed, no update check, no PyPI extension manager.
LAB_OFFLINE := --LabApp.news_url= --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
               --LabApp.extension_manager=readonly
lab: $(STAMP)
	BOOK_BUILD=0 $(VENV)/bin/jupyter lab $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_OFFLINE) book/

clean:
	rm -rf _build .cache
