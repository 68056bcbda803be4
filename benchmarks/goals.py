"""The speed goals of the GPU path against the figures of one gpu_check.sh run.

    python benchmarks/goals.py OUT_DIR     # reads benchmark.json and ros_latency.json, writes goals.json

Each goal: the figure, its value, the target, and whether it is met ("not measured" where the
figure is missing, e.g. a step failed).
"""
from __future__ import annotations

import json
import operator
import sys
from pathlib import Path

# (name, file, key, comparison, target)
GOALS = (
    ("model forward at 416, default path (frames/s)", "benchmark.json", "fps_model", operator.ge, 400.0),
    ("results/s through ROS, 200 Hz camera, 640x480", "ros_latency.json", "e2e_fps_640x480", operator.ge, 150.0),
    ("p95 stream latency, 640x480 (ms)", "ros_latency.json", "loaded_e2e_p95_ms_640x480", operator.le, 15.0),
    ("16 prompts vs 1, end to end with peaks", "benchmark.json", "predict_scaling_16_vs_1", operator.le, 1.3),
)


def main(out_dir: str) -> int:
    out = Path(out_dir)
    files = {name: json.loads((out / name).read_text()) if (out / name).exists() else {}
             for name in {goal[1] for goal in GOALS}}
    rows = []
    for name, file, key, compare, target in GOALS:
        value = files[file].get(key)
        met = "not measured" if value is None else ("met" if compare(value, target) else "missed")
        rows.append({"goal": name, "key": key, "value": value, "target": target, "result": met})
        shown = "-" if value is None else f"{value:.2f}"
        print(f"{name:<50} {shown:>9}  {'>=' if compare is operator.ge else '<='} {target:<6}  {met}")
    bench = files["benchmark.json"]
    context = {k: bench.get(k) for k in ("torch", "machine", "default_backend", "image_path_mode", "fast_path_ms",
                                         "torch_fp32_ms", "torch_eager_fp32_ms", "peak_gpu_mb")}
    print(", ".join(f"{k} {v}" for k, v in context.items()))
    (out / "goals.json").write_text(json.dumps({"goals": rows, **context}, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/goals.py OUT_DIR")
    raise SystemExit(main(sys.argv[1]))
