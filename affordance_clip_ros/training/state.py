"""Trainer checkpoints: everything needed to continue a run exactly, without pickled objects.

``trainer_state.pt`` is ``torch.save`` of plain dicts, lists, numbers, strings and tensors (FPN
weights, Adam state, gradient-scaler state, RNG states, step, config, the training data's
fingerprint), so it loads with
``torch.load(..., weights_only=True)``. It is written to a temporary file in the same folder
and renamed over the old one, so a crash never leaves a half-written checkpoint. The FPN
alone, for inference, is ``fpn.safetensors`` (:func:`affordance_clip_ros.model.save_fpn`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..io import written_atomically

STATE_FILE = "trainer_state.pt"
FPN_FILE = "fpn.safetensors"
FORMAT = "affordance_clip_trainer"
FORMAT_VERSION = 1


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(path: str | os.PathLike, state: dict) -> Path:
    """Atomically ``torch.save`` a plain-data state dict (see :func:`trainer_state`)."""
    path = Path(path)
    with written_atomically(path) as tmp:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, tmp)
    return path


def trainer_state(step: int, config: dict, world_size: int, fpn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, train_data: dict) -> dict:
    """``train_data``: the training set's fingerprint (:meth:`ReferringDataset.fingerprint`)."""
    return {"step": int(step), "config": dict(config), "world_size": int(world_size), "train_data": dict(train_data),
            "fpn": {k: v.detach().cpu() for k, v in fpn.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state()}


def resolve_resume_path(resume: str | os.PathLike) -> Path:
    """A run folder or its trainer_state.pt -> the state file (FileNotFoundError when absent)."""
    path = Path(resume)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trainer state at '{path}': --resume takes a run folder (--out-dir of the "
                                f"interrupted run, holding {STATE_FILE}) or that file")
    return path


def load_trainer_state(path: str | os.PathLike) -> dict:
    """Load with ``weights_only=True`` (no code can run) and check the format."""
    path = resolve_resume_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"'{path}' is not a readable trainer state (truncated or not written by "
                         f"`affordance-clip train`?): {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"'{path}' is not an affordance-clip trainer state (format {FORMAT} v{FORMAT_VERSION})")
    return state
