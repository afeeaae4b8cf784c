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

.PHONY: predict test chromium lint bench logs reproduce clean

# A dropped connection must not fail a build: pip retries and resumes downloads (older pips ignore the
# variables they do not know), and each install is tried 3 times.
export PIP_RETRIES ?= 10
export PIP_TIMEOUT ?= 60
export PIP_RESUME_RETRIES ?= 10
PIP_TRY = for attempt in 1 2 3; do $(BIN)/pip install -q $(1) && break; \
	  if [ $$attempt = 3 ]; then $(2); else echo "pip install $(1) failed (attempt $$attempt of 3), retrying"; \
	  sleep 10; fi; done

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(call PIP_TRY,--upgrade pip,echo "pip not upgraded: going on with $$($(BIN)/pip --version)")

$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(call PIP_TRY,-e .,exit 1)
	touch $@

FULL_EXTRAS := -e '.[train,serve,dev,bulk,ray]'
# The OpenVINO peer (extra `bench`) and dlib (extra `teacher`) are optional: when one cannot be installed, the
# tests that need it skip and say so.
$(VENV)/.full: pyproject.toml | $(BIN)/python
	$(call PIP_TRY,$(FULL_EXTRAS),exit 1)
	$(call PIP_TRY,-e '.[bench]',echo "WARNING: openvino not installed: the OpenVINO peer test will be skipped")
	$(call PIP_TRY,-e '.[teacher]',echo "WARNING: dlib not installed: the dlib and accurate-mode tests will be skipped")
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
	$(BIN)/ruff check src tests scripts

bench: $(VENV)/.full
	$(BIN)/agegender bench --accurate --profile --markdown docs/bench.md

# Every measured figure the README and the model card quote that has no report of its own, as committed logs
# (command, date, machine, load, output) in docs/logs/.
LOG = $(BIN)/python scripts/measure/logged.py
logs: $(VENV)/.full
	$(LOG) docs/logs/loader_speed.md -- $(BIN)/python scripts/measure/loader_speed.py
	$(LOG) docs/logs/calibration_families.md -- $(BIN)/python scripts/measure/calibration_families.py src/agegender/weights/flagship.onnx
	$(LOG) docs/logs/int8_settings.md -- $(BIN)/python scripts/measure/int8_settings.py src/agegender/weights/flagship.onnx
	$(LOG) docs/logs/photo_scale.md -- $(BIN)/python scripts/measure/photo_scale.py
	$(LOG) docs/logs/photo_scale_640.md -- $(BIN)/python scripts/measure/photo_scale.py --detect-size 640
	$(LOG) docs/logs/age_group_rule.md -- $(BIN)/python scripts/measure/age_group_rule.py src/agegender/weights/flagship_int8.onnx
	$(LOG) docs/logs/direct_alignment.md -- $(BIN)/python scripts/measure/direct_alignment.py
	$(LOG) docs/logs/chip_resolution.md -- $(BIN)/python scripts/measure/chip_resolution.py
	$(LOG) docs/logs/dlib_equivalence.md -- $(BIN)/python scripts/measure/dlib_equivalence.py
	$(LOG) docs/logs/interval_by_age.md -- $(BIN)/python scripts/measure/interval_by_age.py
	$(LOG) docs/logs/split_overlap.md -- $(BIN)/python scripts/measure/split_overlap.py --rev e1618da --out ../runs/split_overlap
	$(LOG) docs/logs/load_test.md -- $(BIN)/python scripts/measure/load_test.py --start-server --clients 50 --requests 400
	$(LOG) docs/logs/ray_throughput.md -- $(BIN)/python scripts/measure/ray_throughput.py --photos 300 --rounds 2
	$(LOG) docs/logs/ray_throughput_600.md -- $(BIN)/python scripts/measure/ray_throughput.py --photos 600 --rounds 1
	$(LOG) docs/logs/sink_scale.md -- $(BIN)/python scripts/measure/sink_scale.py --rows 2000000
	$(LOG) docs/logs/sink_scale_jsonl.md -- $(BIN)/python scripts/measure/sink_scale.py --rows 2000000 --format jsonl
	$(LOG) docs/logs/resampling.md -- $(BIN)/python scripts/measure/resampling.py --rounds 15

reproduce: $(VENV)/.full
	$(BIN)/python scripts/measure/reproduce.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info src/agegender/*.so .pytest_cache
