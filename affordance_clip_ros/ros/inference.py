"""Running the grounder on frames of any size (pure: numpy, OpenCV, the model; no ROS).

Frames larger than ``max_side`` pixels on their long side (an 8K camera) are downscaled for
inference, which bounds the model's memory and time; the heatmaps are resized back to the
frame's resolution and the peaks mapped to its pixels, so callers always get input-sized maps.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import cv2
import numpy as np
import torch

from ..model.grounder import AffordanceGrounder, AffordancePrediction
from ..model.peaks import Peak

MAX_INFERENCE_SIDE = 1920


def predict_any_size(grounder: AffordanceGrounder, rgb: np.ndarray, prompts, max_side: int = MAX_INFERENCE_SIDE
                     ) -> tuple[list[AffordancePrediction], bool]:
    """(predictions at the frame's resolution, whether the frame was downscaled for inference)."""
    [(predictions, downscaled)] = predict_frames(grounder, [rgb], prompts, max_side)
    return predictions, downscaled


def predict_frames(grounder: AffordanceGrounder, frames, prompts, max_side: int = MAX_INFERENCE_SIDE
                   ) -> list[tuple[list[AffordancePrediction], bool]]:
    """Several frames in one forward pass: for each, (predictions at the frame's resolution,
    whether it was downscaled for inference)."""
    inputs = [_fit(rgb, max_side) for rgb in frames]
    batch = grounder.predict_batch(inputs, prompts)
    return [([_to_size(p, *rgb.shape[:2]) for p in predictions], True) if small is not rgb else (predictions, False)
            for rgb, small, predictions in zip(frames, inputs, batch)]


def _fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """The frame itself, or a copy whose long side is ``max_side``."""
    height, width = rgb.shape[:2]
    if max(height, width) <= max_side:
        return rgb
    scale = max_side / max(height, width)
    return cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


def _to_size(prediction: AffordancePrediction, height: int, width: int) -> AffordancePrediction:
    small_h, small_w = prediction.heatmap.shape
    heatmap = cv2.resize(prediction.heatmap, (width, height), interpolation=cv2.INTER_LINEAR)
    np.clip(heatmap, 0.0, 1.0, out=heatmap)
    sx, sy = width / small_w, height / small_h
    peaks = [Peak(u=min(width - 1, int((p.u + 0.5) * sx)), v=min(height - 1, int((p.v + 0.5) * sy)), score=p.score)
             for p in prediction.peaks]
    return AffordancePrediction(prediction.prompt, heatmap, peaks)


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op without glibc) and
    freed CUDA blocks back to the driver: after a huge frame or a freed model the allocators
    would otherwise keep hundreds of MB of it."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
