#!/usr/bin/env bash
# Build the ROS 2 package (messages + Python package + executables) with colcon into
# install/<distro>/, using the ROS 2 wheels in the distribution's virtualenv instead of a /opt/ros
# installation.
#
#   bash scripts/build_ros.sh                    (what `make build` runs; Kilted)
#   ROS_DISTRO=jazzy bash scripts/build_ros.sh   (Jazzy: .venv-jazzy -> build/jazzy, install/jazzy)
#   VERBOSE=1 bash scripts/build_ros.sh          (show colcon's output even on success)
#   VENV=/path/to/venv bash scripts/build_ros.sh
#   BUILD_TESTING=ON bash scripts/build_ros.sh   (register the pytest suite for `colcon test`)
#
# Quiet on success (one line); on failure it prints colcon's output and where the full log is.
# A build with nothing changed costs about a second (colcon start-up, a make that finds every
# target up to date, an install step that finds every file up to date).
#
# Copying install, not --symlink-install:
#   The tests, the CLI and the node import `affordance_clip_ros` from install/ (the only copy
#   that also holds the generated `msg` subpackage), so install/ has to be an exact, current
#   snapshot of the sources after every `make build`. A copying install is exactly what a
#   user's `colcon build` on a real ROS system produces, it stays consistent while sources are
#   edited during a long test run, and a no-op rebuild is cheap (see above). --symlink-install
#   would link each installed file to its source, so edits to existing modules show up without
#   a build but new modules, data files or messages do not: a half-current install that hides
#   exactly the mistakes (a file missing from the install rules) the tests should catch. It also
#   cannot be switched on and off in one build directory without cleaning it.
#   What a copying install does not do on its own is remove files deleted from the sources, so
#   after colcon this script prunes installed files that the last install did not write (a
#   removed module would otherwise stay importable from install/).
#
# colcon crawls --base-paths for packages; it stops descending at the first directory that is a
# package (the repository root here) and skips dot-directories, so .venv-<distro>/ (which holds the
# wheels' own package.xml files under share/) is never crawled. build/, install/ and log/ get
# a COLCON_IGNORE marker from colcon itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DISTRO="${ROS_DISTRO:-kilted}"
VENV="$(cd "${VENV:-$ROOT/.venv-$DISTRO}" 2>/dev/null && pwd)" || {
  echo "build_ros.sh: no virtualenv at ${VENV:-$ROOT/.venv-$DISTRO}: run 'ROS_DISTRO=$DISTRO make setup' first" >&2
  exit 1
}
PY="$VENV/bin/python"
BUILD_BASE="${BUILD_BASE:-$ROOT/build/$DISTRO}"
INSTALL_BASE="${INSTALL_BASE:-$ROOT/install/$DISTRO}"
LOG_BASE="${LOG_BASE:-$ROOT/log/$DISTRO}"
PKG="affordance_clip_ros"

for tool in "$PY" "$VENV/bin/colcon"; do
  if [[ ! -x "$tool" ]]; then
    echo "build_ros.sh: $tool not found: run 'make setup' first" >&2
    exit 1
  fi
done
if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
  echo "build_ros.sh: cmake and a C/C++ compiler are needed to build the messages" >&2
  exit 1
fi

# The wheels put ament/CMake packages in the venv prefix (share/<pkg>/cmake, lib/).
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# rosidl generators and ament helpers run `python3`/console scripts: use the venv's.
export PATH="$VENV/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1  # keep the sources free of __pycache__ from the generators

# The exported CMake targets of the wheels must point at this interpreter's headers.
# make setup does this; redo it here only if a wheel was (re)installed by hand since.
if grep -rqs --include='*.cmake' /opt/python/cp3 "$VENV/share"; then
  "$PY" "$ROOT/scripts/fix_ros_wheels.py"
fi

output="$(mktemp "${TMPDIR:-/tmp}/build_ros.XXXXXX.log")"
trap 'rm -f "$output"' EXIT
start=$SECONDS
# Python3_EXECUTABLE pins find_package(Python3) (ament_cmake, rosidl_generator_py) to the
# venv: its sysconfig gives the include dir and site-packages layout, its numpy the headers.
if ! colcon --log-base "$LOG_BASE" build \
    --base-paths "$ROOT" \
    --build-base "$BUILD_BASE" \
    --install-base "$INSTALL_BASE" \
    --event-handlers console_direct+ \
    --cmake-args \
      "-DBUILD_TESTING=${BUILD_TESTING:-OFF}" \
      -DCMAKE_BUILD_TYPE=Release \
      "-DPython3_EXECUTABLE=$PY" \
    >"$output" 2>&1; then
  cat "$output" >&2
  echo "build_ros.sh: colcon build FAILED; full log: $LOG_BASE/latest_build/$PKG/" >&2
  exit 1
fi
if [[ -n "${VERBOSE:-}" ]]; then cat "$output"; fi

# Prune installed files the last install did not write (sources deleted or renamed since an
# earlier build), only in the trees this package owns; then drop directories left empty or
# holding only __pycache__ (they would still import as namespace packages).
"$PY" - "$BUILD_BASE/$PKG/install_manifest.txt" "$INSTALL_BASE/$PKG" "$PKG" <<'EOF'
import os, shutil, sys, sysconfig
manifest, prefix, pkg = sys.argv[1:]
installed = {os.path.normpath(line.strip()) for line in open(manifest) if line.strip()}
pyver = sysconfig.get_python_version()
owned = [os.path.join(prefix, "lib", f"python{pyver}", "site-packages", pkg),
         os.path.join(prefix, "lib", pkg),
         os.path.join(prefix, "share", pkg, "launch"),
         os.path.join(prefix, "share", pkg, "config")]
for top in owned:
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        if os.path.basename(dirpath) == "__pycache__":
            continue
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path not in installed:
                print(f"build_ros.sh: removed stale {os.path.relpath(path, prefix)}")
                os.remove(path)
        left = [n for n in os.listdir(dirpath) if n != "__pycache__"]
        if not left and dirpath != top:
            shutil.rmtree(dirpath)
EOF

echo "build_ros.sh: $PKG built and installed in $INSTALL_BASE ($((SECONDS - start)) s)"
