"""Weights and checkpoint files: unsafe pickles are refused, damaged or foreign files give one clear error."""
from __future__ import annotations

import os

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from affordance_clip_ros.model import (AffordanceFPN, CheckpointError, FPNConfig, FrozenCLIP, WeightsLoadError,
                                       load_fpn, save_fpn)


class _RunsCode:
    """Unpickling this executes a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_as_clip_weights(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "weights.pt"
    torch.save({"state_dict": _RunsCode(marker)}, evil)
    with pytest.raises(WeightsLoadError, match="could run code"):
        FrozenCLIP.create("RN-tiny", str(evil), "cpu")
    assert not marker.exists()


def test_a_pickle_is_refused_as_fpn_checkpoint(tmp_path, tiny_clip):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "fpn.safetensors"
    torch.save({"w": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_fpn(evil, "RN-tiny", tiny_clip.feature_channels, tiny_clip.embed_dim)
    assert not marker.exists()


def test_clip_weights_of_another_architecture_or_truncated_are_refused(tmp_path):
    other = tmp_path / "rn50.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model("RN50").state_dict().items()}, str(other))
    with pytest.raises(WeightsLoadError, match="do not fit model 'RN-tiny'"):
        FrozenCLIP.create("RN-tiny", str(other), "cpu")
    truncated = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model("RN-tiny").state_dict().items()}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:4096])
    with pytest.raises(WeightsLoadError):
        FrozenCLIP.create("RN-tiny", str(truncated), "cpu")


def test_fpn_checkpoint_of_another_architecture_is_refused(tmp_path, tiny_clip):
    rn101_fpn = AffordanceFPN(FPNConfig((512, 1024, 2048), 512, width=8))
    path = save_fpn(tmp_path / "rn101.safetensors", rn101_fpn, "RN-tiny", 416)  # lies about its CLIP
    with pytest.raises(CheckpointError, match="expects CLIP channels"):
        load_fpn(path, "RN-tiny", tiny_clip.feature_channels, tiny_clip.embed_dim)
    tensors = {k: v.contiguous() for k, v in AffordanceFPN(
        FPNConfig(tiny_clip.feature_channels, tiny_clip.embed_dim, width=8)).state_dict().items()}
    tensors["laterals.0.0.weight"] = torch.zeros(3, 3)
    bad = save_fpn(tmp_path / "ok.safetensors", AffordanceFPN(
        FPNConfig(tiny_clip.feature_channels, tiny_clip.embed_dim, width=8)), "RN-tiny", 416)
    from safetensors import safe_open
    with safe_open(str(bad), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(CheckpointError, match="does not match its own metadata"):
        load_fpn(bad, "RN-tiny", tiny_clip.feature_channels, tiny_clip.embed_dim)


def test_no_unsafe_torch_load_in_the_sources():
    from pathlib import Path
    import re

    root = Path(__file__).resolve().parents[1]
    sources = [p for p in root.rglob("*.py")
               if not any(part.startswith(".venv") or part in ("build", "install") for part in p.parts)]
    calls = [(p, line) for p in sources for line in p.read_text().splitlines() if re.search(r"torch\.load\(", line)]
    unsafe = [f"{p}: {line.strip()}" for p, line in calls if "weights_only=True" not in line]
    assert not unsafe, unsafe
