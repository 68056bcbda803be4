"""The int8 fidelity gate on random CLIP weights, one seed after another.

Not part of CI; needs no ROS. After ``make build``::

    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/int8_gate.py --seeds 0-4 --json int8_gate.json

For each seed, ``GrounderConfig(clip_pretrained="none", random_seed=N, precision="int8")`` is built
as the node builds it (training-free head, ONNX Runtime on the CPU): export, quantisation and the
gate run once. Written per seed: whether int8 was kept and with which scheme, the gate's heatmap correlation with fp32
(it needs >= INT8_MIN_CORRELATION) and the build time; with the machine and the load average.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from tqdm import tqdm

from affordance_clip_ros.benchmark import describe_cpu
from affordance_clip_ros.model import AffordanceGrounder, GrounderConfig
from affordance_clip_ros.model.onnx_backend import INT8_MIN_CORRELATION


def seed_range(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '3' -> [3]; '0,2' -> [0, 2]."""
    seeds = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def gate(clip_model: str, seed: int, input_size: int) -> dict:
    start = time.perf_counter()
    grounder = AffordanceGrounder.from_config(GrounderConfig(
        clip_model=clip_model, clip_pretrained="none", random_seed=seed, device="cpu", backend="onnxruntime",
        precision="int8", input_size=input_size))
    return {"seed": seed, "int8_kept": grounder.image_path_precision == "int8", "int8_scheme": grounder.int8_scheme,
            "gate_corr": grounder.int8_gate_correlation,
            "build_s": time.perf_counter() - start, "load_avg_1min": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-model", default="RN101", help="open_clip model name (or RN-tiny)")
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0-4"), help="random-weight seeds: 0-4, 0,3")
    parser.add_argument("--input-size", type=int, default=416, help="model input size")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for seed in tqdm(args.seeds, desc="seeds", unit="seed"):
        rows.append(gate(args.clip_model, seed, args.input_size))
        print(json.dumps(rows[-1]), flush=True)
    kept = sum(r["int8_kept"] for r in rows)
    result = {"clip_model": args.clip_model, "input_size": args.input_size, "machine": describe_cpu(),
              "min_correlation": INT8_MIN_CORRELATION,
              "seeds": rows, "int8_kept": f"{kept}/{len(rows)}",
              "worst_gate_corr": min(r["gate_corr"] for r in rows)}
    print(f"int8 kept for {kept} of {len(rows)} seeds; worst gate correlation {result['worst_gate_corr']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if kept == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
