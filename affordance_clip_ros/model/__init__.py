"""Pure torch model code (no ROS): frozen CLIP, FPN, training-free head, grounder, checkpoints.

The names below load their module (and torch) on first use, so ``model.options`` and
``model.templates`` import without torch (the parameter table and ``ros2 launch`` use them).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointError": "checkpoint", "load_fpn": "checkpoint", "read_metadata": "checkpoint", "save_fpn": "checkpoint",
    "FrozenCLIP": "clip_backbone", "ImageFeatures": "clip_backbone",
    "AffordanceFPN": "fpn", "FPNConfig": "fpn", "count_trainable_parameters": "fpn",
    "paired_pixel_text_logits": "fpn", "pixel_text_logits": "fpn",
    "AffordanceGrounder": "grounder", "AffordancePrediction": "grounder", "DeviceResult": "grounder",
    "GrounderConfig": "grounder",
    "Peak": "peaks", "find_peaks": "peaks",
    "WeightsLoadError": "weights", "WeightsNotFoundError": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
