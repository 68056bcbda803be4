#!/usr/bin/env bash
# Every GPU figure of the package in one run, on a machine with an NVIDIA GPU, a usual PyTorch
# stack (see scripts/gpu_wheels.sh), CMake and a C++ compiler, even without internet access:
#
#   bash scripts/gpu_wheels.sh .whl        # where PyPI is reachable (about 54 MB of wheels)
#   bash benchmarks/gpu_check.sh OUT_DIR   # on the GPU machine, repository root, .whl/ beside it
#
# Set-up: a virtualenv (GPU_VENV, default /tmp/affordance-gpu-venv) that sees the machine's own
# PyTorch, with the wheels of WHEELS (default .whl) installed, and the messages built by colcon.
# Then, each step logged to OUT_DIR/<step>.log and going on after a failure:
#   benchmark.json    affordance-clip benchmark --device cuda (the default, CUDA graphs fp16, and
#                     fp32 at 416/640; eager fp32 and torch.compile at 416; fidelity; post-processing
#                     on the device vs the host; 16 vs 1 prompt; peak GPU memory; torch version)
#   ros_latency.json  the node through DDS at 640x480 and 1280x720, default path, frames
#                     published at 200 Hz: latency, results/s, p95 stream latency; the same with
#                     pipeline false (_serial) and pipeline_speedup_<size>
#   cuda_tests.log    the tests that need CUDA (CUDA graphs, post-processing on the device, the
#                     publishing stage's own CUDA stream) with the rest of those two test modules
#   train_log.csv     20 training steps of RN101 at 416, batch 32, on synthetic data (images/s)
#   goals.json        the speed goals of the GPU path against these figures (benchmarks/goals.py)
# Meant to finish within 8 minutes of device time (not yet timed in this form; the earlier form, with
# a torch.compile ROS run in place of the 200 Hz one and three benchmark sizes, took 5.5 on an H200).
# ONLY="benchmark ros_latency ..." runs just those steps (after machine and setup); SIZES="416"
# times the benchmark at those input sizes only. DEVICE=cpu rehearses the same steps without a
# GPU (much slower: use SHORT=1). It builds into the repository's build/ and install/ for its own
# virtualenv: run it in a copy of a development checkout, or `make build` there afterwards.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ $# -ne 1 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT_DIR" >&2
  exit 2
fi
OUT="$(mkdir -p "$1" && cd "$1" && pwd)" || exit 2
PYTHON="${PYTHON:-python3}"
VENV="${GPU_VENV:-/tmp/affordance-gpu-venv}"
WHEELS="${WHEELS:-$ROOT/.whl}"
DEVICE="${DEVICE:-cuda}"
MODEL="RN101"
read -r -a SIZES <<<"${SIZES:-416 640}"
FRAMES=20
STEPS=20
BATCH=32
REPEATS=(--repeats 30 --warmup 5)  # a GPU forward takes milliseconds: more runs for a steady median
if [[ -n "${SHORT:-}" ]]; then MODEL="RN-tiny"; SIZES=(416); FRAMES=2; STEPS=2; BATCH=8; REPEATS=(); fi
failed=0

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, say how it went
  local name="$1" start=$SECONDS
  shift
  if [[ -n "${ONLY:-}" && ! " machine setup $ONLY " =~ " $name " ]]; then return 0; fi
  echo "== $name"
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - start)) s)"
  else
    echo "   FAILED ($((SECONDS - start)) s), last lines of $OUT/$name.log:"
    tail -n 25 "$OUT/$name.log" | sed 's/^/   | /'
    failed=1
    return 1
  fi
}

venv_pip() {  # pip of the new venv; where the interpreter has no ensurepip, the machine's pip aimed at it
  if [[ -x "$VENV/bin/pip" ]]; then "$VENV/bin/python" -m pip "$@"; else "$PYTHON" -m pip --python "$VENV/bin/python" "$@"; fi
}

set_up() {
  "$PYTHON" -m venv "$VENV" || "$PYTHON" -m venv --without-pip "$VENV" || return 1
  # The machine's PyTorch (and numpy, OpenCV, ...) may itself live in a virtualenv, which
  # --system-site-packages would not see: add its site-packages after the new venv's own.
  local base site
  base="$("$PYTHON" -c 'import site; print(":".join(site.getsitepackages()))')"
  site="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
  tr ':' '\n' <<<"$base" >"$site/machine_packages.pth"
  # --ignore-installed: the machine's packages are visible, and must not stand in for these.
  venv_pip install -q --no-index --no-deps --no-compile --ignore-installed "$WHEELS"/*.whl || return 1
  "$VENV/bin/python" -c "import torch, torchvision, cv2, skimage, onnxruntime, open_clip, pycocotools, matplotlib, \
safetensors, tqdm, yaml, pytest, hypothesis" || { echo "a module above is missing on this machine: add its wheel" >&2; return 1; }
  "$VENV/bin/python" scripts/fix_ros_wheels.py || return 1
  VENV="$VENV" bash scripts/build_ros.sh
}

with_ros() { VENV="$VENV" bash scripts/with_ros.sh "$VENV/bin/python" "$@"; }

train() {
  local work
  work="$(mktemp -d)"
  with_ros -m affordance_clip_ros.cli synth-refcoco "$work/data" --num-images $((BATCH * 4)) &&
    with_ros -m affordance_clip_ros.cli train --clip-model "$MODEL" --clip-pretrained none --device "$DEVICE" \
      --data-root "$work/data" --train-data refcoco:unc --val-data "" --max-steps "$STEPS" \
      --batch-size "$BATCH" --num-workers 4 --log-every 1 --save-every "$STEPS" --out-dir "$work/run" &&
    cp "$work/run/train_log.csv" "$OUT/train_log.csv"
  local status=$?
  rm -rf "$work"
  return $status
}

machine() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi; fi
  uname -a
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.is_available())"
}

step machine machine
step setup set_up || { echo "set-up failed: nothing else can run"; exit 1; }
# The figures that matter most first, so that a run cut short by a time limit still has them.
step benchmark with_ros -m affordance_clip_ros.cli benchmark --device "$DEVICE" --clip-model "$MODEL" \
  --sizes "${SIZES[@]}" "${REPEATS[@]}" --json "$OUT/benchmark.json"
step ros_latency with_ros benchmarks/ros_latency.py --device "$DEVICE" --clip-model "$MODEL" --frames "$FRAMES" \
  --rate-hz 200 --pipeline both --json "$OUT/ros_latency.json"
step cuda_tests with_ros -m pytest -q -p no:cacheprovider test/test_cuda_graphs.py test/test_device_postprocess.py
step train train
step goals "$VENV/bin/python" benchmarks/goals.py "$OUT"
cat "$OUT/goals.log" 2>/dev/null
echo "gpu_check.sh: figures in $OUT"
exit $failed
