"""A training process killed with SIGKILL resumes from its last checkpoint, losing at most the steps since."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import torch

from affordance_clip_ros.cli import main
from affordance_clip_ros.model import read_metadata

SAVE_EVERY = 3


def logged_steps(path) -> list[int]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("step")]


def test_sigkill_mid_run_then_resume(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    assert main(["synth-refcoco", str(data), "--num-images", "16", "--seed", "3"]) == 0
    command = [sys.executable, "-m", "affordance_clip_ros.cli", "train", "--data-root", str(data),
               "--train-data", "refcoco:unc", "--val-data", "", "--batch-size", "4", "--input-size", "64",
               "--max-steps", "1000", "--save-every", str(SAVE_EVERY), "--log-every", "1", "--num-workers", "0",
               "--out-dir", str(out), "--clip-model", "RN-tiny", "--clip-pretrained", "none", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while len(logged_steps(out / "train_log.csv")) < 2 * SAVE_EVERY + 1 and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    last_logged = max(logged_steps(out / "train_log.csv"))
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    saved = state["step"]
    assert saved % SAVE_EVERY == 0 and saved >= SAVE_EVERY
    assert 0 <= last_logged - saved <= SAVE_EVERY, "at most the steps since the last checkpoint are lost"
    assert read_metadata(out / "fpn.safetensors")["fpn"]["levels"] == 3, "the inference checkpoint is intact"

    # The kill may land inside an atomic checkpoint write; make sure the resume meets such a leftover.
    (out / "fpn.safetensors.cut_short.tmp").write_bytes(b"partial")
    assert main(["train", "--resume", str(out), "--max-steps", str(saved + 2), "--num-workers", "0"]) == 0
    resumed = torch.load(out / "trainer_state.pt", weights_only=True)
    assert resumed["step"] == saved + 2
    assert logged_steps(out / "train_log.csv") == list(range(1, saved + 3)), "lost steps are dropped from the log"
    assert not list(out.glob("*.tmp")), "no temporary files are left after a clean finish"
