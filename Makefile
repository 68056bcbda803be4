# One-command set-up, build, test and demo. Everything lives in .venv/ (ignored by git).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=

.PHONY: setup build lint test demo infer-demo clean

setup: $(STAMP)

# Re-run only when a requirements file changes. The package itself is not pip-installed here:
# the tests, the node and the CLI import the one copy that colcon installs into install/
# (it also holds the generated msg subpackage); scripts/with_ros.sh puts it on the path.
$(STAMP): requirements.txt requirements-ros.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-ros.txt -r requirements-dev.txt
	$(PY) scripts/fix_ros_wheels.py
	touch $(STAMP)

build: setup
	bash scripts/build_ros.sh

lint: setup
	$(VENV)/bin/ruff check .

test: build lint
	bash scripts/with_ros.sh $(PY) -m pytest -q $(PYTEST_ARGS) test

demo: build
	bash scripts/with_ros.sh $(PY) scripts/ros_demo.py --out demo_output

infer-demo: build
	bash scripts/with_ros.sh $(PY) scripts/infer_demo.py --out demo_output

clean:
	rm -rf build install log demo_output
