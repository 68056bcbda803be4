"""`affordance-clip benchmark --short`: every documented figure is written and finite (no timing goals)."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from affordance_clip_ros.benchmark import CPU_KEYS, DOCUMENTED_KEYS, PER_SIZE_KEYS
from affordance_clip_ros.cli import main


def test_short_benchmark_writes_every_documented_key(tmp_path, capsys):
    out = tmp_path / "bench" / "figures.json"
    assert main(["benchmark", "--short", "--device", "cpu", "--repeats", "1", "--warmup", "0",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    expected = DOCUMENTED_KEYS + CPU_KEYS + tuple(f"{k}_416" for k in PER_SIZE_KEYS)
    missing = [k for k in expected if k not in results]
    assert not missing, missing
    numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert all(math.isfinite(v) for v in numbers.values()), {k: v for k, v in numbers.items() if not math.isfinite(v)}
    assert results["clip_model"] == "RN-tiny" and results["device"] == "cpu"
    assert results["default_backend"].startswith(("onnxruntime-", "torch-"))
    assert -1.0 <= results["cpu_fast_path_corr"] <= 1.0 and results["peak_rss_mb"] > 0
    assert results["image_path_mode"] == "off" and results["torch"] == torch.__version__
    printed = capsys.readouterr().out
    assert "cpu_speedup_vs_naive_fp32" in printed and "prompt_scaling_16_vs_1" in printed


ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_step_when_rehearsed_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh, the one run that gives the GPU figures on a machine without internet
    access, rehearsed with DEVICE=cpu SHORT=1 on a copy of the repository: wheels from
    scripts/gpu_wheels.sh for this Python, its own virtualenv over this interpreter's packages,
    colcon build, benchmark, the node through DDS, a few training steps."""
    repo = tmp_path / "repo"
    repo.mkdir()
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (repo / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name.decode())
    env = {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": "/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "TMPDIR": str(tmp_path), "PYTHON": sys.executable, "DEVICE": "cpu", "SHORT": "1",
           "GPU_VENV": str(tmp_path / "venv"), "WHEELS": str(tmp_path / "wheels"),
           "ROS_DISTRO": os.environ.get("ROS_DISTRO", "kilted")}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run(["bash", "scripts/gpu_wheels.sh", str(tmp_path / "wheels"), version], cwd=repo, env=env,
                   check=True, capture_output=True)
    out = tmp_path / "figures"
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(out)], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [line.split()[1] for line in run.stdout.splitlines() if line.startswith("== ")] == [
        "machine", "setup", "benchmark", "ros_latency", "cuda_tests", "train", "goals"]
    tests = (out / "cuda_tests.log").read_text()
    assert re.search(r"\d+ passed, 3 skipped", tests), tests  # here without CUDA; on a GPU none skipped
    bench = json.loads((out / "benchmark.json").read_text())
    assert bench["device"] == "cpu" and bench["clip_model"] == "RN-tiny" and bench["fps_model"] > 0
    latency = json.loads((out / "ros_latency.json").read_text())
    for size in ("640x480", "1280x720"):
        assert latency[f"e2e_ms_{size}"] >= latency[f"model_ms_{size}"] > 0 and latency[f"e2e_fps_{size}"] > 0
    assert latency["rate_hz"] == 200.0
    assert latency["pipeline_speedup_640x480"] > 0 and latency["e2e_fps_640x480_serial"] > 0  # both nodes ran
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert len(rows) == 2 and all(float(r["images_per_s"]) > 0 for r in rows)
    goals = json.loads((out / "goals.json").read_text())
    assert [g["result"] in ("met", "missed") for g in goals["goals"]] == [True] * 4, goals
    assert goals["torch"] == bench["torch"] and goals["image_path_mode"] == "off"
