# One-command set-up, build, test and demo, for one ROS 2 distribution at a time:
#   make test                      ROS 2 Kilted (the default)
#   ROS_DISTRO=jazzy make test     ROS 2 Jazzy (the LTS)
# Each distribution has its own lock file (requirements/<distro>.txt), virtualenv (.venv-<distro>/),
# build tree (build/<distro>/) and install tree (install/<distro>/), so switching never rebuilds or
# breaks the other. All of them are ignored by git.
SHELL := /bin/bash
PYTHON ?= python3
ROS_DISTRO ?= kilted
SUPPORTED_DISTROS := jazzy kilted
ifeq ($(filter $(ROS_DISTRO),$(SUPPORTED_DISTROS)),)
$(error ROS_DISTRO=$(ROS_DISTRO) is not one this Makefile builds ($(SUPPORTED_DISTROS)); on an apt ROS install build with colcon as docs/install.md says)
endif
VENV := .venv-$(ROS_DISTRO)
LOCK := requirements/$(ROS_DISTRO).txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=
TESTS ?= test
# scripts/build_ros.sh and scripts/with_ros.sh pick the tree of this distribution.
export ROS_DISTRO VENV

.PHONY: setup build lint test demo infer-demo clean

setup: $(STAMP)

# Re-run only when the lock file changes. The package itself is not pip-installed here:
# the tests, the node and the CLI import the one copy that colcon installs into install/<distro>/
# (it also holds the generated msg subpackage); scripts/with_ros.sh puts it on the path.
$(STAMP): $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) scripts/fix_ros_wheels.py
	touch $(STAMP)

build: setup
	bash scripts/build_ros.sh

lint: setup
	$(VENV)/bin/ruff check .

test: build lint
	bash scripts/with_ros.sh $(PY) -m pytest -q $(PYTEST_ARGS) $(TESTS)

demo: build
	bash scripts/with_ros.sh $(PY) scripts/ros_demo.py --out demo_output

infer-demo: build
	bash scripts/with_ros.sh $(PY) scripts/infer_demo.py --out demo_output

clean:
	rm -rf build/$(ROS_DISTRO) install/$(ROS_DISTRO) log/$(ROS_DISTRO) demo_output
