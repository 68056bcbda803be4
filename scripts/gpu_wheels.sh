#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh needs on a GPU machine without internet access
# that already has a usual PyTorch stack (torch with CUDA, torchvision, numpy, OpenCV,
# scikit-image, ONNX Runtime, timm, huggingface_hub, safetensors, tqdm, matplotlib, PyYAML):
# the ROS 2 wheels with their build tools, and open_clip with what it needs beyond that stack,
# for that machine's Python. gpu_check.sh says which module is missing, if any.
#
#   bash scripts/gpu_wheels.sh [DEST] [PYTHON_VERSION]      (defaults: .whl 3.12)
#
# Run it where PyPI is reachable; then copy DEST next to the repository on the GPU machine.
# About 54 MB. Packages published only as source (empy, lark-parser, catkin-pkg) are built into
# wheels here; numpy is left out (the machine's own must stay, it matches its torch).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.whl}"
PYVER="${2:-3.12}"
PIP=(python3 -m pip)
mkdir -p "$DEST"
sources="$(mktemp -d)"
trap 'rm -rf "$sources"' EXIT

platforms=()
for tag in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 \
           manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux_2_39_x86_64 any; do
  platforms+=(--platform "$tag")
done
download=("${PIP[@]}" download -q --only-binary=:all: --python-version "$PYVER" --implementation cp
          "${platforms[@]}" --find-links "$sources" -d "$DEST")

LOCK="$ROOT/requirements/${ROS_DISTRO:-kilted}.txt"
pins() {  # NAME==VERSION of each named package, as the distribution's lock pins it
  grep -hiE "^($(IFS='|'; echo "$*"))==" "$LOCK" | sed 's/[[:space:]]*#.*//'
}

# shellcheck disable=SC2046
"${PIP[@]}" wheel -q --no-deps -w "$sources" $(pins empy lark-parser catkin-pkg)
# The ROS 2 wheels and colcon, with everything they need.
ros_lock="$sources/ros.txt"
grep -iE "^(ros-|colcon-|catkin-pkg|empy|lark-parser)" "$LOCK" >"$ros_lock"
"${download[@]}" -r "$ros_lock"
# This package's own dependencies that a CUDA PyTorch machine lacks.
# shellcheck disable=SC2046
"${download[@]}" --no-deps $(pins open_clip_torch ftfy wcwidth regex pycocotools)
# pytest and hypothesis with what they need, for the tests that need CUDA.
# shellcheck disable=SC2046
"${download[@]}" $(pins pytest hypothesis)
rm -f "$DEST"/numpy-*.whl
echo "gpu_wheels.sh: $(find "$DEST" -name '*.whl' | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST (Python $PYVER)"
