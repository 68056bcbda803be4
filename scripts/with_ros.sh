#!/usr/bin/env bash
# Run a command in the ROS 2 environment of this repository: the ROS 2 wheels in the virtualenv
# of one distribution plus this package's colcon install for it (install/<distro>/, built by
# `make build`).
#
#   bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test
#   ROS_DISTRO=jazzy bash scripts/with_ros.sh .venv-jazzy/bin/python -m pytest -q test
#   bash scripts/with_ros.sh install/kilted/affordance_clip_ros/lib/affordance_clip_ros/grounding_node \
#       --ros-args -r image:=...
#
# Which copy of `affordance_clip_ros` is imported: the installed one, always. It is the only copy
# that holds the generated `affordance_clip_ros.msg` next to the pure Python sources.
# install/local_setup.sh puts it first on PYTHONPATH (ahead of the venv's site-packages, and of
# an editable `pip install -e .` if someone made one), and PYTHONSAFEPATH=1 stops `python -m
# pytest` / `python script.py` from putting the current directory / the script's directory at
# the front of sys.path, where the source tree would shadow the install. (So a script run
# through here cannot import modules lying next to it.) Run `make build` after editing the
# sources; make test, demo and infer-demo do.
#
# Environment (each can be set by the caller; these are the defaults):
#   RMW_IMPLEMENTATION=rmw_fastrtps_cpp  the only RMW in the wheels
#   ROS_DOMAIN_ID=<1..100 from this checkout's path>  deterministic per checkout, so runs from
#       different checkouts on one machine do not see each other's topics
#   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST  discovery stays on this machine
#   ROS_DISTRO=kilted                    jazzy or kilted: which virtualenv and install tree
#   VENV=<repo>/.venv-$ROS_DISTRO
set -eo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROS_DISTRO="${ROS_DISTRO:-kilted}"
VENV="$(cd "${VENV:-$ROOT/.venv-$ROS_DISTRO}" 2>/dev/null && pwd)" || {
  echo "with_ros.sh: no virtualenv at ${VENV:-$ROOT/.venv-$ROS_DISTRO}: run 'ROS_DISTRO=$ROS_DISTRO make setup' first" >&2
  exit 1
}
INSTALL_BASE="${INSTALL_BASE:-$ROOT/install/$ROS_DISTRO}"

if [[ $# -eq 0 ]]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi
if [[ ! -f "$INSTALL_BASE/local_setup.sh" ]]; then
  echo "with_ros.sh: $INSTALL_BASE/local_setup.sh not found: run 'ROS_DISTRO=$ROS_DISTRO make build' first" >&2
  exit 1
fi

pyver="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

# The wheels' prefix: ament resource index (share/ament_index), message definitions,
# rclpy's type support lookup (AMENT_PREFIX_PATH) and the C/C++ libraries (lib/).
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"

# Shared libraries of the wheels: <venv>/lib and the auditwheel-vendored
# site-packages/ros_*.libs. The venv's ros_wheels_bootstrapper .pth would otherwise add these on
# every interpreter start by re-exec'ing Python, in an order that varies from run to run; set
# them once here, in a fixed order, and tell it that it is done.
ld="$VENV/lib"
for d in "$VENV/lib/python$pyver/site-packages"/ros_*.libs; do
  [[ -d "$d" ]] && ld="$ld:$d"
done
export LD_LIBRARY_PATH="$ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1

# This package: PYTHONPATH, LD_LIBRARY_PATH (install/<pkg>/lib), PATH, AMENT_PREFIX_PATH.
# (colcon's setup scripts reference unset variables, so no `set -u` around them.)
# shellcheck disable=SC1091
COLCON_CURRENT_PREFIX="$INSTALL_BASE"
. "$INSTALL_BASE/local_setup.sh"
unset COLCON_CURRENT_PREFIX

export PYTHONSAFEPATH=1
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
if [[ -z "${ROS_DOMAIN_ID:-}" ]]; then
  ROS_DOMAIN_ID=$(( $(printf '%s' "$ROOT" | cksum | cut -d' ' -f1) % 100 + 1 ))
  export ROS_DOMAIN_ID
fi
if [[ -z "${ROS_AUTOMATIC_DISCOVERY_RANGE:-}" && -z "${ROS_LOCALHOST_ONLY:-}" ]]; then
  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
fi

exec "$@"
