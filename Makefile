# Two entry points for a newcomer: `make predict IMAGE=photo.jpg` and `make test`.
# Both create the virtual environment on first use; `make test` runs exactly what CI runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
IMAGE ?= $(SHARED)/photos/mowshon_test-image.jpg
PYTEST_ARGS ?=

# Offline machines: use the YuNet file from ../shared unless the user set AGEGENDER_YUNET.
ifneq ($(wildcard $(SHARED)/models/yunet/yunet_s_640_640.onnx),)
export AGEGENDER_YUNET ?= $(abspath $(SHARED)/models/yunet/yunet_s_640_640.onnx)
endif

.PHONY: predict test chromium lint bench reproduce clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.full: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,serve,bench,dev]'
	touch $@ $(VENV)/.base

predict: $(VENV)/.base
	$(BIN)/agegender predict $(IMAGE)

# Browser tests drive Debian's Chromium; they skip with a reason when it cannot be installed.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: browser tests will be skipped"

test: $(VENV)/.full chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.full
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)/.full
	$(BIN)/agegender bench --markdown docs/bench.md

reproduce: $(VENV)/.full
	$(BIN)/python benchmarks/reproduce.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
