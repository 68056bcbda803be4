"""FPN checkpoints: safetensors tensors plus JSON metadata, validated on load."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..io import written_atomically
from .fpn import AffordanceFPN, FPNConfig

FORMAT = "affordance_clip_fpn"
FORMAT_VERSION = 1
_META_KEY = "affordance_clip"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used with the requested model."""


def save_fpn(path: str | os.PathLike, fpn: AffordanceFPN, clip_model: str, input_size: int,
             recipe: dict | None = None) -> Path:
    """Write the FPN atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "clip_model": clip_model,
            "input_size": int(input_size), "fpn": fpn.config.to_dict(), "recipe": recipe or {}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in fpn.state_dict().items()}
    with written_atomically(path) as tmp:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta)})
    return path

def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint, or CheckpointError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FPN checkpoint '{path}' does not exist "
                                "(parameter fpn_checkpoint / --fpn-checkpoint).")
    try:

        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{path}' is not a readable safetensors FPN checkpoint "
                              f"(truncated or corrupted?): {e}") from e
    if raw is None:
        raise CheckpointError(f"'{path}' is a safetensors file without AffordanceCLIP metadata; "
                              f"was it written by `affordance-clip train`?")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"'{path}' has unsupported format {meta.get('format')} v{meta.get('format_version')}")
    return meta

def load_fpn(path: str | os.PathLike, clip_model: str, in_channels: tuple[int, int, int], embed_dim: int,
             map_location: str | torch.device = "cpu") -> tuple[AffordanceFPN, dict]:
    """Build the FPN a checkpoint describes and load its weights, refusing any mismatch with the CLIP in use."""
    meta = read_metadata(path)
    if meta["clip_model"] != clip_model:
        raise CheckpointError(f"FPN checkpoint '{path}' was trained for CLIP '{meta['clip_model']}', "
                              f"but the CLIP in use is '{clip_model}'. Use --clip-model {meta['clip_model']} "
                              f"or a checkpoint trained for {clip_model}.")
    config = FPNConfig(**{**meta["fpn"], "in_channels": tuple(meta["fpn"]["in_channels"])})
    if config.in_channels != tuple(in_channels) or config.embed_dim != embed_dim:
        raise CheckpointError(f"FPN checkpoint '{path}' expects CLIP channels {config.in_channels}/{config.embed_dim}, "
                              f"the CLIP in use has {tuple(in_channels)}/{embed_dim}.")
    fpn = AffordanceFPN(config)
    try:
        tensors = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{path}' could not be read (truncated or corrupted?): {e}") from e
    expected = fpn.state_dict()
    problems = sorted(set(expected) ^ set(tensors))
    problems += [f"{k}: {tuple(tensors[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in tensors and tensors[k].shape != v.shape]
    if problems:
        raise CheckpointError(f"FPN checkpoint '{path}' does not match its own metadata: {problems[:5]}")
    fpn.load_state_dict(tensors)
    return fpn, meta
