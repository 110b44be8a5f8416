# Two commands set up a fresh machine: `make test` and `make demo`. Both create .venv and install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR := demo_model
DEMO_MODEL := $(DEMO_DIR)/best

# Offline and private by default: no telemetry, no update checks.
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export NO_ALBUMENTATIONS_UPDATE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test test-fast demo lint format chromium dicom3tools demo-model clean

# pyproject.toml declares ranges; constraints.txt holds the exact versions CI, make and the Space install
# (made by tools/lock.py). The tests need every extra; the demo the app and train ones.
$(VENV)/.installed-test: constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[app,train,batch,dicom,test]'
	touch $@

$(VENV)/.installed-demo: constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[app,train]'
	touch $@

# Browser tests drive a Chromium that is installed (playwright's own download is not used). Where none
# is on the PATH, Debian's is installed if this is Debian as root; otherwise the browser tests skip.
CHROMIUM_NAMES := chromium chromium-browser google-chrome google-chrome-stable
chromium:
	@for name in $(CHROMIUM_NAMES); do command -v $$name >/dev/null && exit 0; done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			|| echo "chromium could not be installed: the browser tests will skip"; \
	else echo "no Chromium found ($(CHROMIUM_NAMES)) and none can be installed here: the browser tests will skip"; fi

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: $(VENV)/.installed-test
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The SEG tests validate with dciodvfy (dicom3tools, Debian's package), installed the same way where possible.
dicom3tools:
	@command -v dciodvfy >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools || (apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools)) >/dev/null \
			|| echo "dicom3tools could not be installed: the dciodvfy checks will skip"; \
	else echo "no dciodvfy found and none can be installed here: the dciodvfy checks will skip"; fi

test: $(VENV)/.installed-test chromium dicom3tools lint
	HF_HUB_OFFLINE=1 tests/loopback_only $(PY) -m pytest -q --durations=20

# The quick part: nothing that trains, serves or encodes video (a few minutes on 2 cores).
test-fast: $(VENV)/.installed-test lint
	HF_HUB_OFFLINE=1 tests/loopback_only $(PY) -m pytest -q -m "not slow"

# A small model trained on synthetic data, used only where NEOPOLYP_MODEL is unset.
$(DEMO_MODEL)/config.json: | $(VENV)/.installed-demo
	HF_HUB_OFFLINE=1 $(PY) -m neopolyp_hf.synthetic --output-dir $(DEMO_DIR)/data --count 160 --seed 0
	HF_HUB_OFFLINE=1 $(PY) train/train.py --data-dir $(DEMO_DIR)/data --output-dir $(DEMO_DIR) \
		--image-size 96 --epochs 12 --encoder-weights none --num-overlays 0

demo-model: $(DEMO_MODEL)/config.json

demo: $(VENV)/.installed-demo
	@if [ -z "$$NEOPOLYP_MODEL" ]; then $(MAKE) --no-print-directory demo-model; fi
	GRADIO_SERVER_NAME=$${GRADIO_SERVER_NAME:-127.0.0.1} GRADIO_SERVER_PORT=$${GRADIO_SERVER_PORT:-7860} \
	NEOPOLYP_MODEL=$${NEOPOLYP_MODEL:-$(DEMO_MODEL)} \
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-$$([ -z "$$NEOPOLYP_MODEL" ] && echo 1 || echo 0)} \
	$(PY) app.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
