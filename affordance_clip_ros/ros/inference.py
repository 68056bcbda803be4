"""Running the grounder on frames of any size, and the published forms of its maps (pure: numpy,
OpenCV, the model; no ROS).

Frames larger than ``max_side`` pixels on their long side (an 8K camera) are downscaled for
inference, which bounds the model's memory and time; the heatmaps are resized back to the
frame's resolution and the peaks mapped to its pixels, so callers always get input-sized maps.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from ..model.device_postprocess import blend_heatmap_torch, reduce_maps, resize_maps
from ..model.grounder import AffordanceGrounder
from ..model.peaks import Peak
from ..visualization import blend_heatmap, draw_peaks
from .result_messages import reduce_heatmap

MAX_INFERENCE_SIDE = 1920


class FrameMaps:
    """One frame's maps for all prompts, at the frame's resolution, where the model made them.

    On CUDA the maps stay on the GPU: the published forms (full maps, shrunk or mono8 result maps,
    the overlay's blend) are made there and only they are copied to the host, each when first
    asked for. On the CPU the same forms come from OpenCV, which is faster there. ``on_device``
    chooses the torch operations on any device (tests compare the two on the CPU)."""

    def __init__(self, prompts: Sequence[str], maps: torch.Tensor, peaks: Sequence[list[Peak]],
                 downscaled: bool = False, on_device: bool | None = None):
        self.maps = maps  # (N, H, W) float32 in [0, 1]
        self.downscaled = downscaled  # whether the frame was downscaled for inference
        self.on_device = maps.device.type == "cuda" if on_device is None else on_device
        self.prompts, self.peaks = list(prompts), [list(found) for found in peaks]
        self._host: dict[int, np.ndarray] = {}
        self._made = None  # on CUDA: passed once the maps are complete on the stream that made them
        if maps.device.type == "cuda":
            self._made = torch.cuda.Event()
            self._made.record()

    @contextlib.contextmanager
    def _device_work(self):
        """Device work for publishing runs on a CUDA stream of the calling thread's own, after the
        maps are made: on the publishing stage it never queues behind the next frame's inference."""
        if self._made is None:
            yield
            return
        stream = _publishing_stream(self.maps.device)
        stream.wait_event(self._made)
        self.maps.record_stream(stream)  # the allocator keeps the maps until this stream is done with them
        with torch.cuda.stream(stream):
            yield

    @property
    def predictions(self) -> list[MapPrediction]:
        """One prediction per prompt, made on each call (they refer to this object, which holds none
        of them: no reference cycle keeps a camera-sized set of maps alive until garbage collection)."""
        return [MapPrediction(self, i, prompt, found)
                for i, (prompt, found) in enumerate(zip(self.prompts, self.peaks))]

    def heatmap(self, index: int) -> np.ndarray:
        """Map ``index`` on the host, float32 H x W (copied once)."""
        if index not in self._host:
            with self._device_work():
                self._host[index] = self.maps[index].cpu().numpy()
        return self._host[index]

    def result_maps(self, max_side: int = 0, encoding: str = "32FC1") -> tuple[list[np.ndarray], float]:
        """Every map as ~/result carries it (see :func:`.result_messages.reduce_heatmap`): (arrays, scale)."""
        if max_side == 0 and encoding == "32FC1":
            return [self.heatmap(i) for i in range(len(self.prompts))], 1.0
        if self.on_device:
            with self._device_work():
                reduced, scale = reduce_maps(self.maps, max_side, encoding)
                return list(reduced.cpu().numpy()), scale
        reduced = [reduce_heatmap(self.heatmap(i), max_side, encoding) for i in range(len(self.prompts))]
        return [array for array, _ in reduced], (reduced[0][1] if reduced else 1.0)

    def overlay(self, rgb: np.ndarray, alpha: float = 0.5, index: int = 0) -> np.ndarray:
        """Map ``index`` drawn on the frame as ~/overlay shows it (BGR uint8): blend, peaks, prompt."""
        if self.on_device:
            with self._device_work():
                pixels = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.maps.device)
                blend = blend_heatmap_torch(pixels, self.maps[index], alpha).cpu().numpy()
        else:
            blend = blend_heatmap(rgb, self.heatmap(index), alpha)
        return draw_peaks(blend, self.peaks[index], self.prompts[index])


_streams = threading.local()


def _publishing_stream(device: torch.device) -> torch.cuda.Stream:
    """This thread's CUDA stream for publishing work on ``device``."""
    if not hasattr(_streams, "by_device"):
        _streams.by_device = {}
    if device not in _streams.by_device:
        _streams.by_device[device] = torch.cuda.Stream(device)
    return _streams.by_device[device]


@dataclass
class MapPrediction:
    """One prompt's result in a :class:`FrameMaps`: an AffordancePrediction whose heatmap is
    copied to the host only when read."""

    frame: FrameMaps
    index: int
    prompt: str
    peaks: list[Peak]

    @property
    def heatmap(self) -> np.ndarray:
        return self.frame.heatmap(self.index)


def predict_frames(grounder: AffordanceGrounder, frames, prompts, max_side: int = MAX_INFERENCE_SIDE
                   ) -> list[FrameMaps]:
    """Several frames in one forward pass: for each, its maps at the frame's resolution."""
    inputs = [_fit(rgb, max_side) for rgb in frames]
    prompts = list(prompts)
    outputs = []
    for rgb, small, result in zip(frames, inputs, grounder.predict_tensors(inputs, prompts)):
        maps, peaks = result.maps, result.peaks
        if small is not rgb:
            maps, peaks = _to_size(maps, peaks, *rgb.shape[:2])
        outputs.append(FrameMaps(prompts, maps, peaks, downscaled=small is not rgb))
    return outputs


def _fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """The frame itself, or a copy whose long side is ``max_side``."""
    height, width = rgb.shape[:2]
    if max(height, width) <= max_side:
        return rgb
    scale = max_side / max(height, width)
    return cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


def _to_size(maps: torch.Tensor, peaks: Sequence[list[Peak]], height: int, width: int
             ) -> tuple[torch.Tensor, list[list[Peak]]]:
    """Maps and peaks of a downscaled frame at the frame's resolution (bilinear; on the CPU by OpenCV)."""
    small_h, small_w = maps.shape[1:]
    if maps.device.type == "cpu":  # into one array: an 8K frame's maps are 133 MB each
        resized = np.empty((maps.shape[0], height, width), np.float32)
        for source, target in zip(maps.numpy(), resized):
            cv2.resize(source, (width, height), dst=target, interpolation=cv2.INTER_LINEAR)
        maps = torch.from_numpy(np.clip(resized, 0.0, 1.0, out=resized))
    else:
        maps = resize_maps(maps, height, width)
    sx, sy = width / small_w, height / small_h
    return maps, [[Peak(u=min(width - 1, int((p.u + 0.5) * sx)), v=min(height - 1, int((p.v + 0.5) * sy)),
                        score=p.score) for p in prompt_peaks] for prompt_peaks in peaks]


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
